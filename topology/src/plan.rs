//! The difference between the declared topology and a live cluster, as a list of actions.
//!
//! Planning is pure (live state in, actions out) so it is tested without a broker;
//! [`crate::apply`] reads the live state and carries the plan out.

use std::collections::BTreeMap;
use std::fmt;

use crate::model::TopicSpec;

/// What the cluster has for one topic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LiveTopic {
    pub partitions: i32,
    pub replication_factor: i32,
    /// Effective value of every config, with whether it is a topic-level override.
    pub configs: BTreeMap<String, (String, bool)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Create(TopicSpec),
    AddPartitions {
        topic: String,
        from: i32,
        to: i32,
    },
    /// Kafka's AlterConfigs replaces a topic's whole set of overrides, so `desired` is the
    /// complete declared config; `changes` are what differs, for display.
    AlterConfigs {
        topic: String,
        desired: BTreeMap<String, String>,
        changes: Vec<ConfigChange>,
    },
    Delete {
        topic: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigChange {
    Set {
        key: String,
        from: String,
        to: String,
    },
    /// A topic-level override that the topology does not declare goes back to the default.
    Reset { key: String, from: String },
}

/// Something the plan will not do, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    DecreasePartitions {
        topic: String,
        live: i32,
        declared: i32,
    },
    ChangeReplicationFactor {
        topic: String,
        live: i32,
        declared: i32,
    },
    /// Undeclared managed topic, kept because `--allow-delete` was not given.
    KeepUndeclared { topic: String },
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub actions: Vec<Action>,
    pub refusals: Vec<Refusal>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }

    /// Refusals that make the declared topology unreachable (not merely cautious).
    pub fn blocking_refusals(&self) -> impl Iterator<Item = &Refusal> {
        self.refusals
            .iter()
            .filter(|r| !matches!(r, Refusal::KeepUndeclared { .. }))
    }
}

