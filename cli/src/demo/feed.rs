//! The demo's telemetry: the flight simulator played back in accelerated time, one JSONL file
//! per sidecar.
//!
//! Samples carry simulated timestamps: the simulated clock starts at the demo's start
//! (rounded down to the simulator's step) and runs `speed` times faster than the wall clock, so
//! samples are stamped ahead of it. The sidecar's windows end at the newest sample timestamp
//! (an epoch close advances them to the wall clock only when that is later), so a `5m` window
//! holds five simulated minutes — five wall seconds at 60× — while epochs close on the wall
//! clock (every second in the demo).
//!
//! The healthy hosts come from one simulation that runs on. The stressed hosts run in cycles:
//! each cycle takes a two-hour simulation (phases of 10 minutes, the storm 7.5) and plays its
//! stretch from [`LEAD_MS`] before the compute seizure to [`TAIL_MS`] after the stressed hosts
//! crash; the next cycle restarts them. Before the start, [`BACKFILL_MS`] of calm history is
//! written at once, so the windows are full and every workload has a drift risk from the first
//! epoch on.

use coherence_core::sim::{SimConfig, Simulator};
use coherence_core::telemetry::TelemetryRecord;
use std::fs::File;
use std::io::{BufWriter, Write as _};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Seconds between simulated samples.
pub const STEP_S: u32 = 10;
/// Simulated hours of each cycle's simulation (the cascade starts at half of it).
pub const SIM_HOURS: f64 = 2.0;
/// Simulated hours of the healthy hosts' one simulation (a year: six days of wall time at 60×).
pub const HEALTHY_HOURS: f64 = 24.0 * 365.0;
/// Calm time played before the seizure of each cycle.
pub const LEAD_MS: i64 = 5 * 60_000;
/// Time played after the stressed hosts crash, before the next cycle restarts them.
pub const TAIL_MS: i64 = 10 * 60_000;
/// History written at once before the first cycle (the demo's longest window).
pub const BACKFILL_MS: i64 = 15 * 60_000;

/// One sidecar's feed: its file and the pod name written into its lines.
#[derive(Debug, Clone)]
pub struct FeedTarget {
    /// The JSONL file the sidecar follows.
    pub path: PathBuf,
    /// Workload name written into each line.
    pub workload: String,
    /// Pod (host) name written into each line.
    pub pod: String,
}

/// What the feeder plays.
#[derive(Debug, Clone)]
pub struct FeedPlan {
    /// Seed of the simulator (the same in every cycle).
    pub seed: u64,
    /// Simulated seconds per wall second.
    pub speed: f64,
    /// Healthy targets, in order.
    pub healthy: Vec<FeedTarget>,
    /// Stressed targets, in order.
    pub stressed: Vec<FeedTarget>,
    /// Simulated time at the wall-clock start, ms (a multiple of the step).
    pub t0_ms: i64,
}

/// The phases of one cycle, relative to its start, in simulated ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CycleTimes {
    /// Start of the compute seizure.
    pub seizure_ms: i64,
    /// Start of the memory fever.
    pub fever_ms: i64,
    /// Start of the retry storm.
    pub storm_ms: i64,
    /// The stressed hosts crash.
    pub crash_ms: i64,
    /// Length of the cycle.
    pub len_ms: i64,
}

fn sim_config(
    plan: &FeedPlan,
    healthy: usize,
    stressed: usize,
    hours: f64,
    start_ms: i64,
) -> SimConfig {
    SimConfig {
        seed: plan.seed,
        hours,
        step_s: STEP_S,
        healthy_hosts: u32::try_from(healthy).unwrap_or(u32::MAX),
        stressed_hosts: u32::try_from(stressed).unwrap_or(u32::MAX),
        start_ms,
        domain: "demo".into(),
        workload: "demo".into(),
        ..SimConfig::default()
    }
}

