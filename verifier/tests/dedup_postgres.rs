//! The PostgreSQL dedup store against a real server on 127.0.0.1:5432 (CI starts one; trust
//! auth, user `postgres`, database `test`).
//!
//! Every test works in its own random schema and drops it when it ends.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use coherence_verifier::dedup::postgres::PostgresStore;
use coherence_verifier::dedup::{Insert, Store, StoreError, StoreSettings};
use common::{
    Proxy, assert_first_write_wins, assert_one_winner_of_concurrent_inserts, eventually, free_port,
    outcome, settings, tag,
};
use std::sync::Arc;
use std::time::Duration;

const PG: &str = "127.0.0.1:5432";
const URL: &str = "postgres://postgres@127.0.0.1:5432/test";

fn url_via(port: u16) -> String {
    format!("postgres://postgres@127.0.0.1:{port}/test")
}

fn long() -> StoreSettings {
    settings(Duration::from_secs(600), Duration::from_secs(10))
}

/// A direct connection for checks; panics if PostgreSQL is down.
async fn admin() -> tokio_postgres::Client {
    let connect = tokio_postgres::connect(URL, tokio_postgres::NoTls);
    let (client, connection) = match tokio::time::timeout(Duration::from_secs(5), connect).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            let cause = std::error::Error::source(&e).map(|s| s.to_string());
            panic!(
                "PostgreSQL is not reachable at {URL} ({e}: {}); start it before these tests",
                cause.unwrap_or_default()
            )
        }
        Err(_) => {
            panic!("PostgreSQL at {URL} did not answer within 5 s; start it before these tests")
        }
    };
    tokio::spawn(connection);
    client
}

/// A fresh schema name, dropped with everything in it when the guard drops, also after a failure.
struct Schema {
    name: String,
}

impl Schema {
    async fn new() -> Schema {
        // Fails the test up front, with the reason, when the server is down.
        let _ = admin().await;
        Schema {
            name: format!("coherence_test_{}", tag()),
        }
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let sql = format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.name);
        // The test's runtime may be the one unwinding; the cleanup gets a runtime of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let connect = tokio_postgres::connect(URL, tokio_postgres::NoTls);
                if let Ok(Ok((client, connection))) =
                    tokio::time::timeout(Duration::from_secs(5), connect).await
                {
                    tokio::spawn(connection);
                    let _ =
                        tokio::time::timeout(Duration::from_secs(10), client.batch_execute(&sql))
                            .await;
                }
            });
        })
        .join();
    }
}

