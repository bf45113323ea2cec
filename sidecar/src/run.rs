//! `coherence-sidecar run`: wires the sources, the engine, the outbox, the sender and the local
//! API together, closes an epoch at every epoch boundary, reloads the configuration when its
//! file changes, and stops cleanly on SIGTERM or SIGINT.
//!
//! One thread runs everything (a current-thread runtime): the sidecar must stay small next to
//! the workload. File writes that fsync run on the blocking pool so the API keeps answering.

use crate::api;
use crate::config::{Alg, Config, ConfigError};
use crate::deliver::{DeliverError, Deliverer, DeliveryStats};
use crate::engine::{self, Engine, EpochOutput};
use crate::outbox::{Kind, Outbox, OutboxError};
use crate::persist;
use crate::sample::{Batch, SourceStats};
use crate::sources;
use crate::state::{ConfigState, Shared, SourceEntry, now_ms};
use coherence_core::linecipher::LineCipher;
use coherence_core::pcs::{KeyEnv, Pcs, Signer};

/// The key of encrypted JSONL lines (standard base64 of 32 bytes).
pub const LINE_KEY_ENV: &str = "COHERENCE_AES_KEY";
use coherence_core::telemetry::format_ts_ms;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// Reads an environment variable (the process environment, or a map in tests).
pub type Lookup = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// How often the configuration file is checked for changes.
pub const RELOAD_EVERY: Duration = Duration::from_secs(2);

/// Why the sidecar could not run, with its exit code.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Bad configuration (exit 64).
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// A file or socket could not be used (exit 74).
    #[error("{0}")]
    Io(String),
}

impl RunError {
    /// The process exit code.
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::Config(_) => 64,
            RunError::Io(_) => 74,
        }
    }
}

/// The signer the configuration and the key environment select.
pub fn signer(
    cfg: &Config,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Signer, ConfigError> {
    let mut env = KeyEnv::from_lookup(lookup);
    env.sign_alg = Some(
        match cfg.pcs.alg {
            Alg::Hmac => "hmac",
            Alg::Ed25519 => "ed25519",
        }
        .to_string(),
    );
    Signer::from_env(&env).map_err(|e| ConfigError::new(e.var, format!("expected {}", e.expected)))
}

struct RunningSources {
    stop: watch::Sender<bool>,
    handles: Vec<tokio::task::JoinHandle<()>>,
}

impl RunningSources {
    async fn stop(self) {
        let _ = self.stop.send(true);
        for h in self.handles {
            let _ = h.await;
        }
    }
}

fn start_sources(
    cfg: &Config,
    tx: &mpsc::Sender<Batch>,
    shared: &Shared,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<RunningSources, ConfigError> {
    let (stop, stop_rx) = watch::channel(false);
    let cipher = match lookup(LINE_KEY_ENV).filter(|v| !v.trim().is_empty()) {
        Some(k) => Some(
            LineCipher::from_key_b64(&k)
                .map_err(|e| ConfigError::new(LINE_KEY_ENV, e.to_string()))?,
        ),
        None => None,
    };
    let mut entries = BTreeMap::new();
    let mut handles = Vec::new();
    let previous = shared.sources();
    for sc in &cfg.sources {
        // A source that keeps its name keeps its counters across a reload.
        let stats = previous
            .get(sc.name())
            .map_or_else(|| Arc::new(SourceStats::default()), |e| e.stats.clone());
        entries.insert(
            sc.name().to_string(),
            SourceEntry {
                kind: source_kind(sc).to_string(),
                stats: stats.clone(),
            },
        );
        let mut ctx = sources::Context::new(tx.clone(), stats, stop_rx.clone());
        if let Some(c) = &cipher {
            ctx = ctx.with_cipher(c.clone());
        }
        handles.push(sources::spawn(sc.clone(), ctx));
    }
    shared.set_sources(entries);
    Ok(RunningSources { stop, handles })
}

/// `prometheus`, `jsonl`, `http` or `datadog`.
pub fn source_kind(sc: &sources::SourceConfig) -> &'static str {
    match sc {
        sources::SourceConfig::Prometheus(_) => "prometheus",
        sources::SourceConfig::Jsonl(_) => "jsonl",
        sources::SourceConfig::Http(_) => "http",
        sources::SourceConfig::Datadog(_) => "datadog",
    }
}

struct RunningSender {
    stop: watch::Sender<bool>,
    handle: tokio::task::JoinHandle<()>,
}

impl RunningSender {
    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.handle.await;
    }
}

