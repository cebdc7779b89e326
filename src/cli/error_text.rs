//! An error and its causes on one line, as the CLI prints them.
//!
//! Many of sluice's error types name their cause in their own message ("cannot read F: No
//! such file or directory") and also return it as their `source()`, so that a caller holding
//! the typed error still sees why. Printing anyhow's whole chain (`{:#}`) would then say the
//! cause twice; this adds a cause only when the text so far does not already hold it.

/// `e`'s message followed by each cause not already part of it, separated by `: `.
pub fn chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.is_empty() {
            out = text;
        } else if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn missing() -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory")
    }

    #[test]
    fn a_cause_the_message_already_names_is_not_repeated() {
        let e = anyhow::Error::new(sluice_topology::TopologyError::Read {
            file: "topology.yaml".into(),
            source: missing(),
        })
        .context("loading the topology");
        assert_eq!(
            chain(&e),
            "loading the topology: cannot read topology.yaml: No such file or directory"
        );
        assert_eq!(
            format!("{e:#}"),
            "loading the topology: cannot read topology.yaml: No such file or directory: No such file or directory",
            "anyhow's own chain, for contrast"
        );
    }

    #[test]
    fn a_cause_the_message_does_not_name_is_added() {
        let e = anyhow::Error::new(missing()).context("reading the config");
        assert_eq!(chain(&e), "reading the config: No such file or directory");
    }
}
