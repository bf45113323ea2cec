//! `type: prometheus`: scrape a Prometheus text endpoint (format 0.0.4) on an interval.
//!
//! Which series: `metrics` lists exact metric names or `re:<regex>` (anchored: the regex must
//! match the whole name), and `labels` keeps only series carrying every listed label value.
//! Signal names: the metric name when it has one selected series in the scrape, else the
//! metric name followed by its sorted labels (`http_requests_total{code="200",method="get"}`);
//! with `aggregate: sum` the series of a metric are summed into one signal named after it (a
//! histogram's `_bucket` series per `le`, into `NAME_bucket{le="…"}`).
//!
//! Counters (`# TYPE counter`, histogram and summary cumulative series, or an undeclared name
//! ending in `_total`) become per-second rates between consecutive scrapes of each series:
//! `(v₂ − v₁) / (t₂ − t₁)` with t in seconds. The first scrape of a series yields nothing; a
//! value going down is a counter reset: no sample for that step (`skipped: counter_reset`),
//! and the new value is the base of the next step. Gauges are taken as they are. A sample's
//! time is the exposition timestamp when present, else the time the scrape's answer arrived.
//! With `aggregate: sum`, counters are summed as rates (the sum of the series' rates).
//!
//! Skip reasons: `malformed_line`, `series_limit` (beyond `maxSeries` selected series),
//! `non_finite` (NaN, ±Inf), `counter_reset`, `out_of_order` (a counter timestamp going
//! back). Poll errors: `connect`, `timeout`, `status_<code>`, `too_large`, `body`.

use super::exposition::{self, ValueKind};
use super::{PollError, Polled, net, now_ms};
use crate::config::ConfigError;
use crate::sample::{Dur, Sample, SourceStats};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Largest scrape answer read, bytes.
const MAX_BODY: usize = 16 * 1024 * 1024;

/// How the series of one metric are combined.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Aggregate {
    /// One signal per series.
    #[default]
    None,
    /// One signal per metric: the sum of its series (of their rates, for counters).
    Sum,
}

/// Settings of a `prometheus` source.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrometheusConfig {
    /// Source name.
    pub name: String,
    /// The endpoint, e.g. `http://127.0.0.1:9100/metrics`.
    pub url: String,
    /// Scrape interval (default 15s).
    #[serde(default = "default_interval")]
    pub interval: Dur,
    /// Timeout of one scrape (default 5s, at most the interval).
    #[serde(default = "default_timeout")]
    pub timeout: Dur,
    /// Metric names, or `re:<regex>` matched against the whole name.
    pub metrics: Vec<String>,
    /// Keep only series with these label values.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// `none` (default) or `sum`.
    #[serde(default)]
    pub aggregate: Aggregate,
    /// Most selected series per scrape (default 2000); the rest are skipped as `series_limit`.
    #[serde(default = "default_max_series")]
    pub max_series: usize,
    /// PEM CA bundle for an https URL (required for https: system roots are not used).
    #[serde(default)]
    pub ca: Option<PathBuf>,
}

fn default_interval() -> Dur {
    Dur(Duration::from_secs(15))
}

fn default_timeout() -> Dur {
    Dur(Duration::from_secs(5))
}

fn default_max_series() -> usize {
    2000
}

/// One entry of `metrics`.
#[derive(Debug, Clone)]
pub enum Matcher {
    /// An exact metric name.
    Exact(String),
    /// A regex matching the whole name.
    Regex(regex_lite::Regex),
}

impl Matcher {
    /// Parses `name` or `re:<regex>`.
    pub fn parse(s: &str) -> Result<Matcher, String> {
        match s.strip_prefix("re:") {
            Some(re) => regex_lite::Regex::new(&format!("^(?:{re})$"))
                .map(Matcher::Regex)
                .map_err(|e| format!("expected a valid regex after re:, got {re:?} ({e})")),
            None if s.is_empty() => Err("expected a metric name or re:<regex>".into()),
            None => Ok(Matcher::Exact(s.to_string())),
        }
    }

    /// Whether `name` is selected.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            Matcher::Exact(n) => n == name,
            Matcher::Regex(r) => r.is_match(name),
        }
    }
}

