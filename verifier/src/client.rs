//! An HTTP/1.1 client of the verifier's API: mTLS for `https://` endpoints, plain HTTP for
//! `http://` (a verifier started with `--insecure-dev`).
//!
//! Connections are kept alive and reused: each request takes an idle connection from a small
//! pool or opens a new one, and gives it back when the answer has been read. `C` concurrent
//! requests therefore use at most `C` connections, and a steady caller pays for one TLS
//! handshake per connection, not per request. Full and resumed handshakes are counted so a
//! benchmark can report them.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST, HeaderValue};
use http::{HeaderMap, Method, Request, Uri};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Timeouts and pool size.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Limit on the TCP connect and, separately, the TLS handshake.
    pub connect_timeout: Duration,
    /// Limit on a whole request: connecting if needed, sending, reading the answer.
    pub request_timeout: Duration,
    /// Idle connections kept for reuse; more are closed when given back.
    pub max_idle: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            max_idle: 64,
        }
    }
}

/// An answer of the verifier.
#[derive(Debug, Clone)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// Response headers (`retry-after`, `content-type`).
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl Response {
    /// `Retry-After` in seconds (429, 503), if present and numeric.
    pub fn retry_after(&self) -> Option<Duration> {
        self.headers
            .get(http::header::RETRY_AFTER)?
            .to_str()
            .ok()?
            .trim()
            .parse::<u64>()
            .ok()
            .map(Duration::from_secs)
    }

    /// 2xx?
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body as text (lossy UTF-8), for messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Why a request got no answer; every variant names the endpoint.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The endpoint URL or the request cannot be used.
    #[error("{endpoint}: expected {expected}")]
    Invalid {
        /// The endpoint (and path, when the path is at fault).
        endpoint: String,
        /// What it must be.
        expected: String,
    },
    /// TCP connect failed.
    #[error("{endpoint}: cannot connect: {source}")]
    Connect {
        /// The endpoint.
        endpoint: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// TCP connect or TLS handshake took longer than the connect timeout.
    #[error("{endpoint}: no connection within {after:?}")]
    ConnectTimeout {
        /// The endpoint.
        endpoint: String,
        /// The timeout.
        after: Duration,
    },
    /// The TLS handshake failed (certificate refused, unknown CA, wrong name).
    #[error("{endpoint}: TLS handshake failed: {source}")]
    Tls {
        /// The endpoint.
        endpoint: String,
        /// The handshake error.
        source: std::io::Error,
    },
    /// The connection broke or the answer was not HTTP.
    #[error("{endpoint}: HTTP exchange failed: {source}")]
    Http {
        /// The endpoint.
        endpoint: String,
        /// The hyper error.
        source: hyper::Error,
    },
    /// No complete answer within the request timeout.
    #[error("{endpoint}: no answer within {after:?}")]
    Timeout {
        /// The endpoint.
        endpoint: String,
        /// The timeout.
        after: Duration,
    },
}

impl ClientError {
    /// A short name of the failure (`connect`, `tls`, `timeout`…), for counting.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientError::Invalid { .. } => "invalid",
            ClientError::Connect { .. } => "connect",
            ClientError::ConnectTimeout { .. } => "connect_timeout",
            ClientError::Tls { .. } => "tls",
            ClientError::Http { .. } => "http",
            ClientError::Timeout { .. } => "timeout",
        }
    }
}

type Sender = SendRequest<Full<Bytes>>;

struct Inner {
    endpoint: String,
    host: String,
    port: u16,
    authority: HeaderValue,
    base_path: String,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    options: Options,
    idle: Mutex<Vec<Sender>>,
    full_handshakes: AtomicU64,
    resumed_handshakes: AtomicU64,
    connections: AtomicU64,
}

/// A client of one verifier endpoint; cheap to clone (clones share the connection pool and the
/// counters). Needs a tokio runtime: each connection is driven by a spawned task.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoint", &self.inner.endpoint)
            .field("tls", &self.inner.tls.is_some())
            .finish()
    }
}

