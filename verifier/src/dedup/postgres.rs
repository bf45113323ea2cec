//! The PostgreSQL dedup store: one row per id in `<schema>.coherence_dedup`, created on the first
//! successful connection.
//!
//! An insert is one statement, `INSERT … ON CONFLICT (id) DO UPDATE … WHERE <row expired>`, so a
//! live row is never replaced (first write wins, also between concurrent writers) while an
//! expired one is taken over in place. Expired rows are invisible to reads and deleted by
//! [`PostgresStore::purge_expired`].
//!
//! One connection is opened lazily and replaced after it fails or an operation times out, so a
//! verifier started while the database is down comes up, answers 503 until it returns, and then
//! recovers without a restart.
//!
//! An insert that timed out may still commit; the caller was told the store is unavailable, and
//! a retry finds the outcome that insert stored.

use super::health::{Health, redact};
use super::{Insert, StoreError, StoreSettings, StoredOutcome, now_ms};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio_postgres::{Client, NoTls, Statement};

/// Rows one purge statement deletes at most, so a large backlog is cleared in steps that each
/// fit in the operation timeout.
const PURGE_BATCH: u64 = 10_000;

/// Serialises table creation between verifiers starting at once (`CREATE … IF NOT EXISTS` can
/// still collide when run concurrently).
const SETUP_LOCK_KEY: i64 = 0x636f_6865_7265_6e63;

/// Why one operation failed.
enum Failure {
    /// The database did not answer properly: the store is unavailable.
    Store(String),
    /// The database answered, but with a row this store did not write.
    Data(String),
}

impl From<tokio_postgres::Error> for Failure {
    fn from(e: tokio_postgres::Error) -> Self {
        Failure::Store(describe(&e))
    }
}

/// The error with its causes: `tokio_postgres::Error` alone prints only "db error".
fn describe(e: &tokio_postgres::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Whether `schema` is a lower-case SQL identifier: quoted or not, it then names the same
/// schema, and it cannot close the quotes it is written in.
fn valid_schema(schema: &str) -> bool {
    let mut chars = schema.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && schema.len() <= 63
}

/// The statements of one store, with its schema filled in.
#[derive(Debug)]
struct Sql {
    setup: String,
    insert: String,
    select_live: String,
    purge: String,
}

impl Sql {
    fn new(schema: &str) -> Self {
        let table = format!("\"{schema}\".coherence_dedup");
        Self {
            setup: format!(
                "BEGIN;
                 SELECT pg_advisory_xact_lock({SETUP_LOCK_KEY});
                 CREATE SCHEMA IF NOT EXISTS \"{schema}\";
                 CREATE TABLE IF NOT EXISTS {table} (
                     id text PRIMARY KEY,
                     kind text NOT NULL,
                     status smallint NOT NULL,
                     seq bigint NOT NULL,
                     at_ms bigint NOT NULL,
                     expires_at_ms bigint NOT NULL,
                     outcome jsonb NOT NULL
                 );
                 CREATE INDEX IF NOT EXISTS coherence_dedup_expires_at_ms
                     ON {table} (expires_at_ms);
                 COMMIT;"
            ),
            insert: format!(
                "INSERT INTO {table} AS d (id, kind, status, seq, at_ms, expires_at_ms, outcome)
                 VALUES ($1, $2, $3, $4, $5, $6, $7::text::jsonb)
                 ON CONFLICT (id) DO UPDATE SET
                     kind = EXCLUDED.kind, status = EXCLUDED.status, seq = EXCLUDED.seq,
                     at_ms = EXCLUDED.at_ms, expires_at_ms = EXCLUDED.expires_at_ms,
                     outcome = EXCLUDED.outcome
                 WHERE d.expires_at_ms <= $8"
            ),
            select_live: format!(
                "SELECT outcome::text FROM {table} WHERE id = $1 AND expires_at_ms > $2"
            ),
            purge: format!(
                "DELETE FROM {table} WHERE id IN (
                     SELECT id FROM {table} WHERE expires_at_ms <= $1 LIMIT {PURGE_BATCH})"
            ),
        }
    }
}

/// One open connection and its prepared statements.
struct Conn {
    client: Client,
    insert: Statement,
    select_live: Statement,
    purge: Statement,
    ping: Statement,
}

