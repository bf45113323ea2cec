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
    pub body: serde_json::Value,
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
