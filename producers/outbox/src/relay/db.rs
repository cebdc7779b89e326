//! The relay's side of PostgreSQL: reading a lane's eligible rows, cleaning up relayed ones,
//! and the advisory locks that say which relay owns which lane.

use std::time::Duration;

use tokio_postgres::{Client, IsolationLevel, NoTls};

use crate::ddl::TableName;
use crate::event::{OutboxRow, Position};
use crate::lanes::{table_hash, LANE_OF_ROW};

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
    lanes: i64,
    app_name: String,
    read: String,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("table", &self.table).finish()
    }
}

/// The `application_name` relays of `table` connect with; counting them is how each relay
/// knows its fair share of lanes.
pub fn application_name(table: &TableName) -> String {
    format!("sluice-outbox-relay:{table}")
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
        let mut config: tokio_postgres::Config = dsn
            .parse()
            .map_err(|e: tokio_postgres::Error| DbError::Connect(format!("invalid DSN ({e})")))?;
        config.application_name(&app_name);
        config.connect_timeout(Duration::from_secs(5));
        let (client, connection) = config.connect(NoTls).await.map_err(|e| {
            // The error text of a failed connect names host and port, never the password.
            DbError::Connect(e.to_string())
        })?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "outbox database connection ended");
            }
        });
        let read = format!(
            "SELECT id, xid::text::bigint, event_id, aggregate_type, aggregate_id, sequence, event_type, \
                    payload, headers, (extract(epoch FROM created_at) * 1000)::bigint \
             FROM {table} \
             WHERE (xid, id) > ($1::bigint::text::xid8, $2) \
               AND xid < pg_snapshot_xmin(pg_current_snapshot()) \
               AND {LANE_OF_ROW} = $4 \
             ORDER BY xid, id LIMIT $5"
        );
        Ok(Self {
            client,
            table: table.clone(),
            lanes: lanes as i64,
            app_name,
            read,
        })
    }

    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Up to `limit` rows of `lane` after `after`, in `(xid, id)` order, of transactions that
    /// have all ended: below the snapshot's xmin, so no row before them can still appear.
    /// One repeatable-read snapshot serves both the xmin and the rows.
    pub async fn read_batch(
        &mut self,
        lane: u32,
        after: Position,
        limit: u32,
    ) -> Result<Vec<OutboxRow>, DbError> {
        let tx = self
            .client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(query("starting the read transaction"))?;
        let rows = tx
            .query(
                self.read.as_str(),
                &[
                    &after.xid,
                    &after.id,
                    &self.lanes,
                    &(lane as i64),
                    &(limit as i64),
                ],
            )
            .await
            .map_err(query("reading outbox rows"))?;
        tx.commit().await.map_err(query("ending the read"))?;
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
    /// are already recorded as such in Kafka. The lower bound keeps the index scan off the
    /// entries of rows deleted before (dead until vacuumed), which a backlog would otherwise
    /// walk again on every batch.
    pub async fn delete_between(
        &self,
        lane: u32,
        from: Position,
        through: Position,
    ) -> Result<u64, DbError> {
        let sql = format!(
            "DELETE FROM {} WHERE (xid, id) > ($5::bigint::text::xid8, $6) \
               AND (xid, id) <= ($1::bigint::text::xid8, $2) AND {LANE_OF_ROW} = $4",
            self.table
        );
        self.client
            .execute(
                sql.as_str(),
                &[
                    &through.xid,
                    &through.id,
                    &self.lanes,
                    &(lane as i64),
                    &from.xid,
                    &from.id,
                ],
            )
            .await
            .map_err(query("deleting relayed rows"))
    }

    /// How many rows of `lane` are after `watermark`, and the age in seconds of the oldest.
    pub async fn backlog(&self, lane: u32, watermark: Position) -> Result<(i64, i64), DbError> {
        let sql = format!(
            "SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at))::bigint, 0) \
             FROM {} WHERE (xid, id) > ($1::bigint::text::xid8, $2) AND {LANE_OF_ROW} = $4",
            self.table
        );
        let row = self
            .client
            .query_one(
                sql.as_str(),
                &[&watermark.xid, &watermark.id, &self.lanes, &(lane as i64)],
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
