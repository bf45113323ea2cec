//! Sources: where the sidecar reads the workload's signals. Each source runs as one task and
//! sends [`Batch`]es of samples to the engine; its health goes to a shared [`SourceStats`].
//!
//! Four kinds, selected by `type:`:
//! - [`prometheus`]: scrape a Prometheus text exposition endpoint (parser in [`exposition`]);
//! - [`jsonl`]: follow a JSON-lines file like `tail -F`, optionally AES-256-GCM encrypted;
//! - [`http`]: pull a paged JSON API of coherence summaries;
//! - [`datadog`]: the Datadog metrics query API (v1), read-only.
//!
//! Every source polls on its `interval`, never panics and never stops on bad input: what it
//! cannot use is counted in [`SourceStats::skipped`] with a reason, and a failed poll in
//! [`SourceStats::poll_error`]. It stops as soon as the shutdown flag becomes `true` (or its
//! sender is dropped), or when the batch receiver is gone.

pub mod datadog;
pub mod exposition;
pub mod http;
pub mod jsonl;
mod net;
pub mod prometheus;

pub use net::Secret;

use crate::config::ConfigError;
use crate::sample::{Batch, Dur, Sample, SourceStats};
use coherence_core::linecipher::LineCipher;
use serde::Deserialize;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, watch};

/// One configured source (`type:` selects the kind).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SourceConfig {
    /// Scrape a Prometheus text endpoint.
    Prometheus(prometheus::PrometheusConfig),
    /// Follow a JSON-lines file.
    Jsonl(jsonl::JsonlConfig),
    /// Pull a paged JSON API of coherence summaries.
    Http(http::HttpConfig),
    /// Query Datadog metrics.
    Datadog(datadog::DatadogConfig),
}

impl SourceConfig {
    /// The source's name (unique within a configuration).
    pub fn name(&self) -> &str {
        match self {
            SourceConfig::Prometheus(c) => &c.name,
            SourceConfig::Jsonl(c) => &c.name,
            SourceConfig::Http(c) => &c.name,
            SourceConfig::Datadog(c) => &c.name,
        }
    }

    /// How often the source polls.
    pub fn interval(&self) -> Dur {
        match self {
            SourceConfig::Prometheus(c) => c.interval,
            SourceConfig::Jsonl(c) => c.interval,
            SourceConfig::Http(c) => c.interval,
            SourceConfig::Datadog(c) => c.interval,
        }
    }

    /// Checks settings serde cannot; `at` is the field path of this source (`sources[0]`).
    pub fn validate(&self, at: &str) -> Result<(), ConfigError> {
        if self.name().trim().is_empty() {
            return Err(ConfigError::new(
                format!("{at}.name"),
                "expected a non-empty name",
            ));
        }
        match self {
            SourceConfig::Prometheus(c) => c.validate(at),
            SourceConfig::Jsonl(c) => c.validate(at),
            SourceConfig::Http(c) => c.validate(at),
            SourceConfig::Datadog(c) => c.validate(at),
        }
    }

    /// Reads the secrets this source names by environment variable (`tokenEnv` of `http`,
    /// `apiKeyEnv`/`appKeyEnv` of `datadog`) through `lookup` and keeps them in the
    /// configuration (never printed: [`Secret`] redacts itself). Call it once, after
    /// [`SourceConfig::validate`], with the process environment; the error names the field
    /// and the variable. A source spawned without it reads the process environment once when
    /// it starts.
    pub fn resolve_env(
        &mut self,
        at: &str,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        match self {
            SourceConfig::Http(c) => c.resolve_env(at, lookup),
            SourceConfig::Datadog(c) => c.resolve_env(at, lookup),
            SourceConfig::Prometheus(_) | SourceConfig::Jsonl(_) => Ok(()),
        }
    }
}

/// What a running source is given.
#[derive(Debug, Clone)]
pub struct Context {
    /// Where batches go.
    pub tx: mpsc::Sender<Batch>,
    /// The source's health.
    pub stats: Arc<SourceStats>,
    /// Becomes `true` when the source must stop.
    pub shutdown: watch::Receiver<bool>,
    /// The line cipher of `COHERENCE_AES_KEY` (read once by the engine), used by `jsonl`
    /// sources with `encrypted: true`; without it such a source reports `missing_key`.
    pub cipher: Option<LineCipher>,
}

