//! `coherence-verifier serve`: configuration, listeners, background loops and shutdown.

use crate::api::{self, AppState, Caller, MetricsAuth};
use crate::dedup::{
    Store, StoreSettings, memory::MemoryStore, postgres::PostgresStore, redis::RedisStore,
};
use crate::ingest::{Ingest, IngestConfig};
use crate::limit::RateLimiter;
use crate::metrics::Metrics;
use crate::tls::Identity;
use crate::wal::WalConfig;
use coherence_core::pcs::{KeyEnv, Params, Verifier};
use coherence_core::window::WindowSpan;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Dedup backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// In-process map with a snapshot in the WAL directory.
    Memory,
    /// Redis (`REDIS_ADDR`).
    Redis,
    /// PostgreSQL (`DATABASE_URL`).
    Postgres,
}

/// Flags of `serve` (each with its environment variable).
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// TLS listen address (submit and workload API).
    #[arg(long, env = "COHERENCE_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// Plain-HTTP admin address (/metrics, /healthz, /readyz).
    #[arg(long, env = "COHERENCE_ADMIN_LISTEN", default_value = "0.0.0.0:9102")]
    pub admin_listen: SocketAddr,
    /// Directory of the inbox WAL (and the memory store's snapshot).
    #[arg(long, env = "COHERENCE_WAL_DIR", default_value = "wal")]
    pub wal_dir: PathBuf,
    /// Serve plain HTTP without client certificates (development only; every caller may
    /// submit for every namespace).
    #[arg(long)]
    pub insecure_dev: bool,
    /// Server certificate (PEM).
    #[arg(long, env = "COHERENCE_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// Server private key (PEM).
    #[arg(long, env = "COHERENCE_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// CA that client certificates must chain to (PEM).
    #[arg(long, env = "COHERENCE_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Dedup backend.
    #[arg(long, env = "DEDUP_BACKEND", value_enum, default_value = "memory")]
    pub dedup_backend: Backend,
    /// Redis address (`host:port` or `redis://…`).
    #[arg(long, env = "REDIS_ADDR", default_value = "127.0.0.1:6379")]
    pub redis_addr: String,
    /// Prefix of the Redis keys.
    #[arg(long, env = "REDIS_PREFIX", default_value = "coherence:")]
    pub redis_prefix: String,
    /// PostgreSQL connection string.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pub database_url: String,
    /// PostgreSQL schema of the dedup table.
    #[arg(long, env = "DATABASE_SCHEMA", default_value = "public")]
    pub database_schema: String,
    /// How long a record id is remembered (`Ns|Nm|Nh|Nd`).
    #[arg(long, env = "DEDUP_TTL", default_value = "14d")]
    pub dedup_ttl: WindowSpan,
    /// Longest wait for one dedup store operation, in milliseconds, before failing closed.
    #[arg(long, env = "DEDUP_TIMEOUT_MS", default_value_t = 2000)]
    pub dedup_timeout_ms: u64,
    /// Requests per second per caller (bursts up to twice that); 0 disables the limit.
    #[arg(long, env = "TOKEN_RATE", default_value_t = 100.0)]
    pub token_rate: f64,
    /// Largest accepted request body, in bytes.
    #[arg(long, env = "COHERENCE_BODY_LIMIT", default_value_t = 65_536)]
    pub body_limit: usize,
    /// WAL segment size before rotation, in bytes.
    #[arg(long, env = "COHERENCE_WAL_SEGMENT_BYTES", default_value_t = 64 << 20)]
    pub wal_segment_bytes: u64,
    /// Zero-filled, synced space the WAL keeps ahead of its active segment's end, in bytes
    /// (0: none; records then extend the file and every sync also updates its size).
    #[arg(long, env = "COHERENCE_WAL_PREALLOC_BYTES", default_value_t = 4 << 20)]
    pub wal_prealloc_bytes: u64,
    /// Most Ed25519 signatures of concurrent requests verified as one batch (0: every
    /// signature by the strict single check).
    #[arg(long, env = "COHERENCE_ED25519_BATCH", default_value_t = 64)]
    pub ed25519_batch: usize,
    /// Age after which applied WAL segments are deleted (`Ns|Nm|Nh|Nd`).
    #[arg(long, env = "COHERENCE_WAL_RETENTION", default_value = "14d")]
    pub wal_retention: WindowSpan,
    /// Basic Auth user for /metrics (with `METRICS_PASS`).
    #[arg(long, env = "METRICS_USER")]
    pub metrics_user: Option<String>,
    /// Basic Auth password for /metrics.
    #[arg(long, env = "METRICS_PASS", hide_env_values = true)]
    pub metrics_pass: Option<String>,
    /// Seconds to let open requests finish after SIGTERM.
    #[arg(long, env = "COHERENCE_DRAIN_SECONDS", default_value_t = 20)]
    pub drain_seconds: u64,
    /// Seconds between memory-store snapshots.
    #[arg(long, env = "COHERENCE_SNAPSHOT_SECONDS", default_value_t = 30)]
    pub snapshot_seconds: u64,
    /// Seconds between maintenance passes (expired dedup rows, WAL compaction and retention).
    #[arg(long, env = "COHERENCE_MAINTENANCE_SECONDS", default_value_t = 600)]
    pub maintenance_seconds: u64,
}

