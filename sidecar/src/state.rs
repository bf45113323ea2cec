//! What the tasks of a running sidecar share: the engine, the sources' health, the counters of
//! the epoch loop, the outbox and the sender's figures, and the state of the configuration.

use crate::engine::Engine;
use crate::sample::SourceStats;
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// Counters of the epoch loop.
#[derive(Debug, Default)]
pub struct Counters {
    /// Epochs closed.
    pub epochs: AtomicU64,
    /// PCS records put in the outbox.
    pub pcs_built: AtomicU64,
    /// Epochs without a PCS (too few samples, no signal yet).
    pub pcs_skipped: AtomicU64,
    /// SignalReports put in the outbox.
    pub reports_built: AtomicU64,
    /// Epochs whose records the outbox refused (they are held and tried again), plus records
    /// it can never take.
    pub record_errors: AtomicU64,
    /// Records stored at a later epoch after the outbox had refused them.
    pub records_retried: AtomicU64,
    /// Records given up: more were held than [`crate::run::HELD_MAX`], or too large to store.
    pub records_lost: AtomicU64,
    /// Rows written by the rolling persistence.
    pub persisted_rows: AtomicU64,
    /// Rolling persistence failures.
    pub persist_errors: AtomicU64,
    /// Window statistics left out of reports by `report.maxWindows`.
    pub windows_left_out: AtomicU64,
    /// Total time spent closing epochs, µs (with `epochs`, the mean).
    pub epoch_micros: AtomicU64,
}

/// The configuration file and its reloads.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigState {
    /// The file.
    pub path: PathBuf,
    /// When it was last loaded (RFC 3339).
    pub loaded_at: String,
    /// Successful reloads since start.
    pub reloads: u64,
    /// Reloads refused (the running configuration stays).
    pub reload_errors: u64,
    /// Why the last reload was refused.
    pub last_error: Option<String>,
}

/// One source's entry.
#[derive(Debug, Clone)]
pub struct SourceEntry {
    /// Kind (`prometheus`, `jsonl`, `http`, `datadog`).
    pub kind: String,
    /// Health.
    pub stats: Arc<SourceStats>,
}

/// What the tasks share.
#[derive(Debug)]
pub struct Shared {
    engine: Mutex<Engine>,
    sources: Mutex<BTreeMap<String, SourceEntry>>,
    /// Counters of the epoch loop.
    pub counters: Counters,
    config: Mutex<ConfigState>,
    /// When the sidecar started, ms.
    pub started_ms: i64,
    /// The outbox.
    pub outbox: Arc<crate::outbox::Outbox>,
    /// The sender's figures.
    pub delivery: Arc<crate::deliver::DeliveryStats>,
    held: Mutex<crate::run::Held>,
}

impl Shared {
    /// Shared state around an engine.
    pub fn new(
        engine: Engine,
        config: ConfigState,
        outbox: Arc<crate::outbox::Outbox>,
        delivery: Arc<crate::deliver::DeliveryStats>,
    ) -> Self {
        Self {
            engine: Mutex::new(engine),
            sources: Mutex::new(BTreeMap::new()),
            counters: Counters::default(),
            config: Mutex::new(config),
            started_ms: now_ms(),
            outbox,
            delivery,
            held: Mutex::new(crate::run::Held::default()),
        }
    }

    /// Records waiting to be stored in the outbox (held briefly: the epoch loop stores them
    /// on the blocking pool).
    pub fn held(&self) -> MutexGuard<'_, crate::run::Held> {
        lock(&self.held)
    }

    /// The engine (held briefly: the epoch loop and the API share it).
    pub fn engine(&self) -> MutexGuard<'_, Engine> {
        lock(&self.engine)
    }

    /// Replaces the list of running sources.
    pub fn set_sources(&self, sources: BTreeMap<String, SourceEntry>) {
        *lock(&self.sources) = sources;
    }

    /// The running sources.
    pub fn sources(&self) -> BTreeMap<String, SourceEntry> {
        lock(&self.sources).clone()
    }

    /// Updates the configuration state.
    pub fn with_config_state<R>(&self, f: impl FnOnce(&mut ConfigState) -> R) -> R {
        f(&mut lock(&self.config))
    }

    /// The configuration state.
    pub fn config_state(&self) -> ConfigState {
        lock(&self.config).clone()
    }

    /// The `/status` document.
    pub fn status(&self, now: i64) -> Value {
        let ts = coherence_core::telemetry::format_ts_ms;
        let sources: BTreeMap<String, Value> = self
            .sources()
            .into_iter()
            .map(|(name, e)| {
                let snap = e.stats.snapshot();
                (
                    name,
                    json!({
                        "kind": e.kind,
                        "pollsOk": snap.polls_ok,
                        "pollErrors": snap.poll_errors,
                        "skipped": snap.skipped,
                        "samples": snap.samples,
                        "lastLatencyMs": snap.last_latency_ms,
                        "lastOk": snap.last_ok_ms.map(ts),
                        "lastError": snap.last_error,
                    }),
                )
            })
            .collect();
        let engine = self.engine();
        let cfg = engine.config().clone();
        let c = &self.counters;
        let epochs = c.epochs.load(Ordering::Relaxed);
        let epoch_ms_mean = if epochs == 0 {
            0.0
        } else {
            c.epoch_micros.load(Ordering::Relaxed) as f64 / epochs as f64 / 1000.0
        };
        json!({
            "shardId": engine.shard_id(),
            "identity": cfg.identity,
            "engineVersion": coherence_core::ENGINE_VERSION,
            "now": ts(now),
            "started": ts(self.started_ms),
            "uptimeSec": (now - self.started_ms) / 1000,
            "lastIngest": engine.last_ingest_ms().map(ts),
            "sources": sources,
            "windows": cfg.windows.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "epochSec": cfg.epoch.get().as_secs_f64(),
            "signals": engine.signal_count(),
            "primarySignal": engine.primary_signal(),
            "samplesHeld": engine.samples_held(),
            "rejected": engine.rejections(),
            "lastEpoch": engine.last_epoch(),
            "epochs": {
                "closed": epochs,
                "meanMs": epoch_ms_mean,
                "pcsBuilt": c.pcs_built.load(Ordering::Relaxed),
                "pcsSkipped": c.pcs_skipped.load(Ordering::Relaxed),
                "reportsBuilt": c.reports_built.load(Ordering::Relaxed),
                "recordErrors": c.record_errors.load(Ordering::Relaxed),
                "recordsHeld": self.held().len(),
                "recordsRetried": c.records_retried.load(Ordering::Relaxed),
                "recordsLost": c.records_lost.load(Ordering::Relaxed),
                "windowsLeftOut": c.windows_left_out.load(Ordering::Relaxed),
                "persistedRows": c.persisted_rows.load(Ordering::Relaxed),
                "persistErrors": c.persist_errors.load(Ordering::Relaxed),
            },
            "incidents": engine.incidents(),
            "outbox": self.outbox.stats(),
            "delivery": self.delivery.snapshot(),
            "config": self.config_state(),
        })
    }
}