/// The postgres store.
pub struct PostgresStore {
    /// Boxed to keep [`super::Store`] small.
    config: Box<tokio_postgres::Config>,
    schema: String,
    sql: Sql,
    settings: StoreSettings,
    ttl_ms: i64,
    health: Health,
    /// The live connection, if any; never held across an await.
    current: Mutex<Option<Arc<Conn>>>,
    /// Held while opening a connection, so concurrent operations wait for one new connection
    /// instead of each opening their own.
    opening: tokio::sync::Mutex<()>,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("addr", &self.health.addr())
            .field("schema", &self.schema)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// A store at `addr` (a `postgres://` URL or `key=value` pairs) keeping its table in the
    /// SQL schema `prefix` (`[a-z_][a-z0-9_]*`, created if missing).
    ///
    /// Fails only when `addr` or `prefix` is invalid: an unreachable database is reported by the
    /// operations (and logged here), not by `connect`.
    pub async fn connect(
        addr: &str,
        prefix: &str,
        settings: &StoreSettings,
    ) -> Result<Self, StoreError> {
        if !valid_schema(prefix) {
            return Err(StoreError::Unavailable(format!(
                "invalid postgres schema {prefix:?}: expected a lower-case SQL identifier \
                 ([a-z_][a-z0-9_]*, at most 63 characters)"
            )));
        }
        let invalid = |why: String| {
            StoreError::Unavailable(format!(
                "invalid postgres address {:?}: {why}; expected postgres://user[:password]@host[:port]/database \
                 or key=value pairs (host=… user=… dbname=…)",
                redact(addr)
            ))
        };
        let mut config: tokio_postgres::Config = addr.parse().map_err(|e| invalid(describe(&e)))?;
        if config.get_hosts().is_empty() && config.get_hostaddrs().is_empty() {
            return Err(invalid("no host".into()));
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(settings.op_timeout);
        }
        let store = Self {
            health: Health::new("postgres", shown_addr(&config)),
            config: Box::new(config),
            schema: prefix.to_owned(),
            sql: Sql::new(prefix),
            settings: settings.clone(),
            ttl_ms: i64::try_from(settings.ttl.as_millis()).unwrap_or(i64::MAX),
            current: Mutex::new(None),
            opening: tokio::sync::Mutex::new(()),
        };
        // Creates the table now if the database answers, and logs whether it does; a down
        // database is not an error yet.
        let _ = store.ping().await;
        Ok(store)
    }

    fn slot(&self) -> MutexGuard<'_, Option<Arc<Conn>>> {
        // Every update is a single assignment, so a poisoned lock holds a consistent value.
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn live(&self) -> Option<Arc<Conn>> {
        self.slot()
            .as_ref()
            .filter(|c| !c.client.is_closed())
            .cloned()
    }

