//! Criterion benchmarks of `coherence-core`.
//!
//! Run them all with `make bench-core` (`cargo bench -p coherence-core --bench core`), or a
//! subset by name, e.g. `cargo bench -p coherence-core --bench core -- window/`. The whole
//! file takes about two minutes on two cores. Every group sets a `Throughput`, so criterion
//! prints elements per second next to the time per iteration.
//!
//! | group | what one iteration measures |
//! |---|---|
//! | `window/push` | one [`RollingWindow::push`] into a full 1 h window of 10 s samples (steady state: one eviction per push) |
//! | `window/stats_100k` | `rolling_push_stats_risk`: 100,000 samples pushed through a fresh 1 h window, reading the drift risk of the window after each push by the division-free `RollingWindow::risk` (what `coherence analyze` does per sample and signal); `moments_of`: [`Moments::of`] over a 100,000-value slice (the exact two-pass kernel). Target: under 2 ms per 100,000 samples; the bench prints whether it was met |
//! | `pcs/build` | [`pcs::build`] of a 360-value window whose events are the canonical JSON bytes of each point |
//! | `pcs/sign` | signing that record (canonical subset, SHA-256, then HMAC-SHA256 or Ed25519) |
//! | `pcs/verify` | [`Verifier::verify`] of the signed record: signature, `pcs_id`, recomputed `D_hat`, budget and regime |
//! | `pcs/ed25519_batch` | `verify_signatures/N`: [`Verifier::verify_signatures`] of N good Ed25519 signatures of one key (base64, as records carry them), as the verifier checks those of concurrent requests; `dalek_verify_batch/N`: `ed25519_dalek::verify_batch` of the same N signatures (already decoded), the peer. N = 1 is the single strict check |
//! | `collect/analyze_10k_lines` | a [`Collector`] fed 10,000 simulated records (3 hosts, through the cascade), then `finish` (medians, FinOps, detectors, incidents); JSON parsing is not included |
//! | `kernel/rolling_1h_8_signals_1m` | the statistics kernel alone: rolling 1 h mean and sample stdev of the 8 signals at every sample, per host, over 1,000,230 simulated samples (3 hosts), by [`rolling_rows_into`] on one thread, output buffers kept across iterations |
//! | `kernel/rolling_1h_8_signals_1m_par` | the same by [`rolling_rows_par_into`] on every core (each host's rows split at block boundaries) — the Rust side of `bench/compare.sh`'s kernel ratio against pandas' `rolling("1h").mean()/std()` (its `rolling_kernel` phase) |
//! | `kernel/risk_1h_8_signals_1m`, `…_par` | the fused kernel [`rolling_risk`] on one thread and on every core: mean, stdev and drift risk (`analyze`'s thresholds) of every sample's window, counted per host and signal, plus the last window's statistics, with no per-sample output — the Rust side of the ratio against pandas' `rolling_kernel` + `drift` phases |
//! | `kernel/rolling_1h_8_signals_1m_fresh_buffers` | `rolling_1h_8_signals_1m` allocating its 132 MB of output every iteration |
//! | `kernel/streaming_rolling_1h_8_signals_1m` | the same statistics with one [`RollingWindow`] per host and signal, `push` and `stats()` per sample |
//!
//! The input data is generated in memory by the deterministic flight simulator (seed 42) or by
//! a fixed pseudo-random sequence, so every run measures the same work.

// A benchmark whose fixed, valid inputs fail to build has nothing to measure: stopping with a
// message (`expect`) is the right outcome there, as in tests.
#![allow(clippy::expect_used)]

use coherence_core::canon;
use coherence_core::collect::{CollectConfig, Collector, default_drift_by_signal};
use coherence_core::pcs::{self, BuildInput, Params, Pcs, Signer, Verifier};
use coherence_core::rng::SplitMix64;
use coherence_core::sim::{SimConfig, Simulator};
use coherence_core::stats::Moments;
use coherence_core::telemetry::SIGNALS;
use coherence_core::window::{
    DriftRisk, DriftThresholds, RollingRows, RollingWindow, WindowSpan, rolling_risk,
    rolling_rows_into, rolling_rows_par_into,
};
use criterion::{BenchmarkId, Criterion, Throughput, black_box};
use std::cell::RefCell;
use std::time::{Duration, Instant};

