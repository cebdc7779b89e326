//! Which partitions each live member of a classic consumer group owns.
//!
//! DescribeGroups hands back each member's assignment as the opaque bytes of Kafka's
//! `ConsumerProtocolAssignment` (versions 0–3 share the leading fields read here:
//! `int16 version`, then `[string topic, [int32 partition]]`). Ownership is what tells a
//! STALL (a member owns the stuck partition) from a STOP (nobody does).

/// The (topic, partition) pairs of an assignment; `None` when the bytes are not a consumer
/// protocol assignment (another protocol type, or a truncated buffer).
pub fn decode(bytes: &[u8]) -> Option<Vec<(String, i32)>> {
    let mut r = Reader(bytes);
    let version = r.i16()?;
    if version < 0 {
        return None;
    }
    let topics = r.i32()?;
    let mut out = Vec::new();
    for _ in 0..topics.max(0) {
        let len = r.i16()?;
        let topic = std::str::from_utf8(r.take(usize::try_from(len).ok()?)?)
            .ok()?
            .to_string();
        let partitions = r.i32()?;
        for _ in 0..partitions.max(0) {
            out.push((topic.clone(), r.i32()?));
        }
    }
    Some(out)
}

/// Big-endian reads over a slice; every read fails softly on truncation.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    fn i16(&mut self) -> Option<i16> {
        Some(i16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }

    fn i32(&mut self) -> Option<i32> {
        Some(i32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(version: i16, topics: &[(&str, &[i32])], user_data: Option<&[u8]>) -> Vec<u8> {
        let mut b = version.to_be_bytes().to_vec();
        b.extend((topics.len() as i32).to_be_bytes());
        for (t, ps) in topics {
            b.extend((t.len() as i16).to_be_bytes());
            b.extend(t.as_bytes());
            b.extend((ps.len() as i32).to_be_bytes());
            for p in *ps {
                b.extend(p.to_be_bytes());
            }
        }
        match user_data {
            Some(d) => {
                b.extend((d.len() as i32).to_be_bytes());
                b.extend(d);
            }
            None => b.extend((-1i32).to_be_bytes()),
        }
        b
    }

    #[test]
    fn decodes_topics_and_partitions_of_every_version() {
        for version in 0..=3 {
            let bytes = encode(version, &[("a", &[0, 2]), ("b.c", &[1])], Some(b"x"));
            assert_eq!(
                decode(&bytes).unwrap(),
                vec![("a".into(), 0), ("a".into(), 2), ("b.c".into(), 1)]
            );
        }
        assert_eq!(decode(&encode(0, &[], None)).unwrap(), vec![]);
    }

    #[test]
    fn rejects_truncated_or_foreign_bytes() {
        let bytes = encode(1, &[("topic", &[0, 1])], None);
        for cut in [0, 1, 3, 7, 12, 16] {
            assert_eq!(decode(&bytes[..cut]), None, "cut at {cut}");
        }
        assert_eq!(decode(&[0xff, 0xff, 0, 0, 0, 0]), None);
    }
}
