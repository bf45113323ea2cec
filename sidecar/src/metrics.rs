//! `/metrics` of the sidecar, in the Prometheus text format (prometheus-client). Every figure
//! is read at scrape time from the state the tasks keep, so nothing is counted twice.

use crate::state::Shared;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::Ordering;

type Labels = Vec<(String, String)>;

/// One metric family, read at scrape time.
#[derive(Debug, Clone)]
struct Family {
    name: &'static str,
    help: &'static str,
    counter: bool,
    samples: Vec<(Labels, f64)>,
}

impl Family {
    fn counter(name: &'static str, help: &'static str) -> Self {
        Self {
            name,
            help,
            counter: true,
            samples: Vec::new(),
        }
    }

    fn gauge(name: &'static str, help: &'static str) -> Self {
        Self {
            name,
            help,
            counter: false,
            samples: Vec::new(),
        }
    }

    fn with(mut self, labels: &[(&str, &str)], v: f64) -> Self {
        self.add(labels, v);
        self
    }

    fn add(&mut self, labels: &[(&str, &str)], v: f64) {
        let labels = labels
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect();
        self.samples.push((labels, v));
    }
}

#[derive(Debug)]
struct Snapshot(Vec<Family>);

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for f in &self.0 {
            let kind = if f.counter {
                MetricType::Counter
            } else {
                MetricType::Gauge
            };
            let mut m = encoder.encode_descriptor(f.name, f.help, None, kind)?;
            if let [(labels, v)] = f.samples.as_slice() {
                if labels.is_empty() {
                    if f.counter {
                        ConstCounter::new(*v).encode(m)?;
                    } else {
                        ConstGauge::new(*v).encode(m)?;
                    }
                    continue;
                }
            }
            for (labels, v) in &f.samples {
                let fam = m.encode_family(labels)?;
                if f.counter {
                    ConstCounter::new(*v).encode(fam)?;
                } else {
                    ConstGauge::new(*v).encode(fam)?;
                }
            }
        }
        Ok(())
    }
}