fn start_sender(
    cfg: &Config,
    outbox: &Arc<Outbox>,
    stats: &Arc<DeliveryStats>,
) -> Result<RunningSender, ConfigError> {
    let (stop, stop_rx) = watch::channel(false);
    let sender = Deliverer::new(outbox.clone(), &cfg.verifier, &cfg.delivery)
        .map_err(|e| match e {
            DeliverError::Config { field, message } => ConfigError::new(field, message),
            other => ConfigError::new("verifier", other.to_string()),
        })?
        .with_stats(stats.clone());
    let handle = sender.spawn(stop_rx);
    Ok(RunningSender { stop, handle })
}

fn file_digest(path: &Path) -> Option<[u8; 32]> {
    std::fs::read(path).ok().map(|b| Sha256::digest(&b).into())
}

/// Runs until SIGTERM/SIGINT or until `shutdown` becomes true.
pub async fn run(
    config_path: PathBuf,
    lookup: Lookup,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), RunError> {
    let cfg = Arc::new(Config::load(&config_path, &*lookup)?);
    let mut signer = signer(&cfg, &*lookup)?;
    std::fs::create_dir_all(&cfg.outbox.dir)
        .map_err(|e| RunError::Io(format!("outbox.dir {}: {e}", cfg.outbox.dir.display())))?;
    let outbox =
        Arc::new(Outbox::open(&cfg.outbox).map_err(|e| RunError::Io(format!("outbox: {e}")))?);
    let mut store = persist::Store::open(&cfg.persistence, &cfg.outbox.dir)
        .map_err(|e| RunError::Io(e.to_string()))?;
    let delivery = Arc::new(DeliveryStats::default());
    let shared = Arc::new(Shared::new(
        Engine::new(cfg.clone()),
        ConfigState {
            path: config_path.clone(),
            loaded_at: format_ts_ms(now_ms()),
            ..ConfigState::default()
        },
        outbox.clone(),
        delivery.clone(),
    ));
    let listener = tokio::net::TcpListener::bind(cfg.api.listen)
        .await
        .map_err(|e| RunError::Io(format!("api.listen {}: {e}", cfg.api.listen)))?;
    let (api_stop, mut api_stop_rx) = watch::channel(false);
    let api_task = tokio::spawn({
        let router = api::router(shared.clone());
        async move {
            let stop = async move {
                let _ = api_stop_rx.wait_for(|s| *s).await;
            };
            if let Err(e) = axum::serve(listener, router)
                .with_graceful_shutdown(stop)
                .await
            {
                tracing::error!(error = %e, "local API stopped");
            }
        }
    });
    let metrics_task = match cfg.api.metrics_listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| RunError::Io(format!("api.metricsListen {addr}: {e}")))?;
            let mut stop_rx = api_stop.subscribe();
            let router = api::metrics_router(shared.clone());
            Some(tokio::spawn(async move {
                let stop = async move {
                    let _ = stop_rx.wait_for(|s| *s).await;
                };
                if let Err(e) = axum::serve(listener, router)
                    .with_graceful_shutdown(stop)
                    .await
                {
                    tracing::error!(error = %e, "metrics listener stopped");
                }
            }))
        }
        None => None,
    };
    tracing::info!(
        shard_id = %cfg.identity.shard_id(),
        api = %cfg.api.listen,
        metrics = ?cfg.api.metrics_listen,
        endpoint = %cfg.verifier.endpoint,
        pending = outbox.stats().pending,
        "sidecar started"
    );

    let (tx, mut rx) = mpsc::channel::<Batch>(256);
    let mut running = start_sources(&cfg, &tx, &shared, &*lookup)?;
    let mut sender = start_sender(&cfg, &outbox, &delivery)?;
    let mut cfg = cfg;
    let mut config_digest = file_digest(&config_path);
    let mut reload = tokio::time::interval(RELOAD_EVERY);
    reload.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_close = next_boundary(now_ms(), cfg.epoch.as_millis_i64());

    #[cfg(unix)]
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| RunError::Io(format!("SIGTERM handler: {e}")))?;

    loop {
        let wait = Duration::from_millis(u64::try_from(next_close - now_ms()).unwrap_or(0));
        #[cfg(unix)]
        let term = sigterm.recv();
        #[cfg(not(unix))]
        let term = std::future::pending::<Option<()>>();
        tokio::select! {
            Some(batch) = rx.recv() => {
                shared.engine().ingest(&batch, now_ms());
            }
            () = tokio::time::sleep(wait) => {
                let epoch_ms = cfg.epoch.as_millis_i64();
                let epoch = engine::epoch_of(next_close - 1, epoch_ms);
                close_epoch(&shared, &signer, &outbox, &mut store, epoch, next_close).await;
                next_close = next_boundary(now_ms(), epoch_ms);
            }
            _ = reload.tick() => {
                let digest = file_digest(&config_path);
                if digest.is_some() && digest != config_digest {
                    config_digest = digest;
                    match reload_config(&config_path, &cfg, &*lookup) {
                        Ok((next, next_signer)) => {
                            let next = Arc::new(next);
                            running.stop().await;
                            shared.engine().reconfigure(next.clone());
                            running = start_sources(&next, &tx, &shared, &*lookup)?;
                            if next.verifier != cfg.verifier || next.delivery != cfg.delivery {
                                sender.stop().await;
                                sender = start_sender(&next, &outbox, &delivery)?;
                            }
                            if next.persistence != cfg.persistence {
                                match persist::Store::open(&next.persistence, &next.outbox.dir) {
                                    Ok(s) => store = s,
                                    Err(e) => tracing::error!(error = %e, "persistence kept as it was"),
                                }
                            }
                            if next.epoch != cfg.epoch {
                                next_close = next_boundary(now_ms(), next.epoch.as_millis_i64());
                            }
                            signer = next_signer;
                            cfg = next;
                            shared.with_config_state(|s| {
                                s.reloads += 1;
                                s.loaded_at = format_ts_ms(now_ms());
                                s.last_error = None;
                            });
                            tracing::info!(path = %config_path.display(), "configuration reloaded");
                        }
                        Err(e) => {
                            shared.with_config_state(|s| {
                                s.reload_errors += 1;
                                s.last_error = Some(e.to_string());
                            });
                            tracing::error!(error = %e, "configuration not reloaded; the running one stays");
                        }
                    }
                }
            }
            _ = term => {
                tracing::info!("SIGTERM: stopping");
                break;
            }
            _ = tokio::signal::ctrl_c() => {
                tracing::info!("SIGINT: stopping");
                break;
            }
            _ = shutdown.wait_for(|s| *s) => {
                break;
            }
        }
    }
    running.stop().await;
    sender.stop().await;
    let _ = api_stop.send(true);
    let _ = api_task.await;
    if let Some(t) = metrics_task {
        let _ = t.await;
    }
    tracing::info!(pending = outbox.stats().pending, "sidecar stopped");
    Ok(())
}

