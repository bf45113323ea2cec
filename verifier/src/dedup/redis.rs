//! The Redis dedup store: one key per id, `<prefix>dedup:<id>`, holding the JSON of the first
//! outcome. It is written with `SET … NX PX`, so the first write wins and Redis forgets the key
//! when it expires; a write that loses reads the stored outcome back.
//!
//! The connection is opened lazily and reopened after failures (a redis `ConnectionManager`),
//! so a verifier started while Redis is down comes up, answers 503 until Redis returns, and then
//! recovers without a restart. A connection on which an operation timed out is replaced as
//! well: the manager only reconnects when the socket reports an error, which a silently dropped
//! network path never does.
//!
//! A write that timed out may still be applied when Redis catches up; the caller was told the
//! store is unavailable, and a retry finds the outcome that write stored.

use super::health::{Health, redact};
use super::{Insert, StoreError, StoreSettings, StoredOutcome, now_ms};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::fmt;
use std::sync::{Mutex, MutexGuard};

/// Why one operation failed.
enum Failure {
    /// Redis did not answer properly: the store is unavailable.
    Store(String),
    /// Redis did not answer in time.
    Timeout,
    /// Redis answered, but with a value this store did not write.
    Data(String),
}

impl From<redis::RedisError> for Failure {
    fn from(e: redis::RedisError) -> Self {
        if e.is_timeout() {
            Failure::Timeout
        } else {
            Failure::Store(e.to_string())
        }
    }
}