/// The cycle's phases (the same for every cycle).
pub fn cycle_times() -> CycleTimes {
    let tl = SimConfig {
        hours: SIM_HOURS,
        step_s: STEP_S,
        start_ms: 0,
        ..SimConfig::default()
    }
    .timeline();
    let rel = |ms: i64| ms - tl.seizure_start_ms + LEAD_MS;
    CycleTimes {
        seizure_ms: LEAD_MS,
        fever_ms: rel(tl.fever_start_ms),
        storm_ms: rel(tl.storm_start_ms),
        crash_ms: rel(tl.crash_ms),
        len_ms: rel(tl.crash_ms) + TAIL_MS,
    }
}

/// Counters the progress line reads.
#[derive(Debug, Default)]
pub struct FeedStats {
    /// Lines written.
    pub lines: AtomicU64,
    /// Simulated time of the newest line, ms.
    pub sim_ms: AtomicU64,
}

/// `(timestamp, target index, line)` of the healthy hosts: one simulation that runs on for as
/// long as the demo does (healthy pods do not restart when a stressed one crashes).
fn healthy_records(plan: &FeedPlan) -> impl Iterator<Item = (i64, usize, TelemetryRecord)> {
    let cfg = sim_config(
        plan,
        plan.healthy.len(),
        0,
        HEALTHY_HOURS,
        plan.t0_ms - BACKFILL_MS,
    );
    let sim = Simulator::new(cfg).ok();
    let hosts = sim.as_ref().map(Simulator::host_names).unwrap_or_default();
    sim.into_iter().flatten().filter_map(move |r| {
        let i = hosts.iter().position(|h| *h == r.host)?;
        Some((r.ts_ms().ok()?, i, r))
    })
}

/// `(timestamp, target index, line)` of the stressed hosts, cycle after cycle: each cycle a new
/// simulation whose seizure comes [`LEAD_MS`] after the cycle's start.
fn stressed_records(plan: &FeedPlan) -> impl Iterator<Item = (i64, usize, TelemetryRecord)> {
    let times = cycle_times();
    let half_ms = (SIM_HOURS * 3_600_000.0) as i64 / 2;
    let offset = plan.healthy.len();
    let plan = plan.clone();
    (0i64..).flat_map(move |cycle| {
        let begin = plan.t0_ms + cycle * times.len_ms;
        let from = if cycle == 0 {
            begin - BACKFILL_MS
        } else {
            begin
        };
        let until = begin + times.len_ms;
        let cfg = sim_config(
            &plan,
            0,
            plan.stressed.len(),
            SIM_HOURS,
            begin + LEAD_MS - half_ms,
        );
        let sim = Simulator::new(cfg).ok();
        let hosts = sim.as_ref().map(Simulator::host_names).unwrap_or_default();
        sim.into_iter()
            .flatten()
            .filter_map(move |r| {
                let i = hosts.iter().position(|h| *h == r.host)?;
                Some((r.ts_ms().ok()?, offset + i, r))
            })
            .skip_while(move |(ts, _, _)| *ts < from)
            .take_while(move |(ts, _, _)| *ts < until)
    })
}

