//! The ingest path: WAL append (written to the segment before parsing) → parse → caller's
//! namespace → verify (while the append's fdatasync runs) → durable → dedup → effects →
//! outcome record.
//!
//! A body is acknowledged, stored or counted only once it is durable. When the dedup store
//! cannot answer, the body stays in the WAL as *pending*, the caller gets 503 with
//! `Retry-After`, and a background loop applies pending bodies in order once the store is back.
//! Applying is idempotent: a body applied again after a crash finds its own earlier outcome in
//! the store (same WAL sequence) and is counted as that first application, never as a second
//! one.

use crate::dedup::{Insert, JsonBody, RecordKind, Store, StoreError, StoredOutcome, now_ms};
use crate::metrics::{
    KindLabels, Metrics, PatternLabels, ReasonLabels, SignalLabels, WorkloadLabels,
};
use crate::sigbatch::{SigAnswer, SigBatcher};
use crate::tls::Identity;
use crate::views::{Changes, Views, split_shard};
use crate::wal::{BodyRecord, Entry, ReplayReport, Wal, WalConfig, WalError};
use bytes::Bytes;
use coherence_core::pcs::{Malformed, Outcome, Params, Pcs, Rejection, Report, Verifier};
use coherence_core::report::{ReportRejection, SignalReport};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// What the caller is told.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// JSON body.
    pub body: JsonBody,
    /// `Retry-After` seconds.
    pub retry_after: Option<u64>,
}

impl Answer {
    fn new(status: u16, body: impl Into<JsonBody>) -> Self {
        Self {
            status,
            body: body.into(),
            retry_after: None,
        }
    }
}

/// The answer to an accepted or escalated PCS, its keys in sorted order.
#[derive(serde::Serialize)]
struct PcsAnswer<'a> {
    alg: Option<coherence_core::pcs::SignAlg>,
    #[serde(rename = "engineVersion")]
    engine_version: &'static str,
    escalations: &'a [coherence_core::pcs::Escalation],
    id: &'a str,
    key: Option<String>,
    kind: &'static str,
    reasons: Vec<String>,
    seq: u64,
    status: &'static str,
    tolerances: &'a JsonBody,
}

enum Effect {
    Pcs(Box<Pcs>, Outcome),
    Signals(Box<SignalReport>),
}

/// A parsed record whose signature is still to be checked.
enum Signed {
    Pcs(Box<Pcs>, [u8; 32]),
    Signals(Box<SignalReport>, [u8; 32]),
}

impl Signed {
    fn message(&self) -> [u8; 32] {
        match self {
            Signed::Pcs(_, m) | Signed::Signals(_, m) => *m,
        }
    }

    fn sig(&self) -> &str {
        match self {
            Signed::Pcs(p, _) => &p.sig,
            Signed::Signals(r, _) => &r.sig,
        }
    }
}

enum Staged {
    Done(Verdict),
    Signed(Signed),
}

enum Verdict {
    Reject {
        status: u16,
        reason: &'static str,
        body: Value,
        shard: Option<String>,
        id: String,
    },
    Valid {
        id: String,
        status: u16,
        body: JsonBody,
        effect: Effect,
    },
}

/// Settings of the ingest path.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// WAL settings.
    pub wal: WalConfig,
    /// Keys that may sign records.
    pub keys: Verifier,
    /// Verification tolerances and formulas.
    pub params: Params,
    /// Most Ed25519 signatures of concurrent requests checked as one batch (0: each request
    /// checks its own signature with the strict single check).
    pub ed25519_batch: usize,
}

/// Ingest state shared by every request.
pub struct Ingest {
    wal: Wal,
    store: Store,
    keys: Verifier,
    sigs: Option<SigBatcher>,
    params: Params,
    /// `params.tolerances` as JSON, written once: every accepted answer carries it.
    tolerances_json: JsonBody,
    views: Mutex<Views>,
    metrics: Metrics,
    pending: Mutex<BTreeMap<u64, BodyRecord>>,
    inflight: Arc<Mutex<BTreeSet<u64>>>,
    store_up: AtomicBool,
    ready: AtomicBool,
    replay: Mutex<Option<Value>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section is a few map operations that cannot leave the data half-done.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn malformed_body(field: &str, expected: &str, found: &str, message: String) -> Value {
    json!({"error": "malformed", "field": field, "expected": expected, "found": found, "message": message})
}

/// The 400 refusal of a malformed record, naming the field; `shard` and `id` when known.
fn malformed(m: &Malformed, shard: Option<String>, id: String) -> Verdict {
    Verdict::Reject {
        status: 400,
        reason: "malformed",
        body: malformed_body(&m.field, &m.expected, &m.found, m.to_string()),
        shard,
        id,
    }
}

fn snapshot_path(dir: &std::path::Path) -> PathBuf {
    dir.join("dedup.snapshot")
}

impl Ingest {
    /// Opens the WAL (replaying it into the views and, for the memory store, the store) and
    /// applies every body that has no outcome yet, when the store answers.
    pub async fn open(
        cfg: IngestConfig,
        store: Store,
        metrics: Metrics,
    ) -> Result<Arc<Ingest>, WalError> {
        Self::open_observed(cfg, store, metrics, None).await
    }

