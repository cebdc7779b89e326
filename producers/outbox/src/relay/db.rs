//! The relay's side of PostgreSQL: reading a lane's eligible rows, cleaning up relayed ones,
//! and the advisory locks that say which relay owns which lane.

use std::time::Duration;

use tokio_postgres::{Client, NoTls, Statement};

use crate::ddl::TableName;
use crate::event::{AggregateKey, OutboxRow, Position};
use crate::lanes::{lane_of_row, table_hash};

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// Connection details are left out: the DSN holds the password.
    #[error("connecting to the outbox database: {0}")]
    Connect(String),
    #[error("{what}: {source}")]
    Query {
        what: &'static str,
        source: tokio_postgres::Error,
    },
}

fn query(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> DbError {
    move |source| DbError::Query { what, source }
}

/// One connection: the relay's lane locks live and die with it.
pub struct Db {
    client: Client,
    table: TableName,
    lanes: u32,
    app_name: String,
    /// Prepared once per session: each read and delete is then one round trip.
    read: Statement,
    delete: Statement,
    /// Prepared when first used: only a lane that forgets aggregates needs them, so a table
    /// created before `<table>_relayed` existed keeps working until then.
    lookup: tokio::sync::OnceCell<Statement>,
    record: tokio::sync::OnceCell<Statement>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("table", &self.table).finish()
    }
}

/// Waits for the table's notifications (see [`crate::ddl`]) on a session of its own and
/// calls `wake` for each, until the session ends; then returns why. The caller connects again:
/// notifications are a hint, polling stays the guarantee.
pub async fn listen(dsn: &str, table: &TableName, wake: impl Fn()) -> DbError {
    use futures::StreamExt;
    use tokio_postgres::AsyncMessage;
    let (client, mut connection) = match session(dsn, format!("sluice-outbox-listen:{table}")).await
    {
        Ok(c) => c,
        Err(e) => return e,
    };
    // The connection is driven here rather than spawned: its messages are the notifications.
    let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
    let statement = format!("LISTEN \"{}\"", table.channel());
    let listening = client.batch_execute(&statement);
    tokio::pin!(listening);
    let mut listened = false;
    loop {
        tokio::select! {
            done = &mut listening, if !listened => {
                listened = true;
                if let Err(e) = done {
                    return query("listening for new rows")(e);
                }
            }
            message = messages.next() => match message {
                Some(Ok(AsyncMessage::Notification(_))) => wake(),
                Some(Ok(_)) => {}
                Some(Err(e)) => return query("listening for new rows")(e),
                None => return DbError::Connect("the listening session ended".into()),
            },
        }
    }
}

/// A session named `app_name`, its connection for the caller to drive.
async fn session(
    dsn: &str,
    app_name: String,
) -> Result<
    (
        Client,
        tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>,
    ),
    DbError,
> {
    let mut config: tokio_postgres::Config = dsn
        .parse()
        .map_err(|e: tokio_postgres::Error| DbError::Connect(format!("invalid DSN ({e})")))?;
    config.application_name(app_name);
    config.connect_timeout(Duration::from_secs(5));
    // The error text of a failed connect names host and port, never the password.
    config
        .connect(NoTls)
        .await
        .map_err(|e| DbError::Connect(e.to_string()))
}

/// The `application_name` relays of `table` connect with; counting them is how each relay
/// knows its fair share of lanes.
pub fn application_name(table: &TableName) -> String {
    format!("sluice-outbox-relay:{table}")
}

/// The statement a lane reads its next rows with: `$1`, `$2` the position after which to
/// read (xid, id), `$3` the lane, `$4` how many rows at most.
///
/// One statement, so one snapshot serves both the xmin and the rows it returns
/// (`pg_current_snapshot()` is the statement's own snapshot). The cast xid is named apart: an
/// output column called `xid` would be what `ORDER BY xid` sorts on, a bigint no index is
/// ordered by, and PostgreSQL would read and sort the lane's whole backlog for every batch
/// instead of walking an index up to the limit.
pub fn read_sql(table: &TableName, lanes: u32) -> String {
    format!(
        "SELECT id, xid::text::bigint AS xid_number, event_id, aggregate_type, aggregate_id, sequence, event_type, \
                payload, headers, (extract(epoch FROM created_at) * 1000)::bigint \
         FROM {table} \
         WHERE (xid, id) > ($1::bigint::text::xid8, $2) \
           AND xid < pg_snapshot_xmin(pg_current_snapshot()) \
           AND {lane_of_row} = $3 \
         ORDER BY xid, id LIMIT $4",
        lane_of_row = lane_of_row(lanes)
    )
}

