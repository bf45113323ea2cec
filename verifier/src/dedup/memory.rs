//! The in-process dedup store: a map with expiry, and a snapshot file so a restart remembers
//! what was applied before the WAL segments that held it were compacted away.
//!
//! Snapshot format (`dedup.snapshot` in the WAL directory): one JSON object per line; the first
//! line is `{"covers_seq": N, "taken_ms": T}` (every WAL record with a sequence number up to `N`
//! is in the snapshot), then `{"id": …, "expires_ms": …, "outcome": {…}}` per entry. It is
//! written to a temporary file, fsync'd and renamed over the old one, so a crash leaves either
//! the old snapshot or the new one.

use super::{Insert, StoredOutcome, now_ms};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

#[derive(Debug, Clone)]
struct Entry {
    expires_ms: i64,
    outcome: StoredOutcome,
}

/// The in-process store.
#[derive(Debug)]
pub struct MemoryStore {
    map: Mutex<HashMap<String, Entry>>,
    ttl_ms: i64,
}

#[derive(Serialize, Deserialize)]
struct SnapshotHeader {
    covers_seq: u64,
    taken_ms: i64,
}

#[derive(Serialize, Deserialize)]
struct SnapshotEntry {
    id: String,
    expires_ms: i64,
    outcome: StoredOutcome,
}

impl MemoryStore {
    /// An empty store whose entries live for `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            ttl_ms: i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        // A panic while holding the lock cannot leave the map half-updated (every update is
        // a single insert), so a poisoned lock is still usable.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores `outcome` unless `id` is present and unexpired; the expiry runs from the
    /// outcome's `at_ms`.
    pub fn insert(&self, id: &str, outcome: &StoredOutcome) -> Insert {
        let now = now_ms();
        let mut map = self.lock();
        if let Some(e) = map.get(id) {
            if e.expires_ms > now {
                return Insert::Duplicate(e.outcome.clone());
            }
        }
        map.insert(
            id.to_owned(),
            Entry {
                expires_ms: outcome.at_ms.saturating_add(self.ttl_ms),
                outcome: outcome.clone(),
            },
        );
        Insert::First
    }

    /// The unexpired outcome of `id`.
    pub fn get(&self, id: &str) -> Option<StoredOutcome> {
        let now = now_ms();
        self.lock()
            .get(id)
            .filter(|e| e.expires_ms > now)
            .map(|e| e.outcome.clone())
    }

    /// Drops expired entries; returns how many.
    pub fn purge_expired(&self) -> u64 {
        let now = now_ms();
        let mut map = self.lock();
        let before = map.len();
        map.retain(|_, e| e.expires_ms > now);
        (before - map.len()) as u64
    }

    /// Number of entries (expired ones included until purged).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes a snapshot that covers every WAL record up to `covers_seq` (the caller
    /// guarantees those are all applied) atomically to `path`.
    pub fn snapshot_to(&self, path: &Path, covers_seq: u64) -> std::io::Result<()> {
        let entries: Vec<SnapshotEntry> = {
            let map = self.lock();
            map.iter()
                .map(|(id, e)| SnapshotEntry {
                    id: id.clone(),
                    expires_ms: e.expires_ms,
                    outcome: e.outcome.clone(),
                })
                .collect()
        };
        let tmp = path.with_extension("snapshot.tmp");
        {
            let file = std::fs::File::create(&tmp)?;
            let mut w = BufWriter::new(file);
            let header = SnapshotHeader {
                covers_seq,
                taken_ms: now_ms(),
            };
            serde_json::to_writer(&mut w, &header)?;
            w.write_all(b"\n")?;
            for e in &entries {
                serde_json::to_writer(&mut w, e)?;
                w.write_all(b"\n")?;
            }
            let file = w.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    /// Loads a snapshot written by [`MemoryStore::snapshot_to`] (entries already expired are
    /// skipped); returns the sequence number it covers, or `None` when there is no snapshot.
    pub fn load(&self, path: &Path) -> std::io::Result<Option<u64>> {
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let bad = |line: usize, e: serde_json::Error| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: line {line}: {e}", path.display()),
            )
        };
        let mut lines = BufReader::new(file).lines();
        let Some(first) = lines.next() else {
            return Ok(None);
        };
        let header: SnapshotHeader = serde_json::from_str(&first?).map_err(|e| bad(1, e))?;
        let now = now_ms();
        let mut map = self.lock();
        for (i, line) in lines.enumerate() {
            let e: SnapshotEntry = serde_json::from_str(&line?).map_err(|e| bad(i + 2, e))?;
            if e.expires_ms > now {
                map.insert(
                    e.id,
                    Entry {
                        expires_ms: e.expires_ms,
                        outcome: e.outcome,
                    },
                );
            }
        }
        Ok(Some(header.covers_seq))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dedup::RecordKind;

    fn outcome(status: u16, seq: u64) -> StoredOutcome {
        StoredOutcome {
            status,
            kind: RecordKind::Pcs,
            seq,
            at_ms: now_ms(),
            body: serde_json::json!({"status": status}).into(),
        }
    }

    #[test]
    fn first_write_wins() {
        let s = MemoryStore::new(Duration::from_secs(60));
        assert_eq!(s.insert("a", &outcome(200, 1)), Insert::First);
        match s.insert("a", &outcome(202, 2)) {
            Insert::Duplicate(o) => assert_eq!((o.status, o.seq), (200, 1)),
            Insert::First => panic!("second write won"),
        }
        assert_eq!(s.get("a").map(|o| o.seq), Some(1));
    }

    #[test]
    fn expired_entries_are_forgotten() {
        let s = MemoryStore::new(Duration::from_secs(60));
        let mut old = outcome(200, 1);
        old.at_ms -= 61_000;
        assert_eq!(s.insert("a", &old), Insert::First);
        assert_eq!(s.get("a"), None);
        assert_eq!(s.insert("a", &outcome(202, 2)), Insert::First);
        let mut old = outcome(200, 3);
        old.at_ms -= 120_000;
        s.insert("b", &old);
        assert_eq!(s.purge_expired(), 1);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn snapshot_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dedup.snapshot");
        let s = MemoryStore::new(Duration::from_secs(60));
        s.insert("a", &outcome(200, 1));
        s.insert("b", &outcome(202, 2));
        s.snapshot_to(&path, 2).unwrap();
        let t = MemoryStore::new(Duration::from_secs(60));
        assert_eq!(t.load(&path).unwrap(), Some(2));
        assert_eq!(t.get("b").map(|o| o.status), Some(202));
        assert_eq!(t.len(), 2);
        let none = MemoryStore::new(Duration::from_secs(60));
        assert_eq!(none.load(&dir.path().join("missing")).unwrap(), None);
    }
}
