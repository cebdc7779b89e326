//! The README's configuration reference is checked against the real config structs: the
//! example must load (unknown keys are errors), and every key sluice has must appear in it.

use std::collections::BTreeSet;

use serde_yaml_ng::Value;
use sluice_runtime::SluiceConfig;

fn readme_config_block() -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("\n## Configuration")
        .nth(1)
        .expect("README has a ## Configuration section");
    let block = section
        .split("```yaml\n")
        .nth(1)
        .expect("with a ```yaml block");
    block.split("\n```").next().unwrap().to_string()
}

/// `a.b.c` paths of a YAML tree, not descending into open maps (librdkafka properties) or
/// lists.
fn paths(v: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    let Value::Mapping(m) = v else { return };
    for (k, v) in m {
        let Some(k) = k.as_str() else { continue };
        let path = if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix}.{k}")
        };
        out.insert(path.clone());
        let open = matches!(
            path.as_str(),
            "kafka.properties" | "kafka.secret_properties" | "registry.auth"
        );
        if !open {
            paths(v, &path, out);
        }
    }
}

#[test]
fn readme_configuration_reference_loads_and_covers_every_key() {
    let block = readme_config_block();
    SluiceConfig::from_yaml_with_env("README.md", &block, &[])
        .unwrap_or_else(|e| panic!("the README's configuration example does not load: {e}"));
    let documented: Value = serde_yaml_ng::from_str(&block).unwrap();
    let mut have = BTreeSet::new();
    paths(&documented, "", &mut have);
    let mut all = BTreeSet::new();
    paths(
        &serde_yaml_ng::to_value(SluiceConfig::default()).unwrap(),
        "",
        &mut all,
    );
    let missing: Vec<&String> = all.difference(&have).collect();
    assert!(
        missing.is_empty(),
        "config keys missing from the README's reference: {missing:?}"
    );
}