impl Context {
    /// A context without a line cipher.
    pub fn new(
        tx: mpsc::Sender<Batch>,
        stats: Arc<SourceStats>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Self {
            tx,
            stats,
            shutdown,
            cipher: None,
        }
    }

    /// The same context with a line cipher for encrypted JSONL.
    pub fn with_cipher(mut self, cipher: LineCipher) -> Self {
        self.cipher = Some(cipher);
        self
    }
}

/// Starts a source's task. It runs until shutdown; it never panics on bad input.
pub fn spawn(cfg: SourceConfig, ctx: Context) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let name = cfg.name().to_string();
        let interval = cfg.interval().get();
        let env = |k: &str| std::env::var(k).ok();
        let poller = match cfg {
            SourceConfig::Prometheus(c) => {
                prometheus::Scraper::new(c).map(|p| Poller::Prometheus(Box::new(p)))
            }
            SourceConfig::Jsonl(c) => Ok(Poller::Jsonl(Box::new(jsonl::Follower::new(
                c,
                ctx.cipher.clone(),
            )))),
            SourceConfig::Http(mut c) => {
                let _ = c.resolve_env("", &env);
                http::Puller::new(c).map(|p| Poller::Http(Box::new(p)))
            }
            SourceConfig::Datadog(mut c) => {
                let _ = c.resolve_env("", &env);
                datadog::Querier::new(c).map(|p| Poller::Datadog(Box::new(p)))
            }
        };
        match poller {
            Ok(p) => run(name, interval, p, ctx).await,
            Err(e) => {
                // A setting that only fails at start (a CA file that cannot be read): report it
                // on every interval until shutdown, so it shows in /status.
                tracing::warn!(source = %name, error = %e.message, "source cannot start");
                let mut shutdown = ctx.shutdown.clone();
                loop {
                    ctx.stats.poll_error(&e.reason, e.message.clone());
                    tokio::select! {
                        _ = tokio::time::sleep(interval) => {}
                        _ = stopped(&mut shutdown) => return,
                    }
                }
            }
        }
    })
}

/// Why a poll (or a source's start) failed: a short machine reason and a message.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PollError {
    pub(crate) reason: String,
    pub(crate) message: String,
}