/// A configuration problem: the flag or variable, and what was expected.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Validated TLS material.
enum Transport {
    Tls(Arc<rustls::ServerConfig>),
    Plain,
}

/// Checks the flags and environment; the error is one line naming what is wrong.
fn transport(a: &ServeArgs) -> Result<Transport, ConfigError> {
    if a.insecure_dev {
        return Ok(Transport::Plain);
    }
    let need = |v: &Option<PathBuf>, flag: &str, env: &str| {
        v.clone().ok_or_else(|| {
            ConfigError(format!(
                "{flag} ({env}) is required: the verifier serves mTLS unless --insecure-dev is given"
            ))
        })
    };
    let cert = need(&a.tls_cert, "--tls-cert", "COHERENCE_TLS_CERT")?;
    let key = need(&a.tls_key, "--tls-key", "COHERENCE_TLS_KEY")?;
    let ca = need(&a.tls_ca, "--tls-ca", "COHERENCE_TLS_CA")?;
    let cfg = crate::tls::server_config(&cert, &key, &ca)
        .map_err(|e| ConfigError(format!("TLS: {e}")))?;
    Ok(Transport::Tls(cfg))
}

fn metrics_auth(a: &ServeArgs) -> Result<Option<MetricsAuth>, ConfigError> {
    match (&a.metrics_user, &a.metrics_pass) {
        (None, None) => Ok(None),
        (Some(u), Some(p)) if !u.is_empty() && !p.is_empty() => Ok(Some(MetricsAuth {
            user: u.clone(),
            pass: p.clone(),
        })),
        _ => Err(ConfigError(
            "METRICS_USER and METRICS_PASS: expected both set (non-empty) or neither".into(),
        )),
    }
}

/// Runs the verifier until `shutdown` resolves, then drains and syncs.
pub async fn serve(
    args: ServeArgs,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let transport = transport(&args)?;
    let auth = metrics_auth(&args)?;
    if !args.token_rate.is_finite() || args.token_rate < 0.0 {
        return Err(ConfigError(format!(
            "--token-rate (TOKEN_RATE): expected a number >= 0, found {}",
            args.token_rate
        ))
        .into());
    }
    let keys = Verifier::from_env(&KeyEnv::from_lookup(|k| std::env::var(k).ok()))
        .map_err(|e| ConfigError(e.to_string()))?;
    let settings = StoreSettings {
        ttl: Duration::from_millis(u64::try_from(args.dedup_ttl.as_millis()).unwrap_or(u64::MAX)),
        op_timeout: Duration::from_millis(args.dedup_timeout_ms.max(1)),
    };
    let store = match args.dedup_backend {
        Backend::Memory => Store::Memory(MemoryStore::new(settings.ttl)),
        Backend::Redis => Store::Redis(
            RedisStore::connect(&args.redis_addr, &args.redis_prefix, &settings)
                .await
                .map_err(|e| ConfigError(format!("REDIS_ADDR: {e}")))?,
        ),
        Backend::Postgres => Store::Postgres(
            PostgresStore::connect(&args.database_url, &args.database_schema, &settings)
                .await
                .map_err(|e| ConfigError(format!("DATABASE_URL: {e}")))?,
        ),
    };
    let retention =
        Duration::from_millis(u64::try_from(args.wal_retention.as_millis()).unwrap_or(u64::MAX));
    let mut wal = WalConfig::new(&args.wal_dir);
    wal.segment_bytes = args.wal_segment_bytes.max(4096);
    wal.retention = retention;
    wal.prealloc_bytes = args.wal_prealloc_bytes;
    let (metrics, registry) = Metrics::new();
    // Bind before replaying so a port clash fails fast.
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|e| ConfigError(format!("--listen {}: {e}", args.listen)))?;
    let admin_listener = TcpListener::bind(args.admin_listen)
        .await
        .map_err(|e| ConfigError(format!("--admin-listen {}: {e}", args.admin_listen)))?;
    if matches!(transport, Transport::Plain) {
        tracing::warn!(listen = %args.listen, "--insecure-dev: serving plain HTTP without client certificates; every caller may submit for every namespace");
    }
    let ingest = Ingest::open(
        IngestConfig {
            wal,
            keys,
            params: Params::default(),
            ed25519_batch: args.ed25519_batch,
        },
        store,
        metrics,
    )
    .await?;
    let state = Arc::new(AppState {
        ingest: ingest.clone(),
        limiter: RateLimiter::new(args.token_rate),
        registry,
        metrics_auth: auth,
        body_limit: args.body_limit,
    });
    tracing::info!(
        listen = %listener.local_addr()?,
        admin = %admin_listener.local_addr()?,
        backend = args.dedup_backend_name(),
        wal = %args.wal_dir.display(),
        "coherence-verifier serving"
    );

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });

    let bg = spawn_background(ingest.clone(), &args, retention, stop_rx.clone());
    let admin_app = api::admin(state.clone());
    let mut admin_stop = stop_rx.clone();
    let admin = tokio::spawn(async move {
        axum::serve(admin_listener, admin_app)
            .with_graceful_shutdown(async move {
                let _ = admin_stop.wait_for(|s| *s).await;
            })
            .await
    });

    accept_loop(
        listener,
        transport,
        api::app(state),
        stop_rx,
        Duration::from_secs(args.drain_seconds),
    )
    .await;

    if let Some((batches, signatures)) = ingest.signature_batches() {
        tracing::info!(batches, signatures, "Ed25519 signatures checked in batches");
    }
    tracing::info!("draining done; final sync");
    let _ = bg.await;
    match ingest.sync().await {
        Ok(seq) => tracing::info!(last_seq = seq, "WAL synced"),
        Err(e) => tracing::error!(error = %e, "final WAL sync failed"),
    }
    if let Err(e) = ingest.snapshot() {
        tracing::error!(error = %e, "final dedup snapshot failed");
    }
    let _ = admin.await;
    tracing::info!("coherence-verifier stopped");
    Ok(())
}

