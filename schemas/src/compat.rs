//! Avro schema compatibility with field paths and rule names.
//!
//! "Can a reader with schema R decode data written with schema W?" following the Avro
//! specification's resolution rules. Named types are looked up and compared wherever they are
//! referenced, because apache-avro's `SchemaCompatibility::can_read` does not look inside a
//! `Schema::Ref` and so misses incompatibilities in types used by name.

use std::collections::{HashMap, HashSet};
use std::fmt;

use apache_avro::schema::{Name, ResolvedSchema, Schema};

/// One reason a reader cannot read a writer's data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incompatibility {
    /// Dotted path to the field, e.g. `amount.currency`; `$` for the root.
    pub path: String,
    /// Rule name, in the style of Confluent's compatibility messages.
    pub rule: &'static str,
    pub message: String,
}

impl fmt::Display for Incompatibility {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} ({})", self.path, self.rule, self.message)
    }
}

/// Every reason `reader` cannot read data written with `writer`; empty when it can.
pub fn check(reader: &Schema, writer: &Schema) -> Vec<Incompatibility> {
    let reader_names = names(reader);
    let writer_names = names(writer);
    let mut c = Checker {
        reader_names: &reader_names,
        writer_names: &writer_names,
        seen: HashSet::new(),
        out: Vec::new(),
    };
    c.check(reader, writer, "$");
    c.out
}

/// Which directions a compatibility mode requires, and against which earlier versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// New readers read old data.
    pub backward: bool,
    /// Old readers read new data.
    pub forward: bool,
    /// Against every earlier version, not only the previous one.
    pub transitive: bool,
}

/// A version that breaks its subject's rules against an earlier one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryViolation {
    pub version: u32,
    pub against: u32,
    /// `backward` (the new version cannot read the old data) or `forward`.
    pub direction: &'static str,
    pub problem: Incompatibility,
}

impl fmt::Display for HistoryViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "v{} vs v{} ({}): {}",
            self.version, self.against, self.direction, self.problem
        )
    }
}

/// Checks each version of one event type (oldest first, numbered from 1) against the
/// earlier ones as `rules` require.
pub fn check_history(versions: &[&Schema], rules: Rules) -> Vec<HistoryViolation> {
    let mut out = Vec::new();
    for (i, new) in versions.iter().enumerate().skip(1) {
        let earlier = if rules.transitive { 0..i } else { i - 1..i };
        for j in earlier {
            let old = versions[j];
            let (version, against) = (i as u32 + 1, j as u32 + 1);
            if rules.backward {
                out.extend(check(new, old).into_iter().map(|problem| HistoryViolation {
                    version,
                    against,
                    direction: "backward",
                    problem,
                }));
            }
            if rules.forward {
                out.extend(check(old, new).into_iter().map(|problem| HistoryViolation {
                    version,
                    against,
                    direction: "forward",
                    problem,
                }));
            }
        }
    }
    out
}

fn names(schema: &Schema) -> HashMap<Name, Schema> {
    ResolvedSchema::try_from(schema)
        .map(|r| {
            r.get_names()
                .iter()
                .map(|(k, v)| (k.clone(), (*v).clone()))
                .collect()
        })
        .unwrap_or_default()
}

struct Checker<'a> {
    reader_names: &'a HashMap<Name, Schema>,
    writer_names: &'a HashMap<Name, Schema>,
    /// (reader, writer) named pairs under comparison, so recursive types terminate.
    seen: HashSet<(String, String)>,
    out: Vec<Incompatibility>,
}

impl<'a> Checker<'a> {
    fn deref<'s>(&self, s: &'s Schema, names: &'a HashMap<Name, Schema>) -> &'s Schema
    where
        'a: 's,
    {
        match s {
            Schema::Ref { name } => names.get(name).unwrap_or(s),
            other => other,
        }
    }

    fn fail(&mut self, path: &str, rule: &'static str, message: String) {
        self.out.push(Incompatibility {
            path: path.to_string(),
            rule,
            message,
        });
    }