impl PrometheusConfig {
    pub(crate) fn validate(&self, at: &str) -> Result<(), ConfigError> {
        super::validate_url(at, "url", &self.url, self.ca.as_deref())?;
        super::validate_timeout(at, self.timeout, self.interval)?;
        if self.metrics.is_empty() {
            return Err(ConfigError::new(
                format!("{at}.metrics"),
                "expected at least one metric name or re:<regex>",
            ));
        }
        for (i, m) in self.metrics.iter().enumerate() {
            Matcher::parse(m).map_err(|e| ConfigError::new(format!("{at}.metrics[{i}]"), e))?;
        }
        if self.max_series == 0 {
            return Err(ConfigError::new(
                format!("{at}.maxSeries"),
                "expected at least 1",
            ));
        }
        Ok(())
    }
}

/// The last value of a counter series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CounterPoint {
    /// Time, ms.
    pub ts_ms: i64,
    /// Cumulative value.
    pub value: f64,
}

/// What one step of a counter gives.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RateStep {
    /// First sight of the series: no rate yet.
    First,
    /// A per-second rate.
    Rate(f64),
    /// The value went down: the counter restarted.
    Reset,
    /// Same timestamp as the previous scrape: nothing new.
    Unchanged,
    /// The timestamp went back.
    OutOfOrder,
}

/// The step from `prev` to `now` of one counter.
pub fn counter_step(prev: Option<CounterPoint>, now: CounterPoint) -> RateStep {
    let Some(p) = prev else {
        return RateStep::First;
    };
    if now.ts_ms == p.ts_ms {
        return RateStep::Unchanged;
    }
    if now.ts_ms < p.ts_ms {
        return RateStep::OutOfOrder;
    }
    if now.value < p.value {
        return RateStep::Reset;
    }
    let secs = (now.ts_ms - p.ts_ms) as f64 / 1000.0;
    RateStep::Rate((now.value - p.value) / secs)
}

/// The state of one running `prometheus` source.
pub(crate) struct Scraper {
    cfg: PrometheusConfig,
    matchers: Vec<Matcher>,
    client: reqwest::Client,
    counters: HashMap<String, CounterPoint>,
}

