//! `type: datadog`: the Datadog metrics query API v1, read-only.
//!
//! For every entry of `queries`, each poll sends
//! `GET {site}/api/v1/query?from=F&to=T&query=Q` with the headers `DD-API-KEY` and
//! `DD-APPLICATION-KEY` (values from the environment variables named by `apiKeyEnv` and
//! `appKeyEnv`, defaults `DD_API_KEY` and `DD_APP_KEY`). `F` and `T` are Unix seconds: the
//! first poll looks back `lookback` (default 5m), later ones start at the newest point seen
//! for the query. The answer is Datadog's:
//! `{"status":"ok","series":[{"metric":..,"scope":..,"interval":..,"pointlist":[[ts_ms, value|null],..]}],..}`
//! (or `{"status":"error","error":".."}`, or an HTTP error with `{"errors":[..]}`).
//!
//! A query with one series yields the signal `signal`; with several (a `by {..}` query),
//! `signal{<scope>}` per series (e.g. `cpu{host:web-0}`). Points already yielded (time not
//! after the newest point of that signal) are dropped: polls overlap on purpose. Null points
//! are skipped (`null_point`).
//!
//! `kind: gauge` (default) points are taken as they are. `kind: rate` points are per-second
//! rates and are integrated back into a cumulative counter kept per signal across polls
//! (starting at 0 when the source starts): for each new point in time order,
//! `total += value × Δ` where `Δ` is the series' `interval` in seconds when Datadog gives one
//! (the rollup interval each point stands for), else the seconds since the previous point of
//! that signal (0 for its first point; a null point counts as a point contributing nothing),
//! and the sample is `total` at the point's time.
//!
//! Errors: every failed request is a poll error (`status_403`, `status_429`, `connect`, ...;
//! 5xx and network errors retried like the `http` source), `status: error` answers are
//! `api_error`, unreadable answers `bad_json`; each successful query counts as one good poll.
//! Skip reasons: `null_point`, `bad_point`, `series_limit` (more than 1000 signals).

use super::net::{self, Retry, Secret};
use super::{PollError, Polled, now_ms};
use crate::config::ConfigError;
use crate::sample::{Dur, Sample, SourceStats};
use serde::Deserialize;
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Largest answer read, bytes.
const MAX_BODY: usize = 16 * 1024 * 1024;
/// Most signals kept (series of all queries).
const MAX_SIGNALS: usize = 1000;

/// How a query's points are read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueryKind {
    /// Taken as they are.
    #[default]
    Gauge,
    /// Per-second rates, integrated into a cumulative counter.
    Rate,
}

/// One query.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DatadogQuery {
    /// The signal it yields.
    pub signal: String,
    /// A Datadog metrics query, e.g. `avg:system.cpu.user{service:web}`.
    pub query: String,
    /// `gauge` (default) or `rate`.
    #[serde(default)]
    pub kind: QueryKind,
}

/// Settings of a `datadog` source.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DatadogConfig {
    /// Source name.
    pub name: String,
    /// The API site (default `https://api.datadoghq.com`).
    #[serde(default = "default_site")]
    pub site: String,
    /// Poll interval (default 60s).
    #[serde(default = "default_interval")]
    pub interval: Dur,
    /// Timeout of one request (default 10s, at most the interval).
    #[serde(default = "default_timeout")]
    pub timeout: Dur,
    /// Environment variable of the API key (default `DD_API_KEY`).
    #[serde(default = "default_api_key_env")]
    pub api_key_env: String,
    /// Environment variable of the application key (default `DD_APP_KEY`).
    #[serde(default = "default_app_key_env")]
    pub app_key_env: String,
    /// The queries.
    pub queries: Vec<DatadogQuery>,
    /// How far back the first query looks (default 5m).
    #[serde(default = "default_lookback")]
    pub lookback: Dur,
    /// Retries of a request after a network error or a 5xx (default 3).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// First backoff before a retry (default 200ms).
    #[serde(default = "default_backoff_base")]
    pub backoff_base: Dur,
    /// PEM CA bundle (required for https: system roots are not used).
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// The API key, once resolved ([`super::SourceConfig::resolve_env`]).
    #[serde(skip)]
    pub api_key: Option<Secret>,
    /// The application key, once resolved.
    #[serde(skip)]
    pub app_key: Option<Secret>,
}

