//! The Redis dedup store against a real server on 127.0.0.1:6379 (CI starts one).
//!
//! Every test works under its own random key prefix and deletes its keys when it ends. One test
//! pauses the whole server for a few seconds (`CLIENT PAUSE`), so the others use a timeout long
//! enough to wait that out.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use coherence_verifier::dedup::redis::RedisStore;
use coherence_verifier::dedup::{Insert, Store, StoreError, StoreSettings, StoredOutcome};
use common::{
    Proxy, assert_first_write_wins, assert_one_winner_of_concurrent_inserts, eventually, free_port,
    outcome, settings, tag,
};
use std::sync::Arc;
use std::time::Duration;

const REDIS: &str = "127.0.0.1:6379";

/// Longer than the pause in `a_paused_server_is_unavailable_until_the_pause_ends`.
const PATIENT: Duration = Duration::from_secs(10);

/// A direct connection for checks and for pausing the server; panics if Redis is down.
async fn direct() -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(format!("redis://{REDIS}")).unwrap();
    let conn = tokio::time::timeout(
        Duration::from_secs(5),
        client.get_multiplexed_async_connection(),
    )
    .await;
    match conn {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            panic!("Redis is not reachable at {REDIS} ({e}); start it before these tests")
        }
        Err(_) => panic!("Redis at {REDIS} did not answer within 5 s; start it before these tests"),
    }
}

/// A fresh key prefix whose keys are deleted when the guard drops, also after a failure.
struct Keys {
    prefix: String,
}

impl Keys {
    async fn new() -> Keys {
        // Fails the test up front, with the reason, when the server is down.
        let _ = direct().await;
        Keys {
            prefix: format!("coherence-test-{}:", tag()),
        }
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        let Ok(client) = redis::Client::open(format!("redis://{REDIS}")) else {
            return;
        };
        let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_secs(5)) else {
            return;
        };
        let _ = conn.set_read_timeout(Some(PATIENT));
        let mut cursor = 0u64;
        loop {
            let Ok((next, keys)): redis::RedisResult<(u64, Vec<String>)> = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{}*", self.prefix))
                .arg("COUNT")
                .arg(1000)
                .query(&mut conn)
            else {
                return;
            };
            if !keys.is_empty() {
                let _: redis::RedisResult<u64> = redis::cmd("DEL").arg(&keys).query(&mut conn);
            }
            if next == 0 {
                return;
            }
            cursor = next;
        }
    }
}