    fn check(&mut self, reader: &Schema, writer: &Schema, path: &str) {
        let reader = self.deref(reader, self.reader_names);
        let writer = self.deref(writer, self.writer_names);

        if let Schema::Union(w) = writer {
            for branch in w.variants() {
                let mut probe = Checker {
                    reader_names: self.reader_names,
                    writer_names: self.writer_names,
                    seen: self.seen.clone(),
                    out: Vec::new(),
                };
                probe.check(reader, branch, path);
                self.out.extend(probe.out);
            }
            return;
        }
        if let Schema::Union(r) = reader {
            let accepted = r.variants().iter().any(|branch| {
                let mut probe = Checker {
                    reader_names: self.reader_names,
                    writer_names: self.writer_names,
                    seen: self.seen.clone(),
                    out: Vec::new(),
                };
                probe.check(branch, writer, path);
                probe.out.is_empty()
            });
            if !accepted {
                self.fail(
                    path,
                    "MISSING_UNION_BRANCH",
                    format!(
                        "the reader's union has no branch for the writer's {}",
                        kind(writer)
                    ),
                );
            }
            return;
        }

        match (reader, writer) {
            (Schema::Record(r), Schema::Record(w)) => {
                if !same_name(&r.name, r.aliases.as_deref(), &w.name) {
                    return self.fail(
                        path,
                        "NAME_MISMATCH",
                        format!("reader record {} vs writer record {}", r.name, w.name),
                    );
                }
                let key = (r.name.fullname(None), w.name.fullname(None));
                if !self.seen.insert(key.clone()) {
                    return;
                }
                for rf in &r.fields {
                    let field_path = if path == "$" {
                        rf.name.clone()
                    } else {
                        format!("{path}.{}", rf.name)
                    };
                    let wf = w
                        .fields
                        .iter()
                        .find(|wf| wf.name == rf.name || rf.aliases.contains(&wf.name));
                    match wf {
                        Some(wf) => self.check(&rf.schema, &wf.schema, &field_path),
                        None if rf.default.is_some() => {}
                        None => self.fail(
                            &field_path,
                            "READER_FIELD_MISSING_DEFAULT_VALUE",
                            format!(
                                "field `{}` is not in the writer's {} and has no default",
                                rf.name, w.name
                            ),
                        ),
                    }
                }
                self.seen.remove(&key);
            }
            (Schema::Enum(r), Schema::Enum(w)) => {
                if !same_name(&r.name, r.aliases.as_deref(), &w.name) {
                    return self.fail(
                        path,
                        "NAME_MISMATCH",
                        format!("reader enum {} vs writer enum {}", r.name, w.name),
                    );
                }
                let missing: Vec<&String> = w
                    .symbols
                    .iter()
                    .filter(|s| !r.symbols.contains(s))
                    .collect();
                if !missing.is_empty() && r.default.is_none() {
                    self.fail(
                        path,
                        "MISSING_ENUM_SYMBOLS",
                        format!("the reader lacks symbols {missing:?} and has no default symbol"),
                    );
                }
            }
            (Schema::Fixed(r), Schema::Fixed(w)) => {
                if !same_name(&r.name, r.aliases.as_deref(), &w.name) {
                    self.fail(
                        path,
                        "NAME_MISMATCH",
                        format!("reader fixed {} vs writer fixed {}", r.name, w.name),
                    );
                } else if r.size != w.size {
                    self.fail(
                        path,
                        "FIXED_SIZE_MISMATCH",
                        format!("reader size {} vs writer size {}", r.size, w.size),
                    );
                }
            }
            (Schema::Array(r), Schema::Array(w)) => {
                self.check(&r.items, &w.items, &format!("{path}[]"))
            }
            (Schema::Map(r), Schema::Map(w)) => {
                self.check(&r.types, &w.types, &format!("{path}{{}}"))
            }
            (Schema::Decimal(r), Schema::Decimal(w)) => {
                if r.precision != w.precision || r.scale != w.scale {
                    self.fail(
                        path,
                        "DECIMAL_PRECISION_SCALE_MISMATCH",
                        format!(
                            "reader decimal({},{}) vs writer decimal({},{})",
                            r.precision, r.scale, w.precision, w.scale
                        ),
                    );
                }
            }
            _ => {
                let (rp, wp) = (primitive(reader), primitive(writer));
                let ok = match (rp, wp) {
                    (Some(r), Some(w)) => r == w || promotable(w, r),
                    _ => false,
                };
                if !ok {
                    self.fail(
                        path,
                        "TYPE_MISMATCH",
                        format!(
                            "the writer's {} cannot be read as {}",
                            kind(writer),
                            kind(reader)
                        ),
                    );
                }
            }
        }
    }
}