async fn count_rows(schema: &str) -> i64 {
    admin()
        .await
        .query_one(
            &format!("SELECT count(*) FROM \"{schema}\".coherence_dedup"),
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn the_table_is_created_on_start_in_a_fresh_schema() {
    let schema = Schema::new().await;
    let db = admin().await;
    let exists = "SELECT count(*) FROM information_schema.schemata WHERE schema_name = $1";
    let n: i64 = db.query_one(exists, &[&schema.name]).await.unwrap().get(0);
    assert_eq!(n, 0);

    let _store = PostgresStore::connect(URL, &schema.name, &long())
        .await
        .unwrap();

    let columns: Vec<(String, String)> = db
        .query(
            "SELECT column_name::text, data_type::text FROM information_schema.columns
             WHERE table_schema = $1 AND table_name = 'coherence_dedup' ORDER BY ordinal_position",
            &[&schema.name],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let expected = [
        ("id", "text"),
        ("kind", "text"),
        ("status", "smallint"),
        ("seq", "bigint"),
        ("at_ms", "bigint"),
        ("expires_at_ms", "bigint"),
        ("outcome", "jsonb"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(c, t)| (c.to_string(), t.to_string()))
        .collect();
    assert_eq!(columns, expected);
    let indexes: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_indexes WHERE schemaname = $1 AND indexdef LIKE '%(expires_at_ms)%'",
            &[&schema.name],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(indexes, 1);

    // A second store on the same schema (a restart, or a second verifier) finds it in place.
    let again = PostgresStore::connect(URL, &schema.name, &long())
        .await
        .unwrap();
    again.ping().await.unwrap();
}

#[tokio::test]
async fn first_write_wins() {
    let schema = Schema::new().await;
    // The key=value form of the address is accepted as well as the URL.
    let store = PostgresStore::connect(
        "host=127.0.0.1 port=5432 user=postgres dbname=test",
        &schema.name,
        &long(),
    )
    .await
    .unwrap();
    let first = assert_first_write_wins(&Store::Postgres(store)).await;

    let row = admin()
        .await
        .query_one(
            &format!(
                "SELECT kind, status, seq, at_ms, expires_at_ms FROM \"{}\".coherence_dedup WHERE id = 'r1'",
                schema.name
            ),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "pcs");
    assert_eq!(row.get::<_, i16>(1), 200);
    assert_eq!(row.get::<_, i64>(2), 1);
    assert_eq!(row.get::<_, i64>(3), first.at_ms);
    assert_eq!(row.get::<_, i64>(4), first.at_ms + 600_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_inserts_of_one_id_have_one_winner() {
    let schema = Schema::new().await;
    let store = PostgresStore::connect(URL, &schema.name, &long())
        .await
        .unwrap();
    assert_one_winner_of_concurrent_inserts(Arc::new(Store::Postgres(store))).await;
    assert_eq!(count_rows(&schema.name).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_inserts_from_separate_stores_have_one_winner() {
    let schema = Schema::new().await;
    // Separate stores are separate connections, so the race is decided by the database.
    let mut stores = Vec::new();
    for _ in 0..4 {
        stores.push(Arc::new(
            PostgresStore::connect(URL, &schema.name, &long())
                .await
                .unwrap(),
        ));
    }
    let tasks: Vec<_> = (0..20u64)
        .map(|seq| {
            let store = Arc::clone(&stores[seq as usize % stores.len()]);
            tokio::spawn(async move { store.insert("same", &outcome(200, seq)).await.unwrap() })
        })
        .collect();
    let mut firsts = 0;
    for t in tasks {
        if t.await.unwrap() == Insert::First {
            firsts += 1;
        }
    }
    assert_eq!(firsts, 1);
}

#[tokio::test]
async fn expired_rows_are_ignored_replaced_and_purged() {
    let schema = Schema::new().await;
    let ttl = Duration::from_secs(60);
    let store = PostgresStore::connect(URL, &schema.name, &settings(ttl, Duration::from_secs(10)))
        .await
        .unwrap();
    let aged = |status, seq, age_ms| {
        let mut o = outcome(status, seq);
        o.at_ms -= age_ms;
        o
    };

    // Past its TTL: invisible, and the next write of the id is the first again.
    assert_eq!(
        store.insert("x", &aged(200, 1, 61_000)).await.unwrap(),
        Insert::First
    );
    assert_eq!(store.get("x").await.unwrap(), None);
    let fresh = outcome(202, 2);
    assert_eq!(store.insert("x", &fresh).await.unwrap(), Insert::First);
    assert_eq!(store.get("x").await.unwrap(), Some(fresh.clone()));
    // A live row is never replaced, not even by an outcome that is itself already expired.
    assert_eq!(
        store.insert("x", &aged(200, 3, 120_000)).await.unwrap(),
        Insert::Duplicate(fresh.clone())
    );
    // Close to, but not past, its TTL: still there.
    let old = aged(200, 4, 50_000);
    assert_eq!(store.insert("y", &old).await.unwrap(), Insert::First);
    assert_eq!(
        store.insert("y", &outcome(202, 5)).await.unwrap(),
        Insert::Duplicate(old)
    );

    for (i, id) in ["a", "b", "c"].iter().enumerate() {
        store
            .insert(id, &aged(200, 10 + i as u64, 61_000 + i as i64))
            .await
            .unwrap();
    }
    assert_eq!(count_rows(&schema.name).await, 5);
    assert_eq!(store.purge_expired().await.unwrap(), 3);
    assert_eq!(count_rows(&schema.name).await, 2);
    assert_eq!(store.purge_expired().await.unwrap(), 0);
    assert_eq!(store.get("x").await.unwrap(), Some(fresh));
}

#[tokio::test]
async fn entries_expire_with_time() {
    let schema = Schema::new().await;
    let store = PostgresStore::connect(
        URL,
        &schema.name,
        &settings(Duration::from_secs(1), Duration::from_secs(10)),
    )
    .await
    .unwrap();
    assert_eq!(
        store.insert("t", &outcome(200, 1)).await.unwrap(),
        Insert::First
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(store.get("t").await.unwrap(), None);
    assert_eq!(
        store.insert("t", &outcome(202, 2)).await.unwrap(),
        Insert::First
    );
}

#[tokio::test]
async fn an_invalid_schema_or_address_is_refused_at_connect() {
    let s = StoreSettings::default();
    for bad in ["", "Public", "1abc", "a-b", "a;drop table x", "x\"y"] {
        match PostgresStore::connect(URL, bad, &s).await {
            Err(StoreError::Unavailable(m)) => {
                assert!(
                    m.contains(&format!("{bad:?}")) && m.contains("expected"),
                    "{m}"
                )
            }
            Ok(_) => panic!("schema {bad:?} was accepted"),
        }
    }
    for bad in [
        "postgres://postgres@127.0.0.1:notaport/test",
        "host=127.0.0.1 port=x",
        "dbname=test",
        "mysql://127.0.0.1/test",
    ] {
        match PostgresStore::connect(bad, "public", &s).await {
            Err(StoreError::Unavailable(m)) => {
                assert!(m.contains(bad) && m.contains("expected postgres://"), "{m}")
            }
            Ok(_) => panic!("address {bad:?} was accepted"),
        }
    }
    match PostgresStore::connect("postgres://u:hunter2@127.0.0.1:x/test", "public", &s).await {
        Err(StoreError::Unavailable(m)) => assert!(!m.contains("hunter2"), "{m}"),
        Ok(_) => panic!("a bad port was accepted"),
    }
}

#[tokio::test]
async fn a_database_that_is_down_is_unavailable_and_recovers_when_it_appears() {
    let schema = Schema::new().await;
    let port = free_port();
    let s = settings(Duration::from_secs(600), Duration::from_millis(500));
    // Starting while the database is down must work: the verifier reports not-ready instead.
    let store = PostgresStore::connect(&url_via(port), &schema.name, &s)
        .await
        .unwrap();
    match store.insert("d1", &outcome(200, 1)).await {
        Err(StoreError::Unavailable(m)) => {
            assert!(m.contains(&format!("127.0.0.1:{port}")), "{m}")
        }
        Ok(r) => panic!("insert with nothing listening gave {r:?}"),
    }
    assert!(store.ping().await.is_err());
    assert!(store.get("d1").await.is_err());
    assert!(store.purge_expired().await.is_err());

    // The table is created on the first connection that succeeds.
    let _proxy = Proxy::start_on(port, PG).await;
    let first = outcome(200, 2);
    let r = eventually(
        "insert once the database is up",
        Duration::from_secs(20),
        async || store.insert("d2", &first).await,
    )
    .await;
    assert_eq!(r, Insert::First);
    assert_eq!(store.get("d2").await.unwrap(), Some(first));
    assert_eq!(count_rows(&schema.name).await, 1);
}

#[tokio::test]
async fn a_lost_connection_is_unavailable_and_reconnects_when_the_database_returns() {
    let schema = Schema::new().await;
    let mut proxy = Proxy::start(PG).await;
    let s = settings(Duration::from_secs(600), Duration::from_millis(500));
    let store = PostgresStore::connect(&url_via(proxy.port()), &schema.name, &s)
        .await
        .unwrap();
    let first = outcome(200, 1);
    assert_eq!(store.insert("c1", &first).await.unwrap(), Insert::First);

    // Every connection dropped and nothing listening, as when the server crashes.
    proxy.cut().await;
    let addr = format!("127.0.0.1:{}", proxy.port());
    for _ in 0..2 {
        match store.insert("c2", &outcome(200, 2)).await {
            Err(StoreError::Unavailable(m)) => assert!(m.contains(&addr), "{m}"),
            Ok(r) => panic!("insert through a cut proxy gave {r:?}"),
        }
        assert!(store.get("c1").await.is_err());
        assert!(store.ping().await.is_err());
    }

    // Back on the same address: the next operations reconnect.
    proxy.restore();
    eventually(
        "ping after the database came back",
        Duration::from_secs(20),
        async || store.ping().await,
    )
    .await;
    assert_eq!(
        store.insert("c1", &outcome(202, 3)).await.unwrap(),
        Insert::Duplicate(first)
    );
    assert_eq!(
        store.insert("c3", &outcome(200, 4)).await.unwrap(),
        Insert::First
    );
}

#[tokio::test]
async fn a_server_that_never_answers_is_unavailable() {
    let schema = Schema::new().await;
    // Accepts connections and then says nothing, like a hung server or a black-holed path.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let s = settings(Duration::from_secs(600), Duration::from_millis(300));
    let store = PostgresStore::connect(&url_via(port), &schema.name, &s)
        .await
        .unwrap();
    for _ in 0..2 {
        match store.insert("h1", &outcome(200, 1)).await {
            Err(StoreError::Unavailable(m)) => {
                assert!(m.contains(&format!("127.0.0.1:{port}")), "{m}")
            }
            Ok(r) => panic!("insert into a silent server gave {r:?}"),
        }
    }
    silent.abort();
}