impl Db {
    /// The relay's session: it holds the lane locks, and relays count each other by it.
    pub async fn connect(dsn: &str, table: &TableName, lanes: u32) -> Result<Self, DbError> {
        Self::connect_as(dsn, table, lanes, application_name(table)).await
    }

    /// A lane's own session for its reads and deletes, so lanes do not queue behind each
    /// other's statements. Named apart from the relay's session, which alone counts as a relay.
    pub async fn connect_lane(dsn: &str, table: &TableName, lanes: u32) -> Result<Self, DbError> {
        Self::connect_as(dsn, table, lanes, format!("sluice-outbox-lane:{table}")).await
    }

    async fn connect_as(
        dsn: &str,
        table: &TableName,
        lanes: u32,
        app_name: String,
    ) -> Result<Self, DbError> {
        let (client, connection) = session(dsn, app_name.clone()).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "outbox database connection ended");
            }
        });
        let read = client
            .prepare(&read_sql(table, lanes))
            .await
            .map_err(query("preparing the read"))?;
        // The lower bound keeps the index scan off the entries of rows deleted before (dead
        // until vacuumed), which a backlog would otherwise walk again on every batch.
        let delete = client
            .prepare(&format!(
                "DELETE FROM {table} WHERE (xid, id) > ($4::bigint::text::xid8, $5) \
                   AND (xid, id) <= ($1::bigint::text::xid8, $2) AND {lane_of_row} = $3",
                lane_of_row = lane_of_row(lanes)
            ))
            .await
            .map_err(query("preparing the cleanup"))?;
        Ok(Self {
            client,
            table: table.clone(),
            lanes,
            app_name,
            read,
            delete,
            lookup: Default::default(),
            record: Default::default(),
        })
    }

    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Up to `limit` rows of `lane` after `after`, in `(xid, id)` order, of transactions that
    /// have all ended: below the snapshot's xmin, so no row before them can still appear.
    /// Takes `&self`, so a lane can read its next batch while its last one's cleanup runs.
    pub async fn read_batch(
        &self,
        lane: u32,
        after: Position,
        limit: u32,
    ) -> Result<Vec<OutboxRow>, DbError> {
        let rows = self
            .client
            .query(
                &self.read,
                &[&after.xid, &after.id, &(lane as i64), &(limit as i64)],
            )
            .await
            .map_err(query("reading outbox rows"))?;
        Ok(rows
            .iter()
            .map(|r| OutboxRow {
                position: Position {
                    id: r.get(0),
                    xid: r.get(1),
                },
                event_id: r.get(2),
                aggregate_type: r.get(3),
                aggregate_id: r.get(4),
                sequence: r.get(5),
                event_type: r.get(6),
                payload: r.get(7),
                headers: r.get(8),
                created_at_ms: r.get(9),
            })
            .collect())
    }

    /// Deletes `lane`'s rows after `from` and at or below `through`: cleanup only, relayed rows
    /// are already recorded as such in Kafka.
    pub async fn delete_between(
        &self,
        lane: u32,
        from: Position,
        through: Position,
    ) -> Result<u64, DbError> {
        self.client
            .execute(
                &self.delete,
                &[
                    &through.xid,
                    &through.id,
                    &(lane as i64),
                    &from.xid,
                    &from.id,
                ],
            )
            .await
            .map_err(query("deleting relayed rows"))
    }

    /// `cell`'s statement, prepared from `sql` when first needed.
    async fn prepared<'s>(
        &'s self,
        cell: &'s tokio::sync::OnceCell<Statement>,
        sql: impl FnOnce() -> String,
        what: &'static str,
    ) -> Result<&'s Statement, DbError> {
        cell.get_or_try_init(|| async {
            let sql = sql();
            self.client.prepare(&sql).await
        })
        .await
        .map_err(query(what))
    }

    /// The last relayed sequence of each of `keys` (0 for none): the larger of what
    /// `<table>_relayed` keeps and the highest sequence among the aggregate's rows at or below
    /// `watermark` (relayed, not deleted yet). A lane writes an aggregate there before it
    /// forgets it, so the first part alone is the answer; the second is a safety net that
    /// costs one index probe, and never answers too high (every row at or below the
    /// watermark was relayed).
    pub async fn relayed_sequences(
        &self,
        keys: &[AggregateKey],
        watermark: Position,
    ) -> Result<Vec<(AggregateKey, i64)>, DbError> {
        let lookup = self
            .prepared(
                &self.lookup,
                || format!(
                    "SELECT k.t, k.i, coalesce(greatest( \
                       (SELECT r.sequence FROM {relayed} r WHERE r.aggregate_type = k.t AND r.aggregate_id = k.i), \
                       (SELECT max(o.sequence) FROM {table} o WHERE o.aggregate_type = k.t AND o.aggregate_id = k.i \
                          AND (o.xid, o.id) <= ($3::bigint::text::xid8, $4))), 0) \
                     FROM unnest($1::text[], $2::text[]) AS k(t, i)",
                    relayed = self.table.relayed(),
                    table = self.table,
                ),
                "preparing the lookup of forgotten aggregates (`sluice outbox init --apply` \
                 creates the `<table>_relayed` table it reads)",
            )
            .await?;
        let (types, ids): (Vec<&str>, Vec<&str>) = keys
            .iter()
            .map(|k| (k.aggregate_type.as_str(), k.aggregate_id.as_str()))
            .unzip();
        let rows = self
            .client
            .query(lookup, &[&types, &ids, &watermark.xid, &watermark.id])
            .await
            .map_err(query("looking up forgotten aggregates"))?;
        Ok(rows
            .iter()
            .map(|r| {
                let key = AggregateKey {
                    aggregate_type: r.get(0),
                    aggregate_id: r.get(1),
                };
                (key, r.get(2))
            })
            .collect())
    }

    /// Keeps `entries` (aggregates and their last relayed sequences, committed to Kafka) in
    /// `<table>_relayed`, never lowering a sequence already there.
    pub async fn record_relayed(&self, entries: &[(AggregateKey, i64)]) -> Result<(), DbError> {
        let record = self
            .prepared(
                &self.record,
                || {
                    format!(
                        "INSERT INTO {relayed} AS r (aggregate_type, aggregate_id, sequence) \
                     SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[]) \
                     ON CONFLICT (aggregate_type, aggregate_id) \
                     DO UPDATE SET sequence = greatest(r.sequence, EXCLUDED.sequence)",
                        relayed = self.table.relayed(),
                    )
                },
                "preparing the record of forgotten aggregates (`sluice outbox init --apply` \
                 creates the `<table>_relayed` table it writes)",
            )
            .await?;
        // Once the lane forgets them, these rows are all that knows the sequences (their
        // state records are deleted next), so the commit waits for the WAL flush even where
        // the server's default does not.
        let what = "recording forgotten aggregates";
        self.client
            .batch_execute("BEGIN; SET LOCAL synchronous_commit = on")
            .await
            .map_err(query(what))?;
        let written = async {
            // In chunks, so no statement carries an unbounded array.
            for chunk in entries.chunks(10_000) {
                let types: Vec<&str> = chunk
                    .iter()
                    .map(|(k, _)| k.aggregate_type.as_str())
                    .collect();
                let ids: Vec<&str> = chunk.iter().map(|(k, _)| k.aggregate_id.as_str()).collect();
                let sequences: Vec<i64> = chunk.iter().map(|(_, s)| *s).collect();
                self.client
                    .execute(record, &[&types, &ids, &sequences])
                    .await?;
            }
            Ok(())
        }
        .await
        .map_err(query(what));
        let end = if written.is_ok() {
            "COMMIT"
        } else {
            "ROLLBACK"
        };
        let ended = self.client.batch_execute(end).await.map_err(query(what));
        written.and(ended)
    }

    /// How many rows of `lane` are after `watermark`, and the age in seconds of the oldest.
    pub async fn backlog(&self, lane: u32, watermark: Position) -> Result<(i64, i64), DbError> {
        let sql = format!(
            "SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at))::bigint, 0) \
             FROM {} WHERE (xid, id) > ($1::bigint::text::xid8, $2) AND {} = $3",
            self.table,
            lane_of_row(self.lanes),
        );
        let row = self
            .client
            .query_one(
                sql.as_str(),
                &[&watermark.xid, &watermark.id, &(lane as i64)],
            )
            .await
            .map_err(query("measuring the backlog"))?;
        Ok((row.get(0), row.get(1)))
    }

    /// Takes `lane` unless another relay holds it; never waits.
    pub async fn try_lock(&self, lane: u32) -> Result<bool, DbError> {
        let row = self
            .client
            .query_one(
                "SELECT pg_try_advisory_lock($1, $2)",
                &[&table_hash(self.table.as_str()), &(lane as i32)],
            )
            .await
            .map_err(query("claiming a lane"))?;
        Ok(row.get(0))
    }

    pub async fn unlock(&self, lane: u32) -> Result<(), DbError> {
        self.client
            .execute(
                "SELECT pg_advisory_unlock($1, $2)",
                &[&table_hash(self.table.as_str()), &(lane as i32)],
            )
            .await
            .map_err(query("releasing a lane"))?;
        Ok(())
    }

    /// Relays of this table connected right now, this one included.
    pub async fn live_relays(&self) -> Result<u32, DbError> {
        let row = self
            .client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                &[&self.app_name],
            )
            .await
            .map_err(query("counting relays"))?;
        Ok(row.get::<_, i64>(0).max(1) as u32)
    }
}
