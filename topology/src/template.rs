//! The small template language of HTTP saga steps (`http:` in `topology.yaml`).
//!
//! A template is text with placeholders in braces:
//!
//! | placeholder | value |
//! |---|---|
//! | `{data.order_id}` | a field of the saga's trigger event (a dotted path) |
//! | `{results.charge-payment.id}` | a field of an earlier step's result |
//! | `{saga_id}`, `{command_id}` | the saga instance, the command (its idempotency key) |
//! | `{env:NAME}`, `{file:/path}` | a secret: never logged, shown as `[redacted]` |
//!
//! `{{` and `}}` are literal braces. There are no expressions, loops or escapes beyond that:
//! a template only ever copies values, so a hostile trigger field cannot change what is
//! called, only the value it fills in.

use std::fmt;
use std::path::PathBuf;

use sluice_runtime::SecretRef;

/// What a placeholder stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placeholder {
    /// A field of the trigger event, by path.
    Data(Vec<String>),
    /// A field of step `step`'s result, by path (empty: the whole result).
    Result {
        step: String,
        path: Vec<String>,
    },
    SagaId,
    CommandId,
    /// A secret read from the environment or a file when the call is made.
    Secret(SecretRef),
}

impl Placeholder {
    pub fn is_secret(&self) -> bool {
        matches!(self, Placeholder::Secret(_))
    }
}

impl fmt::Display for Placeholder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Placeholder::Data(path) => write!(f, "{{data.{}}}", path.join(".")),
            Placeholder::Result { step, path } if path.is_empty() => {
                write!(f, "{{results.{step}}}")
            }
            Placeholder::Result { step, path } => {
                write!(f, "{{results.{step}.{}}}", path.join("."))
            }
            Placeholder::SagaId => f.write_str("{saga_id}"),
            Placeholder::CommandId => f.write_str("{command_id}"),
            Placeholder::Secret(SecretRef::Env(name)) => write!(f, "{{env:{name}}}"),
            Placeholder::Secret(SecretRef::File(path)) => {
                write!(f, "{{file:{}}}", path.display())
            }
        }
    }
}

/// One piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Text(String),
    Value(Placeholder),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Template {
    parts: Vec<Part>,
}

/// A template could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("unclosed `{{` at byte {0} (write `{{{{` for a literal brace)")]
    Unclosed(usize),
    #[error("stray `}}` at byte {0} (write `}}}}` for a literal brace)")]
    Stray(usize),
    #[error("unknown placeholder `{{{0}}}`: use data.PATH, results.STEP.PATH, saga_id, command_id, env:NAME or file:PATH")]
    Unknown(String),
    #[error("placeholder `{{{0}}}` has an empty field name")]
    EmptySegment(String),
}

impl Template {
    /// Reads `text`.
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = text.char_indices().peekable();
        while let Some((at, c)) = rest.next() {
            match c {
                '{' if rest.peek().is_some_and(|(_, n)| *n == '{') => {
                    rest.next();
                    literal.push('{');
                }
                '}' if rest.peek().is_some_and(|(_, n)| *n == '}') => {
                    rest.next();
                    literal.push('}');
                }
                '}' => return Err(TemplateError::Stray(at)),
                '{' => {
                    let inner: String = rest
                        .by_ref()
                        .map(|(_, c)| c)
                        .take_while(|c| *c != '}')
                        .collect();
                    if !text[at..].contains('}') {
                        return Err(TemplateError::Unclosed(at));
                    }
                    if !literal.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut literal)));
                    }
                    parts.push(Part::Value(placeholder(inner.trim())?));
                }
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Text(literal));
        }
        Ok(Self { parts })
    }

    pub fn parts(&self) -> &[Part] {
        &self.parts
    }

    /// Every placeholder, in order.
    pub fn placeholders(&self) -> impl Iterator<Item = &Placeholder> {
        self.parts.iter().filter_map(|p| match p {
            Part::Value(v) => Some(v),
            Part::Text(_) => None,
        })
    }

    /// The placeholder when the template is exactly one (a JSON body value that keeps its
    /// type: a number stays a number).
    pub fn only_placeholder(&self) -> Option<&Placeholder> {
        match self.parts.as_slice() {
            [Part::Value(v)] => Some(v),
            _ => None,
        }
    }

    /// Whether any placeholder is a secret.
    pub fn has_secret(&self) -> bool {
        self.placeholders().any(Placeholder::is_secret)
    }

    /// Fills the placeholders in with `value`, which may fail (a missing field, an unset
    /// secret).
    pub fn render<E>(
        &self,
        mut value: impl FnMut(&Placeholder) -> Result<String, E>,
    ) -> Result<String, E> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Value(p) => out.push_str(&value(p)?),
            }
        }
        Ok(out)
    }
}