    /// [`Ingest::open`], with `also` called after each fdatasync of the WAL (on the writer
    /// thread, before the synced records are answered).
    async fn open_observed(
        cfg: IngestConfig,
        store: Store,
        metrics: Metrics,
        also: Option<crate::wal::SyncObserver>,
    ) -> Result<Arc<Ingest>, WalError> {
        let started = Instant::now();
        let snapshot_covers = match &store {
            Store::Memory(m) => {
                m.load(&snapshot_path(&cfg.wal.dir))
                    .map_err(|source| WalError::Io {
                        path: snapshot_path(&cfg.wal.dir).display().to_string(),
                        op: "load dedup snapshot",
                        source,
                    })?
            }
            _ => None,
        };
        let fsync_hist = metrics.wal_fsync.clone();
        let observer: crate::wal::SyncObserver = Arc::new(move |d: Duration| {
            fsync_hist.observe(d.as_secs_f64());
            if let Some(also) = &also {
                also(d);
            }
        });
        let mut bodies: HashMap<u64, BodyRecord> = HashMap::new();
        let mut outcomes: Vec<(BodyRecord, crate::wal::AppliedRecord)> = Vec::new();
        let mut applied_seqs: BTreeSet<u64> = BTreeSet::new();
        let (wal, report) = Wal::open(cfg.wal.clone(), Some(observer), |e| match e {
            Entry::Body(b) => {
                if !applied_seqs.contains(&b.seq) {
                    bodies.insert(b.seq, b);
                }
            }
            Entry::Applied(a) => {
                // Compaction may already have folded this outcome into its body.
                if !applied_seqs.insert(a.body_seq) {
                    return;
                }
                if let Some(b) = bodies.remove(&a.body_seq) {
                    if a.first {
                        outcomes.push((b, a));
                    }
                }
            }
            Entry::AppliedBody(b, a) => {
                if applied_seqs.insert(b.seq) && a.first {
                    outcomes.push((b, a));
                }
            }
        })?;
        let sigs = match cfg.ed25519_batch {
            0 => None,
            n => Some(SigBatcher::new(cfg.keys.clone(), n)),
        };
        let ingest = Arc::new(Ingest {
            wal,
            store,
            sigs,
            keys: cfg.keys,
            tolerances_json: JsonBody::of(&cfg.params.tolerances),
            params: cfg.params,
            views: Mutex::new(Views::default()),
            metrics,
            pending: Mutex::new(BTreeMap::new()),
            inflight: Arc::new(Mutex::new(BTreeSet::new())),
            store_up: AtomicBool::new(false),
            ready: AtomicBool::new(false),
            replay: Mutex::new(None),
        });
        // Rebuild what the first applications produced.
        let rebuilt = outcomes.len();
        for (b, a) in outcomes {
            if let Verdict::Valid {
                id,
                status,
                body,
                effect,
            } = ingest.evaluate(&b)
            {
                if let Store::Memory(m) = &ingest.store {
                    m.insert(
                        &id,
                        &StoredOutcome {
                            status: a.status,
                            kind: b.kind,
                            seq: b.seq,
                            at_ms: b.at_ms,
                            body: if status == a.status {
                                body
                            } else {
                                json!({"status": a.status, "id": id}).into()
                            },
                        },
                    );
                }
                ingest.apply_effect(&effect, b.at_ms, false);
            }
        }
        let mut unapplied: Vec<BodyRecord> = bodies.into_values().collect();
        unapplied.sort_by_key(|b| b.seq);
        let n_unapplied = unapplied.len();
        {
            let mut p = lock(&ingest.pending);
            for b in unapplied {
                p.insert(b.seq, b);
            }
        }
        ingest.metrics.wal_pending.set(n_unapplied as i64);
        ingest
            .store_up
            .store(ingest.store.ping().await.is_ok(), Ordering::Relaxed);
        let applied_now = ingest.drain_pending().await;
        *lock(&ingest.replay) = Some(replay_summary(
            &report,
            rebuilt,
            n_unapplied,
            applied_now,
            snapshot_covers,
            started.elapsed(),
        ));
        tracing::info!(
            segments = report.segments,
            records = report.records,
            torn_bytes = report.torn_bytes,
            corrupt = report.corrupt.len(),
            rebuilt,
            unapplied = n_unapplied,
            applied_now,
            "WAL replayed"
        );
        ingest.refresh_gauges();
        ingest.ready.store(true, Ordering::Relaxed);
        Ok(ingest)
    }

