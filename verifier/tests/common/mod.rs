//! Helpers shared by the dedup store tests that need real servers.

#![allow(dead_code)]

use coherence_verifier::dedup::{Insert, RecordKind, Store, StoreSettings, StoredOutcome};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;

/// Store settings with this TTL and per-operation timeout.
pub fn settings(ttl: Duration, op_timeout: Duration) -> StoreSettings {
    StoreSettings { ttl, op_timeout }
}

/// An outcome to store, told apart by `status` and `seq` (its body has non-ASCII text, a
/// fraction and an array, which every backend must give back as they were).
pub fn outcome(status: u16, seq: u64) -> StoredOutcome {
    StoredOutcome {
        status,
        kind: RecordKind::Pcs,
        seq,
        at_ms: coherence_verifier::dedup::now_ms(),
        body:
            serde_json::json!({"status": status, "seq": seq, "note": "é ✓", "x": 0.1, "n": [1, 2]})
                .into(),
    }
}

/// First write wins on `store`: the first insert of an id is stored and returned to later
/// inserts as the duplicate's outcome. Returns the outcome stored under `r1`.
pub async fn assert_first_write_wins(store: &Store) -> StoredOutcome {
    let first = outcome(200, 1);
    assert_eq!(store.insert("r1", &first).await.unwrap(), Insert::First);
    assert_eq!(
        store.insert("r1", &outcome(202, 2)).await.unwrap(),
        Insert::Duplicate(first.clone())
    );
    assert_eq!(store.get("r1").await.unwrap(), Some(first.clone()));
    assert_eq!(store.get("r2").await.unwrap(), None);
    store.ping().await.unwrap();
    first
}

/// Twenty concurrent inserts of one id on `store`: exactly one is first, every other gets
/// the winner's outcome, and the winner is what is stored. Returns the winner.
pub async fn assert_one_winner_of_concurrent_inserts(store: Arc<Store>) -> StoredOutcome {
    let tasks: Vec<_> = (0..20u64)
        .map(|seq| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let o = outcome(200, seq);
                (o.clone(), store.insert("same", &o).await.unwrap())
            })
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    let winners: Vec<_> = results
        .iter()
        .filter(|(_, r)| *r == Insert::First)
        .map(|(o, _)| o.clone())
        .collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    for (_, r) in &results {
        if let Insert::Duplicate(o) = r {
            assert_eq!(o, &winners[0]);
        }
    }
    assert_eq!(store.get("same").await.unwrap(), Some(winners[0].clone()));
    winners[0].clone()
}

/// A port on 127.0.0.1 where nothing listens (at the moment of the call).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// A random lower-case hex tag, to keep tests that run at once apart on a shared server.
pub fn tag() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Calls `f` until it succeeds, at most until `limit` has passed; panics with the last error.
pub async fn eventually<T, E: std::fmt::Debug>(
    what: &str,
    limit: Duration,
    mut f: impl AsyncFnMut() -> Result<T, E>,
) -> T {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) if tokio::time::Instant::now() >= deadline => {
                panic!("{what}: still failing after {limit:?}: {e:?}")
            }
            Err(e) => {
                eprintln!("{what}: {e:?}; trying again");
                tokio::time::sleep(Duration::from_millis(100)).await
            }
        }
    }
}

struct Running {
    accept: JoinHandle<()>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

/// A TCP forwarder from 127.0.0.1:`port` to a server, which can be cut (stops listening and
/// drops every forwarded connection, as a crashed server or a broken network would) and
/// restored on the same port.
pub struct Proxy {
    port: u16,
    target: SocketAddr,
    running: Option<Running>,
}

fn listen(port: u16) -> TcpListener {
    let socket = TcpSocket::new_v4().expect("socket");
    // The port is reused right after the previous listener and its connections were dropped.
    socket.set_reuseaddr(true).expect("SO_REUSEADDR");
    socket
        .bind(SocketAddr::from(([127, 0, 0, 1], port)))
        .unwrap_or_else(|e| panic!("proxy: bind 127.0.0.1:{port}: {e}"));
    socket.listen(64).expect("listen")
}

impl Proxy {
    /// A proxy to `target` on a free port.
    pub async fn start(target: &str) -> Proxy {
        Self::start_on(0, target).await
    }

    /// A proxy to `target` on `port` (0: any free port).
    pub async fn start_on(port: u16, target: &str) -> Proxy {
        let target: SocketAddr = target.parse().expect("proxy target is ip:port");
        let listener = listen(port);
        let port = listener.local_addr().expect("local addr").port();
        let mut p = Proxy {
            port,
            target,
            running: None,
        };
        p.run(listener);
        p
    }

    fn run(&mut self, listener: TcpListener) {
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let target = self.target;
        let list = Arc::clone(&conns);
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let forward = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                list.lock().expect("proxy list").push(forward);
            }
        });
        self.running = Some(Running { accept, conns });
    }

    /// The port the proxy listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops listening and drops every forwarded connection.
    pub async fn cut(&mut self) {
        let Some(r) = self.running.take() else { return };
        r.accept.abort();
        let _ = r.accept.await;
        let conns = std::mem::take(&mut *r.conns.lock().expect("proxy list"));
        for c in &conns {
            c.abort();
        }
        for c in conns {
            let _ = c.await;
        }
    }

    /// Listens again on the same port.
    pub fn restore(&mut self) {
        if self.running.is_none() {
            let listener = listen(self.port);
            self.run(listener);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            r.accept.abort();
            for c in r.conns.lock().expect("proxy list").iter() {
                c.abort();
            }
        }
    }
}
