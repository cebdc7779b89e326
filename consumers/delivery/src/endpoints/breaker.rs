//! An endpoint's own circuit-breaker settings: each one optional, the outbound client's
//! default ([`BreakerConfig::default`]) where absent. Requests and the endpoints topic use
//! the same shape:
//!
//! ```json
//! {"consecutive_failures": 5, "failure_rate_percent": 50, "window": "1m",
//!  "min_requests": 20, "cool_down": "30s", "half_open_probes": 1, "close_after": 2}
//! ```
//!
//! Durations are kept as text in their canonical form (`120s` → `2m`), checked when
//! written, so a stored endpoint always converts.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sluice_runtime::outbound::BreakerConfig;
use sluice_topology::naming::{format_duration, parse_duration};

use super::model::{code, ValidationError};

/// The longest window or cool-down an endpoint may ask for.
pub const MAX_BREAKER_DURATION: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerSettings {
    /// Failures in a row that open the breaker (1..=1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_failures: Option<u32>,
    /// Share of failed attempts in the window, in percent (1..=100), that opens it...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_rate_percent: Option<u32>,
    /// ...over this much recent time...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    /// ...once the window holds this many attempts (1..=100000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_requests: Option<u32>,
    /// How long it stays open before a probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cool_down: Option<String>,
    /// Probes at once while half-open (1..=100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub half_open_probes: Option<u32>,
    /// Successful probes that close it (1..=100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub close_after: Option<u32>,
}

impl BreakerSettings {
    /// Checks every field, naming the first wrong one (`breaker.<field>`); durations come
    /// back in canonical form.
    pub fn checked(mut self) -> Result<Self, ValidationError> {
        let counts = [
            ("consecutive_failures", self.consecutive_failures, 1_000),
            ("failure_rate_percent", self.failure_rate_percent, 100),
            ("min_requests", self.min_requests, 100_000),
            ("half_open_probes", self.half_open_probes, 100),
            ("close_after", self.close_after, 100),
        ];
        for (field, value, max) in counts {
            if let Some(n) = value.filter(|n| !(1..=max).contains(n)) {
                return Err(invalid(field, format!("{n} is out of range: 1 to {max}")));
            }
        }
        self.window = canonical("window", self.window.as_deref())?;
        self.cool_down = canonical("cool_down", self.cool_down.as_deref())?;
        Ok(self)
    }

    /// The outbound client's breaker for these settings.
    pub fn config(&self) -> BreakerConfig {
        let mut c = BreakerConfig::default();
        let duration = |text: &Option<String>| text.as_deref().and_then(|t| parse_duration(t).ok());
        if let Some(n) = self.consecutive_failures {
            c.consecutive_failures = n;
        }
        if let Some(p) = self.failure_rate_percent {
            c.failure_rate = f64::from(p) / 100.0;
        }
        if let Some(d) = duration(&self.window) {
            c.window = d;
        }
        if let Some(n) = self.min_requests {
            c.min_requests = n;
        }
        if let Some(d) = duration(&self.cool_down) {
            c.cool_down = d;
        }
        if let Some(n) = self.half_open_probes {
            c.half_open_probes = n;
        }
        if let Some(n) = self.close_after {
            c.close_after = n;
        }
        c
    }
}

fn invalid(field: &str, message: String) -> ValidationError {
    ValidationError::new(format!("breaker.{field}"), code::BREAKER, message)
}

fn canonical(field: &str, text: Option<&str>) -> Result<Option<String>, ValidationError> {
    let Some(text) = text else { return Ok(None) };
    let d = parse_duration(text).map_err(|e| invalid(field, e))?;
    if d.is_zero() || d > MAX_BREAKER_DURATION {
        return Err(invalid(
            field,
            format!(
                "`{text}` is out of range: more than 0 s, at most {}",
                format_duration(MAX_BREAKER_DURATION)
            ),
        ));
    }
    Ok(Some(format_duration(d)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_settings_are_the_client_defaults_and_given_ones_win() {
        let (default, given) = (
            BreakerConfig::default(),
            BreakerSettings::default().config(),
        );
        assert_eq!(
            (given.consecutive_failures, given.cool_down, given.window),
            (
                default.consecutive_failures,
                default.cool_down,
                default.window
            )
        );
        let s: BreakerSettings = serde_json::from_value(serde_json::json!({
            "consecutive_failures": 2, "failure_rate_percent": 25, "window": "120s",
            "cool_down": "2s", "close_after": 1
        }))
        .unwrap();
        let s = s.checked().unwrap();
        assert_eq!(s.window.as_deref(), Some("2m"), "canonical");
        let c = s.config();
        assert_eq!(c.consecutive_failures, 2);
        assert_eq!(c.failure_rate, 0.25);
        assert_eq!(c.window, Duration::from_secs(120));
        assert_eq!(c.cool_down, Duration::from_secs(2));
        assert_eq!(c.close_after, 1);
        assert_eq!(c.min_requests, BreakerConfig::default().min_requests);
    }

    #[test]
    fn each_wrong_setting_is_named() {
        let check = |v: serde_json::Value| {
            serde_json::from_value::<BreakerSettings>(v)
                .unwrap()
                .checked()
                .unwrap_err()
        };
        let e = check(serde_json::json!({"consecutive_failures": 0}));
        assert_eq!(
            (e.field.as_str(), e.code),
            ("breaker.consecutive_failures", "invalid_breaker")
        );
        let e = check(serde_json::json!({"failure_rate_percent": 101}));
        assert_eq!(e.field, "breaker.failure_rate_percent");
        let e = check(serde_json::json!({"cool_down": "soon"}));
        assert_eq!(e.field, "breaker.cool_down");
        let e = check(serde_json::json!({"window": "2d"}));
        assert!(e.message.contains("at most 1d"), "{}", e.message);
        assert!(serde_json::from_value::<BreakerSettings>(serde_json::json!({"x": 1})).is_err());
    }
}