/// Step between samples, as the simulator and the collector's telemetry use.
const STEP_MS: i64 = 10_000;
/// Start of every generated series (2026-11-01T00:00:00Z).
const START_MS: i64 = 1_793_491_200_000;
/// Samples of the `window/stats_100k` group.
const N_100K: usize = 100_000;
/// The `window/stats_100k` target, per 100,000 samples.
const TARGET_100K: Duration = Duration::from_millis(2);
/// Hours of the 1M-sample simulation: 2 healthy hosts for the whole run plus 1 stressed host
/// until its crash give 1,000,230 samples, the same file `bench/compare.sh` analyses.
const KERNEL_HOURS: f64 = 1111.0;

fn span_1h() -> WindowSpan {
    WindowSpan::from_secs(3600).expect("1h is a valid span")
}

/// A reproducible series around 100 with 5 % noise.
fn series(n: usize, seed: u64) -> Vec<f64> {
    let mut rng = SplitMix64::new(seed);
    (0..n).map(|_| 100.0 + 5.0 * rng.normal()).collect()
}

fn window_push(c: &mut Criterion) {
    let mut g = c.benchmark_group("window/push");
    g.throughput(Throughput::Elements(1));
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(3));
    let values = series(4096, 1);
    let mut w = RollingWindow::new(span_1h());
    let mut ts = START_MS;
    // Fill one hour so every measured push also evicts one sample.
    for &v in values.iter().take(360) {
        w.push(ts, v).expect("finite, in order");
        ts += STEP_MS;
    }
    let mut i = 0usize;
    g.bench_function("steady_state_1h_10s", |b| {
        b.iter(|| {
            i = (i + 1) & 4095;
            ts += STEP_MS;
            black_box(w.push(black_box(ts), black_box(values[i])))
        })
    });
    g.finish();
    black_box(w.len());
}

/// What `analyze` does per signal: push, then read the statistics and the drift risk.
fn rolling_push_stats_risk(values: &[f64], t: &DriftThresholds) -> [u64; 4] {
    let mut w = RollingWindow::new(span_1h());
    let mut counts = [0u64; 4];
    let mut ts = START_MS;
    for &v in values {
        if w.push(ts, v).is_ok() {
            counts[w.risk(t) as usize] += 1;
        }
        ts += STEP_MS;
    }
    counts
}

fn window_stats_100k(c: &mut Criterion) {
    let mut g = c.benchmark_group("window/stats_100k");
    g.throughput(Throughput::Elements(N_100K as u64));
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(4));
    let values = series(N_100K, 2);
    let t = DriftThresholds::volatility_only();
    // Per-iteration times of the measured batches, to check the target after the group.
    let times: RefCell<Vec<Duration>> = RefCell::new(Vec::new());
    g.bench_function("rolling_push_stats_risk", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                black_box(rolling_push_stats_risk(black_box(&values), &t));
            }
            let el = start.elapsed();
            times.borrow_mut().push(el / iters.max(1) as u32);
            el
        })
    });
    g.bench_function("moments_of", |b| {
        b.iter(|| black_box(Moments::of(black_box(values.as_slice()).iter().copied())))
    });
    g.finish();
    let mut times = times.into_inner();
    if !times.is_empty() {
        times.sort_unstable();
        let median = times[times.len() / 2];
        let ok = median < TARGET_100K;
        println!(
            "\nwindow/stats_100k/rolling_push_stats_risk: median {:.3} ms per 100,000 samples \
             (push + drift risk each), target < {} ms: {}\n",
            median.as_secs_f64() * 1e3,
            TARGET_100K.as_millis(),
            if ok { "MET" } else { "MISSED" }
        );
    }
}

/// A 360-value window (1 h of 10 s samples) and its events: the canonical JSON of each point.
fn pcs_window() -> (Vec<f64>, Vec<Vec<u8>>) {
    let values = series(360, 3);
    let events = values
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let point = serde_json::json!({
                "ts": START_MS + i as i64 * STEP_MS,
                "signal": "cpu",
                "value": v,
            });
            canon::canonical_bytes(&point).expect("finite values are canonical")
        })
        .collect();
    (values, events)
}

