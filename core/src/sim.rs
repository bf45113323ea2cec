//! The flight simulator: deterministic telemetry of healthy hosts and stressed hosts that go
//! through a cascade — a compute seizure, then a memory fever, then a retry storm, then a
//! crash — at times known in advance ([`Timeline`]).
//!
//! The same seed and configuration always produce the same lines, byte for byte, on every
//! platform: the generator is [`SplitMix64`] and every host draws from its own stream.

use crate::rng::SplitMix64;
use crate::telemetry::{TelemetryRecord, format_ts_ms};

/// Configuration of a simulation run.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// Seed of every random stream.
    pub seed: u64,
    /// Simulated duration in hours.
    pub hours: f64,
    /// Step between samples, in seconds.
    pub step_s: u32,
    /// Number of healthy hosts.
    pub healthy_hosts: u32,
    /// Number of stressed hosts (each runs the cascade).
    pub stressed_hosts: u32,
    /// Start time, ms since the Unix epoch.
    pub start_ms: i64,
    /// Business domain written to every line.
    pub domain: String,
    /// Workload name written to every line.
    pub workload: String,
    /// Infrastructure price of one host, USD per hour.
    pub host_usd_per_hour: f64,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            seed: 42,
            hours: 6.0,
            step_s: 10,
            healthy_hosts: 2,
            stressed_hosts: 1,
            // 2026-11-01T00:00:00Z
            start_ms: 1_793_491_200_000,
            domain: "checkout".into(),
            workload: "checkout-api".into(),
            host_usd_per_hour: 0.20,
        }
    }
}

/// When the cascade of a stressed host happens (ms since the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeline {
    /// Start of the compute seizure: CPU variance explodes while its mean holds.
    pub seizure_start_ms: i64,
    /// Start of the memory fever: resident memory grows at [`FEVER_MB_PER_S`].
    pub fever_start_ms: i64,
    /// Start of the retry storm: outbound requests amplify up to [`STORM_AMPLIFICATION`]×.
    pub storm_start_ms: i64,
    /// The host crashes and sends nothing from this time on.
    pub crash_ms: i64,
    /// End of the run (exclusive).
    pub end_ms: i64,
}

/// Memory growth of the fever, MiB per second.
pub const FEVER_MB_PER_S: f64 = 1.6;
/// Outbound/inbound request ratio the retry storm ramps up to.
pub const STORM_AMPLIFICATION: f64 = 6.0;
/// Outbound/inbound request ratio of a healthy host (each request calls 1.3 dependencies).
pub const HEALTHY_FANOUT: f64 = 1.3;

/// Error of an unusable configuration, naming the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {expected}")]
pub struct SimConfigError {
    /// The field.
    pub field: &'static str,
    /// What was expected.
    pub expected: &'static str,
}

impl SimConfig {
    /// Checks the configuration.
    pub fn validate(&self) -> Result<(), SimConfigError> {
        if !(self.hours.is_finite() && self.hours > 0.0 && self.hours <= 24.0 * 366.0 * 10.0) {
            return Err(SimConfigError {
                field: "hours",
                expected: "a number of hours in (0, 87840]",
            });
        }
        if self.step_s == 0 {
            return Err(SimConfigError {
                field: "step",
                expected: "a step of at least 1 second",
            });
        }
        if self.healthy_hosts + self.stressed_hosts == 0 {
            return Err(SimConfigError {
                field: "hosts",
                expected: "at least one host",
            });
        }
        if !(self.host_usd_per_hour.is_finite() && self.host_usd_per_hour > 0.0) {
            return Err(SimConfigError {
                field: "host_usd_per_hour",
                expected: "a positive price",
            });
        }
        Ok(())
    }

