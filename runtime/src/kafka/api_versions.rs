//! A minimal ApiVersions (key 18, v3) probe.
//!
//! librdkafka negotiates API versions internally but does not expose them, and `sluice doctor`
//! wants to show what the broker supports and its finalized features (`metadata.version`,
//! `transaction.version`, …), which is how a KRaft cluster reports its release level.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, thiserror::Error)]
pub enum ApiVersionsError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("no answer from {addr} within {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
    #[error("broken ApiVersions response from {addr}: {reason}")]
    Protocol { addr: String, reason: String },
    #[error("broker {addr} answered ApiVersions with error code {code}")]
    Broker { addr: String, code: i16 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiRange {
    pub key: i16,
    pub min: i16,
    pub max: i16,
}

#[derive(Debug, Clone, Default)]
pub struct BrokerApis {
    pub apis: Vec<ApiRange>,
    /// Finalized feature levels, e.g. `("metadata.version", 29)`.
    pub finalized_features: Vec<(String, i16)>,
}

impl BrokerApis {
    pub fn max_version(&self, key: i16) -> Option<i16> {
        self.apis.iter().find(|a| a.key == key).map(|a| a.max)
    }
}

/// Asks one broker (`host:port`) for its API versions.
pub async fn probe(addr: &str, timeout: Duration) -> Result<BrokerApis, ApiVersionsError> {
    tokio::time::timeout(timeout, probe_inner(addr))
        .await
        .map_err(|_| ApiVersionsError::Timeout {
            addr: addr.to_string(),
            timeout,
        })?
}

async fn probe_inner(addr: &str) -> Result<BrokerApis, ApiVersionsError> {
    let mut stream =
        TcpStream::connect(addr)
            .await
            .map_err(|source| ApiVersionsError::Connect {
                addr: addr.to_string(),
                source,
            })?;
    let io = |e: std::io::Error| ApiVersionsError::Protocol {
        addr: addr.to_string(),
        reason: e.to_string(),
    };
    stream.write_all(&request(7)).await.map_err(io)?;
    let len = stream.read_i32().await.map_err(io)?;
    if !(4..=1 << 20).contains(&len) {
        return Err(ApiVersionsError::Protocol {
            addr: addr.to_string(),
            reason: format!("implausible frame length {len}"),
        });
    }
    let mut body = vec![0u8; len as usize];
    stream.read_exact(&mut body).await.map_err(io)?;
    parse_response(&body).map_err(|reason| match reason {
        ParseError::Broker(code) => ApiVersionsError::Broker {
            addr: addr.to_string(),
            code,
        },
        ParseError::Malformed(reason) => ApiVersionsError::Protocol {
            addr: addr.to_string(),
            reason,
        },
    })
}

fn request(correlation_id: i32) -> Vec<u8> {
    let client_id = b"sluice-doctor";
    let mut body = Vec::new();
    body.extend_from_slice(&18i16.to_be_bytes()); // api key: ApiVersions
    body.extend_from_slice(&3i16.to_be_bytes()); // api version
    body.extend_from_slice(&correlation_id.to_be_bytes());
    body.extend_from_slice(&(client_id.len() as i16).to_be_bytes()); // header v2 client id: non-compact
    body.extend_from_slice(client_id);
    body.push(0); // header tagged fields
    for s in [&b"sluice"[..], env!("CARGO_PKG_VERSION").as_bytes()] {
        body.push((s.len() + 1) as u8); // compact string
        body.extend_from_slice(s);
    }
    body.push(0); // body tagged fields
    let mut frame = (body.len() as i32).to_be_bytes().to_vec();
    frame.extend(body);
    frame
}

#[derive(Debug)]
enum ParseError {
    Broker(i16),
    Malformed(String),
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], ParseError> {
        if self.buf.len() < n {
            return Err(ParseError::Malformed("response ended early".into()));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    fn i16(&mut self) -> Result<i16, ParseError> {
        Ok(i16::from_be_bytes(self.take(2)?.try_into().unwrap()))
    }
    fn i32(&mut self) -> Result<i32, ParseError> {
        Ok(i32::from_be_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn uvarint(&mut self) -> Result<u64, ParseError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.take(1)?[0];
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(ParseError::Malformed("varint too long".into()))
    }
    fn compact_len(&mut self) -> Result<usize, ParseError> {
        Ok(self.uvarint()?.saturating_sub(1) as usize)
    }
    fn compact_string(&mut self) -> Result<String, ParseError> {
        let n = self.compact_len()?;
        Ok(String::from_utf8_lossy(self.take(n)?).into_owned())
    }
    fn skip_tags(&mut self) -> Result<(), ParseError> {
        for _ in 0..self.uvarint()? {
            self.uvarint()?;
            let size = self.uvarint()? as usize;
            self.take(size)?;
        }
        Ok(())
    }
}

fn parse_response(body: &[u8]) -> Result<BrokerApis, ParseError> {
    let mut r = Reader { buf: body };
    let _correlation_id = r.i32()?; // ApiVersions responses always use header v0
    let error = r.i16()?;
    if error != 0 {
        return Err(ParseError::Broker(error));
    }
    let mut out = BrokerApis::default();
    for _ in 0..r.compact_len()? {
        out.apis.push(ApiRange {
            key: r.i16()?,
            min: r.i16()?,
            max: r.i16()?,
        });
        r.skip_tags()?;
    }
    let _throttle = r.i32()?;
    for _ in 0..r.uvarint()? {
        let tag = r.uvarint()?;
        let size = r.uvarint()? as usize;
        let mut field = Reader { buf: r.take(size)? };
        if tag == 2 {
            for _ in 0..field.compact_len()? {
                let name = field.compact_string()?;
                let max_level = field.i16()?;
                let _min_level = field.i16()?;
                field.skip_tags()?;
                out.finalized_features.push((name, max_level));
            }
        }
    }
    Ok(out)
}

/// Names of the APIs `sluice doctor` reports on.
pub fn api_name(key: i16) -> &'static str {
    match key {
        0 => "Produce",
        1 => "Fetch",
        3 => "Metadata",
        8 => "OffsetCommit",
        21 => "DeleteRecords",
        22 => "InitProducerId",
        24 => "AddPartitionsToTxn",
        26 => "EndTxn",
        28 => "TxnOffsetCommit",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_v3_response_with_finalized_features() {
        let mut b = Vec::new();
        b.extend_from_slice(&7i32.to_be_bytes());
        b.extend_from_slice(&0i16.to_be_bytes());
        b.push(3); // two api keys
        for (k, min, max) in [(0i16, 3i16, 12i16), (18, 0, 4)] {
            b.extend_from_slice(&k.to_be_bytes());
            b.extend_from_slice(&min.to_be_bytes());
            b.extend_from_slice(&max.to_be_bytes());
            b.push(0);
        }
        b.extend_from_slice(&0i32.to_be_bytes());
        let mut features = vec![2u8]; // one feature
        features.push(17);
        features.extend_from_slice(b"metadata.version");
        features.extend_from_slice(&29i16.to_be_bytes());
        features.extend_from_slice(&29i16.to_be_bytes());
        features.push(0);
        b.push(1); // one tagged field
        b.push(2);
        b.push(features.len() as u8);
        b.extend(features);
        let apis = parse_response(&b).unwrap();
        assert_eq!(apis.max_version(0), Some(12));
        assert_eq!(
            apis.finalized_features,
            vec![("metadata.version".to_string(), 29)]
        );
    }

    #[test]
    fn truncated_response_is_an_error_not_a_panic() {
        assert!(matches!(
            parse_response(&[0, 0, 0, 7, 0]),
            Err(ParseError::Malformed(_))
        ));
    }
}
