//! The values a command offers an HTTP step's templates: the saga's data, earlier steps'
//! results, the ids, and secrets read when the call is made.

use serde_json::Value as Json;
use sluice_topology::template::{Part, Placeholder, Template};

use crate::messages::Command;

/// Why a template could not be filled in. Never carries a secret's value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("`{0}` is missing from the saga's data")]
    Missing(String),
    #[error("`{0}` is an object or a list; only text, numbers and booleans fit here")]
    NotScalar(String),
    #[error("secret `{0}` cannot be read")]
    Secret(String),
    #[error("the command's {0} is not JSON")]
    BadCommand(&'static str),
    #[error("the URL `{0}` is not a valid http(s) URL")]
    BadUrl(String),
    #[error("header `{0}`: the value is not a valid header value")]
    BadHeader(String),
}

/// One command's values.
#[derive(Debug)]
pub struct Values<'c> {
    data: Json,
    results: Json,
    command: &'c Command,
}

/// How a value is written where it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escape {
    /// As it is (headers, JSON strings).
    None,
    /// Percent-encoded, except for secrets and settings (a base URL).
    Url,
    /// Like [`Escape::Url`], but secrets shown as `[redacted]` (the URL that logs, reasons
    /// and `sluice saga show` print).
    UrlRedacted,
}

/// What a secret is shown as.
pub const REDACTED: &str = "[redacted]";

/// Everything but unreserved characters (RFC 3986) is encoded in a URL value.
const URL_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

impl<'c> Values<'c> {
    pub fn of(command: &'c Command) -> Result<Self, RenderError> {
        Ok(Self {
            data: serde_json::from_str(&command.data)
                .map_err(|_| RenderError::BadCommand("data"))?,
            results: serde_json::from_str(&command.results)
                .map_err(|_| RenderError::BadCommand("results"))?,
            command,
        })
    }

    /// The command's id: the call's `Idempotency-Key`.
    pub fn command_id(&self) -> &str {
        &self.command.command_id
    }

    /// The JSON value of a placeholder (a secret is read now).
    pub fn value(&self, p: &Placeholder) -> Result<Json, RenderError> {
        let missing = || RenderError::Missing(p.to_string());
        let at = |root: &Json, path: &[String]| {
            path.iter()
                .try_fold(root, |v, segment| v.get(segment))
                .filter(|v| !v.is_null())
                .cloned()
        };
        match p {
            Placeholder::Data(path) => at(&self.data, path).ok_or_else(missing),
            Placeholder::Result { step, path } => self
                .results
                .get(step)
                .and_then(|r| at(r, path))
                .ok_or_else(missing),
            Placeholder::SagaId => Ok(Json::String(self.command.saga_id.clone())),
            Placeholder::CommandId => Ok(Json::String(self.command.command_id.clone())),
            Placeholder::Secret(secret) => secret
                .resolve()
                .map(Json::String)
                .map_err(|_| RenderError::Secret(p.to_string())),
        }
    }

    /// The text of a placeholder, written for where it goes.
    pub fn text(&self, p: &Placeholder, escape: Escape) -> Result<String, RenderError> {
        if p.is_secret() && escape == Escape::UrlRedacted {
            return Ok(REDACTED.into());
        }
        let text = match self.value(p)? {
            Json::String(s) => s,
            v @ (Json::Number(_) | Json::Bool(_)) => v.to_string(),
            _ => return Err(RenderError::NotScalar(p.to_string())),
        };
        Ok(match escape {
            Escape::Url | Escape::UrlRedacted if !p.is_secret() => {
                percent_encoding::utf8_percent_encode(&text, URL_VALUE).to_string()
            }
            _ => text,
        })
    }

    /// `template` filled in.
    pub fn render(&self, template: &Template, escape: Escape) -> Result<String, RenderError> {
        template.render(|p| self.text(p, escape))
    }

    /// A JSON body template filled in: a string that is exactly one non-secret placeholder
    /// takes that value with its type; every other string is rendered as text.
    pub fn render_json(&self, body: &Json) -> Result<Json, RenderError> {
        Ok(match body {
            Json::String(s) => {
                // Validated when the topology was loaded.
                let t = Template::parse(s).map_err(|_| RenderError::BadCommand("body"))?;
                match t.parts() {
                    [Part::Value(p)] if !p.is_secret() => self.value(p)?,
                    _ => Json::String(self.render(&t, Escape::None)?),
                }
            }
            Json::Array(items) => Json::Array(
                items
                    .iter()
                    .map(|v| self.render_json(v))
                    .collect::<Result<_, _>>()?,
            ),
            Json::Object(fields) => Json::Object(
                fields
                    .iter()
                    .map(|(k, v)| Ok((k.clone(), self.render_json(v)?)))
                    .collect::<Result<_, RenderError>>()?,
            ),
            other => other.clone(),
        })
    }
}