/// A new configuration and signer, or why the file cannot be taken.
fn reload_config(
    path: &Path,
    current: &Config,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(Config, Signer), ConfigError> {
    let next = Config::load(path, lookup)?;
    if next.outbox.dir != current.outbox.dir {
        return Err(ConfigError::new(
            "outbox.dir",
            "changes only with a restart",
        ));
    }
    if next.api.listen != current.api.listen {
        return Err(ConfigError::new(
            "api.listen",
            "changes only with a restart",
        ));
    }
    if next.api.metrics_listen != current.api.metrics_listen {
        return Err(ConfigError::new(
            "api.metricsListen",
            "changes only with a restart",
        ));
    }
    if next.identity != current.identity {
        return Err(ConfigError::new("identity", "changes only with a restart"));
    }
    let s = signer(&next, lookup)?;
    Ok((next, s))
}

/// The first epoch boundary after `now_ms`.
pub fn next_boundary(now_ms: i64, epoch_ms: i64) -> i64 {
    let e = epoch_ms.max(1);
    (now_ms.div_euclid(e) + 1) * e
}

/// Closes an epoch: computes, signs, stores in the outbox, persists.
async fn close_epoch(
    shared: &Arc<Shared>,
    signer: &Signer,
    outbox: &Arc<Outbox>,
    store: &mut persist::Store,
    epoch: u64,
    end_ms: i64,
) {
    let started = Instant::now();
    let (out, skew) = {
        let mut engine = shared.engine();
        let out = engine.close_epoch(epoch, end_ms, now_ms());
        (out, engine.take_clock_skew_ms())
    };
    let c = &shared.counters;
    c.epochs.fetch_add(1, Ordering::Relaxed);
    c.windows_left_out
        .fetch_add(out.windows_left_out as u64, Ordering::Relaxed);
    let records = sign_records(out.clone(), signer, outbox, skew);
    if out.pcs.is_none() {
        c.pcs_skipped.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            epoch,
            reason = out.pcs_skipped.as_deref().unwrap_or(""),
            "no PCS this epoch"
        );
    }
    let (ob, sh) = (outbox.clone(), shared.clone());
    let stored = tokio::task::spawn_blocking(move || sh.held().store(&ob, records)).await;
    match stored {
        Ok(st) => {
            c.pcs_built.fetch_add(st.pcs, Ordering::Relaxed);
            c.reports_built.fetch_add(st.reports, Ordering::Relaxed);
            c.records_retried.fetch_add(st.retried, Ordering::Relaxed);
            c.record_errors
                .fetch_add(u64::from(st.failed > 0) + st.refused, Ordering::Relaxed);
            c.records_lost
                .fetch_add(st.lost + st.refused, Ordering::Relaxed);
            if st.failed > 0 {
                tracing::error!(
                    epoch,
                    held = st.held,
                    error = st.error.as_deref().unwrap_or(""),
                    "records not stored in the outbox: held in memory, tried again at the next epoch"
                );
            }
        }
        Err(e) => {
            c.record_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(epoch, error = %e, "storing the epoch's records failed");
        }
    }
    let shard = shared.engine().shard_id().to_string();
    match store.write(end_ms, &shard, &out.report.windows) {
        Ok(n) => {
            c.persisted_rows.fetch_add(n as u64, Ordering::Relaxed);
        }
        Err(e) => {
            c.persist_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, "rolling persistence failed");
        }
    }
    c.epoch_micros.fetch_add(
        u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
        Ordering::Relaxed,
    );
}

