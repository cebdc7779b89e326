//! `sluice endpoints add|list|show|update|disable|enable|rotate-secret|delete`: outbound
//! webhook endpoints, managed through a running gateway's `/v1/endpoints` API with a token
//! that has the `admin` scope.
//!
//! An answer the API refuses (4xx/5xx) ends the command with a non-zero exit and the API's
//! error code and message (and the fields it names).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use reqwest::Method;
use serde_json::{json, Map, Value};

use super::printable;

#[derive(Debug, Args)]
pub struct EndpointsArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(subcommand)]
    pub command: EndpointsCommand,
}

/// Where the gateway is and how to authenticate.
#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    /// Base URL of the gateway.
    #[arg(
        long,
        global = true,
        env = "SLUICE_GATEWAY_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub gateway: String,
    /// A gateway token with the `admin` scope.
    #[arg(
        long,
        global = true,
        env = "SLUICE_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum EndpointsCommand {
    /// Subscribe a URL to event types; prints the endpoint and its secret (shown once).
    Add(AddArgs),
    /// Every endpoint, one line each (`--json`: the API's answer).
    List {
        #[arg(long)]
        json: bool,
    },
    /// One endpoint, as JSON (secrets by fingerprint only).
    Show { id: String },
    /// Change the fields given; leaves the others as they are.
    Update(UpdateArgs),
    /// Stop deliveries to an endpoint.
    Disable { id: String },
    /// Resume deliveries to an endpoint.
    Enable { id: String },
    /// Add a new secret (printed once); the current ones keep signing for the grace period.
    RotateSecret {
        id: String,
        /// How long the current secrets keep signing (default 24h, at most 30d).
        #[arg(long)]
        grace_period: Option<String>,
    },
    /// Delete an endpoint.
    Delete { id: String },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum OrderingArg {
    Unordered,
    PerKey,
}

impl OrderingArg {
    fn api_name(self) -> &'static str {
        match self {
            Self::Unordered => "unordered",
            Self::PerKey => "per_key",
        }
    }
}

/// The fields `add` and `update` share.
#[derive(Debug, Args)]
pub struct EndpointFields {
    /// Event types: full names, or prefixes such as `dev.sluice.events.payments.*`
    /// (repeat the flag for several).
    #[arg(long = "event-type")]
    pub event_types: Vec<String>,
    /// A CloudEvents attribute filter: `source=VALUE` (equals) or `subject^=PREFIX`
    /// (prefix); repeat for several, all must hold.
    #[arg(long)]
    pub filter: Vec<String>,
    #[arg(long, value_enum)]
    pub ordering: Option<OrderingArg>,
    /// Most deliveries per second.
    #[arg(long)]
    pub rate_limit: Option<i64>,
    /// Most deliveries in flight at once.
    #[arg(long)]
    pub max_in_flight: Option<i64>,
    /// One of the endpoint's own circuit-breaker settings, `NAME=VALUE`; repeat for several
    /// (`consecutive_failures=3`, `cool_down=10s`; see `breaker` in the endpoints API).
    #[arg(long = "breaker", value_name = "NAME=VALUE")]
    pub breaker: Vec<String>,
    /// Delays between attempts, comma-separated: `5s,5m,2h`.
    #[arg(long, value_delimiter = ',')]
    pub retry_schedule: Vec<String>,
    #[arg(long)]
    pub description: Option<String>,
}

#[derive(Debug, Args)]
pub struct AddArgs {
    #[arg(long)]
    pub url: String,
    #[command(flatten)]
    pub fields: EndpointFields,
    /// Create it disabled.
    #[arg(long)]
    pub disabled: bool,
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    pub id: String,
    #[arg(long)]
    pub url: Option<String>,
    #[command(flatten)]
    pub fields: EndpointFields,
    /// Remove every filter.
    #[arg(long, conflicts_with = "filter")]
    pub clear_filter: bool,
    /// Remove the rate limit.
    #[arg(long, conflicts_with = "rate_limit")]
    pub no_rate_limit: bool,
}

