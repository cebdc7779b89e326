//! Finished instances the orchestrator no longer holds in full: enough to refuse a second
//! trigger for the same id, and to delete each state record once its retention has passed.
//!
//! They are kept for `--keep-finished` (7 days by default), so a busy orchestrator holds
//! millions. As `HashMap<String, Slot>` entries each cost about 100 bytes (the entry, the
//! table's slack, the id's own allocation); here an id costs a 16-byte fingerprint and an
//! 8-byte status word in the table, plus its bytes and a 4-byte length in a queue of
//! 64 KiB chunks that expiry walks from the front: about 40 bytes and the id's length.

use std::collections::{HashMap, VecDeque};

use sluice_runtime::fingerprint::{fingerprint, Fingerprint};

use crate::instance::Status;

#[derive(Debug, Default)]
pub struct Finished {
    /// Fingerprint of the id → when it finished (ms) and how, in one word.
    by_id: HashMap<Fingerprint, Packed>,
    /// The ids in the order they were added, which is nearly the order they finished in.
    ids: IdQueue,
}

impl Finished {
    /// Adds a finished instance. Add instances in the order they finished: expiry stops at
    /// the first one still kept, so one added out of order only holds back the ones behind
    /// it, by as much as it is out of order.
    pub fn insert(&mut self, id: &str, status: Status, finished_at: i64) {
        if self
            .by_id
            .insert(fingerprint(id.as_bytes()), Packed::new(status, finished_at))
            .is_none()
        {
            self.ids.push(id);
        }
    }

    pub fn get(&self, id: &str) -> Option<(Status, i64)> {
        self.by_id
            .get(&fingerprint(id.as_bytes()))
            .map(|p| p.unpack())
    }

    pub fn remove(&mut self, id: &str) -> bool {
        self.by_id.remove(&fingerprint(id.as_bytes())).is_some()
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Up to `limit` ids of instances that finished before `before`, oldest first. Ids
    /// removed since they were added leave the queue here, as they reach its front.
    pub fn expired(&mut self, before: i64, limit: usize) -> Vec<String> {
        while let Some(id) = self.ids.front() {
            if self.by_id.contains_key(&fingerprint(id)) {
                break;
            }
            self.ids.pop_front();
        }
        let mut out = Vec::new();
        for id in self.ids.iter() {
            if out.len() == limit {
                break;
            }
            match self.by_id.get(&fingerprint(id)) {
                None => continue,
                Some(p) if p.unpack().1 < before => {
                    out.push(String::from_utf8_lossy(id).into_owned())
                }
                Some(_) => break,
            }
        }
        out
    }
}

/// A finished instance's status (only `completed` and `compensated` finish) in the lowest
/// bit, when it finished (ms since the epoch, never negative) in the others.
#[derive(Debug, Clone, Copy)]
struct Packed(u64);

impl Packed {
    fn new(status: Status, finished_at: i64) -> Self {
        let compensated = u64::from(status == Status::Compensated);
        Packed((finished_at.max(0) as u64) << 1 | compensated)
    }

    fn unpack(self) -> (Status, i64) {
        let status = if self.0 & 1 == 1 {
            Status::Compensated
        } else {
            Status::Completed
        };
        (status, (self.0 >> 1) as i64)
    }
}

/// Byte strings in a FIFO queue, packed into chunks (a 4-byte length, then the bytes).
#[derive(Debug, Default)]
struct IdQueue {
    chunks: VecDeque<Vec<u8>>,
    /// Where the first id of the first chunk starts.
    head: usize,
}

const CHUNK_BYTES: usize = 64 * 1024;

impl IdQueue {
    fn push(&mut self, id: &str) {
        let needed = 4 + id.len();
        if self
            .chunks
            .back()
            .is_none_or(|c| c.len() + needed > c.capacity())
        {
            self.chunks
                .push_back(Vec::with_capacity(CHUNK_BYTES.max(needed)));
        }
        let chunk = self.chunks.back_mut().expect("a chunk was just ensured");
        chunk.extend_from_slice(&(id.len() as u32).to_le_bytes());
        chunk.extend_from_slice(id.as_bytes());
    }

