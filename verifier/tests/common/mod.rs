//! Helpers shared by the dedup store tests that need real servers.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;

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