/// Plays `plan` until `stop` is set; `started` is the wall-clock start the plan's `t0_ms`
/// stands for. Write errors end the feed and are returned.
pub fn play(
    plan: &FeedPlan,
    started: Instant,
    stop: &AtomicBool,
    stats: &Arc<FeedStats>,
) -> std::io::Result<()> {
    let targets: Vec<&FeedTarget> = plan.healthy.iter().chain(&plan.stressed).collect();
    let mut files = targets
        .iter()
        .map(|t| File::create(&t.path).map(BufWriter::new))
        .collect::<std::io::Result<Vec<_>>>()?;
    let mut healthy = healthy_records(plan).peekable();
    let mut stressed = stressed_records(plan).peekable();
    let mut line = String::with_capacity(320);
    loop {
        // The two streams, merged in time order.
        let take_healthy = match (healthy.peek(), stressed.peek()) {
            (Some(h), Some(s)) => h.0 <= s.0,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
        };
        let next = if take_healthy {
            healthy.next()
        } else {
            stressed.next()
        };
        let Some((ts, i, mut rec)) = next else { break };
        let due = Duration::from_secs_f64(((ts - plan.t0_ms).max(0) as f64) / 1000.0 / plan.speed);
        if !wait_until(started + due, stop, &mut files)? {
            break;
        }
        rec.host = targets[i].pod.clone();
        rec.workload = targets[i].workload.clone();
        line.clear();
        line.push_str(&serde_json::to_string(&rec).map_err(std::io::Error::other)?);
        line.push('\n');
        files[i].write_all(line.as_bytes())?;
        stats.lines.fetch_add(1, Ordering::Relaxed);
        stats
            .sim_ms
            .store(u64::try_from(ts).unwrap_or(0), Ordering::Relaxed);
    }
    flush_all(&mut files)
}

fn flush_all(files: &mut [BufWriter<File>]) -> std::io::Result<()> {
    for f in files {
        f.flush()?;
    }
    Ok(())
}

// Flushes what was written, then sleeps until `due` in short steps; false when stopped.
fn wait_until(
    due: Instant,
    stop: &AtomicBool,
    files: &mut [BufWriter<File>],
) -> std::io::Result<bool> {
    let mut flushed = false;
    loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let now = Instant::now();
        if now >= due {
            return Ok(true);
        }
        if !flushed {
            flush_all(files)?;
            flushed = true;
        }
        std::thread::sleep((due - now).min(Duration::from_millis(100)));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_cycle_plays_the_cascade_after_the_lead() {
        let t = cycle_times();
        assert_eq!(t.seizure_ms, LEAD_MS);
        assert_eq!(t.fever_ms - t.seizure_ms, 10 * 60_000);
        assert_eq!(t.storm_ms - t.fever_ms, 10 * 60_000);
        assert_eq!(t.crash_ms - t.storm_ms, 450_000);
        assert_eq!(t.len_ms, t.crash_ms + TAIL_MS);
    }

    #[test]
    fn lines_are_stamped_in_simulated_time_and_split_per_target() {
        let dir = tempfile::tempdir().unwrap();
        let target = |name: &str| FeedTarget {
            path: dir.path().join(format!("{name}.jsonl")),
            workload: name.into(),
            pod: format!("{name}-0"),
        };
        let plan = FeedPlan {
            seed: 42,
            // Fast enough to play the backfill and a little more within the test.
            speed: 600.0,
            healthy: vec![target("calm")],
            stressed: vec![target("hot")],
            t0_ms: 1_793_491_200_000,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(FeedStats::default());
        let (p, s, st) = (plan.clone(), stop.clone(), stats.clone());
        let started = Instant::now();
        let h = std::thread::spawn(move || play(&p, started, &s, &st));
        std::thread::sleep(Duration::from_millis(400));
        stop.store(true, Ordering::Relaxed);
        h.join().unwrap().unwrap();
        let calm = std::fs::read_to_string(dir.path().join("calm.jsonl")).unwrap();
        let lines: Vec<serde_json::Value> = calm
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        // 15 minutes of backfill at one line per 10 s, then some played lines.
        assert!(lines.len() > 90, "{}", lines.len());
        assert_eq!(lines[0]["ts"], "2026-10-31T23:45:00Z");
        assert_eq!(lines[0]["host"], "calm-0");
        assert_eq!(lines[0]["workload"], "calm");
        assert!(stats.lines.load(Ordering::Relaxed) as usize >= lines.len());
        let hot = std::fs::read_to_string(dir.path().join("hot.jsonl")).unwrap();
        assert!(hot.lines().all(|l| l.contains("\"host\":\"hot-0\"")));
    }
}