/// Turns one parsed scrape into samples, updating counter state; counts skips in `stats`.
pub(crate) fn samples_of(
    cfg: &PrometheusConfig,
    matchers: &[Matcher],
    counters: &mut HashMap<String, CounterPoint>,
    expo: &exposition::Exposition,
    scrape_ms: i64,
    stats: &SourceStats,
) -> Vec<Sample> {
    stats.skipped("malformed_line", expo.malformed);
    let selected: Vec<&exposition::Series> = expo
        .series
        .iter()
        .filter(|s| matchers.iter().any(|m| m.matches(&s.name)))
        .filter(|s| {
            cfg.labels
                .iter()
                .all(|(k, v)| s.labels.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .collect();
    let over = selected.len().saturating_sub(cfg.max_series);
    stats.skipped("series_limit", over as u64);
    let selected = &selected[..selected.len() - over];

    let mut per_metric: HashMap<&str, usize> = HashMap::new();
    for s in selected {
        *per_metric.entry(s.name.as_str()).or_default() += 1;
    }
    let mut seen_keys = Vec::with_capacity(selected.len());
    // Per metric (aggregate: sum): value sum, latest time, whether any part contributed.
    // A histogram's buckets are summed per `le`, so the sum is still a histogram.
    let mut sums: BTreeMap<String, (f64, i64)> = BTreeMap::new();
    let mut out = Vec::new();
    let (mut non_finite, mut resets, mut out_of_order) = (0u64, 0u64, 0u64);
    for s in selected {
        let ts = s.ts_ms.unwrap_or(scrape_ms);
        let key = format!("{}{}", s.name, exposition::labels_text(&s.labels));
        if !s.value.is_finite() {
            non_finite += 1;
            continue;
        }
        let value = match expo.kind_of(&s.name) {
            ValueKind::Gauge => Some(s.value),
            ValueKind::Counter => {
                let now = CounterPoint {
                    ts_ms: ts,
                    value: s.value,
                };
                let step = counter_step(counters.get(&key).copied(), now);
                match step {
                    RateStep::OutOfOrder | RateStep::Unchanged => {}
                    _ => {
                        counters.insert(key.clone(), now);
                    }
                }
                match step {
                    RateStep::Rate(r) => Some(r),
                    RateStep::Reset => {
                        resets += 1;
                        None
                    }
                    RateStep::OutOfOrder => {
                        out_of_order += 1;
                        None
                    }
                    RateStep::First | RateStep::Unchanged => None,
                }
            }
        };
        seen_keys.push(key.clone());
        let Some(value) = value else { continue };
        if cfg.aggregate == Aggregate::Sum {
            let le = s
                .name
                .ends_with("_bucket")
                .then(|| s.labels.iter().find(|(k, _)| k == "le"))
                .flatten();
            let name = match le {
                Some(le) => format!(
                    "{}{}",
                    s.name,
                    exposition::labels_text(std::slice::from_ref(le))
                ),
                None => s.name.clone(),
            };
            let e = sums.entry(name).or_insert((0.0, i64::MIN));
            e.0 += value;
            e.1 = e.1.max(ts);
        } else {
            let signal = if per_metric.get(s.name.as_str()).copied().unwrap_or(0) > 1 {
                key
            } else {
                s.name.clone()
            };
            out.push(Sample {
                signal,
                ts_ms: ts,
                value,
            });
        }
    }
    for (name, (value, ts)) in sums {
        out.push(Sample {
            signal: name,
            ts_ms: ts,
            value,
        });
    }
    stats.skipped("non_finite", non_finite);
    stats.skipped("counter_reset", resets);
    stats.skipped("out_of_order", out_of_order);
    // Forget series that are gone: the state stays within maxSeries entries.
    if counters.len() > seen_keys.len() {
        let keep: std::collections::HashSet<&String> = seen_keys.iter().collect();
        counters.retain(|k, _| keep.contains(k));
    }
    out
}

impl Scraper {
    pub(crate) fn new(cfg: PrometheusConfig) -> Result<Self, PollError> {
        let matchers = cfg
            .metrics
            .iter()
            .map(|m| Matcher::parse(m).map_err(|e| PollError::new("config", e)))
            .collect::<Result<Vec<_>, _>>()?;
        let client = net::client(cfg.timeout.get(), cfg.ca.as_deref())?;
        Ok(Self {
            cfg,
            matchers,
            client,
            counters: HashMap::new(),
        })
    }

    pub(crate) async fn poll(&mut self, stats: &SourceStats) -> Polled {
        let started = Instant::now();
        let req = self
            .client
            .get(&self.cfg.url)
            .header("Accept", "text/plain;version=0.0.4");
        let fetched = match net::fetch_once(req, MAX_BODY).await {
            Ok(f) => f,
            Err(e) => {
                stats.poll_error(&e.error.reason, e.error.message);
                return Polled::default();
            }
        };
        let scrape_ms = now_ms();
        let text = String::from_utf8_lossy(&fetched.body);
        let expo = exposition::parse(&text);
        let samples = samples_of(
            &self.cfg,
            &self.matchers,
            &mut self.counters,
            &expo,
            scrape_ms,
            stats,
        );
        stats.poll_ok(started.elapsed(), samples.len(), now_ms());
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

    fn cfg(metrics: &[&str]) -> PrometheusConfig {
        PrometheusConfig {
            name: "p".into(),
            url: "http://127.0.0.1:1/metrics".into(),
            interval: default_interval(),
            timeout: default_timeout(),
            metrics: metrics.iter().map(|s| s.to_string()).collect(),
            labels: BTreeMap::new(),
            aggregate: Aggregate::None,
            max_series: 2000,
            ca: None,
        }
    }

    fn run(
        c: &PrometheusConfig,
        state: &mut HashMap<String, CounterPoint>,
        text: &str,
        now: i64,
        stats: &SourceStats,
    ) -> Vec<(String, i64, f64)> {
        let matchers: Vec<Matcher> = c
            .metrics
            .iter()
            .map(|m| Matcher::parse(m).unwrap())
            .collect();
        let mut v: Vec<(String, i64, f64)> =
            samples_of(c, &matchers, state, &exposition::parse(text), now, stats)
                .into_iter()
                .map(|s| (s.signal, s.ts_ms, s.value))
                .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    #[test]
    fn counter_steps() {
        let p = |ts_ms, value| CounterPoint { ts_ms, value };
        assert_eq!(counter_step(None, p(0, 5.0)), RateStep::First);
        assert_eq!(
            counter_step(Some(p(0, 5.0)), p(2000, 9.0)),
            RateStep::Rate(2.0)
        );
        assert_eq!(
            counter_step(Some(p(0, 5.0)), p(500, 5.0)),
            RateStep::Rate(0.0)
        );
        assert_eq!(counter_step(Some(p(0, 5.0)), p(1000, 4.0)), RateStep::Reset);
        assert_eq!(
            counter_step(Some(p(1000, 5.0)), p(1000, 6.0)),
            RateStep::Unchanged
        );
        assert_eq!(
            counter_step(Some(p(1000, 5.0)), p(900, 6.0)),
            RateStep::OutOfOrder
        );
    }

    #[test]
    fn counters_become_rates_and_resets_are_counted() {
        let c = cfg(&["reqs_total", "temp"]);
        let stats = SourceStats::default();
        let mut st = HashMap::new();
        let t0 = 1_000_000;
        let r = run(&c, &mut st, "reqs_total 100\ntemp 21.5\n", t0, &stats);
        assert_eq!(r, vec![("temp".into(), t0, 21.5)]);
        let r = run(
            &c,
            &mut st,
            "reqs_total 130\ntemp 22\n",
            t0 + 10_000,
            &stats,
        );
        assert_eq!(
            r,
            vec![
                ("reqs_total".into(), t0 + 10_000, 3.0),
                ("temp".into(), t0 + 10_000, 22.0)
            ]
        );
        // Reset: no rate for this step, then rates from the new base.
        let r = run(&c, &mut st, "reqs_total 4\n", t0 + 20_000, &stats);
        assert_eq!(r, vec![]);
        let r = run(&c, &mut st, "reqs_total 14\n", t0 + 25_000, &stats);
        assert_eq!(r, vec![("reqs_total".into(), t0 + 25_000, 2.0)]);
        let snap = stats.snapshot();
        assert_eq!(snap.skipped.get("counter_reset"), Some(&1));
    }

    #[test]
    fn exposition_timestamps_win_and_typed_counters_are_rates() {
        let c = cfg(&["re:jobs_.*"]);
        let stats = SourceStats::default();
        let mut st = HashMap::new();
        let text1 = "# TYPE jobs_done counter\njobs_done 10 5000\njobs_level 3 5000\n";
        let text2 = "# TYPE jobs_done counter\njobs_done 25 8000\njobs_level 4 8000\n";
        assert_eq!(
            run(&c, &mut st, text1, 1, &stats),
            vec![("jobs_level".into(), 5000, 3.0)]
        );
        assert_eq!(
            run(&c, &mut st, text2, 2, &stats),
            vec![
                ("jobs_done".into(), 8000, 5.0),
                ("jobs_level".into(), 8000, 4.0)
            ]
        );
        // The same exposition again (same timestamps): no new counter sample.
        assert_eq!(
            run(&c, &mut st, text2, 3, &stats),
            vec![("jobs_level".into(), 8000, 4.0)]
        );
    }

    #[test]
    fn several_series_get_label_names_unless_summed() {
        let text = "lat{path=\"/b\",code=\"200\"} 2\nlat{code=\"200\",path=\"/a\"} 3\nlat{code=\"500\",path=\"/a\"} NaN\nother 1\n";
        let stats = SourceStats::default();
        let mut c = cfg(&["lat"]);
        let r = run(&c, &mut HashMap::new(), text, 7, &stats);
        assert_eq!(
            r,
            vec![
                (r#"lat{code="200",path="/a"}"#.into(), 7, 3.0),
                (r#"lat{code="200",path="/b"}"#.into(), 7, 2.0)
            ]
        );
        assert_eq!(stats.snapshot().skipped.get("non_finite"), Some(&1));
        c.labels.insert("path".into(), "/a".into());
        let r = run(&c, &mut HashMap::new(), text, 7, &stats);
        assert_eq!(r, vec![(r#"lat{code="200",path="/a"}"#.into(), 7, 3.0)]);
        c.labels.insert("code".into(), "200".into());
        // One series left: the plain metric name.
        let r = run(&c, &mut HashMap::new(), text, 7, &stats);
        assert_eq!(r, vec![("lat".into(), 7, 3.0)]);
        let mut c = cfg(&["lat"]);
        c.aggregate = Aggregate::Sum;
        let r = run(&c, &mut HashMap::new(), text, 7, &stats);
        assert_eq!(r, vec![("lat".into(), 7, 5.0)]);
    }

    #[test]
    fn summed_counters_are_summed_rates() {
        let mut c = cfg(&["hits_total"]);
        c.aggregate = Aggregate::Sum;
        let stats = SourceStats::default();
        let mut st = HashMap::new();
        run(
            &c,
            &mut st,
            "hits_total{a=\"1\"} 10\nhits_total{a=\"2\"} 100\n",
            0,
            &stats,
        );
        let r = run(
            &c,
            &mut st,
            "hits_total{a=\"1\"} 20\nhits_total{a=\"2\"} 130\n",
            10_000,
            &stats,
        );
        assert_eq!(r, vec![("hits_total".into(), 10_000, 4.0)]);
    }

    #[test]
    fn summed_histogram_buckets_keep_their_le() {
        let mut c = cfg(&["lat_seconds_bucket"]);
        c.aggregate = Aggregate::Sum;
        let stats = SourceStats::default();
        let mut st = HashMap::new();
        let text = |a: [u32; 4]| {
            format!(
                "# TYPE lat_seconds histogram\n\
                 lat_seconds_bucket{{h=\"a\",le=\"0.1\"}} {}\n\
                 lat_seconds_bucket{{h=\"a\",le=\"+Inf\"}} {}\n\
                 lat_seconds_bucket{{h=\"b\",le=\"0.1\"}} {}\n\
                 lat_seconds_bucket{{h=\"b\",le=\"+Inf\"}} {}\n",
                a[0], a[1], a[2], a[3]
            )
        };
        run(&c, &mut st, &text([0, 0, 0, 0]), 0, &stats);
        let mut r = run(&c, &mut st, &text([10, 20, 30, 50]), 10_000, &stats);
        r.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            r,
            vec![
                ("lat_seconds_bucket{le=\"+Inf\"}".into(), 10_000, 7.0),
                ("lat_seconds_bucket{le=\"0.1\"}".into(), 10_000, 4.0),
            ]
        );
    }

    #[test]
    fn series_beyond_the_cap_are_counted() {
        let mut c = cfg(&["re:g.*"]);
        c.max_series = 2;
        let stats = SourceStats::default();
        let r = run(
            &c,
            &mut HashMap::new(),
            "g1 1\ng2 2\ng3 3\ng4 4\nbad line here\n",
            0,
            &stats,
        );
        assert_eq!(r, vec![("g1".into(), 0, 1.0), ("g2".into(), 0, 2.0)]);
        let snap = stats.snapshot();
        assert_eq!(snap.skipped.get("series_limit"), Some(&2));
        assert_eq!(snap.skipped.get("malformed_line"), Some(&1));
    }

    #[test]
    fn validation_names_the_field() {
        let mut c = cfg(&["ok", "re:("]);
        let e = c.validate("sources[3]").unwrap_err();
        assert_eq!(e.field, "sources[3].metrics[1]");
        c.metrics = vec![];
        assert_eq!(c.validate("s").unwrap_err().field, "s.metrics");
        c.metrics = vec!["x".into()];
        c.timeout = Dur(Duration::from_secs(60));
        assert_eq!(c.validate("s").unwrap_err().field, "s.timeout");
        c.timeout = default_timeout();
        c.max_series = 0;
        assert_eq!(c.validate("s").unwrap_err().field, "s.maxSeries");
        c.max_series = 1;
        assert!(c.validate("s").is_ok());
        let m = Matcher::parse("re:node_(load1|load5)").unwrap();
        assert!(m.matches("node_load1"));
        assert!(!m.matches("node_load15"), "regexes are anchored");
    }
}
