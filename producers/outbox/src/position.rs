//! A lane's durable state as records of a compacted Kafka topic, written in the same Kafka
//! transaction as the lane's events: the events of a batch and the position after them are
//! committed together or not at all, so a relay that crashes (or is fenced) between the two
//! cannot publish a row again.
//!
//! Keys are JSON arrays, so no aggregate id can be mistaken for a separator:
//! `["<table>", <lane>]` holds the watermark `{"xid": …, "id": …}`, with `"forgotten": true`
//! once the lane keeps some aggregates' sequences only in PostgreSQL;
//! `["<table>", <lane>, "<aggregate_type>", "<aggregate_id>"]` holds `{"sequence": …}`, and a
//! tombstone once the aggregate is forgotten.

use crate::event::{AggregateKey, Position};
use crate::sequencer::Durable;

/// The key of a lane's watermark.
pub fn watermark_key(table: &str, lane: u32) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!([table, lane])).expect("json")
}

pub fn watermark_value(p: Position, forgotten: bool) -> Vec<u8> {
    let mut v = serde_json::json!({"xid": p.xid, "id": p.id});
    if forgotten {
        v["forgotten"] = true.into();
    }
    serde_json::to_vec(&v).expect("json")
}

/// The key of an aggregate's last relayed sequence.
pub fn aggregate_key(table: &str, lane: u32, a: &AggregateKey) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!([
        table,
        lane,
        a.aggregate_type,
        a.aggregate_id
    ]))
    .expect("json")
}

pub fn sequence_value(sequence: i64) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({"sequence": sequence})).expect("json")
}

/// The partition of the state topic a lane's records go to.
pub fn partition_of(table: &str, lane: u32, partitions: i32) -> i32 {
    ((crate::lanes::table_hash(table) as u64 + lane as u64) % partitions.max(1) as u64) as i32
}

/// Folds one state record into `state` when it belongs to `table`'s `lane`; records of other
/// lanes and tables (which share partitions) are ignored, as are unreadable ones.
pub fn apply(state: &mut Durable, table: &str, lane: u32, key: &[u8], value: Option<&[u8]>) {
    let Ok(serde_json::Value::Array(parts)) = serde_json::from_slice(key) else {
        return;
    };
    if parts.first().and_then(|t| t.as_str()) != Some(table)
        || parts.get(1).and_then(|l| l.as_u64()) != Some(lane as u64)
    {
        return;
    }
    let value: Option<serde_json::Value> = value.and_then(|v| serde_json::from_slice(v).ok());
    match (&parts[2..], value) {
        ([], Some(v)) => {
            if let (Some(xid), Some(id)) = (v["xid"].as_i64(), v["id"].as_i64()) {
                state.watermark = Position { xid, id };
                state.forgotten = v["forgotten"].as_bool().unwrap_or(false);
            }
        }
        ([t, i], v) => {
            let (Some(t), Some(i)) = (t.as_str(), i.as_str()) else {
                return;
            };
            let key = AggregateKey {
                aggregate_type: t.into(),
                aggregate_id: i.into(),
            };
            match v.and_then(|v| v["sequence"].as_i64()) {
                Some(s) => {
                    state.last.insert(key, s);
                }
                None => {
                    state.last.remove(&key);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_into_the_lane_they_belong_to() {
        let a = AggregateKey {
            aggregate_type: "order".into(),
            aggregate_id: "o/1\",2".into(),
        };
        let mut s = Durable::default();
        let p = Position { xid: 700, id: 12 };
        apply(
            &mut s,
            "t",
            3,
            &watermark_key("t", 3),
            Some(&watermark_value(p, true)),
        );
        apply(
            &mut s,
            "t",
            3,
            &aggregate_key("t", 3, &a),
            Some(&sequence_value(4)),
        );
        // Other lanes and tables sharing the partition are not this lane's state.
        apply(
            &mut s,
            "t",
            3,
            &watermark_key("t", 4),
            Some(&watermark_value(Position::default(), false)),
        );
        apply(
            &mut s,
            "t",
            3,
            &watermark_key("u", 3),
            Some(&watermark_value(Position::default(), false)),
        );
        apply(&mut s, "t", 3, b"not json", Some(b"{}"));
        assert_eq!(s.watermark, p);
        assert!(s.forgotten);
        assert_eq!(s.last.get(&a), Some(&4));
        apply(&mut s, "t", 3, &aggregate_key("t", 3, &a), None);
        assert!(s.last.is_empty());
    }

    #[test]
    fn lanes_spread_over_partitions() {
        let ps: std::collections::BTreeSet<i32> = (0..8)
            .map(|l| partition_of("sluice_outbox", l, 4))
            .collect();
        assert_eq!(ps.len(), 4);
    }
}
