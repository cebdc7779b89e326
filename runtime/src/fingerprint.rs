//! A 128-bit fingerprint of a text: the first half of its SHA-256.
//!
//! Held in memory in place of a text where only equality matters (the normalizer's dedup
//! keys, the orchestrator's finished saga ids): 16 bytes inline instead of a heap allocation
//! of the text's length. A collision needs about 2^64 chosen texts, out of a sender's reach;
//! fingerprints are never written anywhere, so the function may change between versions.

use sha2::{Digest, Sha256};

pub type Fingerprint = [u8; 16];

pub fn fingerprint(text: &[u8]) -> Fingerprint {
    let digest = Sha256::digest(text);
    let mut out = [0u8; 16];
    out.copy_from_slice(&digest[..16]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_texts_agree_and_different_ones_differ() {
        assert_eq!(fingerprint(b"order-1"), fingerprint(b"order-1"));
        assert_ne!(fingerprint(b"order-1"), fingerprint(b"order-2"));
        assert_ne!(fingerprint(b""), [0u8; 16]);
    }
}
