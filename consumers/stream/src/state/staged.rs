//! A batch's state changes, kept apart from committed state until the batch's transaction
//! ends: applied when it commits, dropped when it aborts.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;

/// Changes by key: a new value, or `None` for a delete.
#[derive(Debug)]
pub struct Staged<K, V> {
    changes: Mutex<HashMap<K, Option<V>>>,
}

impl<K, V> Default for Staged<K, V> {
    fn default() -> Self {
        Self {
            changes: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash, V: Clone> Staged<K, V> {
    /// This batch's change of `key`: `Some(Some(v))` set, `Some(None)` deleted, `None`
    /// untouched (look in committed state).
    pub fn get(&self, key: &K) -> Option<Option<V>> {
        self.changes.lock().expect("staged").get(key).cloned()
    }

    pub fn put(&self, key: K, value: V) {
        self.changes
            .lock()
            .expect("staged")
            .insert(key, Some(value));
    }

    pub fn delete(&self, key: K) {
        self.changes.lock().expect("staged").insert(key, None);
    }

    /// Ends the batch: its changes when it committed (to apply), nothing when it aborted.
    pub fn finish(&self, committed: bool) -> HashMap<K, Option<V>> {
        let changes = std::mem::take(&mut *self.changes.lock().expect("staged"));
        if committed {
            changes
        } else {
            HashMap::new()
        }
    }

    /// Runs `f` over the changes so far, to write them out with the batch.
    pub fn with<T>(&self, f: impl FnOnce(&HashMap<K, Option<V>>) -> T) -> T {
        f(&self.changes.lock().expect("staged"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_survive_only_a_commit() {
        let s: Staged<&str, i32> = Staged::default();
        s.put("a", 1);
        s.delete("b");
        assert_eq!(s.get(&"a"), Some(Some(1)));
        assert_eq!(s.get(&"b"), Some(None));
        assert_eq!(s.get(&"c"), None);
        assert!(s.finish(false).is_empty());
        assert_eq!(s.get(&"a"), None, "an aborted batch leaves nothing staged");
        s.put("a", 2);
        assert_eq!(s.finish(true), HashMap::from([("a", Some(2))]));
        assert_eq!(s.get(&"a"), None, "a finished batch leaves nothing staged");
    }
}
