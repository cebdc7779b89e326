//! The outbox table, as SQL any service can write to.
//!
//! One row is one domain event. The service inserts it in the same transaction as its state
//! change; the relay reads it only once that transaction can no longer be overtaken:
//!
//! - `xid` is the inserting transaction's id (`pg_current_xact_id()`, stamped by a trigger
//!   so a writer cannot set it). Transaction ids are handed out when a transaction first
//!   writes, not when it commits, so a row with a *lower* `xid` can become visible *after*
//!   rows with higher ones: a relay that remembers "the last id I saw" skips it for good.
//! - The relay therefore reads only rows with `xid < pg_snapshot_xmin(pg_current_snapshot())`:
//!   every transaction below the snapshot's xmin has ended, so no row below it can still
//!   appear. Ordered by `(xid, id)`, the relayed rows form a prefix that only grows, and
//!   the relay's position is one `(xid, id)` pair.
//! - `(aggregate_type, aggregate_id, sequence)` is unique: per aggregate, `sequence` starts at
//!   1 and grows by one per event (the aggregate's version), which is how the relay keeps
//!   per-aggregate order even when two transactions on one aggregate commit out of `xid`
//!   order, and how it notices a gap instead of skipping it.
//! - Each relay lane reads and deletes only its aggregates' rows (a hash of `aggregate_id`
//!   modulo the lane count, [`crate::lanes`]): the lane index keeps it on its own rows instead
//!   of walking every lane's. It is built for one lane count, the relay's `outbox.lanes`; a
//!   relay with another count still works, walking the `(xid, id)` index instead.
//! - `<table>_relayed` keeps the last relayed sequence of aggregates a relay lane stopped
//!   remembering (a lane remembers `outbox.aggregates_in_memory` of them): the relay writes it
//!   and reads it back when such an aggregate has a new row. One narrow row per forgotten
//!   aggregate; a row may be deleted once its aggregate will have no more events (should it
//!   have one after all, that event waits as a gap, reported, never skipped).
//! - A statement trigger `NOTIFY`s the table's channel ([`channel`]) when rows are
//!   inserted; PostgreSQL delivers it when the transaction commits, so relays listening
//!   look at once instead of at their next poll. A hint only: relays poll all the same.

use std::fmt;

/// A validated table name: `name` or `schema.name`, each part `[a-z_][a-z0-9_]*` and at most
/// 48 bytes (PostgreSQL truncates identifiers at 63; the index and trigger names add a suffix).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TableName(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("outbox table name `{0}` is not a plain identifier: use lower-case letters, digits and `_` (optionally `schema.table`), at most 48 characters each")]
pub struct InvalidTableName(pub String);

impl TableName {
    pub fn parse(name: &str) -> Result<Self, InvalidTableName> {
        let valid_part = |p: &str| {
            !p.is_empty()
                && p.len() <= 48
                && p.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                && p.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        };
        let parts: Vec<&str> = name.split('.').collect();
        if parts.len() <= 2 && parts.iter().all(|p| valid_part(p)) {
            Ok(Self(name.to_string()))
        } else {
            Err(InvalidTableName(name.to_string()))
        }
    }

    /// The name as written, safe to splice into SQL.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The table's own name, without its schema: the base of its index and trigger names.
    fn base(&self) -> &str {
        self.0.rsplit('.').next().unwrap_or(&self.0)
    }

    /// The table keeping forgotten aggregates' last relayed sequences.
    pub fn relayed(&self) -> String {
        format!("{}_relayed", self.0)
    }

    /// The channel relays of this table `LISTEN` on.
    pub fn channel(&self) -> String {
        format!("sluice_{}", self.base())
    }