/// Records held in memory at most, waiting for the outbox to take writes again (32 epochs of a
/// PCS and a SignalReport); beyond it the oldest are dropped and counted as lost.
pub const HELD_MAX: usize = 64;

/// Signed records the outbox could not store (a write or sync failed: a full disk, an I/O
/// error), kept in memory in their order and stored before the next epoch's records. Bounded by
/// [`HELD_MAX`]; a sidecar that stops loses what is held (it was never acknowledged as stored).
#[derive(Debug)]
pub struct Held {
    queue: VecDeque<Signed>,
    max: usize,
}

impl Default for Held {
    fn default() -> Self {
        Self::new(HELD_MAX)
    }
}

/// What [`Held::store`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreOutcome {
    /// PCS records stored.
    pub pcs: u64,
    /// SignalReports stored.
    pub reports: u64,
    /// Of those, records that had been held from an earlier epoch.
    pub retried: u64,
    /// Records not stored this time (held for the next try).
    pub failed: u64,
    /// Records the outbox can never take (larger than `outbox.maxBytes`): dropped.
    pub refused: u64,
    /// Held records dropped because more than the limit were waiting.
    pub lost: u64,
    /// Records held after this call.
    pub held: usize,
    /// The outbox's error, when a record was not stored.
    pub error: Option<String>,
}