fn pcs_benches(c: &mut Criterion) {
    let (values, events) = pcs_window();
    let params = Params::default();
    let input = BuildInput {
        values: &values,
        events: &events,
        shard_id: "default/checkout-api/checkout-api-0",
        epoch: 7,
        attempt: 1,
        sent_at: "2026-11-01T01:00:00Z",
        seed: 42,
        scales: &[2, 4, 8, 16, 32],
    };
    let unsigned: Pcs = pcs::build(&input, &params).expect("a valid window builds");

    let mut g = c.benchmark_group("pcs/build");
    g.throughput(Throughput::Elements(values.len() as u64));
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(3));
    g.bench_function("window_360", |b| {
        b.iter(|| black_box(pcs::build(black_box(&input), &params)))
    });
    g.finish();

    let signers = [
        (
            "hmac",
            Signer::hmac(b"bench-hmac-key-0123456789abcdef".to_vec()),
        ),
        ("ed25519", Signer::ed25519_from_seed(&[7u8; 32])),
    ];
    let mut g = c.benchmark_group("pcs/sign");
    g.throughput(Throughput::Elements(1));
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(3));
    for (name, signer) in &signers {
        g.bench_with_input(BenchmarkId::from_parameter(name), signer, |b, s| {
            b.iter_batched_ref(
                || unsigned.clone(),
                |p| s.sign(p).expect("a built record is canonical"),
                criterion::BatchSize::SmallInput,
            )
        });
    }
    g.finish();

    let mut g = c.benchmark_group("pcs/verify");
    g.throughput(Throughput::Elements(1));
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(3));
    for (name, signer) in &signers {
        let mut signed = unsigned.clone();
        signer
            .sign(&mut signed)
            .expect("a built record is canonical");
        let verifier: Verifier = signer.verifier();
        assert!(
            verifier.verify(&signed, &params).is_accepted(),
            "the {name} record must verify before it is timed"
        );
        g.bench_with_input(BenchmarkId::from_parameter(name), &signed, |b, p| {
            b.iter(|| black_box(verifier.verify(black_box(p), &params)))
        });
    }
    g.finish();

    // Ed25519 signatures of one key checked together, as the verifier checks those of
    // concurrent requests, beside ed25519-dalek's own batch check of the same signatures.
    let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    let verifier = Verifier::ed25519(vec![key.verifying_key()]);
    let messages: Vec<[u8; 32]> = (0..64u64)
        .map(|i| {
            use sha2::Digest as _;
            sha2::Sha256::digest(i.to_le_bytes()).into()
        })
        .collect();
    let sigs: Vec<ed25519_dalek::Signature> = messages
        .iter()
        .map(|m| ed25519_dalek::Signer::sign(&key, m))
        .collect();
    let b64: Vec<String> = sigs
        .iter()
        .map(|s| {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.encode(s.to_bytes())
        })
        .collect();
    let mut g = c.benchmark_group("pcs/ed25519_batch");
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(2));
    for n in [1usize, 2, 4, 8, 16, 64] {
        g.throughput(Throughput::Elements(n as u64));
        let items: Vec<([u8; 32], &str)> = messages[..n]
            .iter()
            .zip(&b64)
            .map(|(m, s)| (*m, s.as_str()))
            .collect();
        assert!(
            verifier.verify_signatures(&items).iter().all(Result::is_ok),
            "a batch of good signatures must verify before it is timed"
        );
        g.bench_with_input(BenchmarkId::new("verify_signatures", n), &items, |b, it| {
            b.iter(|| black_box(verifier.verify_signatures(black_box(it))))
        });
        let msgs: Vec<&[u8]> = messages[..n].iter().map(|m| &m[..]).collect();
        let keys = vec![key.verifying_key(); n];
        g.bench_with_input(BenchmarkId::new("dalek_verify_batch", n), &n, |b, &n| {
            b.iter(|| black_box(ed25519_dalek::verify_batch(&msgs, &sigs[..n], &keys)))
        });
    }
    g.finish();
}

/// Simulated samples as the collector takes them: workload, host, time, the 8 signal values.
type Sample = (String, String, i64, [f64; 8]);

fn simulate(hours: f64, limit: usize) -> Vec<Sample> {
    let sim = Simulator::new(SimConfig {
        hours,
        ..SimConfig::default()
    })
    .expect("the default simulation is valid");
    sim.take(limit)
        .map(|r| {
            let v: [f64; 8] =
                std::array::from_fn(|i| r.value(SIGNALS[i]).expect("every signal exists"));
            let ts = r.ts_ms().expect("the simulator writes RFC 3339");
            (r.workload, r.host, ts, v)
        })
        .collect()
}

