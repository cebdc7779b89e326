//! Checks of a saga step's `http:` call: its templates read, it names only earlier steps'
//! results, its statuses are statuses, and its URL's scheme and host never come from the
//! saga's data (a trigger field must not choose where sluice sends a request).

use crate::model::{HttpCallSpec, HttpMethod};
use crate::template::{Part, Placeholder, Template};

/// The header sluice sets on every call; a step may not set it itself.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Reports every problem of `call` through `err(field, problem)`; `steps` are the steps
/// whose results it may read.
pub(crate) fn http_call_problems(
    call: &HttpCallSpec,
    steps: &[&str],
    err: &mut dyn FnMut(&str, String),
) {
    let template = |field: &str, text: &str, err: &mut dyn FnMut(&str, String)| {
        read_template(field, text, steps, err)
    };
    if let Some(url) = template("url", &call.url, err) {
        if let Some(problem) = url_problem(&url) {
            err("url", problem);
        }
    }
    for (name, value) in &call.headers {
        if bad_header_name(name) {
            err("headers", format!("`{name}` is not a header name"));
        } else if name.eq_ignore_ascii_case(IDEMPOTENCY_KEY) {
            err(
                "headers",
                format!("`{name}` is set by sluice (the command id); remove it"),
            );
        }
        template(&format!("headers.{name}"), value, err);
    }
    if let Some(body) = &call.body {
        if matches!(call.method, HttpMethod::Get | HttpMethod::Delete) {
            err("body", format!("a {} has no body", call.method.as_str()));
        }
        walk_strings(body, &mut |s| {
            template("body", s, err);
        });
    }
    for (field, statuses) in [
        ("success.status", &call.success.status),
        ("permanent", &call.permanent),
        ("transient", &call.transient),
    ] {
        for s in statuses {
            if !(100..=599).contains(s) {
                err(field, format!("{s} is not an HTTP status"));
            }
        }
    }
    for s in &call.permanent {
        if call.transient.contains(s) {
            err("transient", format!("{s} is also listed as permanent"));
        }
        if call.success.status.contains(s) {
            err("permanent", format!("{s} is also a success status"));
        }
    }
    if call.success.equals.is_some() && call.success.field.is_none() {
        err(
            "success.equals",
            "needs `field`: the response field to compare".into(),
        );
    }
    if let Some(field) = &call.success.field {
        if field.split('.').any(str::is_empty) {
            err("success.field", format!("`{field}` is not a field path"));
        }
    }
    for (name, path) in &call.keep {
        if name.is_empty() || name.contains('.') || name.starts_with('_') {
            err(
                "keep",
                format!("`{name}` must be a plain name (no `.`, not starting with `_`, which sluice's own fields use)"),
            );
        }
        if path.split('.').any(str::is_empty) {
            err(
                &format!("keep.{name}"),
                format!("`{path}` is not a field path"),
            );
        }
    }
    if let Some(upstream) = &call.upstream {
        let ok = !upstream.is_empty()
            && upstream
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '_' | '-'));
        if !ok {
            err(
                "upstream",
                format!("`{upstream}` must be letters, digits, `.`, `:`, `_` or `-`"),
            );
        }
    }
}

/// `text` as a template, reporting a parse error or a result of a step not in `steps`.
fn read_template(
    field: &str,
    text: &str,
    steps: &[&str],
    err: &mut dyn FnMut(&str, String),
) -> Option<Template> {
    match Template::parse(text) {
        Ok(t) => {
            for p in t.placeholders() {
                if let Placeholder::Result { step, .. } = p {
                    if !steps.contains(&step.as_str()) {
                        err(
                            field,
                            format!(
                                "`{p}` reads step `{step}`, which has not completed by then (known: {})",
                                list(steps)
                            ),
                        );
                    }
                }
            }
            Some(t)
        }
        Err(e) => {
            err(field, e.to_string());
            None
        }
    }
}

/// The URL must start with its scheme written out, or with a setting/secret (a base URL
/// like `{env:PAYMENTS_URL}`); never with the saga's data.
fn url_problem(url: &Template) -> Option<String> {
    match url.parts().first() {
        None => Some("must not be empty".into()),
        Some(Part::Text(t)) if t.starts_with("http://") || t.starts_with("https://") => {
            let host = t.split_once("://").map_or("", |(_, rest)| rest);
            host.is_empty()
                .then(|| "the host must be written out or come from `{env:…}`/`{file:…}`".into())
        }
        Some(Part::Text(t)) => Some(format!(
            "`{t}…` must start with http:// or https:// (or a base URL from {{env:…}})"
        )),
        Some(Part::Value(p)) if p.is_secret() => None,
        Some(Part::Value(p)) => Some(format!(
            "the URL cannot start with `{p}`: the saga's data must not choose the host"
        )),
    }
}

/// RFC 9110 token characters.
fn bad_header_name(name: &str) -> bool {
    name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn walk_strings(value: &serde_json::Value, f: &mut dyn FnMut(&str)) {
    match value {
        serde_json::Value::String(s) => f(s),
        serde_json::Value::Array(items) => items.iter().for_each(|v| walk_strings(v, f)),
        serde_json::Value::Object(fields) => fields.values().for_each(|v| walk_strings(v, f)),
        _ => {}
    }
}

fn list(steps: &[&str]) -> String {
    if steps.is_empty() {
        "none".into()
    } else {
        steps.join(", ")
    }
}
