//! Start-up: turns the topology's `sources` into ready-to-use verifiers, limits and rate
//! buckets. Every problem is found here, before the port opens, and named by its path in the
//! topology (`sources[2].provider`) or by the secret's env var / file, never by its value.

use std::collections::BTreeMap;
use std::sync::Arc;

use sluice_runtime::SecretRef;
use sluice_topology::Topology;

use super::rate_limit::RateBucket;
use crate::verify::{self, BuildError, ProviderConfig, Secret, Verifier};

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("sources[{index}].provider (source `{name}`): {message}")]
    Provider {
        index: usize,
        name: String,
        message: String,
    },
    #[error("sources[{index}].secrets[{secret}] (source `{name}`): {source}")]
    Secret {
        index: usize,
        secret: usize,
        name: String,
        source: sluice_runtime::ConfigError,
    },
    #[error("sources[{index}] (source `{name}`): {reason}")]
    Verifier {
        index: usize,
        name: String,
        reason: String,
    },
}

/// One configured webhook source, ready to serve.
pub struct Source {
    pub name: String,
    pub provider: ProviderConfig,
    pub verifier: Box<dyn Verifier>,
    pub raw_topic: String,
    pub max_body_bytes: usize,
    /// Charged only by requests whose signature verified.
    pub bucket: Option<RateBucket>,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source")
            .field("name", &self.name)
            .field("provider", &self.provider.kind())
            .field("raw_topic", &self.raw_topic)
            .field("max_body_bytes", &self.max_body_bytes)
            .finish()
    }
}

/// Builds every source of `topology`, keyed by name.
pub fn build_sources(topology: &Topology) -> Result<BTreeMap<String, Arc<Source>>, SourceError> {
    let mut out = BTreeMap::new();
    for (index, spec) in topology.sources.iter().enumerate() {
        // Polling sources have no webhook endpoint: `sluice poll` feeds them.
        let Some(mapping) = spec.provider.clone() else {
            continue;
        };
        let provider: ProviderConfig =
            serde_yaml_ng::from_value(serde_yaml_ng::Value::Mapping(mapping)).map_err(|e| {
                SourceError::Provider {
                    index,
                    name: spec.name.clone(),
                    message: e.to_string(),
                }
            })?;
        let secrets = spec
            .secrets
            .iter()
            .enumerate()
            .map(|(secret, r)| {
                r.resolve()
                    .map(Secret::from)
                    .map_err(|source| SourceError::Secret {
                        index,
                        secret,
                        name: spec.name.clone(),
                        source,
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let verifier = verify::build(&provider, secrets).map_err(|e| SourceError::Verifier {
            index,
            name: spec.name.clone(),
            reason: describe(&e, &spec.secrets),
        })?;
        let bucket = spec
            .limits
            .rate_per_sec
            .map(|rate| RateBucket::new(rate, spec.limits.burst));
        out.insert(
            spec.name.clone(),
            Arc::new(Source {
                name: spec.name.clone(),
                provider,
                verifier,
                raw_topic: spec.raw_topic.clone(),
                max_body_bytes: spec.limits.max_body_bytes,
                bucket,
            }),
        );
    }
    Ok(out)
}

/// A build error with the secret's index replaced by where it comes from.
fn describe(e: &BuildError, refs: &[SecretRef]) -> String {
    let which = |index: usize| match refs.get(index) {
        Some(SecretRef::Env(name)) => format!("the secret from env {name}"),
        Some(SecretRef::File(path)) => format!("the secret from file {}", path.display()),
        None => format!("secret #{index}"),
    };
    match e {
        BuildError::EmptySecret { index } => format!("{} is empty", which(*index)),
        BuildError::InvalidStandardWebhooksSecret { index, reason } => {
            format!(
                "{} is not a Standard Webhooks secret: {reason}",
                which(*index)
            )
        }
        BuildError::InvalidPublicKey { index, reason } => {
            format!(
                "{} is not a valid SendGrid public key: {reason}",
                which(*index)
            )
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topology(yaml_sources: &str) -> Topology {
        let text =
            format!("topics:\n  - {{name: sluice.raw.a, partitions: 1}}\nsources:\n{yaml_sources}");
        Topology::parse("t.yaml", &text, &Default::default()).unwrap()
    }

    #[test]
    fn builds_verifiers_limits_and_buckets() {
        std::env::set_var("SLUICE_GW_TEST_SECRET_A", "s3cr3t-value");
        let t = topology(
            "  - {name: a, provider: {type: stripe, tolerance_secs: 60}, secrets: [{env: SLUICE_GW_TEST_SECRET_A}], raw_topic: sluice.raw.a, limits: {max_body_bytes: 10, rate_per_sec: 5}}\n  - {name: b, provider: {type: github}, secrets: [{env: SLUICE_GW_TEST_SECRET_A}], raw_topic: sluice.raw.a}\n",
        );
        let sources = build_sources(&t).unwrap();
        let a = &sources["a"];
        assert_eq!(a.provider.kind(), "stripe");
        assert_eq!(a.max_body_bytes, 10);
        assert!(a.bucket.is_some());
        assert_eq!(
            sources["b"].max_body_bytes as u64,
            sluice_topology::sizes::DEFAULT_MAX_BODY_BYTES
        );
        assert!(sources["b"].bucket.is_none());
        assert!(!format!("{a:?}").contains("s3cr3t"));
    }

    #[test]
    fn errors_name_the_path_and_the_secret_source_never_the_value() {
        std::env::set_var("SLUICE_GW_TEST_SECRET_BAD_SW", "not-a-whsec-value");
        let t = topology(
            "  - {name: a, provider: {type: github, tolerance_secs: 5}, secrets: [{env: X}], raw_topic: sluice.raw.a}\n",
        );
        let err = build_sources(&t).unwrap_err().to_string();
        assert!(err.starts_with("sources[0].provider (source `a`)"), "{err}");
        assert!(err.contains("tolerance_secs"), "{err}");

        let t = topology(
            "  - {name: a, provider: {type: github}, secrets: [{env: SLUICE_GW_TEST_SECRET_MISSING}], raw_topic: sluice.raw.a}\n",
        );
        let err = build_sources(&t).unwrap_err().to_string();
        assert!(err.contains("sources[0].secrets[0]"), "{err}");
        assert!(err.contains("env:SLUICE_GW_TEST_SECRET_MISSING"), "{err}");

        let t = topology(
            "  - {name: a, provider: {type: standard_webhooks}, secrets: [{env: SLUICE_GW_TEST_SECRET_BAD_SW}], raw_topic: sluice.raw.a}\n",
        );
        let err = build_sources(&t).unwrap_err().to_string();
        assert!(
            err.contains("the secret from env SLUICE_GW_TEST_SECRET_BAD_SW"),
            "{err}"
        );
        assert!(!err.contains("not-a-whsec-value"), "{err}");
    }
}
