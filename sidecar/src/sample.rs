//! What sources yield and how their health is kept: samples, batches, durations, source stats.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

/// One value of one named signal at one time.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    /// Signal name as configured (`cpu`, `node_load1`, `http_requests_total`).
    pub signal: String,
    /// Sample time, milliseconds since the Unix epoch.
    pub ts_ms: i64,
    /// The value (finite; sources drop and count non-finite values).
    pub value: f64,
}

/// What one poll of one source produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// The source's configured name.
    pub source: String,
    /// Samples, in any order.
    pub samples: Vec<Sample>,
}

/// A duration written as `250ms`, `10s`, `5m`, `1h` or `1d` in the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dur(pub Duration);

impl Dur {
    /// The duration.
    pub fn get(self) -> Duration {
        self.0
    }

    /// Whole milliseconds (saturating).
    pub fn as_millis_i64(self) -> i64 {
        i64::try_from(self.0.as_millis()).unwrap_or(i64::MAX)
    }
}

/// A duration that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected a positive duration like 250ms, 10s, 5m, 1h or 1d, got {0:?}")]
pub struct DurError(pub String);

impl FromStr for Dur {
    type Err = DurError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || DurError(s.to_string());
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
        let (digits, unit) = t.split_at(split);
        if digits.is_empty() {
            return Err(err());
        }
        let n: u64 = digits.parse().map_err(|_| err())?;
        let ms = match unit {
            "ms" => Some(n),
            "s" => n.checked_mul(1000),
            "m" => n.checked_mul(60_000),
            "h" => n.checked_mul(3_600_000),
            "d" => n.checked_mul(86_400_000),
            _ => None,
        }
        .ok_or_else(err)?;
        if ms == 0 {
            return Err(err());
        }
        Ok(Dur(Duration::from_millis(ms)))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms % 86_400_000 == 0 {
            write!(f, "{}d", ms / 86_400_000)
        } else if ms % 3_600_000 == 0 {
            write!(f, "{}h", ms / 3_600_000)
        } else if ms % 60_000 == 0 {
            write!(f, "{}m", ms / 60_000)
        } else if ms % 1000 == 0 {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl Serialize for Dur {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Health of one source, shared between its task, `/status` and `/metrics`.
#[derive(Debug, Default)]
pub struct SourceStats {
    inner: Mutex<SourceStatsInner>,
}

/// A copy of a source's health at one moment.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceStatsInner {
    /// Polls (scrapes, reads, requests) that succeeded.
    pub polls_ok: u64,
    /// Polls that failed, by reason (`connect`, `status_503`, `timeout`, ...).
    pub poll_errors: BTreeMap<String, u64>,
    /// Lines, series or points skipped, by reason (`bad_json`, `decrypt`, `malformed_line`, ...).
    pub skipped: BTreeMap<String, u64>,
    /// Samples yielded in all.
    pub samples: u64,
    /// Duration of the last successful poll, ms.
    pub last_latency_ms: Option<f64>,
    /// When the last successful poll ended, ms since the Unix epoch.
    pub last_ok_ms: Option<i64>,
    /// The last error, as text.
    pub last_error: Option<String>,
}

impl SourceStats {
    fn with<R>(&self, f: impl FnOnce(&mut SourceStatsInner) -> R) -> R {
        let mut g = match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut g)
    }

    /// Records a successful poll that took `latency` and yielded `samples` samples.
    pub fn poll_ok(&self, latency: Duration, samples: usize, now_ms: i64) {
        self.with(|s| {
            s.polls_ok += 1;
            s.samples += samples as u64;
            s.last_latency_ms = Some(latency.as_secs_f64() * 1000.0);
            s.last_ok_ms = Some(now_ms);
        });
    }

    /// Records a failed poll with a short machine-readable reason and a human message.
    pub fn poll_error(&self, reason: &str, message: impl Into<String>) {
        self.with(|s| {
            *s.poll_errors.entry(reason.to_string()).or_default() += 1;
            s.last_error = Some(message.into());
        });
    }

    /// Records `count` skipped lines, series or points for `reason`.
    pub fn skipped(&self, reason: &str, count: u64) {
        if count > 0 {
            self.with(|s| *s.skipped.entry(reason.to_string()).or_default() += count);
        }
    }

    /// A copy of the current figures.
    pub fn snapshot(&self) -> SourceStatsInner {
        self.with(|s| s.clone())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn durations_parse_and_print_back() {
        for (text, ms) in [
            ("250ms", 250),
            ("10s", 10_000),
            ("5m", 300_000),
            ("1h", 3_600_000),
        ] {
            let d: Dur = text.parse().unwrap();
            assert_eq!(d.0.as_millis(), ms);
            assert_eq!(d.to_string(), text);
        }
        for bad in [
            "",
            "0s",
            "10",
            "s",
            "-1s",
            "1.5s",
            "10x",
            "99999999999999999999d",
        ] {
            assert!(bad.parse::<Dur>().is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn stats_count_by_reason() {
        let s = SourceStats::default();
        s.skipped("bad_json", 2);
        s.skipped("bad_json", 1);
        s.skipped("decrypt", 0);
        s.poll_error("status_503", "HTTP 503");
        s.poll_ok(Duration::from_millis(4), 7, 1000);
        let snap = s.snapshot();
        assert_eq!(snap.skipped.get("bad_json"), Some(&3));
        assert!(!snap.skipped.contains_key("decrypt"));
        assert_eq!(snap.poll_errors.get("status_503"), Some(&1));
        assert_eq!(snap.samples, 7);
        assert_eq!(snap.last_ok_ms, Some(1000));
    }
}