    /// Forgets `conn` (unless it was already replaced), so the next operation opens a new one.
    fn discard(&self, conn: &Arc<Conn>) {
        let mut slot = self.slot();
        if slot.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
            *slot = None;
        }
    }

    async fn conn(&self) -> Result<Arc<Conn>, Failure> {
        if let Some(c) = self.live() {
            return Ok(c);
        }
        let _opening = self.opening.lock().await;
        if let Some(c) = self.live() {
            return Ok(c);
        }
        let c = Arc::new(self.open().await?);
        *self.slot() = Some(Arc::clone(&c));
        Ok(c)
    }

    async fn open(&self) -> Result<Conn, Failure> {
        let (client, connection) = self.config.connect(NoTls).await?;
        let addr = self.health.addr().to_owned();
        // The connection future does the socket I/O for the client; it ends when the client is
        // dropped or the socket fails, and the client then reports itself closed.
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(addr, error = %describe(&e), "postgres connection ended");
            }
        });
        client.batch_execute(&self.sql.setup).await?;
        Ok(Conn {
            insert: client.prepare(&self.sql.insert).await?,
            select_live: client.prepare(&self.sql.select_live).await?,
            purge: client.prepare(&self.sql.purge).await?,
            ping: client.prepare("SELECT 1").await?,
            client,
        })
    }

    /// Runs `op` on a connection within the operation timeout, turning every failure into
    /// `Unavailable`, dropping the connection when it may be broken, and recording availability
    /// transitions.
    async fn run<T>(
        &self,
        what: &str,
        op: impl AsyncFnOnce(&Conn) -> Result<T, Failure>,
    ) -> Result<T, StoreError> {
        let mut used = None;
        let attempt = tokio::time::timeout(self.settings.op_timeout, async {
            let conn = self.conn().await?;
            used = Some(Arc::clone(&conn));
            op(&conn).await
        })
        .await;
        let result = attempt.unwrap_or_else(|_| {
            Err(Failure::Store(format!(
                "no answer within {:?}",
                self.settings.op_timeout
            )))
        });
        match result {
            Ok(v) => {
                self.health.up();
                Ok(v)
            }
            Err(Failure::Store(reason)) => {
                // A connection that timed out may be stuck on a dead peer, and one that failed
                // may be mid-transaction or missing its table: a fresh one is the safe state.
                if let Some(conn) = &used {
                    self.discard(conn);
                }
                let reason = format!(
                    "postgres at {} (schema {}): {what}: {reason}",
                    self.health.addr(),
                    self.schema
                );
                self.health.down(&reason);
                Err(StoreError::Unavailable(reason))
            }
            Err(Failure::Data(reason)) => {
                self.health.up();
                let reason = format!(
                    "postgres at {} (schema {}): {what}: {reason}",
                    self.health.addr(),
                    self.schema
                );
                tracing::warn!(%reason, "unreadable dedup entry");
                Err(StoreError::Unavailable(reason))
            }
        }
    }

    async fn select_live(
        conn: &Conn,
        id: &str,
        now: i64,
    ) -> Result<Option<StoredOutcome>, Failure> {
        let Some(row) = conn
            .client
            .query_opt(&conn.select_live, &[&id, &now])
            .await?
        else {
            return Ok(None);
        };
        let text: String = row.try_get(0)?;
        serde_json::from_str(&text).map(Some).map_err(|e| {
            Failure::Data(format!(
                "outcome of {id:?} is not a stored outcome (status, kind, seq, at_ms, body): {e}"
            ))
        })
    }

    /// Stores `o` under `id` unless `id` is stored and unexpired; the expiry runs from
    /// `o.at_ms`, as in the other backends.
    pub async fn insert(&self, id: &str, o: &StoredOutcome) -> Result<Insert, StoreError> {
        let json = serde_json::to_string(o)
            .map_err(|e| StoreError::Unavailable(format!("outcome of {id} as JSON: {e}")))?;
        // The columns beside the JSON are for queries only; the JSON is what is read back, so
        // a value out of the column's range is clamped rather than refused.
        let status = i16::try_from(o.status).unwrap_or(i16::MAX);
        let seq = i64::try_from(o.seq).unwrap_or(i64::MAX);
        let expires = o.at_ms.saturating_add(self.ttl_ms);
        self.run("insert", async |conn: &Conn| {
            // A live row that expires between the refused insert and the read leaves nothing
            // to report, but the id is free again: one more insert settles it.
            for _ in 0..2 {
                let now = now_ms();
                let inserted = conn
                    .client
                    .execute(
                        &conn.insert,
                        &[
                            &id,
                            &o.kind.as_str(),
                            &status,
                            &seq,
                            &o.at_ms,
                            &expires,
                            &json,
                            &now,
                        ],
                    )
                    .await?;
                if inserted > 0 {
                    return Ok(Insert::First);
                }
                if let Some(first) = Self::select_live(conn, id, now_ms()).await? {
                    return Ok(Insert::Duplicate(first));
                }
            }
            Err(Failure::Store(format!(
                "row {id:?} kept expiring between insert and select"
            )))
        })
        .await
    }

    /// See [`super::Store::get`].
    pub async fn get(&self, id: &str) -> Result<Option<StoredOutcome>, StoreError> {
        self.run("get", async |conn: &Conn| {
            Self::select_live(conn, id, now_ms()).await
        })
        .await
    }

    /// See [`super::Store::ping`].
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.run("ping", async |conn: &Conn| {
            conn.client.query_one(&conn.ping, &[]).await?;
            Ok(())
        })
        .await
    }

    /// Deletes expired rows; returns how many.
    pub async fn purge_expired(&self) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let now = now_ms();
            let deleted = self
                .run("purge", async |conn: &Conn| {
                    Ok(conn.client.execute(&conn.purge, &[&now]).await?)
                })
                .await?;
            total += deleted;
            if deleted < PURGE_BATCH {
                return Ok(total);
            }
        }
    }
}

/// `host:port[,host:port…]/database` of `config`, without credentials, for logs and errors.
fn shown_addr(config: &tokio_postgres::Config) -> String {
    let ports = config.get_ports();
    let port = |i: usize| {
        ports
            .get(i)
            .or_else(|| ports.first())
            .copied()
            .unwrap_or(5432)
    };
    let mut hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| match host {
            tokio_postgres::config::Host::Tcp(h) => format!("{h}:{}", port(i)),
            #[cfg(unix)]
            tokio_postgres::config::Host::Unix(p) => format!("{}:{}", p.display(), port(i)),
        })
        .collect();
    if hosts.is_empty() {
        hosts = config
            .get_hostaddrs()
            .iter()
            .enumerate()
            .map(|(i, ip)| format!("{ip}:{}", port(i)))
            .collect();
    }
    let db = config.get_dbname().or(config.get_user()).unwrap_or("");
    format!("{}/{db}", hosts.join(","))
}

#[cfg(test)]
mod tests {
    use super::{shown_addr, valid_schema};

    #[test]
    fn addresses_are_shown_without_credentials() {
        let shown = |a: &str| shown_addr(&a.parse().unwrap());
        assert_eq!(
            shown("postgres://u:secret@db.example:6543/app"),
            "db.example:6543/app"
        );
        assert_eq!(shown("host=a,b port=1,2 dbname=d password=p"), "a:1,b:2/d");
        assert_eq!(
            shown("hostaddr=10.0.0.1 user=u password=p"),
            "10.0.0.1:5432/u"
        );
    }

    #[test]
    fn schema_names_are_lower_case_identifiers() {
        for ok in ["public", "_t", "coherence_2", "a"] {
            assert!(valid_schema(ok), "{ok}");
        }
        let long = "a".repeat(64);
        for bad in ["", "1a", "Public", "a-b", "a b", "a\"b", "ä", long.as_str()] {
            assert!(!valid_schema(bad), "{bad}");
        }
    }
}