    /// The cascade's timeline: it starts at half the run; each phase lasts 20 minutes (the
    /// storm 15), shortened proportionally for runs under 4 hours.
    pub fn timeline(&self) -> Timeline {
        let dur_ms = (self.hours * 3_600_000.0) as i64;
        let step_ms = i64::from(self.step_s) * 1000;
        let align = |ms: i64| ms - ms.rem_euclid(step_ms);
        let phase = (20 * 60_000).min(dur_ms / 12);
        let storm = (15 * 60_000).min(dur_ms / 16);
        let seizure = align(self.start_ms + dur_ms / 2);
        Timeline {
            seizure_start_ms: seizure,
            fever_start_ms: align(seizure + phase),
            storm_start_ms: align(seizure + 2 * phase),
            crash_ms: align(seizure + 2 * phase + storm),
            end_ms: self.start_ms + dur_ms,
        }
    }

    /// Number of steps of the run.
    pub fn steps(&self) -> u64 {
        (self.hours * 3600.0 / f64::from(self.step_s)).floor() as u64
    }
}

/// Phase of a host at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Normal operation.
    Healthy,
    /// Compute seizure.
    Seizure,
    /// Memory fever.
    Fever,
    /// Retry storm.
    Storm,
    /// Crashed: no telemetry.
    Crashed,
}

impl Timeline {
    /// The phase of a stressed host at `ms`.
    pub fn phase(&self, ms: i64) -> Phase {
        if ms >= self.crash_ms {
            Phase::Crashed
        } else if ms >= self.storm_start_ms {
            Phase::Storm
        } else if ms >= self.fever_start_ms {
            Phase::Fever
        } else if ms >= self.seizure_start_ms {
            Phase::Seizure
        } else {
            Phase::Healthy
        }
    }
}

#[derive(Debug, Clone)]
struct Host {
    name: String,
    stressed: bool,
    rng: SplitMix64,
    base_qps: f64,
    base_memory_mb: f64,
    memory_mb: f64,
}

/// The simulation as an iterator of telemetry lines, ordered by step, then host.
#[derive(Debug, Clone)]
pub struct Simulator {
    cfg: SimConfig,
    timeline: Timeline,
    hosts: Vec<Host>,
    step: u64,
    steps: u64,
    host_idx: usize,
}

impl Simulator {
    /// A simulator for a validated configuration.
    pub fn new(cfg: SimConfig) -> Result<Self, SimConfigError> {
        cfg.validate()?;
        let mut seeder = SplitMix64::new(cfg.seed);
        let mut hosts = Vec::new();
        for (prefix, count, stressed) in [
            ("healthy", cfg.healthy_hosts, false),
            ("stressed", cfg.stressed_hosts, true),
        ] {
            for i in 1..=count {
                let mut rng = SplitMix64::new(seeder.next_u64());
                let base_qps = rng.uniform(100.0, 140.0);
                let memory_mb = rng.uniform(900.0, 1100.0);
                hosts.push(Host {
                    name: format!("{}-{prefix}-{i:02}", cfg.workload),
                    stressed,
                    rng,
                    base_qps,
                    base_memory_mb: memory_mb,
                    memory_mb,
                });
            }
        }
        Ok(Self {
            timeline: cfg.timeline(),
            steps: cfg.steps(),
            cfg,
            hosts,
            step: 0,
            host_idx: 0,
        })
    }

    /// The cascade's timeline.
    pub fn timeline(&self) -> Timeline {
        self.timeline
    }

    /// Host names, healthy first.
    pub fn host_names(&self) -> Vec<String> {
        self.hosts.iter().map(|h| h.name.clone()).collect()
    }