    fn front(&self) -> Option<&[u8]> {
        self.iter().next()
    }

    fn pop_front(&mut self) {
        let Some(first) = self.chunks.front() else {
            return;
        };
        self.head += 4 + read_len(first, self.head);
        if self.head >= first.len() {
            self.chunks.pop_front();
            self.head = 0;
        }
    }

    fn iter(&self) -> impl Iterator<Item = &[u8]> {
        self.chunks.iter().enumerate().flat_map(move |(n, chunk)| {
            let mut at = if n == 0 { self.head } else { 0 };
            std::iter::from_fn(move || {
                if at >= chunk.len() {
                    return None;
                }
                let len = read_len(chunk, at);
                let id = &chunk[at + 4..at + 4 + len];
                at += 4 + len;
                Some(id)
            })
        })
    }
}

fn read_len(chunk: &[u8], at: usize) -> usize {
    let bytes: [u8; 4] = chunk[at..at + 4].try_into().expect("a 4-byte length");
    u32::from_le_bytes(bytes) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_is_found_by_its_id_with_its_status_and_finish_time() {
        let mut f = Finished::default();
        f.insert("order-1", Status::Completed, 1_700_000_000_123);
        f.insert("order-2", Status::Compensated, 5);
        assert_eq!(
            f.get("order-1"),
            Some((Status::Completed, 1_700_000_000_123))
        );
        assert_eq!(f.get("order-2"), Some((Status::Compensated, 5)));
        assert_eq!(f.get("order-3"), None);
        assert!(f.remove("order-1"));
        assert!(!f.remove("order-1"));
        assert_eq!(f.get("order-1"), None);
        assert_eq!(f.len(), 1);
    }

    #[test]
    fn expiry_walks_from_the_oldest_and_stops_at_the_first_kept() {
        let mut f = Finished::default();
        for i in 0..10 {
            f.insert(&format!("s{i}"), Status::Completed, i * 100);
        }
        assert_eq!(f.expired(350, 100), ["s0", "s1", "s2", "s3"]);
        assert_eq!(f.expired(350, 2), ["s0", "s1"], "at most `limit`");
        assert_eq!(
            f.expired(350, 100),
            ["s0", "s1", "s2", "s3"],
            "ids stay until they are removed (a delete may be aborted)"
        );
        for id in ["s0", "s1", "s3"] {
            f.remove(id);
        }
        assert_eq!(f.expired(350, 100), ["s2"]);
        assert_eq!(f.expired(10_000, 100).len(), 7);
        assert_eq!(
            f.ids.front(),
            Some(b"s2".as_slice()),
            "removed ids leave the queue's front"
        );
    }

    #[test]
    fn ids_of_any_length_survive_the_chunks() {
        let mut f = Finished::default();
        let long = "x".repeat(CHUNK_BYTES + 10);
        let ids: Vec<String> = (0..20_000)
            .map(|i| match i {
                7_000 => long.clone(),
                _ => format!("order-{i}-é"),
            })
            .collect();
        for (i, id) in ids.iter().enumerate() {
            f.insert(id, Status::Completed, i as i64);
        }
        f.insert(&ids[3], Status::Completed, 3);
        assert_eq!(f.ids.iter().count(), ids.len(), "an id is queued once");
        assert_eq!(f.expired(i64::MAX, usize::MAX), ids);
        for id in &ids[..15_000] {
            f.remove(id);
        }
        assert_eq!(f.expired(i64::MAX, usize::MAX), ids[15_000..]);
        assert!(f.chunks_held() < 4, "consumed chunks are freed");
    }

    impl Finished {
        fn chunks_held(&self) -> usize {
            self.ids.chunks.len()
        }
    }
}
