//! The `.avsc` catalog under `schemas/avro/`, embedded in the binary so a deployed
//! `sluice` registers exactly the schemas it was built with.
//!
//! Layout: `<domain>/<RecordName>.v<N>.avsc`; the record's full name is
//! `dev.sluice.events.<domain>.<RecordName>`. Several versions of one record name form
//! that event type's history, oldest first.

use std::collections::BTreeMap;

use apache_avro::Schema;
use include_dir::{include_dir, Dir};

static CATALOG_DIR: Dir<'_> = include_dir!("$CARGO_MANIFEST_DIR/avro");

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
    #[error("unknown event type `{0}` (see `sluice schemas list --catalog`)")]
    UnknownEventType(String),
}

/// One version of one event type.
#[derive(Debug, Clone)]
pub struct CatalogEntry {
    /// Path inside `schemas/avro/`, e.g. `payments/PaymentSucceeded.v1.avsc`.
    pub path: String,
    pub domain: String,
    /// Full Avro name, e.g. `dev.sluice.events.payments.PaymentSucceeded`.
    pub full_name: String,
    pub version: u32,
    /// The file as written, which is what gets registered.
    pub json: String,
    pub schema: Schema,
}

#[derive(Debug, Clone)]
pub struct Catalog {
    /// Full name → versions, oldest first.
    types: BTreeMap<String, Vec<CatalogEntry>>,
}

impl Catalog {
    /// The catalog compiled into this binary.
    pub fn embedded() -> Result<Self, CatalogError> {
        let mut files = Vec::new();
        collect(&CATALOG_DIR, &mut files);
        Self::from_files(files)
    }

    /// Reads a catalog from a directory laid out like `schemas/avro/`, e.g. to check a
    /// change before building it into the binary.
    pub fn from_dir(dir: &std::path::Path) -> Result<Self, CatalogError> {
        let mut files = Vec::new();
        read_dir(dir, dir, &mut files)?;
        Self::from_files(files)
    }

    /// Builds a catalog from `(path, contents)` pairs; used by `embedded` and by tests.
    pub fn from_files<P: AsRef<str>, C: AsRef<str>>(
        files: impl IntoIterator<Item = (P, C)>,
    ) -> Result<Self, CatalogError> {
        let mut types: BTreeMap<String, Vec<CatalogEntry>> = BTreeMap::new();
        for (path, contents) in files {
            let entry = parse_entry(path.as_ref(), contents.as_ref())?;
            types
                .entry(entry.full_name.clone())
                .or_default()
                .push(entry);
        }
        for (name, versions) in &mut types {
            versions.sort_by_key(|e| e.version);
            for (i, e) in versions.iter().enumerate() {
                if e.version as usize != i + 1 {
                    return Err(CatalogError::Invalid {
                        path: e.path.clone(),
                        message: format!("versions of {name} must be 1, 2, 3, … without gaps"),
                    });
                }
            }
        }
        Ok(Self { types })
    }

    pub fn event_types(&self) -> impl Iterator<Item = &str> {
        self.types.keys().map(String::as_str)
    }

    /// Every version of `full_name`, oldest first.
    pub fn versions(&self, full_name: &str) -> Result<&[CatalogEntry], CatalogError> {
        self.types
            .get(full_name)
            .map(Vec::as_slice)
            .ok_or_else(|| CatalogError::UnknownEventType(full_name.to_string()))
    }

    /// The newest version of `full_name`.
    pub fn latest(&self, full_name: &str) -> Result<&CatalogEntry, CatalogError> {
        Ok(self
            .versions(full_name)?
            .last()
            .expect("at least one version"))
    }

    pub fn entries(&self) -> impl Iterator<Item = &CatalogEntry> {
        self.types.values().flatten()
    }
}

fn collect<'a>(dir: &'a Dir<'a>, out: &mut Vec<(String, String)>) {
    for file in dir.files() {
        if file.path().extension().is_some_and(|e| e == "avsc") {
            let text = file.contents_utf8().unwrap_or_default().to_string();
            out.push((file.path().display().to_string(), text));
        }
    }
    for sub in dir.dirs() {
        collect(sub, out);
    }
}