impl Held {
    /// An empty queue holding at most `max` records.
    pub fn new(max: usize) -> Self {
        Self {
            queue: VecDeque::new(),
            max: max.max(1),
        }
    }

    /// Records waiting.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Stores the held records, then `new`, in order (blocking: one fsync per record). At the
    /// first record the outbox does not take, that record and every later one are held, so
    /// records reach the outbox, and the verifier, in the order they were built.
    pub fn store(&mut self, outbox: &Outbox, new: Vec<Signed>) -> StoreOutcome {
        let mut out = StoreOutcome::default();
        let mut retry = self.queue.len() as u64;
        self.queue.extend(new);
        while let Some(r) = self.queue.pop_front() {
            let kind = r.kind();
            match r.clone().append_to(outbox) {
                Ok(_) => {
                    match kind {
                        Kind::Pcs => out.pcs += 1,
                        Kind::Signals => out.reports += 1,
                    }
                    if retry > 0 {
                        out.retried += 1;
                    }
                }
                Err(e @ (OutboxError::TooLarge { .. } | OutboxError::IdTooLong(_))) => {
                    out.refused += 1;
                    tracing::error!(kind = kind.as_str(), error = %e, "record dropped: the outbox cannot take it");
                }
                Err(e) => {
                    out.failed = self.queue.len() as u64 + 1;
                    out.error = Some(e.to_string());
                    self.queue.push_front(r);
                    break;
                }
            }
            retry = retry.saturating_sub(1);
        }
        while self.queue.len() > self.max {
            self.queue.pop_front();
            out.lost += 1;
        }
        if out.lost > 0 {
            tracing::error!(
                lost = out.lost,
                max = self.max,
                "records dropped: more were waiting for the outbox than can be held"
            );
        }
        out.held = self.queue.len();
        out
    }
}

/// A signed record ready for the outbox.
#[derive(Debug, Clone)]
pub enum Signed {
    /// A PCS; `ft.outbox_seq` is set to its outbox seq as it is stored (`ft` is not signed).
    Pcs(Box<Pcs>),
    /// A SignalReport's id and JSON body.
    Report(String, String),
}

impl Signed {
    /// The outbox kind.
    pub fn kind(&self) -> Kind {
        match self {
            Signed::Pcs(_) => Kind::Pcs,
            Signed::Report(..) => Kind::Signals,
        }
    }

    /// Stores the record (fsync'd); returns its seq.
    pub fn append_to(self, outbox: &Outbox) -> Result<u64, crate::outbox::OutboxError> {
        match self {
            Signed::Pcs(mut pcs) => {
                let id = pcs.pcs_id.clone();
                outbox.append_with(Kind::Pcs, &id, move |seq| {
                    pcs.ft.outbox_seq = seq;
                    pcs.to_json().into_bytes()
                })
            }
            Signed::Report(id, body) => outbox.append(Kind::Signals, &id, body.as_bytes()),
        }
    }
}