#[tokio::test]
async fn first_write_wins_and_is_stored_as_json_under_the_prefix() {
    let keys = Keys::new().await;
    let ttl = Duration::from_secs(600);
    // The URL form of the address is accepted as well as host:port.
    let store = RedisStore::connect(
        &format!("redis://{REDIS}/0"),
        &keys.prefix,
        &settings(ttl, PATIENT),
    )
    .await
    .unwrap();
    let store = Store::Redis(store);
    let first = assert_first_write_wins(&store).await;
    assert_eq!(store.purge_expired().await.unwrap(), 0);

    let mut conn = direct().await;
    let key = format!("{}dedup:r1", keys.prefix);
    let raw: String = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    let stored: StoredOutcome = serde_json::from_str(&raw).unwrap();
    assert_eq!(stored, first);
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(pttl > 0 && pttl <= 600_000, "PTTL of {key} is {pttl}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_inserts_of_one_id_have_one_winner() {
    let keys = Keys::new().await;
    let store = RedisStore::connect(
        REDIS,
        &keys.prefix,
        &settings(Duration::from_secs(600), PATIENT),
    )
    .await
    .unwrap();
    assert_one_winner_of_concurrent_inserts(Arc::new(Store::Redis(store))).await;
}

#[tokio::test]
async fn entries_expire_after_the_ttl() {
    let keys = Keys::new().await;
    let store = RedisStore::connect(
        REDIS,
        &keys.prefix,
        &settings(Duration::from_secs(1), PATIENT),
    )
    .await
    .unwrap();
    assert_eq!(
        store.insert("e1", &outcome(200, 1)).await.unwrap(),
        Insert::First
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(store.get("e1").await.unwrap(), None);
    let again = outcome(202, 2);
    assert_eq!(store.insert("e1", &again).await.unwrap(), Insert::First);

    // The expiry runs from the outcome's time: one older than the TTL is gone at once...
    let mut stale = outcome(200, 3);
    stale.at_ms -= 10_000;
    assert_eq!(store.insert("e2", &stale).await.unwrap(), Insert::First);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(store.get("e2").await.unwrap(), None);

    // ...but still never replaces a live entry.
    let long = RedisStore::connect(
        REDIS,
        &keys.prefix,
        &settings(Duration::from_secs(600), PATIENT),
    )
    .await
    .unwrap();
    let live = outcome(200, 4);
    assert_eq!(long.insert("e3", &live).await.unwrap(), Insert::First);
    let mut stale = outcome(202, 5);
    stale.at_ms -= 10_000;
    assert_eq!(
        store.insert("e3", &stale).await.unwrap(),
        Insert::Duplicate(live)
    );
}

#[tokio::test]
async fn an_unparseable_address_is_refused_at_connect() {
    let s = StoreSettings::default();
    for bad in [
        "redis://127.0.0.1:notaport",
        "127.0.0.1:99999",
        "ftp://127.0.0.1:6379",
    ] {
        match RedisStore::connect(bad, "p:", &s).await {
            Err(StoreError::Unavailable(m)) => {
                assert!(m.contains(bad) && m.contains("expected host:port"), "{m}")
            }
            Ok(_) => panic!("{bad} was accepted"),
        }
    }
    match RedisStore::connect("redis://:hunter2@127.0.0.1:x", "p:", &s).await {
        Err(StoreError::Unavailable(m)) => assert!(!m.contains("hunter2"), "{m}"),
        Ok(_) => panic!("a bad port was accepted"),
    }
}

#[tokio::test]
async fn a_server_that_is_down_is_unavailable_and_recovers_when_it_appears() {
    let keys = Keys::new().await;
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    // Refused and dropped connections fail at once, so the long timeout costs nothing here.
    let s = settings(Duration::from_secs(600), PATIENT);
    // Starting while the server is down must work: the verifier reports not-ready instead.
    let store = RedisStore::connect(&addr, &keys.prefix, &s).await.unwrap();
    match store.insert("d1", &outcome(200, 1)).await {
        Err(StoreError::Unavailable(m)) => assert!(m.contains(&addr), "{m}"),
        Ok(r) => panic!("insert with nothing listening gave {r:?}"),
    }
    assert!(store.ping().await.is_err());
    assert!(store.get("d1").await.is_err());

    let mut proxy = Proxy::start_on(port, REDIS).await;
    let first = outcome(200, 2);
    let r = eventually("insert once the server is up", PATIENT, async || {
        store.insert("d2", &first).await
    })
    .await;
    assert_eq!(r, Insert::First);

    // Every connection dropped and nothing listening, as when the server crashes...
    proxy.cut().await;
    match store.insert("d3", &outcome(200, 3)).await {
        Err(StoreError::Unavailable(m)) => assert!(m.contains(&addr), "{m}"),
        Ok(r) => panic!("insert through a cut proxy gave {r:?}"),
    }
    // ...and back on the same address: the store reconnects by itself.
    proxy.restore();
    eventually("ping after the server came back", PATIENT, async || {
        store.ping().await
    })
    .await;
    assert_eq!(
        store.insert("d2", &outcome(202, 4)).await.unwrap(),
        Insert::Duplicate(first)
    );
}

#[tokio::test]
async fn a_paused_server_is_unavailable_until_the_pause_ends() {
    let keys = Keys::new().await;
    let s = settings(Duration::from_secs(600), Duration::from_millis(300));
    let store = RedisStore::connect(REDIS, &keys.prefix, &s).await.unwrap();
    let first = outcome(200, 1);
    assert_eq!(store.insert("p1", &first).await.unwrap(), Insert::First);

    let mut admin = direct().await;
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(3000)
        .arg("ALL")
        .query_async(&mut admin)
        .await
        .unwrap();
    let during = outcome(200, 2);
    match store.insert("p2", &during).await {
        Err(StoreError::Unavailable(m)) => {
            assert!(m.contains(REDIS) && m.contains("no answer within"), "{m}")
        }
        Ok(r) => panic!("insert into a paused server gave {r:?}"),
    }

    // Pinged until it answers, because an insert retried during the pause would be applied
    // when the pause ends.
    eventually("ping after the pause", PATIENT, async || store.ping().await).await;
    assert_eq!(
        store.insert("p3", &outcome(200, 3)).await.unwrap(),
        Insert::First
    );
    assert_eq!(
        store.insert("p1", &outcome(202, 4)).await.unwrap(),
        Insert::Duplicate(first)
    );
    // The SET sent during the pause may still run when the pause ends, although its caller was
    // told the store was unavailable: a retry then finds that same outcome.
    match store.insert("p2", &outcome(202, 5)).await.unwrap() {
        Insert::Duplicate(o) => assert_eq!(o, during),
        Insert::First => {}
    }
}