fn collect_analyze(c: &mut Criterion) {
    // 12 h of 3 hosts, cut at 10,000 records: the stressed host's cascade starts at 6 h.
    let records = simulate(12.0, 10_000);
    assert_eq!(records.len(), 10_000);
    let mut g = c.benchmark_group("collect/analyze_10k_lines");
    g.throughput(Throughput::Elements(records.len() as u64));
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(5));
    g.sample_size(30);
    g.bench_function("push_and_finish", |b| {
        b.iter(|| {
            let mut col =
                Collector::new(CollectConfig::default()).expect("the default config is valid");
            for (w, h, ts, v) in &records {
                col.push(w, h, *ts, v).expect("simulated samples are valid");
            }
            black_box(col.finish())
        })
    });
    g.finish();
}

/// One host's samples in time order, as columns: times and the 8 signal values per sample.
struct HostSeries {
    ts: Vec<i64>,
    values: Vec<[f64; 8]>,
    /// The same values as one column per signal, as a data frame holds them.
    columns: Vec<Vec<f64>>,
}

fn kernel_data() -> Vec<HostSeries> {
    let mut hosts: Vec<(String, HostSeries)> = Vec::new();
    for (_, host, ts, v) in simulate(KERNEL_HOURS, usize::MAX) {
        let i = match hosts.iter().position(|(h, _)| *h == host) {
            Some(i) => i,
            None => {
                hosts.push((
                    host,
                    HostSeries {
                        ts: Vec::new(),
                        values: Vec::new(),
                        columns: vec![Vec::new(); 8],
                    },
                ));
                hosts.len() - 1
            }
        };
        hosts[i].1.ts.push(ts);
        hosts[i].1.values.push(v);
        for (c, x) in hosts[i].1.columns.iter_mut().zip(v) {
            c.push(x);
        }
    }
    hosts.into_iter().map(|(_, s)| s).collect()
}

/// Rolling 1 h mean and sample stdev of every signal at every sample, per host, by the columnar
/// batch kernel — the same computation as pandas' `rolling("1h")` over
/// a frame's columns, with the 8 signals of a host moving one window together
/// ([`rolling_rows`]); returns a checksum so nothing is optimised away.
fn columnar_kernel(hosts: &[HostSeries], out: &mut [RollingRows<8>]) -> f64 {
    let mut acc = 0.0;
    for (h, o) in hosts.iter().zip(out.iter_mut()) {
        rolling_rows_into(&h.ts, &h.values, span_1h(), o)
            .expect("simulated rows are sorted and finite");
        if let (Some(m), Some(sd)) = (o.mean.last(), o.stdev.last()) {
            acc += m.iter().sum::<f64>() + sd.iter().sum::<f64>();
        }
    }
    acc
}

/// [`columnar_kernel`] on `threads` threads per host (0: one per core).
fn parallel_kernel(hosts: &[HostSeries], out: &mut [RollingRows<8>], threads: usize) -> f64 {
    let mut acc = 0.0;
    for (h, o) in hosts.iter().zip(out.iter_mut()) {
        rolling_rows_par_into(&h.ts, &h.values, span_1h(), o, threads)
            .expect("simulated rows are sorted and finite");
        if let (Some(m), Some(sd)) = (o.mean.last(), o.stdev.last()) {
            acc += m.iter().sum::<f64>() + sd.iter().sum::<f64>();
        }
    }
    acc
}

/// The drift thresholds of the 8 signals, as `coherence analyze` applies them.
fn analyze_thresholds() -> [DriftThresholds; 8] {
    let by = default_drift_by_signal();
    std::array::from_fn(|i| {
        by.get(SIGNALS[i])
            .copied()
            .unwrap_or_else(DriftThresholds::volatility_only)
    })
}

/// The fused kernel: rolling mean, stdev and drift risk of every sample and signal, counted per
/// host and signal, on `threads` threads per host; returns the total of the counts of high risk.
fn fused_kernel(hosts: &[HostSeries], t: &[DriftThresholds; 8], threads: usize) -> u64 {
    let mut high = 0;
    for h in hosts {
        let r = rolling_risk(&h.ts, &h.values, span_1h(), t, threads)
            .expect("simulated rows are sorted and finite");
        high += r
            .counts
            .iter()
            .map(|c| c[DriftRisk::High as usize])
            .sum::<u64>();
    }
    high
}

