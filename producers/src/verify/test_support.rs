//! Test helpers: fixture loading, an independent HMAC helper (straight from
//! the `hmac` crate, not the code under test), tampering helpers.

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::{Verified, VerifyError};

/// Owned header pairs, as a `Request` borrows them.
pub(crate) type Headers = Vec<(String, Vec<u8>)>;

/// `tests/fixtures/<rel>` at the workspace root.
pub(crate) fn fixture_bytes(rel: &str) -> Vec<u8> {
    let path = format!("{}/../tests/fixtures/{rel}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// The published vectors for one provider (`github`, `slack`, ...).
pub(crate) fn vectors(provider: &str) -> Vec<serde_json::Value> {
    let all: serde_json::Value =
        serde_json::from_slice(&fixture_bytes("signature-vectors.json")).unwrap();
    let cases = all[provider].as_array().unwrap().clone();
    assert!(!cases.is_empty(), "no vectors for {provider}");
    cases
}

/// A vector's headers as `(lower-cased name, value)` pairs.
pub(crate) fn vector_headers(case: &serde_json::Value) -> Vec<(String, Vec<u8>)> {
    case["headers"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            (
                k.to_ascii_lowercase(),
                v.as_str().unwrap().as_bytes().to_vec(),
            )
        })
        .collect()
}

pub(crate) fn vector_str<'a>(case: &'a serde_json::Value, key: &str) -> &'a str {
    case[key]
        .as_str()
        .unwrap_or_else(|| panic!("vector has no {key}"))
}

pub(crate) fn headers(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        .collect()
}

/// Replaces (or appends) header `name` in `hs`.
pub(crate) fn with_header(
    hs: &[(String, Vec<u8>)],
    name: &str,
    value: &str,
) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<_> = hs
        .iter()
        .filter(|(n, _)| !n.eq_ignore_ascii_case(name))
        .cloned()
        .collect();
    out.push((name.to_ascii_lowercase(), value.as_bytes().to_vec()));
    out
}

pub(crate) fn hmac_sha256(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(msg);
    mac.finalize().into_bytes().to_vec()
}

pub(crate) fn hmac_sha256_hex(key: &[u8], msg: &[u8]) -> String {
    hex::encode(hmac_sha256(key, msg))
}

pub(crate) fn hmac_sha256_b64(key: &[u8], msg: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(hmac_sha256(key, msg))
}

/// `body` with the byte at `idx` XOR-ed with 1.
pub(crate) fn flip_byte(body: &[u8], idx: usize) -> Vec<u8> {
    let mut b = body.to_vec();
    b[idx] ^= 1;
    b
}

/// `s` with the char at `idx` swapped for another char that is valid in hex
/// and base64, so the result still decodes but differs.
pub(crate) fn flip_char(s: &str, idx: usize) -> String {
    s.char_indices()
        .map(|(i, c)| {
            if i != idx {
                c
            } else if c == 'a' {
                'b'
            } else {
                'a'
            }
        })
        .collect()
}

pub(crate) fn code(r: Result<Verified, VerifyError>) -> &'static str {
    match r {
        Ok(v) => panic!("expected an error, got Ok({v:?})"),
        Err(e) => e.code(),
    }
}

/// Neither Display nor Debug of `e` contains any of `needles`.
pub(crate) fn assert_no_leak(e: &VerifyError, needles: &[&str]) {
    let shown = format!("{e} {e:?}");
    for n in needles {
        assert!(!shown.contains(n), "error `{shown}` leaks `{n}`");
    }
}