fn placeholder(inner: &str) -> Result<Placeholder, TemplateError> {
    let unknown = || TemplateError::Unknown(inner.to_string());
    let path = |rest: &str| -> Result<Vec<String>, TemplateError> {
        let segments: Vec<String> = rest.split('.').map(str::to_string).collect();
        if segments.iter().any(String::is_empty) {
            return Err(TemplateError::EmptySegment(inner.to_string()));
        }
        Ok(segments)
    };
    if let Some(name) = inner.strip_prefix("env:") {
        let name = name.trim();
        if name.is_empty() {
            return Err(TemplateError::EmptySegment(inner.to_string()));
        }
        return Ok(Placeholder::Secret(SecretRef::Env(name.to_string())));
    }
    if let Some(file) = inner.strip_prefix("file:") {
        let file = file.trim();
        if file.is_empty() {
            return Err(TemplateError::EmptySegment(inner.to_string()));
        }
        return Ok(Placeholder::Secret(SecretRef::File(PathBuf::from(file))));
    }
    match inner {
        "saga_id" => return Ok(Placeholder::SagaId),
        "command_id" => return Ok(Placeholder::CommandId),
        _ => {}
    }
    if let Some(rest) = inner.strip_prefix("data.") {
        return Ok(Placeholder::Data(path(rest)?));
    }
    if let Some(rest) = inner.strip_prefix("results.") {
        let mut segments = path(rest)?;
        let step = segments.remove(0);
        return Ok(Placeholder::Result {
            step,
            path: segments,
        });
    }
    Err(unknown())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_and_literal_text_are_read() {
        let t = Template::parse("{env:BASE}/v1/orders/{data.order.id}/x?k={{v}}").unwrap();
        assert_eq!(
            t.parts(),
            [
                Part::Value(Placeholder::Secret(SecretRef::Env("BASE".into()))),
                Part::Text("/v1/orders/".into()),
                Part::Value(Placeholder::Data(vec!["order".into(), "id".into()])),
                Part::Text("/x?k={v}".into()),
            ]
        );
        assert!(t.has_secret());
        let r = Template::parse("{results.charge-payment.payment_id}").unwrap();
        assert_eq!(
            r.only_placeholder(),
            Some(&Placeholder::Result {
                step: "charge-payment".into(),
                path: vec!["payment_id".into()]
            })
        );
        assert_eq!(
            Template::parse("{ command_id }")
                .unwrap()
                .only_placeholder(),
            Some(&Placeholder::CommandId)
        );
        let rendered = t
            .render(|p| {
                Ok::<_, ()>(if p.is_secret() {
                    "S".into()
                } else {
                    "7".into()
                })
            })
            .unwrap();
        assert_eq!(rendered, "S/v1/orders/7/x?k={v}");
    }

    #[test]
    fn bad_templates_say_what_is_wrong() {
        assert_eq!(
            Template::parse("a{data.x").unwrap_err(),
            TemplateError::Unclosed(1)
        );
        assert_eq!(Template::parse("a}b").unwrap_err(), TemplateError::Stray(1));
        assert!(matches!(
            Template::parse("{shell:rm}").unwrap_err(),
            TemplateError::Unknown(_)
        ));
        assert!(matches!(
            Template::parse("{data..x}").unwrap_err(),
            TemplateError::EmptySegment(_)
        ));
        assert!(matches!(
            Template::parse("{env:}").unwrap_err(),
            TemplateError::EmptySegment(_)
        ));
        let e = Template::parse("{nope}").unwrap_err().to_string();
        assert!(e.contains("`{nope}`"), "{e}");
    }
}