/// The same with the streaming [`RollingWindow`], one push and `stats()` per sample and signal
/// (what a sidecar does as samples arrive); returns a checksum.
fn rolling_kernel(hosts: &[HostSeries]) -> f64 {
    let mut acc = 0.0;
    for h in hosts {
        let mut windows: [RollingWindow; 8] =
            std::array::from_fn(|_| RollingWindow::new(span_1h()));
        for (&ts, v) in h.ts.iter().zip(&h.values) {
            for (w, &x) in windows.iter_mut().zip(v) {
                if w.push(ts, x).is_ok() {
                    let s = w.stats();
                    acc += s.mean + s.stdev;
                }
            }
        }
    }
    acc
}

fn kernel(c: &mut Criterion) {
    let mut g = c.benchmark_group("kernel");
    g.sample_size(10);
    g.warm_up_time(Duration::from_secs(2));
    g.measurement_time(Duration::from_secs(10));
    // Generated on first use so a filtered run that skips this bench does not pay for it.
    let mut data: Option<Vec<HostSeries>> = None;
    let samples = {
        let cfg = SimConfig {
            hours: KERNEL_HOURS,
            ..SimConfig::default()
        };
        let steps = cfg.steps();
        let crash_step = (cfg.timeline().crash_ms - cfg.start_ms) / (i64::from(cfg.step_s) * 1000);
        steps * u64::from(cfg.healthy_hosts)
            + u64::try_from(crash_step).expect("the crash is after the start")
                * u64::from(cfg.stressed_hosts)
    };
    g.throughput(Throughput::Elements(samples));
    // Output buffers are kept across iterations, as a caller computing many windows keeps them;
    // `rolling_1h_8_signals_1m_fresh_buffers` pays for allocating them every time.
    let mut outputs: Vec<RollingRows<8>> = Vec::new();
    g.bench_function("rolling_1h_8_signals_1m", |b| {
        let hosts = data.get_or_insert_with(kernel_data);
        outputs.resize_with(hosts.len(), RollingRows::default);
        b.iter(|| black_box(columnar_kernel(black_box(hosts), &mut outputs)))
    });
    let mut par_outputs: Vec<RollingRows<8>> = Vec::new();
    g.bench_function("rolling_1h_8_signals_1m_par", |b| {
        let hosts = data.get_or_insert_with(kernel_data);
        par_outputs.resize_with(hosts.len(), RollingRows::default);
        b.iter(|| black_box(parallel_kernel(black_box(hosts), &mut par_outputs, 0)))
    });
    let t = analyze_thresholds();
    g.bench_function("risk_1h_8_signals_1m", |b| {
        let hosts = data.get_or_insert_with(kernel_data);
        b.iter(|| black_box(fused_kernel(black_box(hosts), &t, 1)))
    });
    g.bench_function("risk_1h_8_signals_1m_par", |b| {
        let hosts = data.get_or_insert_with(kernel_data);
        b.iter(|| black_box(fused_kernel(black_box(hosts), &t, 0)))
    });
    g.bench_function("rolling_1h_8_signals_1m_fresh_buffers", |b| {
        let hosts = data.get_or_insert_with(kernel_data);
        b.iter(|| {
            let mut fresh: Vec<RollingRows<8>> =
                (0..hosts.len()).map(|_| RollingRows::default()).collect();
            black_box(columnar_kernel(black_box(hosts), &mut fresh))
        })
    });
    g.bench_function("streaming_rolling_1h_8_signals_1m", |b| {
        let hosts = data.get_or_insert_with(kernel_data);
        b.iter(|| black_box(rolling_kernel(black_box(hosts))))
    });
    g.finish();
    if let Some(hosts) = &data {
        let n: usize = hosts.iter().map(|h| h.ts.len()).sum();
        assert_eq!(
            n as u64, samples,
            "throughput must count the samples measured"
        );
    }
    if !outputs.is_empty() && outputs.len() == par_outputs.len() {
        assert!(
            outputs == par_outputs,
            "the kernel on every core must give the one-thread results to the bit"
        );
    }
}

/// Keeps `DriftRisk`'s discriminants in the order the counters above index them.
const _: () = {
    assert!(DriftRisk::InsufficientData as usize == 0);
    assert!(DriftRisk::High as usize == 3);
};

fn main() {
    let mut c = Criterion::default().configure_from_args();
    window_push(&mut c);
    window_stats_100k(&mut c);
    pcs_benches(&mut c);
    collect_analyze(&mut c);
    kernel(&mut c);
    c.final_summary();
}