    /// Receives one body: durable first, then applied.
    pub async fn submit(
        &self,
        kind: RecordKind,
        identity: &str,
        request_id: &str,
        body: Bytes,
    ) -> Answer {
        self.metrics
            .ingest
            .get_or_create(&KindLabels {
                kind: kind.as_str().to_owned(),
            })
            .inc();
        let at_ms = now_ms();
        let inflight = self.inflight.clone();
        let wal_failed = |e: WalError| {
            tracing::error!(error = %e, "WAL append failed");
            let mut a = Answer::new(
                503,
                json!({"error": "wal_unavailable", "message": e.to_string()}),
            );
            a.retry_after = Some(5);
            a
        };
        let assigned = std::cell::Cell::new(None);
        let assigned_ref = &assigned;
        let queued = self.wal.queue_body(
            kind,
            identity,
            request_id,
            body.clone(),
            at_ms,
            move |seq| {
                assigned_ref.set(Some(seq));
                lock(&inflight).insert(seq);
            },
        );
        let mut appending = match queued {
            Ok(a) => a,
            Err(e) => {
                // A sequence number given to a body that never reached the writer holds
                // nothing back.
                if let Some(seq) = assigned.get() {
                    lock(&self.inflight).remove(&seq);
                }
                return wal_failed(e);
            }
        };
        let seq = appending.seq();
        let rec = BodyRecord {
            seq,
            at_ms,
            kind,
            identity: identity.to_owned(),
            request_id: request_id.to_owned(),
            body,
        };
        // The body is in the segment file before anything parses it, so a crash of the process
        // cannot lose it; it is parsed and its signature checked while the group commit's
        // fdatasync runs. Nothing is stored, counted or answered before the record is durable.
        // (A failed write is answered below with the error the durable wait reports.)
        let verdict = if appending.written().await.is_ok() {
            Some(self.evaluate_live(&rec).await)
        } else {
            None
        };
        if let Err(e) = appending.durable().await {
            lock(&self.inflight).remove(&seq);
            return wal_failed(e);
        }
        self.metrics
            .wal_bytes
            .set(self.wal.stats().bytes.load(Ordering::Relaxed) as i64);
        // A body that arrives while older ones wait for the store is applied directly: ids are
        // first-write-wins, so order between different bodies does not change any outcome.
        let answer = self.apply(rec, verdict, true).await;
        lock(&self.inflight).remove(&seq);
        answer
    }

    /// Evaluates a body with the signature checked on this thread (replay).
    fn evaluate(&self, rec: &BodyRecord) -> Verdict {
        let t = Instant::now();
        let v = guarded(rec, || match self.stage(rec) {
            Staged::Done(v) => v,
            Staged::Signed(s) => {
                let sig = self.keys.verify_signature(&s.message(), s.sig());
                self.conclude(rec, s, sig)
            }
        })
        .unwrap_or_else(|v| v);
        self.metrics
            .verify_duration
            .observe(t.elapsed().as_secs_f64());
        v
    }

    /// Evaluates a body for a waiting caller: Ed25519 signatures are checked in batches with
    /// those of concurrent requests.
    async fn evaluate_live(&self, rec: &BodyRecord) -> Verdict {
        let t = Instant::now();
        let v = match guarded(rec, || self.stage(rec)) {
            Ok(Staged::Done(v)) | Err(v) => v,
            Ok(Staged::Signed(s)) => {
                let sig = match &self.sigs {
                    Some(b) => b.verify(s.message(), s.sig()).await,
                    None => self.keys.verify_signature(&s.message(), s.sig()),
                };
                guarded(rec, || self.conclude(rec, s, sig)).unwrap_or_else(|v| v)
            }
        };
        self.metrics
            .verify_duration
            .observe(t.elapsed().as_secs_f64());
        v
    }