/// Reads every figure and renders the exposition text.
pub fn render(s: &Shared) -> Result<String, std::fmt::Error> {
    let mut families = Vec::new();
    let c = &s.counters;
    let n = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed) as f64;

    let ob = s.outbox.stats();
    families.push(
        Family::gauge(
            "coherence_sidecar_outbox_pending",
            "Records in the outbox not yet delivered.",
        )
        .with(&[], ob.pending as f64),
    );
    families.push(
        Family::gauge(
            "coherence_sidecar_outbox_bytes",
            "Bytes of the records pending in the outbox.",
        )
        .with(&[], ob.pending_bytes as f64),
    );
    families.push(
        Family::counter(
            "coherence_sidecar_dlq",
            "Records moved to the dead-letter file.",
        )
        .with(&[], ob.dlq_total as f64),
    );
    families.push(
        Family::counter(
            "coherence_sidecar_outbox_overflow",
            "Records dead-lettered because the outbox was full.",
        )
        .with(&[], ob.overflow_total as f64),
    );
    families.push(
        Family::counter(
            "coherence_sidecar_outbox_unreadable",
            "Outbox records or segment regions that could not be read back and were dead-lettered raw.",
        )
        .with(&[], ob.unreadable_total as f64),
    );
    families.push(
        Family::gauge(
            "coherence_sidecar_degraded",
            "1 while records carry ft.degraded.",
        )
        .with(&[], if ob.degraded { 1.0 } else { 0.0 }),
    );

    let d = s.delivery.snapshot();
    families.push(
        Family::counter(
            "coherence_sidecar_delivered",
            "Records the verifier accepted (200/202).",
        )
        .with(&[], d.sent_ok as f64),
    );
    families.push(
        Family::counter(
            "coherence_sidecar_delivery_retries",
            "Delivery attempts that will be retried.",
        )
        .with(&[], d.retries as f64),
    );
    let mut by_status = Family::counter(
        "coherence_sidecar_delivery_responses",
        "Verifier answers by HTTP status (or `error` for no answer).",
    );
    for (code, count) in &d.by_status {
        by_status.add(&[("code", code.to_string().as_str())], *count as f64);
    }
    by_status.add(&[("code", "error")], d.network_errors as f64);
    families.push(by_status);

    let mut samples = Family::counter(
        "coherence_sidecar_samples",
        "Samples yielded by each source.",
    );
    let mut errors = Family::counter(
        "coherence_sidecar_source_errors",
        "Failed polls by source and reason.",
    );
    let mut skipped = Family::counter(
        "coherence_sidecar_source_skipped",
        "Lines, series or points a source skipped, by reason.",
    );
    let mut latency = Family::gauge(
        "coherence_sidecar_source_latency_seconds",
        "Duration of each source's last successful poll.",
    );
    let mut last_ok = Family::gauge(
        "coherence_sidecar_source_last_success_timestamp_seconds",
        "When each source last polled successfully.",
    );
    for (name, e) in s.sources() {
        let snap = e.stats.snapshot();
        let src = [("source", name.as_str())];
        samples.add(&src, snap.samples as f64);
        for (reason, count) in &snap.poll_errors {
            errors.add(
                &[("source", name.as_str()), ("reason", reason.as_str())],
                *count as f64,
            );
        }
        for (reason, count) in &snap.skipped {
            skipped.add(
                &[("source", name.as_str()), ("reason", reason.as_str())],
                *count as f64,
            );
        }
        if let Some(ms) = snap.last_latency_ms {
            latency.add(&src, ms / 1000.0);
        }
        if let Some(ms) = snap.last_ok_ms {
            last_ok.add(&src, ms as f64 / 1000.0);
        }
    }
    families.extend([samples, errors, skipped, latency, last_ok]);

    families.push(
        Family::counter("coherence_sidecar_epochs", "Epochs closed.").with(&[], n(&c.epochs)),
    );
    families.push(
        Family::counter(
            "coherence_sidecar_records",
            "Signed records put in the outbox, by kind.",
        )
        .with(&[("kind", "pcs")], n(&c.pcs_built))
        .with(&[("kind", "signals")], n(&c.reports_built)),
    );
    families.push(
        Family::counter(
            "coherence_sidecar_pcs_skipped",
            "Epochs without a PCS (too few samples).",
        )
        .with(&[], n(&c.pcs_skipped)),
    );
    families.push(
        Family::counter(
            "coherence_sidecar_record_errors",
            "Epochs whose records the outbox refused (held, tried again), plus records it can never take.",
        )
        .with(&[], n(&c.record_errors)),
    );
    families.push(
        Family::gauge(
            "coherence_sidecar_records_held",
            "Signed records waiting in memory because the outbox refused a write.",
        )
        .with(&[], s.held().len() as f64),
    );
    families.push(
        Family::counter(
            "coherence_sidecar_records_retried",
            "Held records stored in the outbox at a later epoch.",
        )
        .with(&[], n(&c.records_retried)),
    );
    families.push(
        Family::counter(
            "coherence_sidecar_records_lost",
            "Records given up: too many held, or larger than the outbox.",
        )
        .with(&[], n(&c.records_lost)),
    );
    families.push(
        Family::counter(
            "coherence_sidecar_outbox_write_errors",
            "Outbox writes or syncs that failed (the record was not stored).",
        )
        .with(&[], ob.write_errors as f64),
    );
    families.push(
        Family::counter(
            "coherence_sidecar_outbox_recoveries",
            "Times the outbox cut back an unknown tail after a failed write and went on.",
        )
        .with(&[], ob.recoveries as f64),
    );
    families.push(
        Family::counter(
            "coherence_sidecar_persist_errors",
            "Failures of the rolling persistence.",
        )
        .with(&[], n(&c.persist_errors)),
    );
    let cs = s.config_state();
    families.push(
        Family::counter(
            "coherence_sidecar_config_reloads",
            "Configuration reloads taken.",
        )
        .with(&[], cs.reloads as f64),
    );
    families.push(
        Family::counter(
            "coherence_sidecar_config_reload_errors",
            "Configuration reloads refused.",
        )
        .with(&[], cs.reload_errors as f64),
    );

    let now = crate::state::now_ms();
    {
        let engine = s.engine();
        let r = engine.rejections();
        families.push(
            Family::counter(
                "coherence_sidecar_rejected_samples",
                "Samples the windows refused, by reason.",
            )
            .with(&[("reason", "non_finite")], r.non_finite as f64)
            .with(&[("reason", "late")], r.late as f64)
            .with(&[("reason", "signal_limit")], r.signal_limit as f64),
        );
        families.push(
            Family::gauge("coherence_sidecar_signals", "Signals with a window.")
                .with(&[], engine.signal_count() as f64),
        );
        families.push(
            Family::gauge(
                "coherence_sidecar_window_samples",
                "Samples held in all windows.",
            )
            .with(&[], engine.samples_held() as f64),
        );
        if let Some(ms) = engine.last_ingest_ms() {
            families.push(
                Family::gauge(
                    "coherence_sidecar_last_ingest_timestamp_seconds",
                    "When samples last arrived.",
                )
                .with(&[], ms as f64 / 1000.0),
            );
        }
        let mut risk = Family::gauge(
            "coherence_sidecar_drift_risk",
            "Drift risk per signal and window: 0 low, 1 medium, 2 high, -1 insufficient data.",
        );
        let mut vi = Family::gauge(
            "coherence_sidecar_volatility_index",
            "stdev/|mean| per signal and window.",
        );
        let windows = engine.config().windows.clone();
        for name in engine.signal_names() {
            for span in &windows {
                if let Some((stats, _)) = engine.window_stats(name, *span, now) {
                    let w = span.to_string();
                    let level = engine
                        .thresholds(name)
                        .risk(&stats)
                        .level()
                        .map_or(-1.0, f64::from);
                    risk.add(&[("signal", name), ("window", w.as_str())], level);
                    if stats.volatility_index.is_finite() {
                        vi.add(
                            &[("signal", name), ("window", w.as_str())],
                            stats.volatility_index,
                        );
                    }
                }
            }
        }
        families.extend([risk, vi]);
    }

    let mut registry = Registry::default();
    registry.register_collector(Box::new(Snapshot(families)));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(out)
}