/// Computes the plan. `live` holds the cluster's topics under the managed prefix.
pub fn plan(
    declared: &[TopicSpec],
    live: &BTreeMap<String, LiveTopic>,
    allow_delete: bool,
) -> Plan {
    let mut p = Plan::default();
    for spec in declared {
        let Some(have) = live.get(&spec.name) else {
            p.actions.push(Action::Create(spec.clone()));
            continue;
        };
        if spec.partitions > have.partitions {
            p.actions.push(Action::AddPartitions {
                topic: spec.name.clone(),
                from: have.partitions,
                to: spec.partitions,
            });
        } else if spec.partitions < have.partitions {
            p.refusals.push(Refusal::DecreasePartitions {
                topic: spec.name.clone(),
                live: have.partitions,
                declared: spec.partitions,
            });
        }
        if spec.replication_factor != have.replication_factor {
            p.refusals.push(Refusal::ChangeReplicationFactor {
                topic: spec.name.clone(),
                live: have.replication_factor,
                declared: spec.replication_factor,
            });
        }
        let mut changes = Vec::new();
        for (key, want) in &spec.config {
            match have.configs.get(key) {
                Some((value, _)) if value == want => {}
                Some((value, _)) => changes.push(ConfigChange::Set {
                    key: key.clone(),
                    from: value.clone(),
                    to: want.clone(),
                }),
                None => changes.push(ConfigChange::Set {
                    key: key.clone(),
                    from: "(unset)".into(),
                    to: want.clone(),
                }),
            }
        }
        for (key, (value, is_override)) in &have.configs {
            if *is_override && !spec.config.contains_key(key) {
                changes.push(ConfigChange::Reset {
                    key: key.clone(),
                    from: value.clone(),
                });
            }
        }
        if !changes.is_empty() {
            p.actions.push(Action::AlterConfigs {
                topic: spec.name.clone(),
                desired: spec.config.clone(),
                changes,
            });
        }
    }
    for topic in live.keys() {
        if declared.iter().any(|d| &d.name == topic) {
            continue;
        }
        if allow_delete {
            p.actions.push(Action::Delete {
                topic: topic.clone(),
            });
        } else {
            p.refusals.push(Refusal::KeepUndeclared {
                topic: topic.clone(),
            });
        }
    }
    p
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Create(t) => {
                write!(
                    f,
                    "+ create      {} ({} partitions, RF {}",
                    t.name, t.partitions, t.replication_factor
                )?;
                for (k, v) in &t.config {
                    write!(f, ", {k}={v}")?;
                }
                write!(f, ")")
            }
            Action::AddPartitions { topic, from, to } => {
                write!(f, "~ partitions  {topic}: {from} -> {to}")
            }
            Action::AlterConfigs { topic, changes, .. } => {
                write!(f, "~ config      {topic}:")?;
                for c in changes {
                    match c {
                        ConfigChange::Set { key, from, to } => write!(f, " {key} {from} -> {to};")?,
                        ConfigChange::Reset { key, from } => {
                            write!(f, " {key} {from} -> (default);")?
                        }
                    }
                }
                Ok(())
            }
            Action::Delete { topic } => write!(f, "- delete      {topic}"),
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::DecreasePartitions { topic, live, declared } => write!(
                f,
                "! refused     {topic}: partitions {live} -> {declared} (Kafka cannot remove partitions; recreate the topic by hand)"
            ),
            Refusal::ChangeReplicationFactor { topic, live, declared } => write!(
                f,
                "! refused     {topic}: replication factor {live} -> {declared} (needs a partition reassignment)"
            ),
            Refusal::KeepUndeclared { topic } => write!(
                f,
                "  kept        {topic}: not declared (deleted only with --allow-delete)"
            ),
        }
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for a in &self.actions {
            writeln!(f, "{a}")?;
        }
        for r in &self.refusals {
            writeln!(f, "{r}")?;
        }
        if self.actions.is_empty() {
            writeln!(f, "no changes: the cluster matches the topology")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, partitions: i32, config: &[(&str, &str)]) -> TopicSpec {
        TopicSpec {
            name: name.into(),
            partitions,
            replication_factor: 1,
            config: config
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn live(partitions: i32, configs: &[(&str, &str, bool)]) -> LiveTopic {
        LiveTopic {
            partitions,
            replication_factor: 1,
            configs: configs
                .iter()
                .map(|(k, v, o)| (k.to_string(), (v.to_string(), *o)))
                .collect(),
        }
    }

    #[test]
    fn creates_grows_alters_and_resets() {
        let declared = vec![
            spec("s.a", 3, &[]),
            spec("s.b", 6, &[("retention.ms", "1000")]),
            spec("s.c", 3, &[("cleanup.policy", "delete")]),
        ];
        let cluster: BTreeMap<_, _> = [
            (
                "s.b".to_string(),
                live(
                    3,
                    &[
                        ("retention.ms", "604800000", false),
                        ("segment.ms", "5", true),
                    ],
                ),
            ),
            (
                "s.c".to_string(),
                live(3, &[("cleanup.policy", "delete", false)]),
            ),
        ]
        .into();
        let p = plan(&declared, &cluster, false);
        assert_eq!(p.actions.len(), 3, "{p}");
        assert!(matches!(&p.actions[0], Action::Create(t) if t.name == "s.a"));
        assert!(matches!(
            &p.actions[1],
            Action::AddPartitions { from: 3, to: 6, .. }
        ));
        let Action::AlterConfigs {
            changes, desired, ..
        } = &p.actions[2]
        else {
            panic!("{p}")
        };
        assert_eq!(desired["retention.ms"], "1000");
        assert!(changes.contains(&ConfigChange::Reset {
            key: "segment.ms".into(),
            from: "5".into()
        }));
    }

    #[test]
    fn refuses_to_shrink_and_deletes_only_when_allowed() {
        let declared = vec![spec("s.a", 3, &[])];
        let cluster: BTreeMap<_, _> = [
            ("s.a".to_string(), live(6, &[])),
            ("s.old".to_string(), live(1, &[])),
        ]
        .into();
        let p = plan(&declared, &cluster, false);
        assert!(p.is_empty());
        assert_eq!(p.blocking_refusals().count(), 1);
        assert!(p.to_string().contains("partitions 6 -> 3"));
        assert!(p.to_string().contains("s.old: not declared"));
        let p = plan(&declared, &cluster, true);
        assert_eq!(
            p.actions,
            vec![Action::Delete {
                topic: "s.old".into()
            }]
        );
    }

    #[test]
    fn a_matching_cluster_has_an_empty_plan() {
        let declared = vec![spec("s.a", 3, &[("retention.ms", "1000")])];
        let cluster: BTreeMap<_, _> = [(
            "s.a".to_string(),
            live(3, &[("retention.ms", "1000", true)]),
        )]
        .into();
        let p = plan(&declared, &cluster, false);
        assert!(p.is_empty() && p.refusals.is_empty());
        assert!(p.to_string().contains("no changes"));
    }
}