    /// Everything before the signature check: the record's shape, the caller's namespace and
    /// the message the signature covers.
    fn stage(&self, rec: &BodyRecord) -> Staged {
        let Ok(text) = std::str::from_utf8(&rec.body) else {
            return Staged::Done(Verdict::Reject {
                status: 400,
                reason: "malformed",
                body: malformed_body(
                    "record",
                    "a UTF-8 JSON document",
                    "bytes that are not UTF-8",
                    "the body is not UTF-8".into(),
                ),
                shard: None,
                id: String::new(),
            });
        };
        let caller = Identity::from_uri(&rec.identity).ok();
        let forbidden = |shard: &str, id: &str| -> Option<Verdict> {
            let ns = split_shard(shard).map(|(n, _, _)| n).unwrap_or("");
            match &caller {
                Some(c) if c.allows(ns) => None,
                c => Some(Verdict::Reject {
                    status: 403,
                    reason: "namespace",
                    body: json!({
                        "error": "forbidden",
                        "message": format!("caller {} may submit for namespace {:?}, not for {ns:?} (shard_id {shard:?})", rec.identity, c.as_ref().map_or("(none)", |c| c.namespace.as_str())),
                        "caller": rec.identity, "shard_id": shard,
                    }),
                    shard: Some(shard.to_owned()),
                    id: id.to_owned(),
                }),
            }
        };
        match rec.kind {
            RecordKind::Pcs => {
                let pcs = match Pcs::from_json(text) {
                    Ok(p) => p,
                    Err(m) => return Staged::Done(malformed(&m, None, String::new())),
                };
                if let Some(v) = forbidden(&pcs.shard_id, &pcs.pcs_id) {
                    return Staged::Done(v);
                }
                match Verifier::signing_input(&pcs) {
                    Ok(message) => Staged::Signed(Signed::Pcs(Box::new(pcs), message)),
                    Err(report) => Staged::Done(self.pcs_verdict(rec, Box::new(pcs), *report)),
                }
            }
            RecordKind::Signals => {
                let r = match SignalReport::from_json(text) {
                    Ok(r) => r,
                    Err(m) => return Staged::Done(malformed(&m, None, String::new())),
                };
                if let Some(v) = forbidden(&r.shard_id, &r.report_id) {
                    return Staged::Done(v);
                }
                match r.signing_message() {
                    Ok(message) => Staged::Signed(Signed::Signals(Box::new(r), message)),
                    Err(e) => {
                        let m = Malformed::new("record", "finite numbers", e.to_string());
                        Staged::Done(malformed(&m, Some(r.shard_id.clone()), r.report_id.clone()))
                    }
                }
            }
        }
    }

    /// Everything after the signature check.
    fn conclude(&self, rec: &BodyRecord, signed: Signed, sig: SigAnswer) -> Verdict {
        match signed {
            Signed::Pcs(pcs, _) => {
                let report = Verifier::finish(&pcs, &self.params, sig);
                self.pcs_verdict(rec, pcs, report)
            }
            Signed::Signals(r, _) => self.signals_verdict(rec, r, sig),
        }
    }

    fn pcs_verdict(&self, rec: &BodyRecord, pcs: Box<Pcs>, report: Report) -> Verdict {
        let status = report.http_status();
        let reasons = report.reasons();
        match report.outcome {
            Outcome::Rejected => {
                let (reason, body) = match &report.rejection {
                    Some(Rejection::Malformed(m)) => (
                        "malformed",
                        malformed_body(&m.field, &m.expected, &m.found, m.to_string()),
                    ),
                    Some(Rejection::BadSignature { reason }) => (
                        "signature",
                        json!({"error": "bad_signature", "message": reason, "pcs_id": pcs.pcs_id}),
                    ),
                    Some(Rejection::PcsIdMismatch {
                        claimed,
                        recomputed,
                    }) => (
                        "pcs_id",
                        json!({"error": "malformed", "field": "pcs_id", "expected": recomputed, "found": claimed, "message": reasons.join("; ")}),
                    ),
                    None => (
                        "malformed",
                        json!({"error": "malformed", "message": reasons.join("; ")}),
                    ),
                };
                Verdict::Reject {
                    status,
                    reason,
                    body,
                    shard: Some(pcs.shard_id.clone()),
                    id: pcs.pcs_id.clone(),
                }
            }
            outcome => Verdict::Valid {
                id: pcs.pcs_id.clone(),
                status,
                body: JsonBody::of(&PcsAnswer {
                    alg: report.alg,
                    engine_version: coherence_core::ENGINE_VERSION,
                    escalations: &report.escalations,
                    id: &pcs.pcs_id,
                    key: report.key.as_ref().map(ToString::to_string),
                    kind: "pcs",
                    reasons,
                    seq: rec.seq,
                    status: if outcome == Outcome::Accepted {
                        "accepted"
                    } else {
                        "escalated"
                    },
                    tolerances: &self.tolerances_json,
                }),
                effect: Effect::Pcs(pcs, outcome),
            },
        }
    }