impl Client {
    /// A client of `endpoint` (`https://host:port` with `tls`, or `http://host:port`) with the
    /// default [`Options`].
    pub fn new(endpoint: &str, tls: Option<Arc<ClientConfig>>) -> Result<Client, ClientError> {
        Client::with_options(endpoint, tls, Options::default())
    }

    /// A client with explicit timeouts and pool size. An `https://` endpoint needs `tls`; an
    /// `http://` endpoint ignores it. A path in the endpoint prefixes every request's path.
    pub fn with_options(
        endpoint: &str,
        tls: Option<Arc<ClientConfig>>,
        options: Options,
    ) -> Result<Client, ClientError> {
        let endpoint = endpoint.trim().trim_end_matches('/').to_owned();
        let invalid = |expected: &str| ClientError::Invalid {
            endpoint: endpoint.clone(),
            expected: expected.to_owned(),
        };
        let uri: Uri = endpoint
            .parse()
            .map_err(|_| invalid("a URL like https://host:8443 or http://host:8443"))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(invalid("a URL starting with https:// or http://")),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| invalid("a URL with a host, like https://host:8443"))?;
        if authority.as_str().contains('@') {
            return Err(invalid("a URL without user information"));
        }
        if uri.query().is_some() {
            return Err(invalid("a URL without a query"));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = if https {
            let config = tls.ok_or_else(|| {
                invalid(
                    "a client TLS configuration (CA, certificate, key) for an https:// endpoint",
                )
            })?;
            let name = ServerName::try_from(host.clone())
                .map_err(|_| invalid("a host that is a DNS name or an IP address"))?;
            Some((TlsConnector::from(config), name))
        } else {
            None
        };
        let authority = HeaderValue::from_str(authority.as_str())
            .map_err(|_| invalid("a host usable in a Host header"))?;
        let base_path = uri.path().trim_end_matches('/').to_owned();
        Ok(Client {
            inner: Arc::new(Inner {
                endpoint,
                host,
                port,
                authority,
                base_path,
                tls,
                options,
                idle: Mutex::new(Vec::new()),
                full_handshakes: AtomicU64::new(0),
                resumed_handshakes: AtomicU64::new(0),
                connections: AtomicU64::new(0),
            }),
        })
    }

    /// The endpoint URL, as given (less a trailing `/`).
    pub fn endpoint(&self) -> &str {
        &self.inner.endpoint
    }

    /// Full TLS handshakes so far (each new connection without session resumption).
    pub fn handshakes(&self) -> u64 {
        self.inner.full_handshakes.load(Ordering::Relaxed)
    }

    /// Resumed TLS handshakes so far.
    pub fn resumed_handshakes(&self) -> u64 {
        self.inner.resumed_handshakes.load(Ordering::Relaxed)
    }

    /// Connections opened so far (TLS or plain).
    pub fn connections(&self) -> u64 {
        self.inner.connections.load(Ordering::Relaxed)
    }

    /// Connections currently idle in the pool.
    pub fn idle_connections(&self) -> usize {
        self.inner.idle.lock().map(|v| v.len()).unwrap_or(0)
    }

    /// `POST` a JSON body to `path` (`/v1/pcs/submit`).
    pub async fn post_json(&self, path: &str, body: Bytes) -> Result<Response, ClientError> {
        self.request(Method::POST, path, Some(body)).await
    }

    /// `GET` `path` (`/v1/workloads`).
    pub async fn get(&self, path: &str) -> Result<Response, ClientError> {
        self.request(Method::GET, path, None).await
    }