/// Signs an epoch's records, the PCS first; `ft` says whether the outbox has been degraded.
pub fn sign_records(
    out: EpochOutput,
    signer: &Signer,
    outbox: &Outbox,
    skew_ms: i64,
) -> Vec<Signed> {
    let mut records = Vec::new();
    if let Some(mut pcs) = out.pcs {
        pcs.ft.degraded = outbox.stats().degraded;
        pcs.ft.fallbacks = outbox.fallbacks();
        pcs.ft.clock_skew_ms = skew_ms;
        match signer.sign(&mut pcs) {
            Ok(()) => records.push(Signed::Pcs(Box::new(pcs))),
            Err(e) => tracing::error!(epoch = out.epoch, error = %e, "PCS not signed"),
        }
    }
    let mut report = out.report;
    match report.sign(signer) {
        Ok(()) => match serde_json::to_string(&report) {
            Ok(body) => records.push(Signed::Report(report.report_id.clone(), body)),
            Err(e) => tracing::error!(epoch = out.epoch, error = %e, "report not serialised"),
        },
        Err(e) => tracing::error!(epoch = out.epoch, error = %e, "report not signed"),
    }
    records
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::config::OutboxSettings;

    fn outbox(dir: &Path) -> Outbox {
        Outbox::open(&OutboxSettings {
            dir: dir.to_owned(),
            max_bytes: 1 << 20,
            segment_bytes: 64 << 10,
        })
        .unwrap()
    }

    fn report(epoch: u64) -> Signed {
        Signed::Report(format!("r{epoch}"), format!("{{\"epoch\":{epoch}}}"))
    }

    fn ids(o: &Outbox) -> Vec<String> {
        o.peek_batch(usize::MAX)
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect()
    }

    #[test]
    fn records_the_outbox_refused_are_stored_at_the_next_epoch_first_and_once() {
        let d = tempfile::tempdir().unwrap();
        let o = outbox(d.path());
        let mut held = Held::new(8);
        assert_eq!(held.store(&o, vec![report(1)]).reports, 1);

        // Epoch 2: the disk is full for the first write; both records of the epoch wait.
        o.inject_write_failures(1);
        let st = held.store(&o, vec![report(2), report(3)]);
        assert_eq!((st.reports, st.failed, st.held), (0, 2, 2));
        assert!(st.error.unwrap().contains("no space left"));
        assert_eq!(ids(&o), vec!["r1"]);

        // Epoch 3: the held records go first, in order, then the new one; nothing twice.
        let st = held.store(&o, vec![report(4)]);
        assert_eq!((st.reports, st.retried, st.failed, st.held), (3, 2, 0, 0));
        assert_eq!(ids(&o), vec!["r1", "r2", "r3", "r4"]);
        let bodies: Vec<Vec<u8>> = o
            .peek_batch(usize::MAX)
            .unwrap()
            .into_iter()
            .map(|r| r.body)
            .collect();
        assert_eq!(bodies[2], b"{\"epoch\":3}");
        assert!(held.is_empty());
        assert_eq!(o.stats().write_errors, 1);
    }

    #[test]
    fn a_failure_in_the_middle_of_an_epoch_keeps_the_rest_in_order() {
        let d = tempfile::tempdir().unwrap();
        let o = outbox(d.path());
        let mut held = Held::new(8);
        held.store(&o, vec![report(1)]);
        // The first write works, the second fails: the second and third wait.
        o.inject_write_failures(0);
        let seq_before = o.next_seq();
        let st = {
            // Store one, then make the outbox fail, then store the rest.
            let first = held.store(&o, vec![report(2)]);
            o.inject_write_failures(3);
            let rest = held.store(&o, vec![report(3), report(4)]);
            assert_eq!(first.reports, 1);
            rest
        };
        assert_eq!((st.failed, st.held), (2, 2));
        assert_eq!(o.next_seq(), seq_before + 1);
        // Still failing at the next epoch: everything waits, in order, and nothing is stored.
        let st = held.store(&o, vec![report(5)]);
        assert_eq!((st.reports, st.held), (0, 3));
        let st = held.store(&o, vec![report(6)]);
        assert_eq!((st.reports, st.held), (0, 4));
        // The disk has room again.
        let st = held.store(&o, vec![]);
        assert_eq!((st.reports, st.retried, st.held), (4, 4, 0));
        assert_eq!(ids(&o), vec!["r1", "r2", "r3", "r4", "r5", "r6"]);
    }

    #[test]
    fn the_held_queue_is_bounded_and_drops_the_oldest() {
        let d = tempfile::tempdir().unwrap();
        let o = outbox(d.path());
        let mut held = Held::new(3);
        o.inject_write_failures(u32::MAX);
        let st = held.store(&o, (1..=5).map(report).collect());
        assert_eq!((st.lost, st.held), (2, 3));
        o.inject_write_failures(0);
        let st = held.store(&o, vec![]);
        assert_eq!(st.reports, 3);
        assert_eq!(ids(&o), vec!["r3", "r4", "r5"]);
    }
}