    fn signals_verdict(&self, rec: &BodyRecord, r: Box<SignalReport>, sig: SigAnswer) -> Verdict {
        match r.finish(sig) {
            Ok(key) => Verdict::Valid {
                id: r.report_id.clone(),
                status: 200,
                body: json!({
                    "status": "accepted", "kind": "signals", "id": r.report_id, "seq": rec.seq,
                    "key": key, "windows": r.windows.len(), "findings": r.findings.len(),
                    "finops": r.finops.len(), "engineVersion": coherence_core::ENGINE_VERSION,
                })
                .into(),
                effect: Effect::Signals(r),
            },
            Err(e) => {
                let (reason, body) = match &e {
                    ReportRejection::Malformed(m) => (
                        "malformed",
                        malformed_body(&m.field, &m.expected, &m.found, m.to_string()),
                    ),
                    ReportRejection::BadSignature { reason } => (
                        "signature",
                        json!({"error": "bad_signature", "message": reason, "report_id": r.report_id}),
                    ),
                    ReportRejection::IdMismatch {
                        claimed,
                        recomputed,
                    } => (
                        "report_id",
                        json!({"error": "malformed", "field": "report_id", "expected": recomputed, "found": claimed, "message": e.to_string()}),
                    ),
                };
                Verdict::Reject {
                    status: e.http_status(),
                    reason,
                    body,
                    shard: Some(r.shard_id.clone()),
                    id: r.report_id.clone(),
                }
            }
        }
    }

    /// Applies one durable body, with its verdict if it was reached already; `live` when a
    /// caller waits for the answer.
    async fn apply(&self, rec: BodyRecord, verdict: Option<Verdict>, live: bool) -> Answer {
        let verdict = match verdict {
            Some(v) => v,
            None => self.evaluate_live(&rec).await,
        };
        match verdict {
            Verdict::Reject {
                status,
                reason,
                body,
                shard,
                id,
            } => {
                self.metrics
                    .rejected
                    .get_or_create(&ReasonLabels {
                        reason: reason.to_owned(),
                    })
                    .inc();
                if let Some(s) = shard {
                    lock(&self.views).note_rejected(&s);
                }
                self.record_outcome(rec.seq, status, false, &id);
                Answer::new(status, body)
            }
            Verdict::Valid {
                id,
                status,
                body,
                effect,
            } => {
                let outcome = StoredOutcome {
                    status,
                    kind: rec.kind,
                    seq: rec.seq,
                    at_ms: rec.at_ms,
                    body: body.clone(),
                };
                match self.store.insert(&id, &outcome).await {
                    Ok(insert) => {
                        self.mark_store(true);
                        let first = match &insert {
                            Insert::First => true,
                            // Our own earlier application, whose outcome record was lost in a crash.
                            Insert::Duplicate(o) => o.seq == rec.seq,
                        };
                        if first {
                            self.apply_effect(&effect, rec.at_ms, live);
                            self.record_outcome(rec.seq, status, true, &id);
                            Answer::new(status, body)
                        } else {
                            let Insert::Duplicate(o) = insert else {
                                unreachable!("first handled above")
                            };
                            self.metrics.dedup_hits.inc();
                            self.record_outcome(rec.seq, o.status, false, &id);
                            let b = o.body.with_members(&format!(
                                "{{\"duplicate\":true,\"firstSeq\":{}}}",
                                o.seq
                            ));
                            Answer::new(o.status, b)
                        }
                    }
                    Err(StoreError::Unavailable(why)) => {
                        self.mark_store(false);
                        tracing::warn!(seq = rec.seq, error = %why, "dedup store unavailable; body kept in the WAL");
                        let seq = rec.seq;
                        lock(&self.pending).insert(seq, rec);
                        self.metrics
                            .wal_pending
                            .set(lock(&self.pending).len() as i64);
                        unavailable(seq, &why)
                    }
                }
            }
        }
    }

    fn record_outcome(&self, seq: u64, status: u16, first: bool, id: &str) {
        if let Err(e) = self.wal.append_applied(seq, status, first, id, now_ms()) {
            tracing::error!(error = %e, seq, "could not record an outcome in the WAL");
        }
    }