fn same_name(reader: &Name, aliases: Option<&[apache_avro::schema::Alias]>, writer: &Name) -> bool {
    reader.fullname(None) == writer.fullname(None)
        || reader.name() == writer.name()
        || aliases
            .unwrap_or_default()
            .iter()
            .any(|a| a.name() == writer.name() || a.fullname(None) == writer.fullname(None))
}

/// The binary type under a primitive or primitive-based logical type.
fn primitive(s: &Schema) -> Option<&'static str> {
    Some(match s {
        Schema::Null => "null",
        Schema::Boolean => "boolean",
        Schema::Int | Schema::Date | Schema::TimeMillis => "int",
        Schema::Long
        | Schema::TimeMicros
        | Schema::TimestampMillis
        | Schema::TimestampMicros
        | Schema::TimestampNanos
        | Schema::LocalTimestampMillis
        | Schema::LocalTimestampMicros
        | Schema::LocalTimestampNanos => "long",
        Schema::Float => "float",
        Schema::Double => "double",
        Schema::Bytes => "bytes",
        Schema::String | Schema::Uuid(_) => "string",
        _ => return None,
    })
}

/// Avro's promotions: what a writer's type may be read as.
fn promotable(writer: &str, reader: &str) -> bool {
    matches!(
        (writer, reader),
        ("int", "long" | "float" | "double")
            | ("long", "float" | "double")
            | ("float", "double")
            | ("string", "bytes")
            | ("bytes", "string")
    )
}

