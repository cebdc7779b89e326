//! Client for a Confluent-compatible schema registry (Confluent Schema Registry, Apicurio's
//! `/apis/ccompat/v7`, Confluent Cloud).
//!
//! Registration and lookups go through `schema_registry_converter`; the config endpoints it
//! does not cover use the same base URL and credentials.

use schema_registry_converter::async_impl::schema_registry::{
    get_all_subjects, get_all_versions, get_schema_by_id, get_schema_by_subject_and_version,
    post_schema, SrSettings,
};
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::{
    RegisteredSchema, SchemaType, SuppliedSchema,
};
use sluice_runtime::config::{RegistryAuth, RegistryConfig};
use sluice_runtime::ConfigError;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("registry {url}: {message}")]
    Request {
        url: String,
        message: String,
        retriable: bool,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
}

impl RegistryError {
    /// Whether a retry may succeed (timeouts, 5xx), as opposed to a rejected request.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            RegistryError::Request {
                retriable: true,
                ..
            }
        )
    }
}

/// Whether a subject's latest version is the catalog's schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registration {
    /// Registered, and the latest version is this schema, with this global id.
    Current { id: u32 },
    /// Registered, but the latest version (this id) is another schema.
    OutOfDate { id: u32 },
    /// No such subject: `sluice schemas register` has not run.
    Missing,
}

/// A subject's latest registered version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatestSchema {
    pub id: u32,
    pub version: u32,
    pub schema: String,
}

#[derive(Clone)]
pub struct RegistryClient {
    url: String,
    settings: SrSettings,
    http: reqwest::Client,
    auth: Option<(String, Option<String>)>,
    bearer: Option<String>,
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient")
            .field("url", &self.url)
            .finish()
    }
}

