//! Shopify: the topic is the `X-Shopify-Topic` header (the delivery's `event_type`); the
//! body is the Order object itself, unwrapped.
//!
//! | topic | event | `occurred_at` |
//! |---|---|---|
//! | `orders/create` | `OrderPlaced` | `created_at` |
//! | `orders/paid` | `OrderPaid` | `updated_at` |
//! | `orders/cancelled` | `OrderCancelled` | `cancelled_at` |
//!
//! falling back to `updated_at`, then to the delivery's `received_at`. Other topics are
//! [`MapError::Unmapped`]. Key and subject are the order id (numeric, as a string).
//!
//! Money comes as decimal strings in the shop currency (`total_price` with `currency`,
//! line `price`), kept exactly via [`super::money::from_decimal_string`].

use serde_json::{json, Value as Json};

use super::generic::Fields;
use super::{parse_json, MapError, Mapped, RawDelivery};

pub const ORDER_PLACED: &str = "dev.sluice.events.commerce.OrderPlaced";
pub const ORDER_PAID: &str = "dev.sluice.events.commerce.OrderPaid";
pub const ORDER_CANCELLED: &str = "dev.sluice.events.commerce.OrderCancelled";

const PROVIDER: &str = "shopify";

/// Maps one Shopify delivery.
pub fn map(delivery: &RawDelivery<'_>) -> Result<Vec<Mapped>, MapError> {
    let body = parse_json(delivery)?;
    let Some(topic) = delivery.event_type else {
        return Err(MapError::Invalid {
            provider: delivery.provider.to_string(),
            event_type: "unknown".into(),
            reason: "no topic (the X-Shopify-Topic header) on the delivery".into(),
        });
    };
    let (event_type, time_field) = match topic {
        "orders/create" => (ORDER_PLACED, "created_at"),
        "orders/paid" => (ORDER_PAID, "updated_at"),
        "orders/cancelled" => (ORDER_CANCELLED, "cancelled_at"),
        other => {
            return Err(MapError::Unmapped {
                provider: delivery.provider.to_string(),
                event_type: other.to_string(),
            })
        }
    };
    if !body.is_object() {
        return Err(MapError::InvalidJson {
            provider: delivery.provider.to_string(),
            reason: "expected an Order object".into(),
        });
    }
    // The topic is an unsigned header: the body must agree with it.
    super::claims::shopify(topic, &body)?;
    let f = Fields::new(&body, delivery.provider, topic);
    let order_id = f.id("id")?;
    let order_number = match f.opt_str("name")? {
        Some(n) => Some(n.to_string()),
        None => f.opt_id("order_number")?,
    };
    let total = f.money_decimal("total_price", "currency")?;
    let fields = match event_type {
        ORDER_PLACED => json!({
            "order_id": order_id,
            "order_number": order_number,
            "customer_id": f.opt_id("customer.id")?,
            "customer_email": customer_email(&f)?,
            "total": total,
            "line_items": line_items(&f)?,
            "provider": PROVIDER,
        }),
        ORDER_PAID => json!({
            "order_id": order_id,
            "order_number": order_number,
            "total": total,
            "provider": PROVIDER,
        }),
        _ => json!({
            "order_id": order_id,
            "order_number": order_number,
            "reason": f.opt_str("cancel_reason")?,
            "total": total,
            "provider": PROVIDER,
        }),
    };
    let occurred_at_ms = match f.opt_rfc3339_ms(time_field)? {
        Some(ms) => ms,
        None => f
            .opt_rfc3339_ms("updated_at")?
            .unwrap_or(delivery.received_at_ms),
    };
    Ok(vec![Mapped {
        event_type,
        subject: Some(order_id.clone()),
        key: order_id,
        occurred_at_ms,
        fields,
    }])
}