    fn apply_effect(&self, effect: &Effect, at_ms: i64, count: bool) {
        match effect {
            Effect::Pcs(pcs, outcome) => {
                lock(&self.views).apply_pcs(pcs, *outcome, at_ms);
                if count {
                    match outcome {
                        Outcome::Accepted => self.metrics.accepted.inc(),
                        _ => self.metrics.escalated.inc(),
                    };
                }
            }
            Effect::Signals(r) => {
                let changes = lock(&self.views).apply_signals(r, at_ms);
                if count {
                    self.metrics.accepted.inc();
                }
                self.export_changes(r.namespace(), r.workload(), &changes, count);
            }
        }
    }

    fn export_changes(&self, ns: &str, wl: &str, c: &Changes, count_incidents: bool) {
        let labels = WorkloadLabels {
            namespace: ns.to_owned(),
            workload: wl.to_owned(),
        };
        match c.drift_level {
            Some(l) => {
                self.metrics
                    .drift_risk
                    .get_or_create(&labels)
                    .set(i64::from(l));
            }
            None => {
                self.metrics.drift_risk.remove(&labels);
            }
        }
        for (signal, window, v) in &c.volatility {
            self.metrics
                .volatility
                .get_or_create(&SignalLabels {
                    namespace: ns.to_owned(),
                    workload: wl.to_owned(),
                    signal: signal.clone(),
                    window: window.clone(),
                })
                .set(*v);
        }
        if count_incidents {
            for p in &c.new_incidents {
                self.metrics
                    .incidents
                    .get_or_create(&PatternLabels {
                        pattern: (*p).to_owned(),
                    })
                    .inc();
            }
        }
    }

    fn refresh_gauges(&self) {
        let views = lock(&self.views);
        for (ns, wl) in views.keys() {
            if let Some(s) = views.summary(&ns, &wl) {
                if let Some(l) = s.get("driftRiskLevel").and_then(Value::as_i64) {
                    self.metrics
                        .drift_risk
                        .get_or_create(&WorkloadLabels {
                            namespace: ns.clone(),
                            workload: wl.clone(),
                        })
                        .set(l);
                }
            }
        }
        self.metrics
            .wal_bytes
            .set(self.wal.stats().bytes.load(Ordering::Relaxed) as i64);
    }

    fn mark_store(&self, up: bool) {
        let was = self.store_up.swap(up, Ordering::Relaxed);
        self.metrics.store_up.set(i64::from(up));
        if was != up {
            if up {
                tracing::info!(backend = self.store.backend(), "dedup store answers again");
            } else {
                tracing::warn!(
                    backend = self.store.backend(),
                    "dedup store unavailable: failing closed (503)"
                );
            }
        }
    }

    /// Applies pending bodies in order while the store answers; returns how many were applied.
    pub async fn drain_pending(&self) -> usize {
        let mut n = 0;
        loop {
            let next = {
                let mut p = lock(&self.pending);
                p.pop_first().map(|(_, b)| b)
            };
            let Some(rec) = next else { break };
            let seq = rec.seq;
            let a = self.apply(rec, None, false).await;
            if a.status == 503 && lock(&self.pending).contains_key(&seq) {
                break;
            }
            n += 1;
        }
        self.metrics
            .wal_pending
            .set(lock(&self.pending).len() as i64);
        n
    }

    /// Checks the store and applies what waits for it (run every second in the background).
    pub async fn tick(&self) {
        let up = self.store.ping().await.is_ok();
        self.mark_store(up);
        if up && !lock(&self.pending).is_empty() {
            let n = self.drain_pending().await;
            if n > 0 {
                tracing::info!(
                    applied = n,
                    "pending bodies applied after the store returned"
                );
            }
        }
        self.metrics
            .wal_bytes
            .set(self.wal.stats().bytes.load(Ordering::Relaxed) as i64);
    }