impl PollError {
    pub(crate) fn new(reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// What one poll produced; the poller records its own `poll_ok`/`poll_error`.
#[derive(Debug, Default)]
pub(crate) struct Polled {
    pub(crate) samples: Vec<Sample>,
    /// More input is ready now (a file being caught up): poll again without waiting.
    pub(crate) more: bool,
}

enum Poller {
    Prometheus(Box<prometheus::Scraper>),
    Jsonl(Box<jsonl::Follower>),
    Http(Box<http::Puller>),
    Datadog(Box<datadog::Querier>),
}

impl Poller {
    async fn poll(&mut self, stats: &SourceStats) -> Polled {
        match self {
            Poller::Prometheus(p) => p.poll(stats).await,
            Poller::Jsonl(p) => p.poll(stats).await,
            Poller::Http(p) => p.poll(stats).await,
            Poller::Datadog(p) => p.poll(stats).await,
        }
    }
}

async fn run(name: String, interval: Duration, mut poller: Poller, ctx: Context) {
    let mut shutdown = ctx.shutdown.clone();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut more = false;
    loop {
        if *shutdown.borrow() {
            return;
        }
        if !more {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stopped(&mut shutdown) => return,
            }
        }
        let polled = tokio::select! {
            p = poller.poll(&ctx.stats) => p,
            _ = stopped(&mut shutdown) => return,
        };
        more = polled.more;
        if polled.samples.is_empty() {
            if more {
                tokio::task::yield_now().await;
            }
            continue;
        }
        let batch = Batch {
            source: name.clone(),
            samples: polled.samples,
        };
        tokio::select! {
            r = ctx.tx.send(batch) => if r.is_err() { return },
            _ = stopped(&mut shutdown) => return,
        }
    }
}

/// Resolves when the shutdown flag is `true` or its sender is gone.
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

/// Milliseconds since the Unix epoch, now.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A JSON timestamp: an RFC 3339 string, or a number of milliseconds since the Unix epoch —
/// or of seconds when its magnitude is below 10^11 (10^11 s is the year 5138, 10^11 ms is
/// March 1973, so no timestamp of interest is ambiguous). Fractions are kept to the ms.
pub(crate) fn json_ts_ms(v: &serde_json::Value) -> Option<i64> {
    match v {
        serde_json::Value::String(s) => coherence_core::telemetry::parse_ts_ms(s).ok(),
        serde_json::Value::Number(n) => number_ts_ms(n.as_f64()?),
        _ => None,
    }
}

/// See [`json_ts_ms`]: seconds below 10^11 in magnitude, else milliseconds.
pub(crate) fn number_ts_ms(x: f64) -> Option<i64> {
    if !x.is_finite() {
        return None;
    }
    let ms = if x.abs() < 1e11 { x * 1000.0 } else { x };
    // ±10^15 ms is ±31 700 years: far beyond any real timestamp, well within i64.
    if ms.abs() > 1e15 {
        return None;
    }
    Some(ms.round() as i64)
}

/// `url` must be http(s); https needs a `ca` file (system roots are not used).
pub(crate) fn validate_url(
    at: &str,
    field: &str,
    url: &str,
    ca: Option<&Path>,
) -> Result<(), ConfigError> {
    let parsed = reqwest::Url::parse(url).map_err(|e| {
        ConfigError::new(
            format!("{at}.{field}"),
            format!("expected an http:// or https:// URL, got {url:?} ({e})"),
        )
    })?;
    match parsed.scheme() {
        "http" => Ok(()),
        "https" if ca.is_some() => Ok(()),
        "https" => Err(ConfigError::new(
            format!("{at}.ca"),
            format!(
                "expected a PEM CA bundle path for the https URL {url:?} (system roots are not \
                 used; e.g. /etc/ssl/certs/ca-certificates.crt)"
            ),
        )),
        other => Err(ConfigError::new(
            format!("{at}.{field}"),
            format!("expected an http:// or https:// URL, got scheme {other:?}"),
        )),
    }
}

/// `timeout` must be at most `interval`.
pub(crate) fn validate_timeout(at: &str, timeout: Dur, interval: Dur) -> Result<(), ConfigError> {
    if timeout > interval {
        return Err(ConfigError::new(
            format!("{at}.timeout"),
            format!("expected at most the interval ({interval}), got {timeout}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn json_timestamps_accept_rfc3339_ms_and_seconds() {
        assert_eq!(json_ts_ms(&json!("1970-01-01T00:00:10Z")), Some(10_000));
        assert_eq!(json_ts_ms(&json!(1_700_000_000)), Some(1_700_000_000_000));
        assert_eq!(
            json_ts_ms(&json!(1_700_000_000.25)),
            Some(1_700_000_000_250)
        );
        assert_eq!(
            json_ts_ms(&json!(1_700_000_000_123i64)),
            Some(1_700_000_000_123)
        );
        assert_eq!(json_ts_ms(&json!("yesterday")), None);
        assert_eq!(json_ts_ms(&json!(true)), None);
        assert_eq!(json_ts_ms(&json!(1e300)), None);
    }

    #[test]
    fn urls_must_be_http_and_https_needs_a_ca() {
        assert!(validate_url("s", "url", "http://127.0.0.1:9/x", None).is_ok());
        let e = validate_url("s", "url", "https://h/x", None).unwrap_err();
        assert_eq!(e.field, "s.ca");
        assert!(validate_url("s", "url", "https://h/x", Some(Path::new("/ca.pem"))).is_ok());
        let e = validate_url("s", "url", "ftp://h/x", None).unwrap_err();
        assert_eq!(e.field, "s.url");
        assert!(e.message.contains("ftp"), "{}", e.message);
        assert!(validate_url("s", "url", "not a url", None).is_err());
    }
}
