//! [`OutboxWriter`]: a service's side of the outbox. It inserts one event in the caller's own
//! transaction (so the event exists exactly when the state change does), after checking the
//! payload against the catalog schema of its event type: a malformed event fails the
//! service's transaction now instead of reaching the relay's DLQ later.

use std::sync::Arc;

use sluice_schemas::json::{from_json, FieldError};
use sluice_schemas::metadata::now_ms;
use sluice_schemas::{Catalog, CatalogError};
use tokio_postgres::GenericClient;

use crate::ddl::TableName;
use crate::event::{envelope, Envelope, OutboxEvent};

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("`{0}` is not an event type of the catalog")]
    UnknownEventType(String),
    #[error("the event does not match {event_type} v{version}: {}", summary(.fields))]
    SchemaMismatch {
        event_type: String,
        version: u32,
        fields: Vec<FieldError>,
    },
    #[error("invalid outbox event: {0}")]
    Invalid(&'static str),
    #[error("inserting into the outbox: {0}")]
    Database(#[from] tokio_postgres::Error),
    #[cfg(feature = "sqlx")]
    #[error("inserting into the outbox: {0}")]
    Sqlx(#[from] sqlx::Error),
}

fn summary(fields: &[FieldError]) -> String {
    fields
        .iter()
        .map(|f| format!("{}: {}", f.field, f.message))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Writes events into an outbox table. Cheap to clone.
#[derive(Debug, Clone)]
pub struct OutboxWriter {
    catalog: Arc<Catalog>,
    table: TableName,
    insert: Arc<str>,
}

impl OutboxWriter {
    pub fn new(catalog: Arc<Catalog>, table: TableName) -> Self {
        let insert = format!(
            "INSERT INTO {table} (event_id, aggregate_type, aggregate_id, sequence, event_type, payload, headers) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)"
        );
        Self {
            catalog,
            table,
            insert: insert.into(),
        }
    }

    pub fn table(&self) -> &TableName {
        &self.table
    }

    /// Checks `event` against the catalog without writing it.
    pub fn check(&self, event: &OutboxEvent, event_id: uuid::Uuid) -> Result<(), WriteError> {
        if event.aggregate_type.is_empty() || event.aggregate_id.is_empty() {
            return Err(WriteError::Invalid(
                "aggregate_type and aggregate_id must not be empty",
            ));
        }
        if event.sequence < 1 {
            return Err(WriteError::Invalid("sequence starts at 1"));
        }
        let entry = self
            .catalog
            .latest(&event.event_type)
            .map_err(|e| match e {
                CatalogError::UnknownEventType(t) => WriteError::UnknownEventType(t),
                other => WriteError::UnknownEventType(format!("{} ({other})", event.event_type)),
            })?;
        let json = envelope(
            &event.payload,
            Envelope {
                event_id: &event_id.to_string(),
                occurred_at_ms: now_ms(),
                source: "sluice://outbox",
                subject: &event.aggregate_id,
            },
        );
        from_json(&json, &entry.schema).map_err(|fields| WriteError::SchemaMismatch {
            event_type: event.event_type.clone(),
            version: entry.version,
            fields,
        })?;
        Ok(())
    }

    /// Inserts `event` through `client`, normally the caller's open transaction, and returns
    /// its event id (a new UUIDv7, time-ordered). Nothing is written when the payload does
    /// not match its schema.
    pub async fn write(
        &self,
        client: &impl GenericClient,
        event: &OutboxEvent,
    ) -> Result<uuid::Uuid, WriteError> {
        let (event_id, headers) = self.prepare(event)?;
        client
            .execute(
                self.insert.as_ref(),
                &[
                    &event_id,
                    &event.aggregate_type,
                    &event.aggregate_id,
                    &event.sequence,
                    &event.event_type,
                    &event.payload,
                    &headers,
                ],
            )
            .await?;
        Ok(event_id)
    }

    /// [`write`](Self::write) for services on sqlx: `executor` is normally the caller's open
    /// transaction (`&mut *tx`). Same check, same row.
    #[cfg(feature = "sqlx")]
    pub async fn write_sqlx<'c, E>(
        &self,
        executor: E,
        event: &OutboxEvent,
    ) -> Result<uuid::Uuid, WriteError>
    where
        E: sqlx::Executor<'c, Database = sqlx::Postgres>,
    {
        let (event_id, headers) = self.prepare(event)?;
        sqlx::query(self.insert.as_ref())
            .bind(event_id)
            .bind(&event.aggregate_type)
            .bind(&event.aggregate_id)
            .bind(event.sequence)
            .bind(&event.event_type)
            .bind(&event.payload)
            .bind(headers)
            .execute(executor)
            .await?;
        Ok(event_id)
    }

    /// A new event id, once `event` passed [`check`](Self::check), and its headers as JSON.
    fn prepare(&self, event: &OutboxEvent) -> Result<(uuid::Uuid, serde_json::Value), WriteError> {
        let event_id = uuid::Uuid::now_v7();
        self.check(event, event_id)?;
        let headers = serde_json::to_value(&event.headers).unwrap_or_default();
        Ok((event_id, headers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer() -> OutboxWriter {
        OutboxWriter::new(
            Arc::new(Catalog::embedded().unwrap()),
            TableName::parse("sluice_outbox").unwrap(),
        )
    }

    fn order(payload: serde_json::Value) -> OutboxEvent {
        OutboxEvent {
            aggregate_type: "order".into(),
            aggregate_id: "o-1".into(),
            sequence: 1,
            event_type: "dev.sluice.events.commerce.OrderPlaced".into(),
            payload,
            headers: Default::default(),
        }
    }

    #[test]
    fn a_payload_is_checked_against_its_catalog_schema() {
        let w = writer();
        let good = order(serde_json::json!({
            "order_id": "o-1", "total": {"amount": "9.50", "currency": "EUR"},
            "line_items": [], "provider": "shop"
        }));
        w.check(&good, uuid::Uuid::now_v7()).unwrap();
        let bad = order(serde_json::json!({"order_id": 7, "provider": "shop"}));
        let err = w.check(&bad, uuid::Uuid::now_v7()).unwrap_err();
        assert!(matches!(err, WriteError::SchemaMismatch { .. }), "{err}");
        assert!(err.to_string().contains("order_id"), "{err}");
        let mut unknown = good.clone();
        unknown.event_type = "dev.sluice.events.commerce.Nope".into();
        assert!(matches!(
            w.check(&unknown, uuid::Uuid::now_v7()),
            Err(WriteError::UnknownEventType(_))
        ));
        let mut zero = good;
        zero.sequence = 0;
        assert!(matches!(
            w.check(&zero, uuid::Uuid::now_v7()),
            Err(WriteError::Invalid(_))
        ));
    }
}