fn read_dir(
    root: &std::path::Path,
    dir: &std::path::Path,
    out: &mut Vec<(String, String)>,
) -> Result<(), CatalogError> {
    let io = |path: &std::path::Path, e: std::io::Error| CatalogError::Invalid {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    for entry in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
        let path = entry.map_err(|e| io(dir, e))?.path();
        if path.is_dir() {
            read_dir(root, &path, out)?;
        } else if path.extension().is_some_and(|e| e == "avsc") {
            let text = std::fs::read_to_string(&path).map_err(|e| io(&path, e))?;
            let rel = path.strip_prefix(root).unwrap_or(&path);
            out.push((rel.display().to_string(), text));
        }
    }
    Ok(())
}

fn parse_entry(path: &str, json: &str) -> Result<CatalogEntry, CatalogError> {
    let invalid = |message: String| CatalogError::Invalid {
        path: path.to_string(),
        message,
    };
    let (domain, file) = path
        .rsplit_once('/')
        .ok_or_else(|| invalid("expected <domain>/<RecordName>.v<N>.avsc".into()))?;
    let stem = file
        .strip_suffix(".avsc")
        .ok_or_else(|| invalid("expected a .avsc file".into()))?;
    let (record, version) = stem
        .rsplit_once(".v")
        .ok_or_else(|| invalid("file name must end in .v<N>.avsc".into()))?;
    let version: u32 = version
        .parse()
        .map_err(|_| invalid(format!("`{version}` is not a version number")))?;
    let schema = Schema::parse_str(json).map_err(|e| invalid(e.to_string()))?;
    let Schema::Record(r) = &schema else {
        return Err(invalid("an event schema must be a record".into()));
    };
    let full_name = r.name.fullname(None);
    let expected = format!("dev.sluice.events.{domain}.{record}");
    if full_name != expected {
        return Err(invalid(format!(
            "record is named {full_name}, but its path says {expected}"
        )));
    }
    for (i, field) in ["event_id", "occurred_at", "source", "subject"]
        .iter()
        .enumerate()
    {
        if r.fields.get(i).map(|f| f.name.as_str()) != Some(field) {
            return Err(invalid(format!(
                "field {i} must be `{field}` (the event metadata convention)"
            )));
        }
    }
    Ok(CatalogEntry {
        path: path.to_string(),
        domain: domain.to_string(),
        full_name,
        version,
        json: json.to_string(),
        schema,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_catalog_covers_every_domain_and_the_v2_evolution() {
        let c = Catalog::embedded().unwrap();
        for name in [
            "dev.sluice.events.payments.PaymentSucceeded",
            "dev.sluice.events.payments.PaymentFailed",
            "dev.sluice.events.payments.PaymentRefunded",
            "dev.sluice.events.payments.SubscriptionChanged",
            "dev.sluice.events.commerce.OrderPlaced",
            "dev.sluice.events.commerce.OrderPaid",
            "dev.sluice.events.commerce.OrderCancelled",
            "dev.sluice.events.scm.CodePushed",
            "dev.sluice.events.scm.PullRequestMerged",
            "dev.sluice.events.scm.IssueClosed",
            "dev.sluice.events.email.EmailBounced",
            "dev.sluice.events.email.EmailClicked",
            "dev.sluice.events.external.ExternalEvent",
        ] {
            c.versions(name).unwrap_or_else(|e| panic!("{e}"));
        }
        assert_eq!(
            c.versions("dev.sluice.events.payments.PaymentSucceeded")
                .unwrap()
                .len(),
            2
        );
        assert_eq!(
            c.latest("dev.sluice.events.payments.PaymentSucceeded")
                .unwrap()
                .version,
            2
        );
    }

    #[test]
    fn misnamed_record_and_version_gaps_are_rejected_with_the_path() {
        let ok = r#"{"type":"record","name":"A","namespace":"dev.sluice.events.x","fields":[
            {"name":"event_id","type":"string"},{"name":"occurred_at","type":"long"},
            {"name":"source","type":"string"},{"name":"subject","type":["null","string"],"default":null}]}"#;
        let err = Catalog::from_files([("y/A.v1.avsc", ok)])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("y/A.v1.avsc") && err.contains("path says"),
            "{err}"
        );
        let err = Catalog::from_files([("x/A.v2.avsc", ok)])
            .unwrap_err()
            .to_string();
        assert!(err.contains("without gaps"), "{err}");
        let bad = ok.replace("event_id", "id");
        let err = Catalog::from_files([("x/A.v1.avsc", bad.as_str())])
            .unwrap_err()
            .to_string();
        assert!(err.contains("`event_id`"), "{err}");
    }
}