    /// The schema prefix (`app.`), or nothing.
    fn schema_prefix(&self) -> &str {
        &self.0[..self.0.len() - self.base().len()]
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `CREATE … IF NOT EXISTS` statements for `table` relayed over `lanes` lanes: idempotent,
/// safe to run on every deploy.
pub fn create_statements(table: &TableName, lanes: u32) -> String {
    let t = table.as_str();
    let lane = crate::lanes::lane_of_row(lanes);
    let base = table.base();
    let schema = table.schema_prefix();
    let channel = table.channel();
    let relayed = table.relayed();
    format!(
        r#"-- The sluice outbox: insert one row per domain event in the transaction that changes
-- the aggregate; `sluice outbox relay` publishes it to Kafka exactly once.
CREATE TABLE IF NOT EXISTS {t} (
    -- Order of insertion within a transaction; assigned by PostgreSQL.
    id             bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The CloudEvents id (ce_id) and the event's `event_id`.
    event_id       uuid        NOT NULL DEFAULT gen_random_uuid() UNIQUE,
    -- What the event is about, e.g. 'order' / 'o-1001'; the Kafka key is aggregate_id.
    aggregate_type text        NOT NULL CHECK (aggregate_type <> ''),
    aggregate_id   text        NOT NULL CHECK (aggregate_id <> ''),
    -- 1, 2, 3, … per aggregate, no gaps: the aggregate's version after this event.
    sequence       bigint      NOT NULL CHECK (sequence > 0),
    -- A catalog event type, e.g. 'dev.sluice.events.commerce.OrderPlaced'.
    event_type     text        NOT NULL CHECK (event_type <> ''),
    -- The event as JSON, in the catalog schema's JSON form; event_id, occurred_at, source
    -- and subject are filled in from this row when absent.
    payload        jsonb       NOT NULL,
    -- String values only; `traceparent` continues the writer's trace.
    headers        jsonb       NOT NULL DEFAULT '{{}}'::jsonb CHECK (jsonb_typeof(headers) = 'object'),
    created_at     timestamptz NOT NULL DEFAULT now(),
    -- The inserting transaction; stamped by the trigger below, never by the writer.
    xid            xid8        NOT NULL DEFAULT pg_current_xact_id(),
    UNIQUE (aggregate_type, aggregate_id, sequence)
);
CREATE INDEX IF NOT EXISTS {base}_xid_id ON {t} (xid, id);
-- The last relayed sequence of each aggregate the relay no longer keeps in memory (written
-- and read by the relay only).
CREATE TABLE IF NOT EXISTS {relayed} (
    aggregate_type text   NOT NULL,
    aggregate_id   text   NOT NULL,
    sequence       bigint NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id)
);
-- The relay's lanes ({lanes}, `outbox.lanes`): each reads and deletes only its own rows.
CREATE INDEX IF NOT EXISTS {base}_lanes{lanes} ON {t} ({lane}, xid, id);
CREATE OR REPLACE FUNCTION {schema}{base}_stamp_xid() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.xid := pg_current_xact_id();
    RETURN NEW;
END
$$;
CREATE OR REPLACE TRIGGER {base}_stamp_xid BEFORE INSERT OR UPDATE ON {t}
    FOR EACH ROW EXECUTE FUNCTION {schema}{base}_stamp_xid();
-- Wakes listening relays when the inserting transaction commits (once per transaction:
-- PostgreSQL folds identical notifications); relays poll as well.
CREATE OR REPLACE FUNCTION {schema}{base}_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{channel}', '');
    RETURN NULL;
END
$$;
CREATE OR REPLACE TRIGGER {base}_notify AFTER INSERT ON {t}
    FOR EACH STATEMENT EXECUTE FUNCTION {schema}{base}_notify();
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_plain_identifiers() {
        for ok in ["sluice_outbox", "app.outbox_2", "_x"] {
            assert_eq!(TableName::parse(ok).unwrap().as_str(), ok);
        }
        for bad in [
            "",
            "Outbox",
            "a.b.c",
            "x;drop table y",
            "1abc",
            "a-b",
            "a.",
            &"x".repeat(49),
        ] {
            assert_eq!(
                TableName::parse(bad),
                Err(InvalidTableName(bad.to_string()))
            );
        }
    }

    #[test]
    fn statements_name_the_schema_qualified_table_and_its_parts() {
        let sql = create_statements(&TableName::parse("app.events_out").unwrap(), 8);
        assert!(sql.contains("CREATE TABLE IF NOT EXISTS app.events_out ("));
        assert!(sql
            .contains("CREATE INDEX IF NOT EXISTS events_out_xid_id ON app.events_out (xid, id);"));
        assert!(sql.contains("FUNCTION app.events_out_stamp_xid()"));
        assert!(sql.contains(
            "CREATE INDEX IF NOT EXISTS events_out_lanes8 ON app.events_out (((hashtextextended(aggregate_id, 0) & 9223372036854775807) % 8), xid, id);"
        ));
        assert!(sql.contains("DEFAULT '{}'::jsonb"));
        assert!(sql.contains("CREATE TABLE IF NOT EXISTS app.events_out_relayed ("));
        assert!(sql.contains("PERFORM pg_notify('sluice_events_out', '');"));
        assert!(sql.contains("AFTER INSERT ON app.events_out\n    FOR EACH STATEMENT EXECUTE FUNCTION app.events_out_notify();"));
    }
}