    fn sample(
        cfg: &SimConfig,
        timeline: &Timeline,
        host: &mut Host,
        step: u64,
    ) -> Option<TelemetryRecord> {
        let step_s = f64::from(cfg.step_s);
        let ms = cfg.start_ms + (step as i64) * i64::from(cfg.step_s) * 1000;
        let phase = if host.stressed {
            timeline.phase(ms)
        } else {
            Phase::Healthy
        };
        let r = &mut host.rng;
        // Every sample draws the same number of values whatever the phase, so a host's stream
        // stays aligned with its step and a phase change does not reshuffle later noise.
        let z: [f64; 8] = std::array::from_fn(|_| r.normal());
        let sign = if r.next_f64() < 0.5 { -1.0 } else { 1.0 };
        if phase == Phase::Crashed {
            return None;
        }
        let hour = (ms - cfg.start_ms) as f64 / 3_600_000.0;
        let diurnal = 1.0 + 0.15 * (std::f64::consts::TAU * hour / 24.0).sin();
        let mut qps = host.base_qps * diurnal * (1.0 + 0.03 * z[0]);
        let mut cpu = 25.0 + 0.22 * qps + 1.5 * z[1];
        let mut latency = 80.0 + 0.1 * (cpu - 50.0) + 3.0 * z[2];
        let mut fanout = HEALTHY_FANOUT * (1.0 + 0.02 * z[3]);
        let mut error_rate = 0.002 * (1.0 + 0.3 * z[4]).max(0.0);
        let mut cost_mult = 1.0;
        match phase {
            Phase::Healthy | Phase::Crashed => {
                // A working set: memory wanders but returns to its level (AR(1), φ = 0.3).
                host.memory_mb =
                    host.base_memory_mb + 0.3 * (host.memory_mb - host.base_memory_mb) + 2.0 * z[5];
            }
            Phase::Seizure => {
                // Bursts of saturation and starvation around the same mean.
                cpu += sign * 30.0 + 4.0 * z[1];
                latency += 8.0 * z[2].abs();
                host.memory_mb =
                    host.base_memory_mb + 0.3 * (host.memory_mb - host.base_memory_mb) + 2.0 * z[5];
            }
            Phase::Fever => {
                let since = (ms - timeline.fever_start_ms) as f64 / 1000.0;
                host.memory_mb += FEVER_MB_PER_S * step_s + 2.0 * z[5];
                cpu += 8.0 + 2.0 * z[1];
                // Garbage collection pressure grows with the heap.
                latency += 0.05 * since + 6.0 * z[2].abs();
            }
            Phase::Storm => {
                let frac = ((ms - timeline.storm_start_ms) as f64
                    / (timeline.crash_ms - timeline.storm_start_ms).max(1) as f64)
                    .clamp(0.0, 1.0);
                host.memory_mb += 0.5 * FEVER_MB_PER_S * step_s + 2.0 * z[5];
                fanout =
                    HEALTHY_FANOUT + (STORM_AMPLIFICATION - HEALTHY_FANOUT) * frac + 0.2 * z[3];
                error_rate = 0.05 + 0.30 * frac + 0.02 * z[4].abs();
                qps *= 1.0 - 0.5 * frac;
                cpu = (cpu + 30.0 * frac + 3.0 * z[1]).min(100.0);
                latency = 160.0 + 400.0 * frac + 25.0 * z[2].abs();
                cost_mult = 1.0 + 0.5 * frac;
            }
        }
        host.memory_mb = host.memory_mb.max(64.0);
        let qps = qps.max(0.0);
        let requests_in = (qps * step_s).round();
        let requests_out = (requests_in * fanout.max(0.0)).round();
        let errors = (requests_in * error_rate.clamp(0.0, 1.0) + 0.5 * z[6].abs()).floor();
        let cost = cfg.host_usd_per_hour * step_s / 3600.0 * cost_mult * (1.0 + 0.01 * z[7]);
        Some(TelemetryRecord {
            ts: format_ts_ms(ms),
            domain: cfg.domain.clone(),
            host: host.name.clone(),
            workload: cfg.workload.clone(),
            step,
            qps: round_to(qps, 3),
            latency_p95_ms: round_to(latency.max(1.0), 3),
            infra_cost_usd: round_to(cost, 8),
            cpu: round_to(cpu.clamp(0.0, 100.0), 3),
            memory_mb: round_to(host.memory_mb, 3),
            requests_in,
            requests_out,
            errors,
        })
    }
}

fn round_to(x: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (x * p).round() / p
}

impl Iterator for Simulator {
    type Item = TelemetryRecord;