pub async fn run(args: EndpointsArgs) -> anyhow::Result<ExitCode> {
    let api = Api::new(args.api)?;
    match args.command {
        EndpointsCommand::Add(a) => {
            let mut body = a.fields.body()?;
            body.insert("url".into(), a.url.into());
            if a.disabled {
                body.insert("enabled".into(), false.into());
            }
            let created = api
                .call(Method::POST, "", Some(Value::Object(body)))
                .await?;
            print_json(&created);
            eprintln!("the secret is shown this once: store it now");
        }
        EndpointsCommand::List { json } => {
            let list = api.call(Method::GET, "", None).await?;
            if json {
                print_json(&list);
            } else {
                print_list(&list);
            }
        }
        EndpointsCommand::Show { id } => {
            print_json(&api.call(Method::GET, &item(&id), None).await?);
        }
        EndpointsCommand::Update(u) => {
            let mut body = u.fields.body()?;
            if let Some(url) = u.url {
                body.insert("url".into(), url.into());
            }
            if u.clear_filter {
                body.insert("filter".into(), json!([]));
            }
            if u.no_rate_limit {
                body.insert("rate_limit_per_sec".into(), Value::Null);
            }
            if body.is_empty() {
                bail!("nothing to update: give at least one field to change");
            }
            let updated = api
                .call(Method::PATCH, &item(&u.id), Some(Value::Object(body)))
                .await?;
            print_json(&updated);
        }
        EndpointsCommand::Disable { id } => {
            let path = format!("{}/disable", item(&id));
            print_json(&api.call(Method::POST, &path, None).await?);
        }
        EndpointsCommand::Enable { id } => {
            let path = format!("{}/enable", item(&id));
            print_json(&api.call(Method::POST, &path, None).await?);
        }
        EndpointsCommand::RotateSecret { id, grace_period } => {
            let body = grace_period.map(|g| json!({ "grace_period": g }));
            let path = format!("{}/rotate-secret", item(&id));
            print_json(&api.call(Method::POST, &path, body).await?);
            eprintln!("the new secret is shown this once: store it now");
        }
        EndpointsCommand::Delete { id } => {
            api.call(Method::DELETE, &item(&id), None).await?;
            println!("deleted {}", printable::text(&id));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `consecutive_failures=3` → (`consecutive_failures`, 3); a value that is not a whole
/// number stays text (`cool_down=10s`). The API checks names and ranges.
fn parse_breaker_setting(setting: &str) -> anyhow::Result<(String, Value)> {
    let (name, value) = setting
        .split_once('=')
        .with_context(|| format!("--breaker `{setting}`: expected NAME=VALUE"))?;
    let value = match value.parse::<i64>() {
        Ok(n) => Value::from(n),
        Err(_) => Value::from(value),
    };
    Ok((name.trim().to_string(), value))
}

/// `/{id}`, with the id percent-encoded as one path segment.
fn item(id: &str) -> String {
    let mut url = reqwest::Url::parse("http://x/").expect("a base URL");
    url.path_segments_mut().expect("a base URL").push(id);
    url.path().to_string()
}

impl EndpointFields {
    /// The request fields these flags set.
    fn body(&self) -> anyhow::Result<Map<String, Value>> {
        let mut body = Map::new();
        if !self.event_types.is_empty() {
            body.insert("event_types".into(), json!(self.event_types));
        }
        if !self.filter.is_empty() {
            let filters = self
                .filter
                .iter()
                .map(|f| parse_filter(f))
                .collect::<anyhow::Result<Vec<_>>>()?;
            body.insert("filter".into(), Value::Array(filters));
        }
        if let Some(o) = self.ordering {
            body.insert("ordering".into(), o.api_name().into());
        }
        if let Some(n) = self.rate_limit {
            body.insert("rate_limit_per_sec".into(), n.into());
        }
        if let Some(n) = self.max_in_flight {
            body.insert("max_in_flight".into(), n.into());
        }
        if !self.breaker.is_empty() {
            let settings = self
                .breaker
                .iter()
                .map(|s| parse_breaker_setting(s))
                .collect::<anyhow::Result<Map<String, Value>>>()?;
            body.insert("breaker".into(), Value::Object(settings));
        }
        if !self.retry_schedule.is_empty() {
            body.insert("retry_schedule".into(), json!(self.retry_schedule));
        }
        if let Some(d) = &self.description {
            body.insert("description".into(), d.clone().into());
        }
        Ok(body)
    }
}

/// `source=VALUE` → equals, `subject^=PREFIX` → prefix.
fn parse_filter(text: &str) -> anyhow::Result<Value> {
    let (attribute, op, value) = if let Some((a, v)) = text.split_once("^=") {
        (a, "prefix", v)
    } else if let Some((a, v)) = text.split_once('=') {
        (a, "equals", v)
    } else {
        bail!("--filter `{text}`: write ATTRIBUTE=VALUE (equals) or ATTRIBUTE^=PREFIX (prefix)");
    };
    Ok(json!({"attribute": attribute.trim(), "op": op, "value": value}))
}

/// The gateway's endpoints API.
struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    fn new(args: ApiArgs) -> anyhow::Result<Self> {
        let Some(token) = args.token.filter(|t| !t.is_empty()) else {
            bail!("no admin token: pass --token or set SLUICE_ADMIN_TOKEN to a gateway token with the admin scope");
        };
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
            base: format!("{}/v1/endpoints", args.gateway.trim_end_matches('/')),
            token,
        })
    }

    /// Sends one request; the JSON answer on success (`null` for 204), an error naming the
    /// API's code and message otherwise.
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut req = self
            .http
            .request(method.clone(), &url)
            .bearer_auth(&self.token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("{method} {url}: the gateway did not answer"))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let json: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(json);
        }
        let error = &json["error"];
        let mut message = format!(
            "{method} {url}: {} {}: {}",
            status.as_u16(),
            error["code"].as_str().unwrap_or("unknown_error"),
            error["message"].as_str().unwrap_or(text.as_str()),
        );
        for f in error["fields"].as_array().into_iter().flatten() {
            message.push_str(&format!(
                "\n  {}: {}",
                f["field"].as_str().unwrap_or("?"),
                f["message"].as_str().unwrap_or("?")
            ));
        }
        bail!(message)
    }
}

fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("JSON prints")
    );
}

fn print_list(list: &Value) {
    let endpoints = list["data"].as_array().cloned().unwrap_or_default();
    for e in &endpoints {
        let types: Vec<&str> = e["event_types"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let state = if e["enabled"].as_bool() == Some(true) {
            "enabled"
        } else {
            "disabled"
        };
        println!(
            "{}  {state:<8}  {}  {}",
            printable::text(e["id"].as_str().unwrap_or("?")),
            printable::text(e["url"].as_str().unwrap_or("?")),
            printable::text(&types.join(",")),
        );
    }
    println!("{} endpoint(s)", endpoints.len());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_written_attribute_op_value() {
        assert_eq!(
            parse_filter("source=sluice://publishers/billing").unwrap(),
            json!({"attribute": "source", "op": "equals", "value": "sluice://publishers/billing"})
        );
        assert_eq!(
            parse_filter("subject^=pi_").unwrap(),
            json!({"attribute": "subject", "op": "prefix", "value": "pi_"})
        );
        assert!(parse_filter("source").is_err());
    }

    #[test]
    fn ids_are_one_encoded_path_segment() {
        assert_eq!(item("ep_0a"), "/ep_0a");
        assert_eq!(item("../x y"), "/..%2Fx%20y");
    }
}