fn default_site() -> String {
    "https://api.datadoghq.com".into()
}
fn default_interval() -> Dur {
    Dur(Duration::from_secs(60))
}
fn default_timeout() -> Dur {
    Dur(Duration::from_secs(10))
}
fn default_api_key_env() -> String {
    "DD_API_KEY".into()
}
fn default_app_key_env() -> String {
    "DD_APP_KEY".into()
}
fn default_lookback() -> Dur {
    Dur(Duration::from_secs(300))
}
fn default_retries() -> u32 {
    3
}
fn default_backoff_base() -> Dur {
    Dur(Duration::from_millis(200))
}

impl DatadogConfig {
    pub(crate) fn validate(&self, at: &str) -> Result<(), ConfigError> {
        super::validate_url(at, "site", &self.site, self.ca.as_deref())?;
        super::validate_timeout(at, self.timeout, self.interval)?;
        if self.queries.is_empty() {
            return Err(ConfigError::new(
                format!("{at}.queries"),
                "expected at least one {signal, query, kind} entry",
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, q) in self.queries.iter().enumerate() {
            if q.signal.trim().is_empty() || !names.insert(q.signal.as_str()) {
                return Err(ConfigError::new(
                    format!("{at}.queries[{i}].signal"),
                    format!(
                        "expected a non-empty, unique signal name, got {:?}",
                        q.signal
                    ),
                ));
            }
            if q.query.trim().is_empty() {
                return Err(ConfigError::new(
                    format!("{at}.queries[{i}].query"),
                    "expected a Datadog metrics query",
                ));
            }
        }
        for (field, v) in [
            ("apiKeyEnv", &self.api_key_env),
            ("appKeyEnv", &self.app_key_env),
        ] {
            if v.trim().is_empty() {
                return Err(ConfigError::new(
                    format!("{at}.{field}"),
                    "expected the name of an environment variable",
                ));
            }
        }
        if self.retries > 10 {
            return Err(ConfigError::new(
                format!("{at}.retries"),
                format!("expected at most 10, got {}", self.retries),
            ));
        }
        Ok(())
    }

    pub(crate) fn resolve_env(
        &mut self,
        at: &str,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        for (field, var, slot) in [
            ("apiKeyEnv", &self.api_key_env, &mut self.api_key),
            ("appKeyEnv", &self.app_key_env, &mut self.app_key),
        ] {
            if slot.is_some() {
                continue;
            }
            match lookup(var).map(|v| v.trim().to_string()) {
                Some(v) if !v.is_empty() => *slot = Some(Secret::new(v)),
                _ => {
                    return Err(ConfigError::new(
                        format!("{at}.{field}"),
                        format!(
                            "expected the environment variable {var} to hold the key, it is unset or empty"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// One series of an answer.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct DdSeries {
    /// Metric name.
    #[serde(default)]
    pub metric: Option<String>,
    /// Scope (`host:web-0`).
    #[serde(default)]
    pub scope: Option<String>,
    /// Seconds each point stands for.
    #[serde(default)]
    pub interval: Option<f64>,
    /// `[ts_ms, value|null]` pairs.
    #[serde(default)]
    pub pointlist: Vec<Value>,
}

/// An answer of `/api/v1/query`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct DdAnswer {
    /// `ok` or `error`.
    #[serde(default)]
    pub status: Option<String>,
    /// The error, with `status: error`.
    #[serde(default)]
    pub error: Option<String>,
    /// The series.
    #[serde(default)]
    pub series: Vec<DdSeries>,
}

/// Per-signal state across polls.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SignalState {
    /// Time of the newest point taken, ms.
    pub last_ts_ms: Option<i64>,
    /// Running total of a `rate` signal.
    pub total: f64,
}

/// Counts of points skipped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PointSkips {
    /// Null values.
    pub null: u64,
    /// Points that are not `[number, number|null]`.
    pub bad: u64,
}

/// Turns one series' new points into samples, updating `state`.
pub fn series_samples(
    signal: &str,
    kind: QueryKind,
    series: &DdSeries,
    state: &mut SignalState,
    skips: &mut PointSkips,
) -> Vec<Sample> {
    let mut points: Vec<(i64, Option<f64>)> = Vec::with_capacity(series.pointlist.len());
    for p in &series.pointlist {
        let pair = p.as_array().filter(|a| a.len() == 2);
        let ts = pair
            .and_then(|a| a[0].as_f64())
            .filter(|t| t.is_finite() && t.abs() < 1e15);
        match (pair, ts) {
            (Some(a), Some(ts)) if a[1].is_null() || a[1].as_f64().is_some() => {
                points.push((ts.round() as i64, a[1].as_f64()));
            }
            _ => skips.bad += 1,
        }
    }
    points.sort_by_key(|p| p.0);
    let step = series.interval.filter(|i| i.is_finite() && *i > 0.0);
    let mut out = Vec::new();
    for (ts, value) in points {
        if state.last_ts_ms.is_some_and(|last| ts <= last) {
            continue;
        }
        // A null is a point without a value: it is counted once and contributes nothing.
        let prev = state.last_ts_ms.replace(ts);
        let Some(v) = value else {
            skips.null += 1;
            continue;
        };
        let value = match kind {
            QueryKind::Gauge => v,
            QueryKind::Rate => {
                let dt = step.unwrap_or_else(|| prev.map_or(0.0, |p| (ts - p) as f64 / 1000.0));
                state.total += v * dt;
                state.total
            }
        };
        out.push(Sample {
            signal: signal.to_string(),
            ts_ms: ts,
            value,
        });
    }
    out
}

/// The state of one running `datadog` source.
pub(crate) struct Querier {
    cfg: DatadogConfig,
    client: reqwest::Client,
    retry: Retry,
    /// Newest point time per query, ms.
    newest: Vec<Option<i64>>,
    signals: HashMap<String, SignalState>,
}

impl Querier {
    pub(crate) fn new(cfg: DatadogConfig) -> Result<Self, PollError> {
        let client = net::client(cfg.timeout.get(), cfg.ca.as_deref())?;
        let retry = Retry {
            retries: cfg.retries,
            base: cfg.backoff_base.get(),
            cap: Duration::from_secs(10),
        };
        Ok(Self {
            newest: vec![None; cfg.queries.len()],
            cfg,
            client,
            retry,
            signals: HashMap::new(),
        })
    }

    pub(crate) async fn poll(&mut self, stats: &SourceStats) -> Polled {
        let (Some(api_key), Some(app_key)) = (self.cfg.api_key.clone(), self.cfg.app_key.clone())
        else {
            stats.poll_error(
                "missing_key",
                format!(
                    "expected the environment variables {} and {} to hold the Datadog keys",
                    self.cfg.api_key_env, self.cfg.app_key_env
                ),
            );
            return Polled::default();
        };
        let mut samples = Vec::new();
        let base = self.cfg.site.trim_end_matches('/').to_string();
        for qi in 0..self.cfg.queries.len() {
            let started = Instant::now();
            let q = self.cfg.queries[qi].clone();
            let now = now_ms();
            let from_ms = self.newest[qi].unwrap_or(now - self.cfg.lookback.as_millis_i64());
            let mut url = match reqwest::Url::parse(&format!("{base}/api/v1/query")) {
                Ok(u) => u,
                Err(e) => {
                    stats.poll_error("config", format!("site: {e}"));
                    return Polled::default();
                }
            };
            url.query_pairs_mut()
                .append_pair("from", &from_ms.div_euclid(1000).to_string())
                .append_pair("to", &now.div_euclid(1000).to_string())
                .append_pair("query", &q.query);
            let client = &self.client;
            let make = || {
                client
                    .get(url.clone())
                    .header("Accept", "application/json")
                    .header("DD-API-KEY", api_key.expose())
                    .header("DD-APPLICATION-KEY", app_key.expose())
            };
            let Ok(fetched) = self.retry.fetch(stats, MAX_BODY, make).await else {
                continue;
            };
            let answer: DdAnswer = match serde_json::from_slice(&fetched.body) {
                Ok(a) => a,
                Err(e) => {
                    stats.poll_error("bad_json", format!("query {:?}: {e}", q.signal));
                    continue;
                }
            };
            if answer.status.as_deref() == Some("error") {
                stats.poll_error(
                    "api_error",
                    format!(
                        "query {:?}: {}",
                        q.signal,
                        answer.error.as_deref().unwrap_or("status: error")
                    ),
                );
                continue;
            }
            let several = answer.series.len() > 1;
            let mut skips = PointSkips::default();
            let mut n = 0;
            for s in &answer.series {
                let signal = if several {
                    format!("{}{{{}}}", q.signal, s.scope.as_deref().unwrap_or(""))
                } else {
                    q.signal.clone()
                };
                if !self.signals.contains_key(&signal) && self.signals.len() >= MAX_SIGNALS {
                    stats.skipped("series_limit", 1);
                    continue;
                }
                let state = self.signals.entry(signal.clone()).or_default();
                let got = series_samples(&signal, q.kind, s, state, &mut skips);
                if let Some(last) = state.last_ts_ms {
                    self.newest[qi] = Some(self.newest[qi].map_or(last, |n| n.max(last)));
                }
                n += got.len();
                samples.extend(got);
            }
            stats.skipped("null_point", skips.null);
            stats.skipped("bad_point", skips.bad);
            stats.poll_ok(started.elapsed(), n, now_ms());
        }
        Polled {
            samples,
            more: false,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn series(points: Value, interval: Option<f64>) -> DdSeries {
        DdSeries {
            metric: Some("m".into()),
            scope: Some("*".into()),
            interval,
            pointlist: serde_json::from_value(points).unwrap(),
        }
    }

    fn values(v: &[Sample]) -> Vec<(i64, f64)> {
        v.iter().map(|s| (s.ts_ms, s.value)).collect()
    }

    #[test]
    fn rates_integrate_with_the_series_interval_and_dedup() {
        let mut st = SignalState::default();
        let mut sk = PointSkips::default();
        let s1 = series(
            json!([
                [1000.0, 2.0],
                [11000.0, 4.0],
                [21000.0, null],
                [31000.0, 1.0]
            ]),
            Some(10.0),
        );
        let out = series_samples("r", QueryKind::Rate, &s1, &mut st, &mut sk);
        assert_eq!(
            values(&out),
            vec![(1000, 20.0), (11000, 60.0), (31000, 70.0)]
        );
        assert_eq!(sk.null, 1);
        // The next answer overlaps: only the new point counts.
        let s2 = series(json!([[31000.0, 1.0], [41000.0, 3.0]]), Some(10.0));
        let out = series_samples("r", QueryKind::Rate, &s2, &mut st, &mut sk);
        assert_eq!(values(&out), vec![(41000, 100.0)]);
        assert_eq!(st.total, 100.0);
    }

    #[test]
    fn without_an_interval_the_gap_to_the_previous_point_is_used() {
        let mut st = SignalState::default();
        let mut sk = PointSkips::default();
        let s = series(
            json!([[5000, 1.0], [0, 3.0], [2000, 0.5], ["x", 1], [7000]]),
            None,
        );
        let out = series_samples("r", QueryKind::Rate, &s, &mut st, &mut sk);
        // Sorted: 0 (first: Δ=0), 2000 (Δ=2s: +1), 5000 (Δ=3s: +3).
        assert_eq!(values(&out), vec![(0, 0.0), (2000, 1.0), (5000, 4.0)]);
        assert_eq!(sk.bad, 2);
        let mut g = SignalState::default();
        let out = series_samples("g", QueryKind::Gauge, &s, &mut g, &mut sk);
        assert_eq!(values(&out), vec![(0, 3.0), (2000, 0.5), (5000, 1.0)]);
    }

    #[test]
    fn answers_parse_and_config_is_checked() {
        let a: DdAnswer = serde_json::from_value(json!({
            "status": "ok", "res_type": "time_series", "from_date": 0, "to_date": 1,
            "series": [{"metric": "system.cpu.user", "scope": "host:a", "interval": 20,
                        "pointlist": [[1.0, null]], "expression": "x", "length": 1}]
        }))
        .unwrap();
        assert_eq!(a.series[0].interval, Some(20.0));
        let mut c: DatadogConfig = serde_yaml_ng::from_str(
            "name: d\nsite: http://127.0.0.1:1\nqueries:\n- {signal: cpu, query: 'avg:cpu{*}', kind: rate}\n",
        )
        .unwrap();
        assert!(c.validate("s").is_ok());
        let e = c
            .resolve_env("s", &|k| (k == "DD_API_KEY").then(|| "k".into()))
            .unwrap_err();
        assert_eq!(e.field, "s.appKeyEnv");
        c.resolve_env("s", &|_| Some("k".into())).unwrap();
        assert!(!format!("{c:?}").contains("\"k\""));
        c.queries.push(c.queries[0].clone());
        assert_eq!(c.validate("s").unwrap_err().field, "s.queries[1].signal");
        c.site = "https://api.datadoghq.eu".into();
        assert_eq!(c.validate("s").unwrap_err().field, "s.ca");
    }
}
