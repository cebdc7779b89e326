//! The event type an unsigned header claims, checked against the signed body.
//!
//! GitHub and Shopify sign the body only. Their event type arrives in a header
//! (`X-GitHub-Event`, `X-Shopify-Topic`) that anyone holding one captured delivery can
//! change: the same signed order body sent again as `orders/paid` would otherwise become a
//! forged `OrderPaid`. Where the body itself tells what happened, the claim must agree with
//! it; a delivery whose claim the body contradicts is dead-lettered as
//! `EventTypeMismatch`. What the body cannot tell (an order created already paid is a
//! valid `orders/paid` body too) stays a residual risk, documented in docs/faults.md.

use serde_json::Value as Json;

use super::MapError;

/// Checks a Shopify topic against the Order body it came with.
pub fn shopify(topic: &str, body: &Json) -> Result<(), MapError> {
    let mismatch = |reason: String| mismatch("shopify", topic, reason);
    let status = body.get("financial_status").and_then(Json::as_str);
    match topic {
        // Paid, or refunded since (a late delivery carries the order as it is now).
        "orders/paid" if !matches!(status, Some("paid" | "partially_refunded" | "refunded")) => {
            Err(mismatch(format!(
                "the order's financial_status is {}, not paid",
                shown(status)
            )))
        }
        "orders/cancelled" if body.get("cancelled_at").is_none_or(Json::is_null) => {
            Err(mismatch("the order has no cancelled_at".into()))
        }
        _ => Ok(()),
    }
}

/// Checks a GitHub event name against the shape of its body: each mapped event's payload
/// has its own top-level object (`pull_request`, `issue`, `pusher`).
pub fn github(event: &str, body: &Json) -> Result<(), MapError> {
    let has = |key: &str| body.get(key).is_some_and(|v| !v.is_null());
    let problem = match event {
        "push" if !(has("pusher") && has("ref")) => Some("a push payload has `pusher` and `ref`"),
        "pull_request" if !has("pull_request") => {
            Some("a pull_request payload has a `pull_request` object")
        }
        "issues" if !has("issue") || has("comment") => {
            Some("an issues payload has an `issue` object and no `comment`")
        }
        "ping" if !has("zen") => Some("a ping payload has `zen`"),
        _ => None,
    };
    match problem {
        Some(expected) => Err(mismatch(
            "github",
            event,
            format!("the body does not fit: {expected}"),
        )),
        None => Ok(()),
    }
}

fn mismatch(provider: &str, claimed: &str, reason: String) -> MapError {
    MapError::EventTypeMismatch {
        provider: provider.to_string(),
        claimed: claimed.to_string(),
        reason,
    }
}

fn shown(v: Option<&str>) -> String {
    v.map_or_else(|| "missing".to_string(), |s| format!("`{s}`"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_order_body_claimed_as_paid_must_be_paid() {
        let created = json!({"id": 1, "financial_status": "authorized", "cancelled_at": null});
        let err = shopify("orders/paid", &created).unwrap_err();
        assert_eq!(err.class(), sluice_stream::ErrorClass::EventTypeMismatch);
        assert!(err.to_string().contains("`authorized`, not paid"), "{err}");
        assert!(shopify("orders/create", &created).is_ok());
        assert!(shopify("orders/paid", &json!({"financial_status": "paid"})).is_ok());
        assert!(shopify("orders/paid", &json!({"id": 1})).is_err());
    }

    #[test]
    fn an_order_body_claimed_as_cancelled_must_have_cancelled_at() {
        let open = json!({"id": 1, "cancelled_at": null});
        assert!(shopify("orders/cancelled", &open).is_err());
        let cancelled = json!({"id": 1, "cancelled_at": "2008-01-10T12:30:00-05:00"});
        assert!(shopify("orders/cancelled", &cancelled).is_ok());
    }

    #[test]
    fn a_github_event_name_must_fit_the_body_s_shape() {
        let issue = json!({"action": "opened", "issue": {"number": 1}});
        let err = github("pull_request", &issue).unwrap_err();
        assert!(err.to_string().contains("pull_request"), "{err}");
        assert!(github("issues", &issue).is_ok());
        assert!(github("push", &issue).is_err());
        let comment = json!({"action": "created", "issue": {}, "comment": {}});
        assert!(github("issues", &comment).is_err());
        assert!(
            github("watch", &issue).is_ok(),
            "unmapped events are not judged"
        );
    }
}
