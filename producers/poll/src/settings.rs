//! A polling source, ready to run: its spec from the topology with the URL parsed and the
//! credential read (once, at start) into a sensitive header value.

use base64::Engine;
use reqwest::header::{HeaderName, HeaderValue, AUTHORIZATION};
use reqwest::Url;
use sluice_topology::model::SourceSpec;
use sluice_topology::poll::{PollAuth, PollSpec};

/// Why a source cannot be polled as configured.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("sources[{index}] (source `{name}`) has no `poll:`")]
    NotPolled { index: usize, name: String },
    #[error("sources[{index}].poll.url (source `{name}`): {reason}")]
    Url {
        index: usize,
        name: String,
        reason: String,
    },
    #[error("sources[{index}].poll.auth (source `{name}`): {reason}")]
    Auth {
        index: usize,
        name: String,
        reason: String,
    },
}

/// One source's settings.
#[derive(Clone)]
pub struct Settings {
    pub source: String,
    pub raw_topic: String,
    pub spec: PollSpec,
    pub url: Url,
    /// The endpoint (and host budget) key: scheme, host and port.
    pub host_key: String,
    /// The credential's budget key, when it has one.
    pub credential_key: Option<String>,
    /// The auth header, marked sensitive (never printed by `Debug`).
    pub auth: Option<(HeaderName, HeaderValue)>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("source", &self.source)
            .field("url", &self.url.as_str())
            .field("credential", &self.credential_key)
            .finish()
    }
}

impl Settings {
    pub fn from_spec(index: usize, spec: &SourceSpec) -> Result<Self, SettingsError> {
        let name = spec.name.clone();
        let poll = spec.poll.clone().ok_or_else(|| SettingsError::NotPolled {
            index,
            name: name.clone(),
        })?;
        let url = Url::parse(&poll.url).map_err(|e| SettingsError::Url {
            index,
            name: name.clone(),
            reason: e.to_string(),
        })?;
        let auth = match &poll.auth {
            None => None,
            Some(a) => Some(auth_header(a).map_err(|reason| SettingsError::Auth {
                index,
                name: name.clone(),
                reason,
            })?),
        };
        Ok(Self {
            source: name,
            raw_topic: spec.raw_topic.clone(),
            host_key: origin(&url),
            credential_key: poll.auth.as_ref().map(PollAuth::budget_key),
            url,
            spec: poll,
            auth,
        })
    }

    /// Every key whose budget a request of this source spends.
    pub fn budget_keys(&self) -> Vec<&str> {
        std::iter::once(self.host_key.as_str())
            .chain(self.credential_key.as_deref())
            .collect()
    }
}

/// `scheme://host:port` of `url`: what "the same host" means for budgets and for `Link`.
pub fn origin(url: &Url) -> String {
    url.origin().ascii_serialization()
}

/// The credential as its header; errors name where the secret lives, never its value.
fn auth_header(auth: &PollAuth) -> Result<(HeaderName, HeaderValue), String> {
    let read = |s: &sluice_runtime::SecretRef| s.resolve().map_err(|e| e.to_string());
    let (name, value) = match auth {
        PollAuth::Bearer(s) => (AUTHORIZATION, format!("Bearer {}", read(s)?)),
        PollAuth::Basic { username, password } => {
            let pair = format!("{username}:{}", read(password)?);
            (
                AUTHORIZATION,
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                ),
            )
        }
        PollAuth::Header { name, value } => (
            HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("`{name}` is not a header name"))?,
            read(value)?,
        ),
    };
    let mut value = HeaderValue::from_str(&value)
        .map_err(|_| "the secret holds characters a header cannot carry".to_string())?;
    value.set_sensitive(true);
    Ok((name, value))
}
