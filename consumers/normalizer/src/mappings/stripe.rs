//! Stripe: the body is an Event envelope `{id, type, created, data: {object}}`.
//!
//! | `type` | event | key / subject |
//! |---|---|---|
//! | `payment_intent.succeeded` | `PaymentSucceeded` | payment intent id |
//! | `payment_intent.payment_failed` | `PaymentFailed` | payment intent id |
//! | `charge.refunded` | `PaymentRefunded` | payment intent id (the charge id when the charge has none) |
//! | `customer.subscription.created` / `.updated` / `.deleted` | `SubscriptionChanged` | subscription id |
//! | `invoice.paid` | `InvoicePaid` | invoice id |
//!
//! Any other `type` is [`MapError::Unmapped`]. `occurred_at` is the event's `created`
//! (seconds) in ms, or the delivery's `received_at` if the envelope has none. Amounts are
//! in minor units and converted with [`super::money::from_minor_units`] (Stripe's zero- and
//! three-decimal currencies). Expandable references (`customer`, `payment_intent`, …) are
//! read whether they arrive as an id or as an expanded object.
//!
//! Two API-version differences are handled: `current_period_start/end` moved from the
//! subscription to its items, and an invoice's `subscription` moved to
//! `parent.subscription_details.subscription` (API 2025-03-31); both places are read.

use serde_json::{json, Value as Json};

use super::generic::Fields;
use super::{parse_json, MapError, Mapped, RawDelivery};

pub const PAYMENT_SUCCEEDED: &str = "dev.sluice.events.payments.PaymentSucceeded";
pub const PAYMENT_FAILED: &str = "dev.sluice.events.payments.PaymentFailed";
pub const PAYMENT_REFUNDED: &str = "dev.sluice.events.payments.PaymentRefunded";
pub const SUBSCRIPTION_CHANGED: &str = "dev.sluice.events.payments.SubscriptionChanged";
pub const INVOICE_PAID: &str = "dev.sluice.events.payments.InvoicePaid";

const PROVIDER: &str = "stripe";
const OBJ: &str = "data.object";

/// Maps one Stripe event delivery.
pub fn map(delivery: &RawDelivery<'_>) -> Result<Vec<Mapped>, MapError> {
    let body = parse_json(delivery)?;
    let kind = match body.get("type") {
        Some(Json::String(t)) => t.as_str(),
        _ => {
            return Err(MapError::Invalid {
                provider: delivery.provider.to_string(),
                event_type: delivery.event_type.unwrap_or("unknown").to_string(),
                reason: "missing required field `type` (a string)".into(),
            })
        }
    };
    let f = Fields::new(&body, delivery.provider, kind);
    let occurred_at_ms = f
        .opt_secs_as_ms("created")?
        .unwrap_or(delivery.received_at_ms);
    let (event_type, key, fields) = match kind {
        "payment_intent.succeeded" => payment_succeeded(&f)?,
        "payment_intent.payment_failed" => payment_failed(&f)?,
        "charge.refunded" => charge_refunded(&f)?,
        "customer.subscription.created" => subscription_changed(&f, "created")?,
        "customer.subscription.updated" => subscription_changed(&f, "updated")?,
        "customer.subscription.deleted" => subscription_changed(&f, "deleted")?,
        "invoice.paid" => invoice_paid(&f)?,
        other => {
            return Err(MapError::Unmapped {
                provider: delivery.provider.to_string(),
                event_type: other.to_string(),
            })
        }
    };
    Ok(vec![Mapped {
        event_type,
        subject: Some(key.clone()),
        key,
        occurred_at_ms,
        fields,
    }])
}