    /// Purges expired dedup entries and compacts sealed WAL segments.
    pub async fn maintain(&self, retention: Duration) {
        match self.store.purge_expired().await {
            Ok(n) if n > 0 => tracing::info!(purged = n, "expired dedup entries purged"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not purge expired dedup entries"),
        }
        let dir = self.wal.dir().to_path_buf();
        let active = self.wal.active_first_seq();
        let res = tokio::task::spawn_blocking(move || {
            crate::wal::compact(&dir, active, retention, now_ms())
        })
        .await;
        match res {
            Ok(Ok(r)) if r.compacted + r.expired > 0 => {
                tracing::info!(
                    compacted = r.compacted,
                    expired = r.expired,
                    kept = r.kept,
                    dropped = r.dropped,
                    "WAL compacted"
                );
                if let Ok(b) = crate::wal::dir_bytes(self.wal.dir()) {
                    self.wal.stats().bytes.store(b, Ordering::Relaxed);
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "WAL compaction failed"),
            Err(e) => tracing::warn!(error = %e, "WAL compaction task failed"),
        }
    }

    /// Writes the memory store's snapshot (no-op for other backends).
    pub fn snapshot(&self) -> std::io::Result<()> {
        let Store::Memory(m) = &self.store else {
            return Ok(());
        };
        let covers = {
            let inflight = lock(&self.inflight);
            let pending_min = lock(&self.pending).keys().next().copied();
            let low = inflight
                .iter()
                .next()
                .copied()
                .into_iter()
                .chain(pending_min)
                .min();
            match low {
                Some(s) => s.saturating_sub(1),
                None => self.wal.next_seq().saturating_sub(1),
            }
        };
        m.snapshot_to(&snapshot_path(self.wal.dir()), covers)
    }

    /// Everything appended so far is durable.
    pub async fn sync(&self) -> Result<u64, WalError> {
        self.wal.sync().await
    }

    /// Ready: replay done and the store answers.
    pub fn is_ready(&self) -> (bool, Value) {
        let replayed = self.ready.load(Ordering::Relaxed);
        let store = self.store_up.load(Ordering::Relaxed);
        (
            replayed && store,
            json!({
                "replayed": replayed, "store": self.store.backend(), "storeUp": store,
                "pending": lock(&self.pending).len(), "replay": lock(&self.replay).clone(),
            }),
        )
    }

    /// The workloads list.
    pub fn workloads(&self) -> Value {
        lock(&self.views).list()
    }

    /// One workload's summary.
    pub fn workload(&self, ns: &str, wl: &str) -> Option<Value> {
        lock(&self.views).summary(ns, wl)
    }

    /// One workload's history (at most `limit` of the newest points).
    pub fn history(&self, ns: &str, wl: &str, limit: Option<usize>) -> Option<Value> {
        lock(&self.views).history(ns, wl, limit)
    }

    /// The stored outcome of an id.
    pub async fn lookup(&self, id: &str) -> Result<Option<StoredOutcome>, StoreError> {
        self.store.get(id).await
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Ed25519 signature batches checked so far and the signatures in them (`None` when
    /// batching is off).
    pub fn signature_batches(&self) -> Option<(u64, u64)> {
        self.sigs.as_ref().map(|b| {
            let s = b.stats();
            (
                s.batches.load(Ordering::Relaxed),
                s.signatures.load(Ordering::Relaxed),
            )
        })
    }

    /// The WAL.
    pub fn wal(&self) -> &Wal {
        &self.wal
    }
}

/// Runs one evaluation step. A panic in it (a defect in a parser or check) refuses that one
/// body with a 400 that says so and is logged, instead of ending the request's task, and,
/// since the refusal is recorded, of failing again at every WAL replay.
fn guarded<T>(rec: &BodyRecord, step: impl FnOnce() -> T) -> Result<T, Verdict> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(step)) {
        Ok(v) => Ok(v),
        Err(p) => {
            let what = p
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(seq = rec.seq, request_id = %rec.request_id, panic = %what, "evaluating a body panicked; refused with 400");
            Err(Verdict::Reject {
                status: 400,
                reason: "malformed",
                body: json!({
                    "error": "malformed",
                    "field": "record",
                    "expected": "a record the verifier can evaluate",
                    "found": "a record whose evaluation failed inside the verifier",
                    "message": format!("the verifier failed while evaluating this record (WAL seq {}); it is refused and the failure is logged", rec.seq),
                }),
                shard: None,
                id: String::new(),
            })
        }
    }
}

fn unavailable(seq: u64, why: &str) -> Answer {
    Answer {
        status: 503,
        body: json!({
            "error": "store_unavailable",
            "message": format!("the dedup store cannot answer ({why}); the body is durable in the WAL (seq {seq}) and will be applied when the store returns"),
            "seq": seq,
        })
        .into(),
        retry_after: Some(1),
    }
}

fn replay_summary(
    r: &ReplayReport,
    rebuilt: usize,
    unapplied: usize,
    applied_now: usize,
    snapshot: Option<u64>,
    took: Duration,
) -> Value {
    json!({
        "segments": r.segments, "records": r.records, "tornBytes": r.torn_bytes,
        "corrupt": r.corrupt, "rebuilt": rebuilt, "unapplied": unapplied,
        "appliedAtStart": applied_now, "snapshotCoversSeq": snapshot,
        "seconds": took.as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;
    use coherence_core::pcs::{self, BuildInput, Signer};

    fn signed_pcs(key: &[u8]) -> Pcs {
        let values: Vec<f64> = (0..120).map(|i| 50.0 + ((i * 37) % 23) as f64).collect();
        let events: Vec<Vec<u8>> = values.iter().map(|v| format!("{v}").into_bytes()).collect();
        let mut p = pcs::build(
            &BuildInput {
                values: &values,
                events: &events,
                shard_id: "shop/checkout/checkout-0",
                epoch: 1,
                attempt: 1,
                sent_at: "2026-11-01T00:00:00Z",
                seed: 42,
                scales: &[2, 4, 8, 16, 32],
            },
            &Params::default(),
        )
        .unwrap();
        Signer::hmac(key.to_vec()).sign(&mut p).unwrap();
        p
    }

    fn metric(registry: &prometheus_client::registry::Registry, name: &str) -> f64 {
        let text = crate::metrics::encode(registry);
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} not in\n{text}"))
    }

    /// The body is parsed and its signature checked while its fdatasync is held; nothing is
    /// stored or answered until the sync is done.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_body_is_checked_during_its_sync_and_stored_and_answered_only_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let key = b"ingest-test-key";
        let (metrics, registry) = Metrics::new();
        // Armed, the sync observer holds the WAL writer after its fdatasync, before it answers.
        let armed = Arc::new(AtomicBool::new(false));
        let (gate_tx, gate_rx) = std::sync::mpsc::channel::<()>();
        let gate = Mutex::new(gate_rx);
        let hold = armed.clone();
        let also: crate::wal::SyncObserver = Arc::new(move |_| {
            if hold.load(Ordering::SeqCst) {
                let _ = lock(&gate).recv();
            }
        });
        let ingest = Ingest::open_observed(
            IngestConfig {
                wal: WalConfig::new(dir.path()),
                keys: Verifier::hmac(vec![key.to_vec()]),
                params: Params::default(),
                ed25519_batch: 64,
            },
            Store::Memory(crate::dedup::memory::MemoryStore::new(Duration::from_secs(
                3600,
            ))),
            metrics,
            Some(also),
        )
        .await
        .unwrap();
        let pcs = signed_pcs(key);
        let body = Bytes::from(pcs.to_json());
        armed.store(true, Ordering::SeqCst);
        let i = ingest.clone();
        let answer = tokio::spawn(async move {
            i.submit(
                RecordKind::Pcs,
                "spiffe://coherence.dev/ns/shop/sa/checkout",
                "r-1",
                body,
            )
            .await
        });
        // Checked while the sync is held.
        let deadline = Instant::now() + Duration::from_secs(10);
        while metric(&registry, "coherence_verify_duration_seconds_count") < 1.0 {
            assert!(
                Instant::now() < deadline,
                "the body was not checked during its sync"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !answer.is_finished(),
            "answered before the body was durable"
        );
        assert!(
            ingest.lookup(&pcs.pcs_id).await.unwrap().is_none(),
            "stored before the body was durable"
        );
        armed.store(false, Ordering::SeqCst);
        gate_tx.send(()).unwrap();
        let a = tokio::time::timeout(Duration::from_secs(10), answer)
            .await
            .expect("answered once the sync is done")
            .unwrap();
        assert_eq!(a.status, 200, "{:?}", a.body);
        let stored = ingest.lookup(&pcs.pcs_id).await.unwrap().unwrap();
        assert_eq!(stored.status, 200);
        assert_eq!(
            metric(&registry, "coherence_verify_duration_seconds_count"),
            1.0,
            "checked once"
        );
    }

    #[test]
    fn a_panicking_evaluation_refuses_that_body_with_a_400_naming_its_seq() {
        let rec = BodyRecord {
            seq: 42,
            at_ms: 0,
            kind: RecordKind::Signals,
            identity: "spiffe://coherence.dev/ns/shop/sa/default".into(),
            request_id: "r-1".into(),
            body: Bytes::from_static(b"{}"),
        };
        let ok: Result<u8, Verdict> = guarded(&rec, || 7);
        assert!(matches!(ok, Ok(7)));
        let refused = guarded(&rec, || -> u8 { panic!("a defect") });
        match refused {
            Err(Verdict::Reject {
                status, body, id, ..
            }) => {
                assert_eq!(status, 400);
                assert_eq!(body["field"], "record");
                assert!(
                    body["message"].as_str().unwrap().contains("WAL seq 42"),
                    "{body}"
                );
                assert!(id.is_empty());
            }
            _ => panic!("expected a refusal"),
        }
    }
}