    fn build_request(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<Request<Full<Bytes>>, ClientError> {
        let target = format!("{}{path}", self.inner.base_path);
        let invalid = || ClientError::Invalid {
            endpoint: format!("{}{path}", self.inner.endpoint),
            expected: "a request path starting with /".to_owned(),
        };
        if !path.starts_with('/') {
            return Err(invalid());
        }
        let uri: Uri = target.parse().map_err(|_| invalid())?;
        let mut builder = Request::builder()
            .method(method)
            .uri(uri)
            .header(HOST, self.inner.authority.clone());
        if body.is_some() {
            builder = builder.header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        builder
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|_| invalid())
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<Response, ClientError> {
        let req = self.build_request(method, path, body)?;
        let after = self.inner.options.request_timeout;
        match tokio::time::timeout(after, self.exchange(req)).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Timeout {
                endpoint: self.inner.endpoint.clone(),
                after,
            }),
        }
    }

    async fn exchange(&self, mut req: Request<Full<Bytes>>) -> Result<Response, ClientError> {
        // Reuse idle connections first; one the server has closed in the meantime gives the
        // request back unsent, and the next one (or a new connection) is tried.
        while let Some(mut sender) = self.take_idle() {
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => return self.finish(sender, resp).await,
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(self.http_error(e.into_error())),
                },
            }
        }
        let mut sender = self.connect().await?;
        sender.ready().await.map_err(|e| self.http_error(e))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| self.http_error(e))?;
        self.finish(sender, resp).await
    }

    fn http_error(&self, source: hyper::Error) -> ClientError {
        ClientError::Http {
            endpoint: self.inner.endpoint.clone(),
            source,
        }
    }

    fn take_idle(&self) -> Option<Sender> {
        let mut idle = self.inner.idle.lock().ok()?;
        while let Some(s) = idle.pop() {
            if !s.is_closed() {
                return Some(s);
            }
        }
        None
    }

    fn give_back(&self, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        if let Ok(mut idle) = self.inner.idle.lock()
            && idle.len() < self.inner.options.max_idle
        {
            idle.push(sender);
        }
    }

    async fn finish(
        &self,
        sender: Sender,
        resp: http::Response<hyper::body::Incoming>,
    ) -> Result<Response, ClientError> {
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| self.http_error(e))?
            .to_bytes();
        self.give_back(sender);
        Ok(Response {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        })
    }

    async fn connect(&self) -> Result<Sender, ClientError> {
        let inner = &self.inner;
        let after = inner.options.connect_timeout;
        let timed_out = || ClientError::ConnectTimeout {
            endpoint: inner.endpoint.clone(),
            after,
        };
        let tcp =
            tokio::time::timeout(after, TcpStream::connect((inner.host.as_str(), inner.port)))
                .await
                .map_err(|_| timed_out())?
                .map_err(|source| ClientError::Connect {
                    endpoint: inner.endpoint.clone(),
                    source,
                })?;
        // Requests are small and latency-bound; Nagle would hold the body back.
        let _ = tcp.set_nodelay(true);
        let sender = match &inner.tls {
            Some((connector, name)) => {
                let tls = tokio::time::timeout(after, connector.connect(name.clone(), tcp))
                    .await
                    .map_err(|_| timed_out())?
                    .map_err(|source| ClientError::Tls {
                        endpoint: inner.endpoint.clone(),
                        source,
                    })?;
                let counter = match tls.get_ref().1.handshake_kind() {
                    Some(rustls::HandshakeKind::Resumed) => &inner.resumed_handshakes,
                    _ => &inner.full_handshakes,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                self.http1(TokioIo::new(tls)).await?
            }
            None => self.http1(TokioIo::new(tcp)).await?,
        };
        inner.connections.fetch_add(1, Ordering::Relaxed);
        Ok(sender)
    }

    async fn http1<T>(&self, io: T) -> Result<Sender, ClientError>
    where
        T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let (sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| self.http_error(e))?;
        let endpoint = self.inner.endpoint.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%endpoint, error = %e, "connection closed with an error");
            }
        });
        Ok(sender)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::tls::{self, Identity, certgen};
    use hyper::service::service_fn;
    use std::convert::Infallible;
    use std::net::SocketAddr;
    use tokio::net::TcpListener;

    /// Answers with the caller's namespace; `POST` bodies containing `bad` get 401 and
    /// `/busy` gets 429 with `Retry-After: 3`.
    async fn handle(
        id: Identity,
        req: Request<hyper::body::Incoming>,
    ) -> Result<http::Response<Full<Bytes>>, Infallible> {
        let path = req.uri().path().to_owned();
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let mut resp = http::Response::new(Full::new(Bytes::from(format!(
            "{} {}",
            id.namespace,
            body.len()
        ))));
        if path == "/busy" {
            *resp.status_mut() = http::StatusCode::TOO_MANY_REQUESTS;
            resp.headers_mut()
                .insert("retry-after", HeaderValue::from_static("3"));
        } else if body.windows(3).any(|w| w == b"bad") {
            *resp.status_mut() = http::StatusCode::UNAUTHORIZED;
        }
        Ok(resp)
    }

    async fn serve(config: Option<Arc<rustls::ServerConfig>>) -> SocketAddr {
        serve_with(config, true).await
    }

    async fn serve_with(config: Option<Arc<rustls::ServerConfig>>, keep_alive: bool) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let config = config.clone();
                tokio::spawn(async move {
                    let mut builder = hyper::server::conn::http1::Builder::new();
                    builder.keep_alive(keep_alive);
                    match config {
                        Some(config) => {
                            let Ok(tls) = tokio_rustls::TlsAcceptor::from(config).accept(tcp).await
                            else {
                                return;
                            };
                            let id = Identity::from_peer_certs(
                                tls.get_ref().1.peer_certificates().unwrap_or(&[]),
                            )
                            .unwrap();
                            let svc = service_fn(move |r| handle(id.clone(), r));
                            let _ = builder.serve_connection(TokioIo::new(tls), svc).await;
                        }
                        None => {
                            let svc = service_fn(|r| handle(Identity::insecure_dev(), r));
                            let _ = builder.serve_connection(TokioIo::new(tcp), svc).await;
                        }
                    }
                });
            }
        });
        addr
    }

    fn certs(clients: &[certgen::ClientSpec]) -> (tempfile::TempDir, certgen::Generated) {
        let dir = tempfile::tempdir().unwrap();
        let g = certgen::generate(dir.path(), clients, 30).unwrap();
        (dir, g)
    }

    #[tokio::test]
    async fn mtls_requests_reuse_one_connection() {
        let (_d, g) = certs(&[certgen::ClientSpec::new("a", "shop").unwrap()]);
        let server = tls::server_config(&g.verifier.cert, &g.verifier.key, &g.ca.cert).unwrap();
        let addr = serve(Some(server)).await;
        let pair = &g.clients[0].1;
        let config = tls::client_config(&g.ca.cert, &pair.cert, &pair.key).unwrap();
        let client =
            Client::new(&format!("https://127.0.0.1:{}", addr.port()), Some(config)).unwrap();
        for _ in 0..5 {
            let r = client
                .post_json("/v1/pcs/submit", Bytes::from_static(b"{\"x\":1}"))
                .await
                .unwrap();
            assert_eq!(r.status, 200);
            assert_eq!(r.text(), "shop 7");
        }
        let r = client
            .post_json("/v1/pcs/submit", Bytes::from_static(b"bad"))
            .await
            .unwrap();
        assert_eq!(r.status, 401);
        let r = client.get("/busy").await.unwrap();
        assert_eq!(r.status, 429);
        assert_eq!(r.retry_after(), Some(Duration::from_secs(3)));
        assert_eq!(client.handshakes(), 1);
        assert_eq!(client.connections(), 1);
        assert_eq!(client.idle_connections(), 1);
    }

    #[tokio::test]
    async fn concurrent_requests_open_at_most_that_many_connections() {
        let (_d, g) = certs(&[]);
        let server = tls::server_config(&g.verifier.cert, &g.verifier.key, &g.ca.cert).unwrap();
        let addr = serve(Some(server)).await;
        let config = tls::client_config(&g.ca.cert, &g.client.cert, &g.client.key).unwrap();
        let client =
            Client::new(&format!("https://localhost:{}/", addr.port()), Some(config)).unwrap();
        for _ in 0..3 {
            let tasks: Vec<_> = (0..4)
                .map(|_| {
                    let c = client.clone();
                    tokio::spawn(async move { c.get("/v1/workloads").await.unwrap().status })
                })
                .collect();
            for t in tasks {
                assert_eq!(t.await.unwrap(), 200);
            }
        }
        assert!(client.connections() <= 4, "{}", client.connections());
        assert_eq!(
            client.handshakes() + client.resumed_handshakes(),
            client.connections()
        );
    }

    #[tokio::test]
    async fn connections_the_server_closes_are_replaced() {
        let (_d, g) = certs(&[]);
        let server = tls::server_config(&g.verifier.cert, &g.verifier.key, &g.ca.cert).unwrap();
        let addr = serve_with(Some(server), false).await;
        let config = tls::client_config(&g.ca.cert, &g.client.cert, &g.client.key).unwrap();
        let client =
            Client::new(&format!("https://127.0.0.1:{}", addr.port()), Some(config)).unwrap();
        for _ in 0..5 {
            let r = client
                .post_json("/v1/pcs/submit", Bytes::from_static(b"{}"))
                .await
                .unwrap();
            assert_eq!(r.status, 200);
        }
        assert_eq!(client.connections(), 5);
        let plain = serve_with(None, false).await;
        let client = Client::new(&format!("http://{plain}"), None).unwrap();
        for _ in 0..3 {
            assert_eq!(client.get("/healthz").await.unwrap().status, 200);
        }
        assert_eq!(client.connections(), 3);
    }

    #[tokio::test]
    async fn plain_http_for_insecure_dev() {
        let addr = serve(None).await;
        let client = Client::new(&format!("http://{addr}"), None).unwrap();
        let r = client
            .post_json("/v1/signals/submit", Bytes::from_static(b"{}"))
            .await
            .unwrap();
        assert_eq!((r.status, r.text().as_str()), (200, "* 2"));
        assert_eq!(client.handshakes(), 0);
        assert_eq!(client.connections(), 1);
    }

    #[tokio::test]
    async fn errors_name_the_endpoint() {
        let e = Client::new("https://127.0.0.1:1", None).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("https://127.0.0.1:1: expected a client TLS configuration"),
            "{e}"
        );
        let e = Client::new("ftp://x", None).unwrap_err();
        assert!(e.to_string().starts_with("ftp://x: expected"), "{e}");
        // A port nothing listens on (bound, then released).
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let endpoint = format!("http://127.0.0.1:{port}");
        let client = Client::new(&endpoint, None).unwrap();
        let e = client.get("/healthz").await.unwrap_err();
        assert_eq!(e.kind(), "connect");
        assert!(e.to_string().starts_with(&endpoint), "{e}");
        let e = client.get("healthz").await.unwrap_err();
        assert_eq!(e.kind(), "invalid");
    }

    #[tokio::test]
    async fn refused_client_certificate_is_a_tls_error() {
        let (_d, g) = certs(&[]);
        let (_d2, other) = certs(&[]);
        let server = tls::server_config(&g.verifier.cert, &g.verifier.key, &g.ca.cert).unwrap();
        let addr = serve(Some(server)).await;
        // Trusts the server but presents a certificate of another CA: with TLS 1.3 the refusal
        // arrives after the client's side of the handshake, on the first exchange.
        let config = tls::client_config(&g.ca.cert, &other.client.cert, &other.client.key).unwrap();
        let client =
            Client::new(&format!("https://127.0.0.1:{}", addr.port()), Some(config)).unwrap();
        let e = client.get("/v1/workloads").await.unwrap_err();
        assert!(matches!(e.kind(), "tls" | "http"), "{e}");
    }
}