type Out = (&'static str, String, Json);

fn p(field: &str) -> String {
    format!("{OBJ}.{field}")
}

fn payment_succeeded(f: &Fields<'_>) -> Result<Out, MapError> {
    let id = f.str(&p("id"))?.to_string();
    let amount_path = if f.get(&p("amount_received")).is_some() {
        p("amount_received")
    } else {
        p("amount")
    };
    let statement_descriptor = match f.opt_str(&p("statement_descriptor"))? {
        Some(s) => Some(s),
        None => f.opt_str(&p("latest_charge.calculated_statement_descriptor"))?,
    };
    let fields = json!({
        "payment_id": id,
        "customer_id": f.opt_ref(&p("customer"))?,
        "amount": f.money_minor(&amount_path, &p("currency"))?,
        "payment_method_type": payment_method_type(f)?,
        "description": f.opt_str(&p("description"))?,
        "provider": PROVIDER,
        "statement_descriptor": statement_descriptor,
    });
    Ok((PAYMENT_SUCCEEDED, id, fields))
}

/// The payment method actually used: the expanded `payment_method.type`, else the
/// expanded `latest_charge.payment_method_details.type`, else `payment_method_types[0]`
/// when it is the only allowed type. With several allowed types and nothing expanded the
/// webhook does not say which one paid, so it is left null rather than guessed.
fn payment_method_type(f: &Fields<'_>) -> Result<Option<String>, MapError> {
    if let Some(t) = f.opt_str(&p("payment_method.type"))? {
        return Ok(Some(t.to_string()));
    }
    if let Some(t) = f.opt_str(&p("latest_charge.payment_method_details.type"))? {
        return Ok(Some(t.to_string()));
    }
    let types = f.opt_array(&p("payment_method_types"))?;
    if types.len() == 1 {
        return Ok(f
            .opt_str(&p("payment_method_types[0]"))?
            .map(str::to_string));
    }
    Ok(None)
}

fn payment_failed(f: &Fields<'_>) -> Result<Out, MapError> {
    let id = f.str(&p("id"))?.to_string();
    let failure_code = match f.opt_str(&p("last_payment_error.code"))? {
        Some(c) => Some(c),
        None => f.opt_str(&p("last_payment_error.decline_code"))?,
    };
    let fields = json!({
        "payment_id": id,
        "customer_id": f.opt_ref(&p("customer"))?,
        "amount": f.money_minor(&p("amount"), &p("currency"))?,
        "failure_code": failure_code,
        "failure_message": f.opt_str(&p("last_payment_error.message"))?,
        "provider": PROVIDER,
    });
    Ok((PAYMENT_FAILED, id, fields))
}

fn charge_refunded(f: &Fields<'_>) -> Result<Out, MapError> {
    let charge_id = f.str(&p("id"))?.to_string();
    let payment_id = f
        .opt_ref(&p("payment_intent"))?
        .unwrap_or(charge_id.clone());
    // Stripe lists refunds newest first; the list is only present when expanded (or on
    // API versions before 2022-11-15).
    let fields = json!({
        "payment_id": payment_id,
        "refund_id": f.opt_str(&p("refunds.data[0].id"))?,
        "charge_id": charge_id,
        "amount_refunded": f.money_minor(&p("amount_refunded"), &p("currency"))?,
        "amount": f.money_minor(&p("amount"), &p("currency"))?,
        "reason": f.opt_str(&p("refunds.data[0].reason"))?,
        "provider": PROVIDER,
    });
    Ok((PAYMENT_REFUNDED, payment_id, fields))
}

fn subscription_changed(f: &Fields<'_>, change: &str) -> Result<Out, MapError> {
    let id = f.str(&p("id"))?.to_string();
    let item = p("items.data[0]");
    // Plan/price of the first item: the Price (current API), else the legacy Plan on the
    // item or on the subscription.
    let (plan_id, price) = if f.get(&format!("{item}.price")).is_some() {
        let price = format!("{item}.price");
        let money = match f.get(&format!("{price}.unit_amount")) {
            Some(_) => Some(f.money_minor(
                &format!("{price}.unit_amount"),
                &format!("{price}.currency"),
            )?),
            None => None,
        };
        (f.opt_str(&format!("{price}.id"))?, money)
    } else {
        let plan = if f.get(&format!("{item}.plan")).is_some() {
            format!("{item}.plan")
        } else {
            p("plan")
        };
        let money = match f.get(&format!("{plan}.amount")) {
            Some(_) => Some(f.money_minor(&format!("{plan}.amount"), &format!("{plan}.currency"))?),
            None => None,
        };
        (f.opt_str(&format!("{plan}.id"))?, money)
    };
    let period = |field: &str| -> Result<Option<i64>, MapError> {
        match f.opt_secs_as_ms(&p(field))? {
            Some(ms) => Ok(Some(ms)),
            None => f.opt_secs_as_ms(&format!("{item}.{field}")),
        }
    };
    let fields = json!({
        "subscription_id": id,
        "customer_id": f.reference(&p("customer"))?,
        "change": change,
        "status": f.str(&p("status"))?,
        "plan_id": plan_id,
        "price": price,
        "current_period_start": period("current_period_start")?,
        "current_period_end": period("current_period_end")?,
        "cancel_at_period_end": f.opt_bool(&p("cancel_at_period_end"))?.unwrap_or(false),
        "provider": PROVIDER,
    });
    Ok((SUBSCRIPTION_CHANGED, id, fields))
}

fn invoice_paid(f: &Fields<'_>) -> Result<Out, MapError> {
    let id = f.str(&p("id"))?.to_string();
    let subscription_id = match f.opt_ref(&p("subscription"))? {
        Some(s) => Some(s),
        None => f.opt_ref(&p("parent.subscription_details.subscription"))?,
    };
    let fields = json!({
        "invoice_id": id,
        "customer_id": f.opt_ref(&p("customer"))?,
        "subscription_id": subscription_id,
        "amount_paid": f.money_minor(&p("amount_paid"), &p("currency"))?,
        "provider": PROVIDER,
    });
    Ok((INVOICE_PAID, id, fields))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mappings::money::testing::{
        delivery, edited, invalid_reason, map_valid, RECEIVED_AT_MS,
    };

    macro_rules! fixture {
        ($name:literal) => {
            include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../tests/fixtures/webhooks/stripe/",
                $name
            ))
        };
    }
    const SUCCEEDED: &str = fixture!("payment_intent.succeeded.json");
    const FAILED: &str = fixture!("payment_intent.payment_failed.json");
    const REFUNDED: &str = fixture!("charge.refunded.json");
    const SUB_CREATED: &str = fixture!("customer.subscription.created.json");
    const SUB_UPDATED: &str = fixture!("customer.subscription.updated.json");
    const SUB_DELETED: &str = fixture!("customer.subscription.deleted.json");
    const INVOICE: &str = fixture!("invoice.paid.json");

    fn one(body: &[u8]) -> Mapped {
        let mut mapped = map_valid(map, &delivery("stripe", None, body));
        assert_eq!(mapped.len(), 1);
        mapped.remove(0)
    }

    #[test]
    fn payment_intent_succeeded() {
        let m = one(SUCCEEDED.as_bytes());
        assert_eq!(m.event_type, PAYMENT_SUCCEEDED);
        assert_eq!(m.key, "pi_1PgafyB7WZ01zgkWSjxsAJo3");
        assert_eq!(m.subject.as_deref(), Some("pi_1PgafyB7WZ01zgkWSjxsAJo3"));
        assert_eq!(m.occurred_at_ms, 1_721_950_000_000);
        assert_eq!(
            m.fields,
            json!({
                "payment_id": "pi_1PgafyB7WZ01zgkWSjxsAJo3",
                "customer_id": null,
                "amount": {"amount": "10.99", "currency": "USD"},
                "payment_method_type": "card",
                "description": null,
                "provider": "stripe",
                "statement_descriptor": null,
            })
        );
    }

    #[test]
    fn payment_succeeded_reads_expanded_objects_and_falls_back_to_amount() {
        let body = edited(SUCCEEDED, |j| {
            let o = &mut j["data"]["object"];
            o.as_object_mut().unwrap().remove("amount_received");
            o["amount"] = json!(2000);
            o["customer"] = json!({"id": "cus_X", "object": "customer"});
            o["payment_method_types"] = json!(["card", "link"]);
            o["latest_charge"] = json!({
                "id": "ch_1", "calculated_statement_descriptor": "SLUICE* ORDER",
                "payment_method_details": {"type": "link"}
            });
            o["description"] = json!("Order 1001");
        });
        let m = one(&body);
        assert_eq!(
            m.fields["amount"],
            json!({"amount": "20.00", "currency": "USD"})
        );
        assert_eq!(m.fields["customer_id"], "cus_X");
        assert_eq!(m.fields["payment_method_type"], "link");
        assert_eq!(m.fields["statement_descriptor"], "SLUICE* ORDER");
        assert_eq!(m.fields["description"], "Order 1001");

        // Several allowed types and nothing expanded: unknown, not guessed.
        let body = edited(SUCCEEDED, |j| {
            j["data"]["object"]["payment_method_types"] = json!(["card", "link"]);
        });
        assert_eq!(one(&body).fields["payment_method_type"], Json::Null);
    }

    #[test]
    fn zero_and_three_decimal_currencies() {
        let jpy = edited(SUCCEEDED, |j| {
            j["data"]["object"]["currency"] = json!("jpy");
            j["data"]["object"]["amount_received"] = json!(500);
        });
        assert_eq!(
            one(&jpy).fields["amount"],
            json!({"amount": "500", "currency": "JPY"})
        );
        let kwd = edited(SUCCEEDED, |j| {
            j["data"]["object"]["currency"] = json!("kwd");
            j["data"]["object"]["amount_received"] = json!(5120);
        });
        assert_eq!(
            one(&kwd).fields["amount"],
            json!({"amount": "5.120", "currency": "KWD"})
        );
    }

    #[test]
    fn payment_intent_payment_failed() {
        let m = one(FAILED.as_bytes());
        assert_eq!(m.event_type, PAYMENT_FAILED);
        assert_eq!(m.key, "pi_3PgbFAB7WZ01zgkW1a2b3c4d");
        assert_eq!(m.occurred_at_ms, 1_721_950_050_000);
        assert_eq!(
            m.fields,
            json!({
                "payment_id": "pi_3PgbFAB7WZ01zgkW1a2b3c4d",
                "customer_id": "cus_QXg1o8vcGmoR32",
                "amount": {"amount": "20.00", "currency": "EUR"},
                "failure_code": "card_declined",
                "failure_message": "Your card has insufficient funds.",
                "provider": "stripe",
            })
        );
        let only_decline_code = edited(FAILED, |j| {
            j["data"]["object"]["last_payment_error"]["code"] = Json::Null;
        });
        assert_eq!(
            one(&only_decline_code).fields["failure_code"],
            "insufficient_funds"
        );
    }

    #[test]
    fn charge_refunded() {
        let m = one(REFUNDED.as_bytes());
        assert_eq!(m.event_type, PAYMENT_REFUNDED);
        // The fixture's charge has no payment intent: the charge id stands in.
        assert_eq!(m.key, "ch_1PgafuB7WZ01zgkWXYmPNZs8");
        assert_eq!(m.occurred_at_ms, 1_721_950_100_000);
        assert_eq!(
            m.fields,
            json!({
                "payment_id": "ch_1PgafuB7WZ01zgkWXYmPNZs8",
                "refund_id": null,
                "charge_id": "ch_1PgafuB7WZ01zgkWXYmPNZs8",
                "amount_refunded": {"amount": "1.00", "currency": "USD"},
                "amount": {"amount": "1.00", "currency": "USD"},
                "reason": null,
                "provider": "stripe",
            })
        );
    }

    #[test]
    fn partial_refund_with_payment_intent_and_expanded_refunds() {
        let body = edited(REFUNDED, |j| {
            let o = &mut j["data"]["object"];
            o["payment_intent"] = json!("pi_1");
            o["amount"] = json!(10000);
            o["amount_refunded"] = json!(2500);
            o["currency"] = json!("bhd");
            o["refunds"]["data"] = json!([
                {"id": "re_2", "object": "refund", "reason": "requested_by_customer"},
                {"id": "re_1", "object": "refund", "reason": "duplicate"}
            ]);
        });
        let m = one(&body);
        assert_eq!(m.key, "pi_1");
        assert_eq!(m.fields["payment_id"], "pi_1");
        assert_eq!(m.fields["charge_id"], "ch_1PgafuB7WZ01zgkWXYmPNZs8");
        assert_eq!(m.fields["refund_id"], "re_2");
        assert_eq!(m.fields["reason"], "requested_by_customer");
        assert_eq!(
            m.fields["amount_refunded"],
            json!({"amount": "2.500", "currency": "BHD"})
        );
        assert_eq!(
            m.fields["amount"],
            json!({"amount": "10.000", "currency": "BHD"})
        );
    }

    #[test]
    fn subscription_created_updated_deleted() {
        for (body, change, status, created) in [
            (SUB_CREATED, "created", "incomplete", 1_721_950_150_000i64),
            (SUB_UPDATED, "updated", "active", 1_721_950_200_000),
            (SUB_DELETED, "deleted", "canceled", 1_721_950_300_000),
        ] {
            let m = one(body.as_bytes());
            assert_eq!(m.event_type, SUBSCRIPTION_CHANGED);
            assert_eq!(m.key, "sub_1Pgc6rB7WZ01zgkWNy0Cn5nw");
            assert_eq!(m.subject.as_deref(), Some("sub_1Pgc6rB7WZ01zgkWNy0Cn5nw"));
            assert_eq!(m.occurred_at_ms, created);
            assert_eq!(m.fields["change"], change);
            assert_eq!(m.fields["status"], status);
            assert_eq!(m.fields["customer_id"], "cus_QXg1o8vcGmoR32");
            assert_eq!(m.fields["plan_id"], "price_1PgafmB7WZ01zgkW6dKueIc5");
            assert_eq!(
                m.fields["price"],
                json!({"amount": "20.00", "currency": "USD"})
            );
            // This API version carries the period on the item.
            assert_eq!(m.fields["current_period_start"], 1_896_570_518_000i64);
            assert_eq!(m.fields["current_period_end"], 976_287_773_000i64);
        }
        assert_eq!(
            one(SUB_UPDATED.as_bytes()).fields["cancel_at_period_end"],
            true
        );
        assert_eq!(
            one(SUB_DELETED.as_bytes()).fields["cancel_at_period_end"],
            false
        );
    }

    #[test]
    fn subscription_with_top_level_period_and_legacy_plan() {
        let body = edited(SUB_UPDATED, |j| {
            let o = &mut j["data"]["object"];
            o["current_period_start"] = json!(1_721_950_000);
            o["current_period_end"] = json!(1_724_628_400);
            o["customer"] = json!({"id": "cus_expanded"});
            let item = &mut o["items"]["data"][0];
            item.as_object_mut().unwrap().remove("price");
            item["plan"] = json!({"id": "plan_gold", "amount": 150000, "currency": "jpy"});
        });
        let m = one(&body);
        assert_eq!(m.fields["current_period_start"], 1_721_950_000_000i64);
        assert_eq!(m.fields["current_period_end"], 1_724_628_400_000i64);
        assert_eq!(m.fields["customer_id"], "cus_expanded");
        assert_eq!(m.fields["plan_id"], "plan_gold");
        assert_eq!(
            m.fields["price"],
            json!({"amount": "150000", "currency": "JPY"})
        );

        // A tiered price has no unit amount: the price is unknown, not zero.
        let tiered = edited(SUB_UPDATED, |j| {
            j["data"]["object"]["items"]["data"][0]["price"]["unit_amount"] = Json::Null;
        });
        let m = one(&tiered);
        assert_eq!(m.fields["price"], Json::Null);
        assert_eq!(m.fields["plan_id"], "price_1PgafmB7WZ01zgkW6dKueIc5");
    }

    #[test]
    fn invoice_paid() {
        let m = one(INVOICE.as_bytes());
        assert_eq!(m.event_type, INVOICE_PAID);
        assert_eq!(m.key, "in_1PgcAcB7WZ01zgkWq9Tt2Xyz");
        assert_eq!(m.occurred_at_ms, 1_721_954_060_000);
        assert_eq!(
            m.fields,
            json!({
                "invoice_id": "in_1PgcAcB7WZ01zgkWq9Tt2Xyz",
                "customer_id": "cus_QXg1o8vcGmoR32",
                "subscription_id": "sub_1Pgc6rB7WZ01zgkWNy0Cn5nw",
                "amount_paid": {"amount": "20.00", "currency": "USD"},
                "provider": "stripe",
            })
        );
        // Before API 2025-03-31 the subscription sits on the invoice itself.
        let legacy = edited(INVOICE, |j| {
            let o = &mut j["data"]["object"];
            o["parent"] = Json::Null;
            o["subscription"] = json!("sub_legacy");
        });
        assert_eq!(one(&legacy).fields["subscription_id"], "sub_legacy");
    }

    #[test]
    fn other_event_types_are_unmapped() {
        let body = edited(SUCCEEDED, |j| j["type"] = json!("payment_intent.created"));
        assert_eq!(
            map(&delivery("stripe", None, &body)),
            Err(MapError::Unmapped {
                provider: "stripe".into(),
                event_type: "payment_intent.created".into()
            })
        );
    }

    #[test]
    fn non_json_is_invalid_json() {
        let err = map(&delivery("stripe", None, b"<html>")).unwrap_err();
        assert!(matches!(err, MapError::InvalidJson { .. }), "{err:?}");
        assert_eq!(err.class(), sluice_stream::ErrorClass::InvalidJson);
    }

    #[test]
    fn missing_required_fields_name_their_path() {
        let no_currency = edited(SUCCEEDED, |j| {
            j["data"]["object"]
                .as_object_mut()
                .unwrap()
                .remove("currency");
        });
        let reason = invalid_reason(map(&delivery("stripe", None, &no_currency)));
        assert!(reason.contains("`data.object.currency`"), "{reason}");

        let bad_currency = edited(FAILED, |j| j["data"]["object"]["currency"] = json!("euro"));
        let reason = invalid_reason(map(&delivery("stripe", None, &bad_currency)));
        assert!(reason.contains("`data.object.currency`"), "{reason}");

        let float_amount = edited(INVOICE, |j| {
            j["data"]["object"]["amount_paid"] = json!(20.5)
        });
        let reason = invalid_reason(map(&delivery("stripe", None, &float_amount)));
        assert!(
            reason.contains("`data.object.amount_paid` must be an integer"),
            "{reason}"
        );

        let no_customer = edited(SUB_UPDATED, |j| {
            j["data"]["object"]["customer"] = Json::Null
        });
        let reason = invalid_reason(map(&delivery("stripe", None, &no_customer)));
        assert!(reason.contains("`data.object.customer`"), "{reason}");

        let no_type = edited(SUCCEEDED, |j| {
            j.as_object_mut().unwrap().remove("type");
        });
        let reason = invalid_reason(map(&delivery("stripe", None, &no_type)));
        assert!(reason.contains("`type`"), "{reason}");
    }

    #[test]
    fn created_falls_back_to_received_at() {
        let body = edited(INVOICE, |j| {
            j.as_object_mut().unwrap().remove("created");
        });
        assert_eq!(one(&body).occurred_at_ms, RECEIVED_AT_MS);
    }
}