impl RegistryClient {
    pub fn new(config: &RegistryConfig) -> Result<Self, RegistryError> {
        let url = config.url.trim_end_matches('/').to_string();
        let timeout = std::time::Duration::from_millis(config.timeout_ms);
        let mut builder = SrSettings::new_builder(url.clone());
        builder.set_timeout(timeout);
        let (mut auth, mut bearer) = (None, None);
        match &config.auth {
            Some(RegistryAuth::Basic { username, password }) => {
                let password = password.resolve()?;
                builder.set_basic_authorization(username, Some(&password));
                auth = Some((username.clone(), Some(password)));
            }
            Some(RegistryAuth::Bearer { token }) => {
                let token = token.resolve()?;
                builder.set_token_authorization(&token);
                bearer = Some(token);
            }
            None => {}
        }
        let settings = builder.build().map_err(|e| request_error(&url, e))?;
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| RegistryError::Request {
                url: url.clone(),
                message: e.to_string(),
                retriable: false,
            })?;
        Ok(Self {
            url,
            settings,
            http,
            auth,
            bearer,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Registers an Avro schema under `subject` (or finds it when already registered) and
    /// returns its global id.
    pub async fn register(&self, subject: &str, schema_json: &str) -> Result<u32, RegistryError> {
        let supplied = SuppliedSchema::new(None, SchemaType::Avro, schema_json.to_string());
        post_schema(&self.settings, subject.to_string(), supplied)
            .await
            .map(|r| r.id)
            .map_err(|e| request_error(&self.url, e))
    }

    pub async fn schema_by_id(&self, id: u32) -> Result<RegisteredSchema, RegistryError> {
        get_schema_by_id(id, &self.settings)
            .await
            .map_err(|e| request_error(&self.url, e))
    }

    pub async fn subjects(&self) -> Result<Vec<String>, RegistryError> {
        get_all_subjects(&self.settings)
            .await
            .map_err(|e| request_error(&self.url, e))
    }

    pub async fn versions(&self, subject: &str) -> Result<Vec<u32>, RegistryError> {
        get_all_versions(&self.settings, subject.to_string())
            .await
            .map_err(|e| request_error(&self.url, e))
    }

    /// A subject's schema at `version`, or its latest when `None`.
    pub async fn schema_by_subject(
        &self,
        subject: &str,
        version: Option<u32>,
    ) -> Result<RegisteredSchema, RegistryError> {
        get_schema_by_subject_and_version(&self.settings, subject, version)
            .await
            .map_err(|e| request_error(&self.url, e))
    }

    /// The latest schema registered under `subject`, or `None` when the subject does not
    /// exist. Asks for the subject directly rather than scanning `/subjects`, which some
    /// registries cap (Apicurio lists at most `apicurio.ccompat.max-subjects`, 1,000 by
    /// default).
    pub async fn latest(&self, subject: &str) -> Result<Option<LatestSchema>, RegistryError> {
        let path = format!("/subjects/{subject}/versions/latest");
        match self.get_json(&path).await {
            Ok(body) => {
                let id = body["id"].as_u64().and_then(|i| u32::try_from(i).ok());
                let schema = body["schema"].as_str();
                match (id, schema) {
                    (Some(id), Some(schema)) => Ok(Some(LatestSchema {
                        id,
                        version: body["version"].as_u64().unwrap_or(0) as u32,
                        schema: schema.to_string(),
                    })),
                    _ => Err(RegistryError::Request {
                        url: format!("{}{path}", self.url),
                        message: format!("no id or schema in {body}"),
                        retriable: false,
                    }),
                }
            }
            Err(RegistryError::Request { message, .. }) if message.starts_with("HTTP 404") => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// How `subject`'s latest registered schema compares with `schema` (a catalog entry):
    /// the check every writer makes at start-up, since schemas are registered at deploy
    /// time and never on the hot path. A registered schema that does not parse counts as
    /// different.
    pub async fn registration_of(
        &self,
        subject: &str,
        schema: &apache_avro::Schema,
    ) -> Result<Registration, RegistryError> {
        Ok(match self.latest(subject).await? {
            None => Registration::Missing,
            Some(latest) => {
                let same = apache_avro::Schema::parse_str(&latest.schema)
                    .is_ok_and(|s| s.canonical_form() == schema.canonical_form());
                if same {
                    Registration::Current { id: latest.id }
                } else {
                    Registration::OutOfDate { id: latest.id }
                }
            }
        })
    }

    /// Asks the registry whether `schema_json` may be registered under `subject` (against the
    /// versions its compatibility mode names). A subject with no versions accepts anything.
    pub async fn is_compatible(
        &self,
        subject: &str,
        schema_json: &str,
    ) -> Result<bool, RegistryError> {
        let path = format!("/compatibility/subjects/{subject}/versions/latest");
        let req = self
            .http
            .post(format!("{}{path}", self.url))
            .header("Content-Type", "application/vnd.schemaregistry.v1+json")
            .json(&serde_json::json!({ "schema": schema_json }));
        match self.send(req, &path).await {
            Ok(resp) => {
                let body: serde_json::Value =
                    resp.json().await.map_err(|e| RegistryError::Request {
                        url: format!("{}{path}", self.url),
                        message: format!("invalid JSON: {e}"),
                        retriable: false,
                    })?;
                Ok(body["is_compatible"].as_bool().unwrap_or(false))
            }
            Err(RegistryError::Request { message, .. }) if message.starts_with("HTTP 404") => {
                Ok(true)
            }
            Err(e) => Err(e),
        }
    }

    /// The compatibility level of `subject`, or the global one when `None`.
    pub async fn compatibility(&self, subject: Option<&str>) -> Result<String, RegistryError> {
        let path = match subject {
            Some(s) => format!("/config/{s}"),
            None => "/config".to_string(),
        };
        let body: serde_json::Value = self.get_json(&path).await?;
        body.get("compatibilityLevel")
            .or_else(|| body.get("compatibility"))
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .ok_or_else(|| RegistryError::Request {
                url: format!("{}{path}", self.url),
                message: format!("no compatibility level in {body}"),
                retriable: false,
            })
    }

    /// Sets the compatibility level of `subject`, or the global one when `None`.
    pub async fn set_compatibility(
        &self,
        subject: Option<&str>,
        level: &str,
    ) -> Result<(), RegistryError> {
        let path = match subject {
            Some(s) => format!("/config/{s}"),
            None => "/config".to_string(),
        };
        let req = self
            .http
            .put(format!("{}{path}", self.url))
            .header("Content-Type", "application/vnd.schemaregistry.v1+json")
            .json(&serde_json::json!({ "compatibility": level }));
        self.send(req, &path).await.map(|_| ())
    }

    async fn get_json(&self, path: &str) -> Result<serde_json::Value, RegistryError> {
        let req = self.http.get(format!("{}{path}", self.url));
        let resp = self.send(req, path).await?;
        resp.json().await.map_err(|e| RegistryError::Request {
            url: format!("{}{path}", self.url),
            message: format!("invalid JSON: {e}"),
            retriable: false,
        })
    }

    async fn send(
        &self,
        mut req: reqwest::RequestBuilder,
        path: &str,
    ) -> Result<reqwest::Response, RegistryError> {
        if let Some((user, password)) = &self.auth {
            req = req.basic_auth(user, password.as_ref());
        }
        if let Some(token) = &self.bearer {
            req = req.bearer_auth(token);
        }
        let url = format!("{}{path}", self.url);
        let resp = send_with_retries(req)
            .await
            .map_err(|e| RegistryError::Request {
                url: url.clone(),
                message: sluice_runtime::causes::with_causes(&e),
                retriable: true,
            })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = resp.text().await.unwrap_or_default();
        Err(RegistryError::Request {
            url,
            message: format!("HTTP {status}: {body}"),
            retriable: status.is_server_error(),
        })
    }
}

/// Tries sent through [`RegistryClient::send`] (all idempotent: reads, compatibility checks,
/// setting a subject's compatibility) when the request could not be sent or timed out.
const SEND_TRIES: u32 = 3;

/// Sends `req`, again after 250 ms and 1 s when it could not be sent or its answer did not
/// come in time: a registry busy with garbage collection, or a pooled connection the
/// registry closed as it was reused, costs a retry instead of a failed command.
async fn send_with_retries(
    req: reqwest::RequestBuilder,
) -> Result<reqwest::Response, reqwest::Error> {
    let mut backoff = std::time::Duration::from_millis(250);
    for _ in 1..SEND_TRIES {
        let Some(again) = req.try_clone() else {
            break; // a streamed body: one try only
        };
        match again.send().await {
            Err(e) if e.is_connect() || e.is_timeout() || e.is_request() => {
                tracing::debug!(error = %sluice_runtime::causes::with_causes(&e), "registry request failed; trying again");
                tokio::time::sleep(backoff).await;
                backoff *= 4;
            }
            other => return other,
        }
    }
    req.send().await
}

fn request_error(url: &str, e: SRCError) -> RegistryError {
    RegistryError::Request {
        url: url.to_string(),
        message: match &e.cause {
            Some(cause) => format!("{}: {cause}", e.error),
            None => e.error.clone(),
        },
        retriable: e.retriable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn client(url: &str) -> RegistryClient {
        RegistryClient::new(&RegistryConfig {
            url: url.into(),
            timeout_ms: 2_000,
            ..RegistryConfig::default()
        })
        .unwrap()
    }

    /// A registry that drops the first connection without answering and answers the second.
    #[tokio::test]
    async fn a_dropped_connection_is_tried_again() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let (first, _) = listener.accept().await.unwrap();
            drop(first);
            let (mut second, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = second.read(&mut buf).await.unwrap();
            let body = r#"{"compatibilityLevel":"BACKWARD"}"#;
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            second.write_all(answer.as_bytes()).await.unwrap();
        });
        let level = client(&url).compatibility(Some("s")).await.unwrap();
        assert_eq!(level, "BACKWARD");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn an_unreachable_registry_is_reported_with_the_cause() {
        // Bound and closed again: nothing listens on the port.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let err = client(&format!("http://127.0.0.1:{port}"))
            .set_compatibility(Some("s"), "BACKWARD")
            .await
            .unwrap_err();
        let RegistryError::Request {
            message, retriable, ..
        } = &err
        else {
            panic!("{err:?}");
        };
        assert!(retriable);
        assert!(message.contains("onnection refused"), "{message}");
    }
}
