//! The telemetry line: one JSON object per sample, in the shape of the original collector.
//!
//! `coherence simulate` writes these lines, `coherence analyze` reads them and
//! `coherence validate` checks them against `schemas/telemetry.schema.json`.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The numeric signals a telemetry line carries, in the order they are reported.
pub const SIGNALS: [&str; 8] = [
    "cpu",
    "memory_mb",
    "requests_in",
    "requests_out",
    "errors",
    "qps",
    "latency_p95_ms",
    "infra_cost_usd",
];

/// One telemetry sample of one host of one workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TelemetryRecord {
    /// Sample time, RFC 3339 in UTC (`2026-11-01T00:00:00Z`).
    pub ts: String,
    /// Business domain the workload belongs to.
    pub domain: String,
    /// Host (pod) that produced the sample.
    pub host: String,
    /// Workload (Deployment, StatefulSet) the host belongs to.
    pub workload: String,
    /// Step number since the start of the run.
    pub step: u64,
    /// Requests served per second.
    pub qps: f64,
    /// 95th percentile latency in milliseconds.
    pub latency_p95_ms: f64,
    /// Infrastructure cost of the host for the step, in USD.
    pub infra_cost_usd: f64,
    /// CPU utilisation in percent of the host's request.
    pub cpu: f64,
    /// Resident memory in MiB.
    pub memory_mb: f64,
    /// Requests received during the step.
    pub requests_in: f64,
    /// Requests sent to dependencies during the step (including retries).
    pub requests_out: f64,
    /// Failed requests during the step.
    pub errors: f64,
}

impl TelemetryRecord {
    /// The value of a named signal (one of [`SIGNALS`]).
    pub fn value(&self, signal: &str) -> Option<f64> {
        Some(match signal {
            "cpu" => self.cpu,
            "memory_mb" => self.memory_mb,
            "requests_in" => self.requests_in,
            "requests_out" => self.requests_out,
            "errors" => self.errors,
            "qps" => self.qps,
            "latency_p95_ms" => self.latency_p95_ms,
            "infra_cost_usd" => self.infra_cost_usd,
            _ => return None,
        })
    }

    /// The sample time in milliseconds since the Unix epoch.
    pub fn ts_ms(&self) -> Result<i64, TimestampError> {
        parse_ts_ms(&self.ts)
    }
}

/// A timestamp that is not RFC 3339.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("ts: expected an RFC 3339 timestamp such as 2026-11-01T00:00:00Z, got {0:?}")]
pub struct TimestampError(pub String);

/// Parses an RFC 3339 timestamp into milliseconds since the Unix epoch.
pub fn parse_ts_ms(ts: &str) -> Result<i64, TimestampError> {
    if let Some(ms) = parse_utc_seconds(ts.as_bytes()) {
        return Ok(ms);
    }
    let t = OffsetDateTime::parse(ts, &Rfc3339).map_err(|_| TimestampError(ts.to_string()))?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).map_err(|_| TimestampError(ts.to_string()))
}

// The collector's own form, `YYYY-MM-DDTHH:MM:SSZ`, parsed without allocation; anything else
// (offsets, fractions) takes the general parser.
fn parse_utc_seconds(b: &[u8]) -> Option<i64> {
    if b.len() != 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[19] != b'Z'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        b[r].iter().try_fold(0i64, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0'))
        })
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days_in_month = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&mo)
        || d < 1
        || d > days_in_month[(mo - 1) as usize]
        || h > 23
        || mi > 59
        || s > 59
    {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let yy = if mo <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + h) * 60 + mi) * 60_000 + s * 1000)
}

/// Formats milliseconds since the Unix epoch as RFC 3339 in UTC, with milliseconds only when
/// they are not zero.
pub fn format_ts_ms(ms: i64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    match OffsetDateTime::from_unix_timestamp_nanos(nanos) {
        Ok(t) => t.format(&Rfc3339).unwrap_or_else(|_| ms.to_string()),
        Err(_) => ms.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip() {
        let ms = parse_ts_ms("2026-11-01T00:00:10Z").unwrap();
        assert_eq!(ms, 1_793_491_210_000);
        assert_eq!(format_ts_ms(ms), "2026-11-01T00:00:10Z");
        assert_eq!(format_ts_ms(ms + 250), "2026-11-01T00:00:10.25Z");
        assert!(parse_ts_ms("yesterday").is_err());
        assert!(parse_ts_ms("2026-02-29T00:00:00Z").is_err());
        assert!(parse_ts_ms("2026-13-01T00:00:00Z").is_err());
        // The fast path agrees with the general parser across leap years and month ends.
        for ts in [
            "1970-01-01T00:00:00Z",
            "2000-02-29T23:59:59Z",
            "2024-12-31T12:00:00Z",
            "2100-03-01T00:00:00Z",
        ] {
            let general = OffsetDateTime::parse(ts, &Rfc3339)
                .unwrap()
                .unix_timestamp()
                * 1000;
            assert_eq!(parse_ts_ms(ts).unwrap(), general, "{ts}");
        }
        assert_eq!(
            parse_ts_ms("2026-11-01T01:00:00+01:00").unwrap(),
            ms - 10_000
        );
    }
}