/// The order's `email`, else `contact_email`, else the customer's.
fn customer_email(f: &Fields<'_>) -> Result<Option<String>, MapError> {
    for path in ["email", "contact_email", "customer.email"] {
        if let Some(e) = f.opt_str(path)?.filter(|e| !e.is_empty()) {
            return Ok(Some(e.to_string()));
        }
    }
    Ok(None)
}

fn line_items(f: &Fields<'_>) -> Result<Vec<Json>, MapError> {
    (0..f.array("line_items")?.len())
        .map(|i| {
            let l = format!("line_items[{i}]");
            Ok(json!({
                // Shopify sends "" for a variant without a SKU.
                "sku": f.opt_str(&format!("{l}.sku"))?.filter(|s| !s.is_empty()),
                "product_id": f.opt_id(&format!("{l}.product_id"))?,
                "title": f.str(&format!("{l}.title"))?,
                "quantity": f.i32(&format!("{l}.quantity"))?,
                "unit_price": f.money_decimal(&format!("{l}.price"), "currency")?,
            }))
        })
        .collect()
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
                "/../../tests/fixtures/webhooks/shopify/",
                $name
            ))
        };
    }
    const CREATE: &str = fixture!("orders.create.json");
    const PAID: &str = fixture!("orders.paid.json");
    const CANCELLED: &str = fixture!("orders.cancelled.json");

    fn one(topic: &str, body: &[u8]) -> Mapped {
        let mut mapped = map_valid(map, &delivery("shopify", Some(topic), body));
        assert_eq!(mapped.len(), 1);
        mapped.remove(0)
    }

    fn line(sku: &str) -> Json {
        json!({
            "sku": sku,
            "product_id": "632910392",
            "title": "IPod Nano - 8gb",
            "quantity": 1,
            "unit_price": {"amount": "199.00", "currency": "USD"},
        })
    }

    #[test]
    fn orders_create() {
        let m = one("orders/create", CREATE.as_bytes());
        assert_eq!(m.event_type, ORDER_PLACED);
        assert_eq!(m.key, "450789469");
        assert_eq!(m.subject.as_deref(), Some("450789469"));
        // 2008-01-10T11:00:00-05:00
        assert_eq!(m.occurred_at_ms, 1_199_980_800_000);
        assert_eq!(
            m.fields,
            json!({
                "order_id": "450789469",
                "order_number": "#1001",
                "customer_id": "207119551",
                "customer_email": "bob.norman@hostmail.com",
                "total": {"amount": "409.94", "currency": "USD"},
                "line_items": [line("IPOD2008GREEN"), line("IPOD2008RED"), line("IPOD2008BLACK")],
                "provider": "shopify",
            })
        );
    }

    #[test]
    fn orders_paid() {
        let m = one("orders/paid", PAID.as_bytes());
        assert_eq!(m.event_type, ORDER_PAID);
        assert_eq!(m.key, "450789469");
        // updated_at 2008-01-10T11:05:12-05:00
        assert_eq!(m.occurred_at_ms, 1_199_981_112_000);
        assert_eq!(
            m.fields,
            json!({
                "order_id": "450789469",
                "order_number": "#1001",
                "total": {"amount": "409.94", "currency": "USD"},
                "provider": "shopify",
            })
        );
    }

    #[test]
    fn orders_cancelled() {
        let m = one("orders/cancelled", CANCELLED.as_bytes());
        assert_eq!(m.event_type, ORDER_CANCELLED);
        // cancelled_at 2008-01-10T12:30:00-05:00
        assert_eq!(m.occurred_at_ms, 1_199_986_200_000);
        assert_eq!(m.fields["reason"], "customer");
        assert_eq!(
            m.fields["total"],
            json!({"amount": "409.94", "currency": "USD"})
        );
    }

    #[test]
    fn guest_order_in_yen_without_sku_or_name() {
        let body = edited(CREATE, |j| {
            let o = j.as_object_mut().unwrap();
            o.remove("customer");
            o.remove("name");
            o.insert("email".into(), json!(""));
            o.insert("currency".into(), json!("JPY"));
            o.insert("total_price".into(), json!("2500"));
            o["line_items"][0]["sku"] = json!("");
            o["line_items"][0]["product_id"] = Json::Null;
            o["line_items"][0]["price"] = json!("2500");
            o["line_items"][0]["quantity"] = json!(3);
        });
        let m = one("orders/create", &body);
        assert_eq!(m.fields["order_number"], "1001");
        assert_eq!(m.fields["customer_id"], Json::Null);
        assert_eq!(m.fields["customer_email"], Json::Null);
        assert_eq!(
            m.fields["total"],
            json!({"amount": "2500", "currency": "JPY"})
        );
        let first = &m.fields["line_items"][0];
        assert_eq!(first["sku"], Json::Null);
        assert_eq!(first["product_id"], Json::Null);
        assert_eq!(first["quantity"], 3);
        assert_eq!(
            first["unit_price"],
            json!({"amount": "2500", "currency": "JPY"})
        );
    }

    #[test]
    fn three_decimal_currency() {
        let body = edited(PAID, |j| {
            j["currency"] = json!("kwd");
            j["total_price"] = json!("12.345");
        });
        assert_eq!(
            one("orders/paid", &body).fields["total"],
            json!({"amount": "12.345", "currency": "KWD"})
        );
    }

    #[test]
    fn times_fall_back_to_updated_at_then_received_at() {
        // A cancellation without `cancelled_at` is not one (see `claims`).
        let body = edited(CANCELLED, |j| j["cancelled_at"] = Json::Null);
        assert!(matches!(
            map(&delivery("shopify", Some("orders/cancelled"), &body)),
            Err(MapError::EventTypeMismatch { .. })
        ));
        let body = edited(PAID, |j| {
            j.as_object_mut().unwrap().remove("updated_at");
        });
        assert_eq!(one("orders/paid", &body).occurred_at_ms, RECEIVED_AT_MS);
    }

    #[test]
    fn other_topics_are_unmapped() {
        assert_eq!(
            map(&delivery(
                "shopify",
                Some("orders/updated"),
                CREATE.as_bytes()
            )),
            Err(MapError::Unmapped {
                provider: "shopify".into(),
                event_type: "orders/updated".into()
            })
        );
    }

    #[test]
    fn non_json_is_invalid_json() {
        for body in [&b"{"[..], b"[]"] {
            let d = delivery("shopify", Some("orders/create"), body);
            assert!(
                matches!(map(&d), Err(MapError::InvalidJson { .. })),
                "{body:?}"
            );
        }
    }

    #[test]
    fn invalid_money_and_missing_fields_name_their_path() {
        let body = edited(CREATE, |j| j["total_price"] = json!("409.94 USD"));
        let reason = invalid_reason(map(&delivery("shopify", Some("orders/create"), &body)));
        assert!(reason.contains("`total_price`"), "{reason}");

        let body = edited(CREATE, |j| j["line_items"][1]["price"] = json!(199.0));
        let reason = invalid_reason(map(&delivery("shopify", Some("orders/create"), &body)));
        assert!(
            reason.contains("`line_items[1].price` must be a string"),
            "{reason}"
        );

        let body = edited(PAID, |j| {
            j.as_object_mut().unwrap().remove("currency");
        });
        let reason = invalid_reason(map(&delivery("shopify", Some("orders/paid"), &body)));
        assert!(reason.contains("`currency`"), "{reason}");

        let body = edited(CANCELLED, |j| {
            j.as_object_mut().unwrap().remove("id");
        });
        let reason = invalid_reason(map(&delivery("shopify", Some("orders/cancelled"), &body)));
        assert!(reason.contains("`id`"), "{reason}");

        let reason = invalid_reason(map(&delivery("shopify", None, CREATE.as_bytes())));
        assert!(reason.contains("X-Shopify-Topic"), "{reason}");
    }
}
