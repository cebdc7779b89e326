//! Lanes: aggregates are spread over a fixed number of lanes by a hash of their id, and each
//! lane is relayed by one relay at a time, in order.
//!
//! A relay owns a lane while it holds a session-level advisory lock on `(table hash, lane)`
//! (`pg_try_advisory_lock`): the lock is taken without blocking (like `FOR UPDATE SKIP
//! LOCKED`, a held lane is simply skipped) and is released when the relay's connection ends,
//! so a crashed relay's lanes are free at once. A row lock on a lanes table would do the same
//! but must be held in an open transaction, and an open transaction that has locked a row
//! owns a transaction id: it would pin `pg_snapshot_xmin` and stop every lane's reads.
//!
//! The lock only keeps two live relays from working on one lane; exactly-once does not rest
//! on it. Each lane's Kafka producer has its own `transactional.id`, so a relay that takes a
//! lane over fences the previous owner's producer before it reads the lane's position.

/// SQL for the lane of a row among `lanes`: a 63-bit hash of `aggregate_id`, modulo the lane
/// count. Kept in SQL so every relay and every reader agrees without a hash of its own. The
/// count is a literal, not a parameter, so the expression is the one the table's lane index
/// is built on ([`crate::ddl`]) and a lane's reads and deletes walk only its own rows.
pub fn lane_of_row(lanes: u32) -> String {
    format!("((hashtextextended(aggregate_id, 0) & 9223372036854775807) % {lanes})")
}

/// A stable 31-bit hash of the table name (FNV-1a): the advisory lock namespace of its lanes
/// and the base of their state partitions.
pub fn table_hash(table: &str) -> i32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in table.bytes() {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    (h & 0x7fff_ffff) as i32
}

/// How many lanes each of `relays` live relays should own.
pub fn fair_share(lanes: u32, relays: u32) -> u32 {
    lanes.div_ceil(relays.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_hash_is_stable_and_non_negative() {
        assert_eq!(table_hash("sluice_outbox"), table_hash("sluice_outbox"));
        assert_ne!(table_hash("sluice_outbox"), table_hash("other_outbox"));
        assert!(table_hash("x") >= 0);
    }

    #[test]
    fn the_lane_expression_names_its_count() {
        assert_eq!(
            lane_of_row(8),
            "((hashtextextended(aggregate_id, 0) & 9223372036854775807) % 8)"
        );
    }

    #[test]
    fn the_fair_share_covers_every_lane() {
        assert_eq!(fair_share(8, 1), 8);
        assert_eq!(fair_share(8, 3), 3);
        assert_eq!(fair_share(8, 0), 8);
        assert_eq!(fair_share(1, 2), 1);
    }
}
