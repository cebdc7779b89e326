//! `GET /openapi.json`: the OpenAPI 3.1 description of the publish API and the endpoints API.
//!
//! Hand-written (`openapi.json`, embedded at build time) rather than generated: the handlers
//! read raw bodies to control limits, timeouts and error codes, so derive-based generators
//! would describe types the handlers do not actually take. `tests/e2e/endpoints.rs` checks the
//! document with an independent validator, and the unit test below checks that it names every
//! route the gateway serves.

use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};

/// The document, as served.
pub const DOCUMENT: &str = include_str!("openapi.json");

pub(crate) async fn serve() -> Response {
    ([(CONTENT_TYPE, "application/json")], DOCUMENT).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_is_openapi_3_1_and_names_every_route() {
        let doc: serde_json::Value = serde_json::from_str(DOCUMENT).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        for (path, methods) in [
            ("/v1/events/{event_type}", &["post"][..]),
            ("/v1/endpoints", &["get", "post"]),
            ("/v1/endpoints/{id}", &["get", "patch", "delete"]),
            ("/v1/endpoints/{id}/disable", &["post"]),
            ("/v1/endpoints/{id}/enable", &["post"]),
            ("/v1/endpoints/{id}/rotate-secret", &["post"]),
            ("/v1/endpoints/{id}/deliveries", &["get"]),
            ("/v1/endpoints/{id}/deliveries/{event_id}", &["get"]),
            ("/v1/endpoints/{id}/deliveries/{event_id}/resend", &["post"]),
            ("/v1/endpoints/{id}/recover", &["post"]),
            ("/openapi.json", &["get"]),
        ] {
            for m in methods {
                assert!(doc["paths"][path][m].is_object(), "{m} {path}");
            }
        }
        let create = &doc["components"]["schemas"]["EndpointCreate"];
        assert_eq!(create["additionalProperties"], false);
        let codes = doc["components"]["schemas"]["Error"]["properties"]["error"]["properties"]
            ["code"]["description"]
            .as_str()
            .unwrap();
        for code in [
            "invalid_url",
            "invalid_event_types",
            "invalid_retry_schedule",
            "unknown_field",
            "endpoint_not_found",
        ] {
            assert!(codes.contains(code), "{code}");
        }
    }
}