/// The redis store.
pub struct RedisStore {
    /// What a new manager is made from; boxed to keep [`super::Store`] small.
    factory: Box<(redis::Client, ConnectionManagerConfig)>,
    /// The manager in use and how many were made before it.
    conn: Mutex<(u64, ConnectionManager)>,
    prefix: String,
    settings: StoreSettings,
    ttl_ms: i64,
    health: Health,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("addr", &self.health.addr())
            .field("prefix", &self.prefix)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A store at `addr` (`host:port` or a `redis://` URL) whose keys start with `prefix`.
    ///
    /// Fails only when `addr` does not parse: an unreachable server is reported by the
    /// operations (and logged here), not by `connect`.
    pub async fn connect(
        addr: &str,
        prefix: &str,
        settings: &StoreSettings,
    ) -> Result<Self, StoreError> {
        let url = if addr.contains("://") {
            addr.to_owned()
        } else {
            format!("redis://{addr}")
        };
        let invalid = |e: redis::RedisError| {
            StoreError::Unavailable(format!(
                "invalid redis address {:?}: {e}; expected host:port or redis://[:password@]host:port[/db]",
                redact(addr)
            ))
        };
        let client = redis::Client::open(url.as_str()).map_err(invalid)?;
        let shown = client.get_connection_info().addr().to_string();
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.op_timeout))
            .set_response_timeout(Some(settings.op_timeout))
            // Every operation is bounded by `op_timeout` anyway; retrying inside one reconnect
            // would only delay noticing that the server is back. The next operation after a
            // failed attempt starts a fresh one.
            .set_number_of_retries(0);
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
            .map_err(invalid)?;
        let store = Self {
            factory: Box::new((client, config)),
            conn: Mutex::new((0, conn)),
            prefix: prefix.to_owned(),
            settings: settings.clone(),
            ttl_ms: i64::try_from(settings.ttl.as_millis()).unwrap_or(i64::MAX),
            health: Health::new("redis", shown),
        };
        // Only to log at start whether the server answers; a down server is not an error yet.
        let _ = store.ping().await;
        Ok(store)
    }

    fn slot(&self) -> MutexGuard<'_, (u64, ConnectionManager)> {
        // Every update is a single assignment, so a poisoned lock holds a consistent value.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces manager number `generation` unless that already happened, so a burst of
    /// timeouts on one connection opens one new connection, not one each.
    fn replace(&self, generation: u64) {
        let mut slot = self.slot();
        if slot.0 != generation {
            return;
        }
        let (client, config) = &*self.factory;
        match ConnectionManager::new_lazy_with_config(client.clone(), config.clone()) {
            Ok(fresh) => *slot = (generation + 1, fresh),
            Err(e) => {
                tracing::debug!(addr = %self.health.addr(), error = %e, "new redis connection")
            }
        }
    }

    fn key(&self, id: &str) -> String {
        format!("{}dedup:{id}", self.prefix)
    }

    /// Runs `op` within the operation timeout, turning every failure into `Unavailable` and
    /// recording availability transitions.
    async fn run<T>(
        &self,
        what: &str,
        op: impl AsyncFnOnce(&mut ConnectionManager) -> Result<T, Failure>,
    ) -> Result<T, StoreError> {
        let (generation, mut conn) = {
            let slot = self.slot();
            (slot.0, slot.1.clone())
        };
        let result = tokio::time::timeout(self.settings.op_timeout, op(&mut conn))
            .await
            .unwrap_or(Err(Failure::Timeout));
        let failure = match result {
            Ok(v) => {
                self.health.up();
                return Ok(v);
            }
            Err(Failure::Timeout) => {
                self.replace(generation);
                format!("no answer within {:?}", self.settings.op_timeout)
            }
            Err(Failure::Store(reason)) => reason,
            Err(Failure::Data(reason)) => {
                self.health.up();
                let reason = format!("redis at {}: {what}: {reason}", self.health.addr());
                tracing::warn!(%reason, "unreadable dedup entry");
                return Err(StoreError::Unavailable(reason));
            }
        };
        let reason = format!("redis at {}: {what}: {failure}", self.health.addr());
        self.health.down(&reason);
        Err(StoreError::Unavailable(reason))
    }

    fn parse(key: &str, value: &str) -> Result<StoredOutcome, Failure> {
        serde_json::from_str(value).map_err(|e| {
            Failure::Data(format!(
                "value of {key} is not a stored outcome (JSON with status, kind, seq, at_ms, body): {e}"
            ))
        })
    }

    /// Stores `o` under `id` unless `id` is stored and unexpired; the expiry runs from
    /// `o.at_ms`, as in the other backends.
    pub async fn insert(&self, id: &str, o: &StoredOutcome) -> Result<Insert, StoreError> {
        let key = self.key(id);
        let value = serde_json::to_string(o)
            .map_err(|e| StoreError::Unavailable(format!("outcome of {id} as JSON: {e}")))?;
        self.run("insert", async |conn: &mut ConnectionManager| {
            // A key that expires between the refused SET and the GET leaves nothing to report,
            // but the id is free again: one more SET settles it.
            for _ in 0..2 {
                // At least 1 ms: PX refuses 0, and an outcome already past its TTL must still
                // not overwrite a live entry.
                let px = o
                    .at_ms
                    .saturating_add(self.ttl_ms)
                    .saturating_sub(now_ms())
                    .max(1);
                let set: redis::Value = redis::cmd("SET")
                    .arg(&key)
                    .arg(&value)
                    .arg("NX")
                    .arg("PX")
                    .arg(px)
                    .query_async(conn)
                    .await?;
                if !matches!(set, redis::Value::Nil) {
                    return Ok(Insert::First);
                }
                let existing: Option<String> =
                    redis::cmd("GET").arg(&key).query_async(conn).await?;
                if let Some(existing) = existing {
                    return Self::parse(&key, &existing).map(Insert::Duplicate);
                }
            }
            Err(Failure::Store(format!(
                "{key} kept expiring between SET NX and GET"
            )))
        })
        .await
    }

    /// See [`super::Store::get`].
    pub async fn get(&self, id: &str) -> Result<Option<StoredOutcome>, StoreError> {
        let key = self.key(id);
        self.run("get", async |conn: &mut ConnectionManager| {
            let value: Option<String> = redis::cmd("GET").arg(&key).query_async(conn).await?;
            value.map(|v| Self::parse(&key, &v)).transpose()
        })
        .await
    }

    /// See [`super::Store::ping`].
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.run("ping", async |conn: &mut ConnectionManager| {
            let _: String = redis::cmd("PING").query_async(conn).await?;
            Ok(())
        })
        .await
    }

    /// Always 0: Redis expires keys itself.
    pub async fn purge_expired(&self) -> Result<u64, StoreError> {
        Ok(0)
    }
}