    fn next(&mut self) -> Option<TelemetryRecord> {
        while self.step < self.steps {
            while self.host_idx < self.hosts.len() {
                let i = self.host_idx;
                self.host_idx += 1;
                if let Some(rec) =
                    Self::sample(&self.cfg, &self.timeline, &mut self.hosts[i], self.step)
                {
                    return Some(rec);
                }
            }
            self.host_idx = 0;
            self.step += 1;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::telemetry::parse_ts_ms;

    fn run(cfg: SimConfig) -> Vec<TelemetryRecord> {
        Simulator::new(cfg).unwrap().collect()
    }

    #[test]
    fn same_seed_same_lines_other_seed_other_lines() {
        let a = run(SimConfig {
            hours: 1.0,
            ..SimConfig::default()
        });
        let b = run(SimConfig {
            hours: 1.0,
            ..SimConfig::default()
        });
        let c = run(SimConfig {
            hours: 1.0,
            seed: 43,
            ..SimConfig::default()
        });
        assert_eq!(a, b);
        assert_ne!(a, c);
        let tl = SimConfig {
            hours: 1.0,
            ..SimConfig::default()
        }
        .timeline();
        let stressed_steps = ((tl.crash_ms - 1_793_491_200_000) / 10_000) as usize;
        assert_eq!(a.len(), 2 * 360 + stressed_steps);
    }

    #[test]
    fn stressed_host_follows_the_timeline_and_crashes() {
        let cfg = SimConfig::default();
        let sim = Simulator::new(cfg.clone()).unwrap();
        let tl = sim.timeline();
        assert!(tl.seizure_start_ms < tl.fever_start_ms && tl.fever_start_ms < tl.storm_start_ms);
        assert!(tl.storm_start_ms < tl.crash_ms && tl.crash_ms < tl.end_ms);
        let lines: Vec<_> = sim.collect();
        let stressed: Vec<_> = lines
            .iter()
            .filter(|l| l.host.contains("stressed"))
            .collect();
        let healthy: Vec<_> = lines
            .iter()
            .filter(|l| l.host.contains("healthy-01"))
            .collect();
        assert_eq!(healthy.len() as u64, cfg.steps());
        let last = stressed.last().unwrap();
        assert!(parse_ts_ms(&last.ts).unwrap() < tl.crash_ms);
        assert!(parse_ts_ms(&last.ts).unwrap() >= tl.crash_ms - 10_000);

        let in_phase = |from: i64, to: i64| -> Vec<&TelemetryRecord> {
            stressed
                .iter()
                .copied()
                .filter(|l| (from..to).contains(&parse_ts_ms(&l.ts).unwrap()))
                .collect()
        };
        let sd = |v: Vec<f64>| crate::stats::Moments::of(v).stdev();
        let before = in_phase(tl.seizure_start_ms - 1_200_000, tl.seizure_start_ms);
        let seizure = in_phase(tl.seizure_start_ms, tl.fever_start_ms);
        let cpu_sd_before = sd(before.iter().map(|l| l.cpu).collect());
        let cpu_sd_seizure = sd(seizure.iter().map(|l| l.cpu).collect());
        assert!(
            cpu_sd_seizure > 5.0 * cpu_sd_before,
            "{cpu_sd_before} {cpu_sd_seizure}"
        );
        let fever = in_phase(tl.fever_start_ms, tl.storm_start_ms);
        let growth = fever.last().unwrap().memory_mb - fever[0].memory_mb;
        assert!(growth > 0.8 * FEVER_MB_PER_S * 1190.0, "{growth}");
        let storm = in_phase(tl.storm_start_ms, tl.crash_ms);
        let amp = storm.last().unwrap().requests_out / storm.last().unwrap().requests_in;
        assert!(amp > 4.0, "{amp}");
        assert!(
            before
                .iter()
                .all(|l| (l.requests_out / l.requests_in) < 2.0)
        );
    }

    #[test]
    fn bad_configuration_names_the_field() {
        let e = Simulator::new(SimConfig {
            hours: 0.0,
            ..SimConfig::default()
        })
        .unwrap_err();
        assert_eq!(e.field, "hours");
        let e = Simulator::new(SimConfig {
            step_s: 0,
            ..SimConfig::default()
        })
        .unwrap_err();
        assert_eq!(e.field, "step");
    }
}
