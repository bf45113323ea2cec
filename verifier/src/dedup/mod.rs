//! Deduplication by record id (`pcs_id`, `report_id`): first write wins, entries expire after a
//! TTL (`DEDUP_TTL`, default 14 d).
//!
//! Three backends share one interface ([`Store`]): `memory` (a map, snapshotted to the WAL
//! directory so a restart remembers), `redis` (`SET NX PX`, `REDIS_ADDR`) and `postgres`
//! (`INSERT … ON CONFLICT DO UPDATE` only where the stored row has expired, `DATABASE_URL`,
//! table created on start, expired rows purged). A backend that cannot answer within its
//! timeout is [`StoreError::Unavailable`]: the verifier then fails closed with 503 and keeps the
//! body in its WAL.

mod health;
pub mod memory;
pub mod postgres;
pub mod redis;

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Which record an entry belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    /// A Proof-of-Computation Summary (`/v1/pcs/submit`).
    Pcs,
    /// A signal report (`/v1/signals/submit`).
    Signals,
}

impl RecordKind {
    /// Label used in metrics and the WAL.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Pcs => "pcs",
            RecordKind::Signals => "signals",
        }
    }
}

/// A JSON answer body kept as its text: built once, then stored, copied and sent as it is.
/// Two bodies are equal when their JSON values are (a store may give back the same object
/// with its keys in another order or other spacing, as PostgreSQL's `jsonb` does).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JsonBody(Box<serde_json::value::RawValue>);

impl JsonBody {
    /// The JSON text of `v`.
    pub fn of(v: &impl Serialize) -> JsonBody {
        match serde_json::value::to_raw_value(v) {
            Ok(raw) => JsonBody(raw),
            // Only a map with non-string keys has no JSON text; no answer holds one.
            Err(e) => {
                JsonBody::of(&serde_json::json!({"error": "internal", "message": e.to_string()}))
            }
        }
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    /// The body as a JSON value.
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::from_str(self.0.get()).unwrap_or(serde_json::Value::Null)
    }

    /// The body of an object with `extra` (a JSON object's text) appended to its members;
    /// a body that is not an object is kept as it is.
    pub fn with_members(&self, extra: &str) -> JsonBody {
        let text = self.0.get().trim_end();
        let (Some(head), Some(members)) = (
            text.strip_suffix('}'),
            extra
                .trim()
                .strip_prefix('{')
                .and_then(|m| m.strip_suffix('}')),
        ) else {
            return self.clone();
        };
        let empty = head.trim_end().ends_with('{');
        let joined = format!("{head}{}{members}}}", if empty { "" } else { "," });
        match serde_json::value::RawValue::from_string(joined) {
            Ok(raw) => JsonBody(raw),
            Err(_) => self.clone(),
        }
    }
}

impl PartialEq for JsonBody {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str() || self.to_value() == other.to_value()
    }
}

impl From<serde_json::Value> for JsonBody {
    fn from(v: serde_json::Value) -> Self {
        JsonBody::of(&v)
    }
}

/// What the first write of an id answered; a duplicate gets the same answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredOutcome {
    /// HTTP status of the first answer (200 accepted or 202 escalated).
    pub status: u16,
    /// The record's kind.
    pub kind: RecordKind,
    /// WAL sequence number of the body that was applied first.
    pub seq: u64,
    /// When it was first applied, ms since the epoch.
    pub at_ms: i64,
    /// The JSON body of the first answer.
    pub body: JsonBody,
}

/// The result of an insert.
#[derive(Debug, Clone, PartialEq)]
pub enum Insert {
    /// The id was new: this write is the one that counts.
    First,
    /// The id was already stored (and not expired): its first outcome.
    Duplicate(StoredOutcome),
}

/// A store that cannot answer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StoreError {
    /// Unreachable, timed out or refusing: fail closed (503).
    #[error("dedup store unavailable: {0}")]
    Unavailable(String),
}

/// Settings every backend shares.
#[derive(Debug, Clone)]
pub struct StoreSettings {
    /// How long an entry is remembered.
    pub ttl: Duration,
    /// Longest wait for one store operation before it counts as unavailable.
    pub op_timeout: Duration,
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(14 * 86_400),
            op_timeout: Duration::from_secs(2),
        }
    }
}

/// One of the backends.
pub enum Store {
    /// In-process map with a snapshot file.
    Memory(memory::MemoryStore),
    /// Redis.
    Redis(redis::RedisStore),
    /// PostgreSQL.
    Postgres(postgres::PostgresStore),
}

impl Store {
    /// Backend name (`memory`, `redis`, `postgres`).
    pub fn backend(&self) -> &'static str {
        match self {
            Store::Memory(_) => "memory",
            Store::Redis(_) => "redis",
            Store::Postgres(_) => "postgres",
        }
    }

    /// Stores `outcome` under `id` unless `id` is already stored.
    pub async fn insert(&self, id: &str, outcome: &StoredOutcome) -> Result<Insert, StoreError> {
        match self {
            Store::Memory(s) => Ok(s.insert(id, outcome)),
            Store::Redis(s) => s.insert(id, outcome).await,
            Store::Postgres(s) => s.insert(id, outcome).await,
        }
    }

    /// The stored outcome of `id`, if any (and not expired).
    pub async fn get(&self, id: &str) -> Result<Option<StoredOutcome>, StoreError> {
        match self {
            Store::Memory(s) => Ok(s.get(id)),
            Store::Redis(s) => s.get(id).await,
            Store::Postgres(s) => s.get(id).await,
        }
    }

    /// Whether the store answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Store::Memory(_) => Ok(()),
            Store::Redis(s) => s.ping().await,
            Store::Postgres(s) => s.ping().await,
        }
    }

    /// Removes expired entries (Redis expires keys itself); returns how many went.
    pub async fn purge_expired(&self) -> Result<u64, StoreError> {
        match self {
            Store::Memory(s) => Ok(s.purge_expired()),
            Store::Redis(_) => Ok(0),
            Store::Postgres(s) => s.purge_expired().await,
        }
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn members_are_appended_to_an_object_and_nothing_else() {
        let b = JsonBody::of(&json!({"status": "accepted", "seq": 4}));
        let d = b.with_members(r#"{"duplicate":true,"firstSeq":4}"#);
        assert_eq!(
            d.to_value(),
            json!({"status": "accepted", "seq": 4, "duplicate": true, "firstSeq": 4})
        );
        let empty = JsonBody::of(&json!({})).with_members(r#"{"a":1}"#);
        assert_eq!(empty.as_str(), r#"{"a":1}"#);
        let list = JsonBody::of(&json!([1, 2]));
        assert_eq!(list.with_members(r#"{"a":1}"#).as_str(), "[1,2]");
    }

    #[test]
    fn bodies_are_equal_as_json_values() {
        let a: JsonBody =
            serde_json::from_str(r#"{"b": 1, "a": [2.5, "x"]}"#).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a, JsonBody::of(&json!({"a": [2.5, "x"], "b": 1})));
        assert_ne!(a, JsonBody::of(&json!({"a": [2.5, "x"], "b": 2})));
        // A stored outcome is written and read back with its body as embedded JSON.
        let o = StoredOutcome {
            status: 202,
            kind: RecordKind::Pcs,
            seq: 9,
            at_ms: 1,
            body: a.clone(),
        };
        let text = serde_json::to_string(&o).unwrap_or_default();
        assert!(
            text.contains(r#""body":{"b": 1, "a": [2.5, "x"]}"#),
            "{text}"
        );
        let back: StoredOutcome = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, o);
    }
}