impl ServeArgs {
    fn dedup_backend_name(&self) -> &'static str {
        match self.dedup_backend {
            Backend::Memory => "memory",
            Backend::Redis => "redis",
            Backend::Postgres => "postgres",
        }
    }
}

async fn stopped(mut rx: tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

fn spawn_background(
    ingest: Arc<Ingest>,
    args: &ServeArgs,
    retention: Duration,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let snapshot_every = Duration::from_secs(args.snapshot_seconds.max(1));
    let maintain_every = Duration::from_secs(args.maintenance_seconds.max(1));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut snap = tokio::time::interval(snapshot_every);
        let mut maint = tokio::time::interval(maintain_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stopped(stop.clone()) => break,
                _ = tick.tick() => ingest.tick().await,
                _ = snap.tick() => {
                    let i = ingest.clone();
                    match tokio::task::spawn_blocking(move || i.snapshot()).await {
                        Ok(Err(e)) => tracing::warn!(error = %e, "dedup snapshot failed"),
                        Err(e) => tracing::warn!(error = %e, "dedup snapshot task failed"),
                        Ok(Ok(())) => {}
                    }
                }
                _ = maint.tick() => ingest.maintain(retention).await,
            }
        }
    })
}

async fn accept_loop(
    listener: TcpListener,
    transport: Transport,
    app: axum::Router,
    stop: tokio::sync::watch::Receiver<bool>,
    drain: Duration,
) {
    let graceful = GracefulShutdown::new();
    let acceptor = match &transport {
        Transport::Tls(cfg) => Some(tokio_rustls::TlsAcceptor::from(cfg.clone())),
        Transport::Plain => None,
    };
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stopped(stop.clone()) => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let watcher = graceful.watcher();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let builder = hyper::server::conn::http1::Builder::new();
            match acceptor {
                Some(acc) => {
                    let tls = match tokio::time::timeout(Duration::from_secs(10), acc.accept(tcp))
                        .await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::info!(%peer, error = %e, "TLS handshake refused");
                            return;
                        }
                        Err(_) => {
                            tracing::info!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    let caller = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .map(Identity::from_peer_certs)
                        .and_then(|r| match r {
                            Ok(id) => Some(id.uri),
                            Err(e) => {
                                tracing::info!(%peer, error = %e, "client certificate without a Coherence identity");
                                None
                            }
                        });
                    let svc = app.layer(axum::Extension(Caller(caller)));
                    let conn =
                        builder.serve_connection(TokioIo::new(tls), TowerToHyperService::new(svc));
                    let _ = watcher.watch(conn).await;
                }
                None => {
                    let svc =
                        app.layer(axum::Extension(Caller(Some(Identity::insecure_dev().uri))));
                    let conn =
                        builder.serve_connection(TokioIo::new(tcp), TowerToHyperService::new(svc));
                    let _ = watcher.watch(conn).await;
                }
            }
        });
    }
    drop(listener);
    tracing::info!("stopped accepting; draining open connections");
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            seconds = drain.as_secs(),
            "drain timed out; closing remaining connections"
        );
    }
}
