//! Sending a delivery again (`sluice deliveries resend|recover`, and the same routes of the
//! endpoints API): the task is rebuilt from the event itself, read back at the position its
//! status record names, rather than from the tasks topic. Event topics are the durable
//! history, while a task may be long gone, and a delivery recorded `endpoint_disabled` never
//! had one. The task keeps the event's webhook-id, so receivers deduplicate it, and starts a
//! fresh schedule.

use sluice_runtime::kafka::KafkaClients;
use sluice_schemas::AvroCodec;
use sluice_stream::Output;

use crate::fanout::rebuild_task;
use crate::status::StatusRecord;

/// Why a delivery cannot be sent again.
#[derive(Debug, thiserror::Error)]
pub enum ResendError {
    #[error("the status of `{0}` does not say where the event was read (written by an older sluice); it cannot be resent")]
    NoPosition(String),
    #[error("reading event `{webhook_id}` back from {at}: {reason}")]
    Unreadable {
        webhook_id: String,
        at: String,
        reason: String,
    },
    #[error("rebuilding the delivery of `{webhook_id}`: {reason}")]
    Rebuild { webhook_id: String, reason: String },
    #[error("{at} holds event `{found}`, not `{wanted}`")]
    OtherEvent {
        at: String,
        found: String,
        wanted: String,
    },
}

/// Rebuilds tasks from their events.
#[derive(Debug, Clone)]
pub struct Resender {
    clients: KafkaClients,
    codec: AvroCodec,
    tasks_topic: String,
}

impl Resender {
    pub fn new(clients: KafkaClients, codec: AvroCodec, prefix: &str) -> Self {
        Self {
            clients,
            codec,
            tasks_topic: sluice_topology::naming::deliveries_topic(prefix),
        }
    }

    /// The task record that sends `status`'s delivery again, for the caller to write.
    pub async fn task(&self, status: &StatusRecord) -> Result<Output, ResendError> {
        let webhook_id = status.webhook_id.clone();
        let pos = status
            .event_position()
            .ok_or_else(|| ResendError::NoPosition(webhook_id.clone()))?;
        let at = format!("{}/{}@{}", pos.topic, pos.partition, pos.offset);
        let clients = self.clients.clone();
        let read = pos.clone();
        let event = tokio::task::spawn_blocking(move || {
            sluice_ops::dlq::fetch(&clients, &read.topic, read.partition, read.offset)
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()))
        .map_err(|reason| ResendError::Unreadable {
            webhook_id: webhook_id.clone(),
            at: at.clone(),
            reason,
        })?
        .0;
        let task = rebuild_task(&self.codec, &event, &status.endpoint_id)
            .await
            .map_err(|e| ResendError::Rebuild {
                webhook_id: webhook_id.clone(),
                reason: e.to_string(),
            })?;
        if task.webhook_id != webhook_id {
            return Err(ResendError::OtherEvent {
                at,
                found: task.webhook_id,
                wanted: webhook_id,
            });
        }
        Ok(task.output(&self.tasks_topic))
    }
}