fn kind(s: &Schema) -> String {
    match s {
        Schema::Record(r) => format!("record {}", r.name),
        Schema::Enum(e) => format!("enum {}", e.name),
        Schema::Fixed(f) => format!("fixed {}", f.name),
        Schema::Array(_) => "array".into(),
        Schema::Map(_) => "map".into(),
        Schema::Union(_) => "union".into(),
        Schema::Decimal(d) => format!("decimal({},{})", d.precision, d.scale),
        Schema::Ref { name } => format!("reference {name}"),
        other => primitive(other).unwrap_or("type").to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::schema_compatibility::SchemaCompatibility;

    fn parse(s: &str) -> Schema {
        Schema::parse_str(s).unwrap()
    }

    #[test]
    fn added_field_needs_a_default_for_backward_reads() {
        let v1 = parse(r#"{"type":"record","name":"E","fields":[{"name":"a","type":"string"}]}"#);
        let with_default = parse(
            r#"{"type":"record","name":"E","fields":[{"name":"a","type":"string"},{"name":"b","type":["null","string"],"default":null}]}"#,
        );
        let without = parse(
            r#"{"type":"record","name":"E","fields":[{"name":"a","type":"string"},{"name":"b","type":"string"}]}"#,
        );
        assert!(check(&with_default, &v1).is_empty());
        let errs = check(&without, &v1);
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].path, "b");
        assert_eq!(errs[0].rule, "READER_FIELD_MISSING_DEFAULT_VALUE");
        // Forward: the old reader ignores the new field.
        assert!(check(&v1, &without).is_empty());
    }

    #[test]
    fn promotions_narrowing_unions_and_decimals() {
        let long = parse(r#"{"type":"record","name":"E","fields":[{"name":"n","type":"long"}]}"#);
        let int = parse(r#"{"type":"record","name":"E","fields":[{"name":"n","type":"int"}]}"#);
        assert!(check(&long, &int).is_empty(), "int promotes to long");
        assert_eq!(check(&int, &long)[0].rule, "TYPE_MISMATCH");
        let opt = parse(
            r#"{"type":"record","name":"E","fields":[{"name":"n","type":["null","long"],"default":null}]}"#,
        );
        assert!(check(&opt, &long).is_empty());
        assert_eq!(
            check(&long, &opt)[0].rule,
            "TYPE_MISMATCH",
            "null branch is unreadable as long"
        );
        let d2 = parse(
            r#"{"type":"record","name":"E","fields":[{"name":"m","type":{"type":"bytes","logicalType":"decimal","precision":20,"scale":2}}]}"#,
        );
        let d4 = parse(
            r#"{"type":"record","name":"E","fields":[{"name":"m","type":{"type":"bytes","logicalType":"decimal","precision":20,"scale":4}}]}"#,
        );
        assert_eq!(check(&d4, &d2)[0].rule, "DECIMAL_PRECISION_SCALE_MISMATCH");
    }

    #[test]
    fn history_checks_every_earlier_version_when_transitive() {
        let v1 = parse(r#"{"type":"record","name":"E","fields":[{"name":"a","type":"string"}]}"#);
        let v2 = parse(
            r#"{"type":"record","name":"E","fields":[{"name":"a","type":"string"},{"name":"b","type":"string","default":"x"}]}"#,
        );
        // v3 drops b's default: fine against v2 (has b), broken against v1 (lacks b).
        let v3 = parse(
            r#"{"type":"record","name":"E","fields":[{"name":"a","type":"string"},{"name":"b","type":"string"}]}"#,
        );
        let backward = Rules {
            backward: true,
            forward: false,
            transitive: false,
        };
        assert!(check_history(&[&v1, &v2, &v3], backward).is_empty());
        let transitive = Rules {
            transitive: true,
            ..backward
        };
        let v = check_history(&[&v1, &v2, &v3], transitive);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(
            (v[0].version, v[0].against, v[0].direction),
            (3, 1, "backward")
        );
        assert_eq!(v[0].to_string(), "v3 vs v1 (backward): b: READER_FIELD_MISSING_DEFAULT_VALUE (field `b` is not in the writer's E and has no default)");
    }

    #[test]
    fn the_catalog_history_is_full_transitive_compatible() {
        let catalog = crate::Catalog::embedded().unwrap();
        let full = Rules {
            backward: true,
            forward: true,
            transitive: true,
        };
        for name in catalog.event_types() {
            let versions: Vec<&Schema> = catalog
                .versions(name)
                .unwrap()
                .iter()
                .map(|e| &e.schema)
                .collect();
            let v = check_history(&versions, full);
            assert!(v.is_empty(), "{name}: {v:?}");
        }
    }

    /// The case apache-avro's `can_read` misses: both sides use the named type by reference at
    /// the shared field, and the definitions sit in fields the other side lacks, so only a
    /// check that looks the reference up sees that the reader's `Money` needs a `currency`.
    #[test]
    fn incompatibility_inside_a_named_reference_is_found() {
        let writer = parse(
            r#"{"type":"record","name":"E","fields":[
            {"name":"old","type":{"type":"record","name":"Money","fields":[{"name":"units","type":"long"}]}},
            {"name":"shared","type":"Money"}]}"#,
        );
        let reader = parse(
            r#"{"type":"record","name":"E","fields":[
            {"name":"new","type":{"type":"record","name":"Money","fields":[
                {"name":"units","type":"long"},{"name":"currency","type":"string"}]},
             "default":{"units":0,"currency":"EUR"}},
            {"name":"shared","type":"Money"}]}"#,
        );
        let errs = check(&reader, &writer);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].path, "shared.currency");
        assert_eq!(errs[0].rule, "READER_FIELD_MISSING_DEFAULT_VALUE");
        assert!(
            SchemaCompatibility::can_read(&writer, &reader).is_ok(),
            "apache-avro's own check accepts this pair; if it starts rejecting it, the workaround may go"
        );
    }
}
