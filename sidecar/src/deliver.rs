//! Delivery of outbox records to the verifier over mTLS.
//!
//! [`Deliverer::run`] is one tokio task. It takes the **oldest** pending record, POSTs its body
//! (`content-type: application/json`) to `{endpoint}/v1/pcs/submit` or
//! `{endpoint}/v1/signals/submit`, and acts on the answer:
//!
//! | answer | action |
//! |---|---|
//! | any 2xx (200 accepted, 202 escalated; a duplicate gets the stored status) | acknowledge |
//! | 400, 401, 403, 413 | dead-letter now, reason `"<status>: <verifier's error body>"` |
//! | 429, 503 | retry after `Retry-After` (capped by `backoffMax`), else as below |
//! | other statuses, timeouts, connection and TLS errors | retry after a backoff |
//!
//! The backoff after the n-th failed attempt is drawn with **full jitter**:
//! `rand(0, min(backoffMax, backoffBase·2^(n−1)))`. After `maxAttempts` failed attempts (every
//! retried answer counts, 429 and 503 too) the record is dead-lettered with reason
//! `max_attempts`. Attempt counts live in memory only: after a restart a record starts again at
//! attempt 0 (it is still in the outbox, so nothing is lost, it may only be tried longer).
//!
//! **One record at a time, in order.** The next record is sent only once the previous one is
//! acknowledged or dead-lettered. A sidecar produces a PCS and a SignalReport per epoch (one
//! minute by default), so one request in flight is far more than the rate needs; in exchange
//! the verifier sees each pod's records in outbox order, a retry never overtakes a later
//! record, and a rate limit or an outage stops the whole stream at once instead of failing a
//! window of requests. Retries are safe: the verifier deduplicates by `pcs_id`/`report_id` and
//! answers a duplicate with the stored outcome.
//!
//! **Certificates.** The client trusts only `verifier.ca` and presents `verifier.cert` with
//! `verifier.key` ([`crate::tls`]). The contents of the three files are hashed every
//! `reload_interval` (30 s by default) and before every send that follows a failure; when
//! the hash changes the client is rebuilt (new connections, new certificate). A changed but
//! unusable set of files (e.g. caught between the certificate and the key of a rotation) keeps
//! the old client and is tried again at the next check.
//!
//! **Shutdown.** The task returns as soon as the shutdown channel turns `true` (or its sender is
//! dropped), abandoning a request in flight: the record stays pending and is sent again after a
//! restart (a duplicate if the verifier had already stored it, which it answers as success).
//!
//! **Damaged records.** A record whose bytes cannot be read back from the outbox is moved to the
//! dead-letter file by [`Outbox::peek_batch`] itself (raw bytes, reason `unreadable: ...`), so
//! the sender never waits on it and goes on with the next record.
//!
//! The outbox's `ack`/`dead_letter` (each an `fdatasync`) run on the blocking thread pool.
//! Requests go directly to the endpoint; proxy environment variables are ignored.

use crate::config::{DeliverySettings, VerifierSettings};
use crate::outbox::{Kind, Outbox, OutboxError, Record};
use crate::tls::{self, TlsError, TlsFiles};
use rand::Rng;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Dead-letter reason of a record that failed `maxAttempts` times.
pub const REASON_MAX_ATTEMPTS: &str = "max_attempts";
/// Longest part of the verifier's error body kept in a dead-letter reason.
const MAX_REASON_BODY: usize = 512;
/// Default interval between checks of the TLS files.
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(30);

/// Why the sender cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    /// A setting is missing or wrong.
    #[error("{field}: {message}")]
    Config {
        /// The setting.
        field: &'static str,
        /// What was expected.
        message: String,
    },
    /// A TLS file cannot be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// reqwest refused the client configuration.
    #[error("HTTP client: {0}")]
    Client(String),
}

/// The path a record of `kind` is posted to.
pub fn submit_path(kind: Kind) -> &'static str {
    match kind {
        Kind::Pcs => "/v1/pcs/submit",
        Kind::Signals => "/v1/signals/submit",
    }
}

/// The upper bound of the backoff after the `attempt`-th failed attempt (1-based):
/// `min(backoff_max, backoff_base · 2^(attempt−1))`.
pub fn backoff_cap(base: Duration, max: Duration, attempt: u32) -> Duration {
    let shift = attempt.saturating_sub(1).min(62);
    let factor = 1u64 << shift;
    let nanos = base.as_nanos().saturating_mul(u128::from(factor));
    let capped = nanos.min(max.as_nanos());
    Duration::from_nanos(u64::try_from(capped).unwrap_or(u64::MAX))
}

/// A full-jitter delay: uniform in `[0, cap]`.
pub fn full_jitter(cap: Duration, rng: &mut impl Rng) -> Duration {
    let n = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(rng.gen_range(0..=n))
}

/// What to do with a record after an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Stored by the verifier (or already stored: a duplicate): acknowledge.
    Delivered(u16),
    /// Refused for good: dead-letter with the reason.
    Rejected {
        /// HTTP status.
        status: u16,
        /// `"<status>: <body>"`.
        reason: String,
    },
    /// Try again later.
    Retry {
        /// The server's `Retry-After`, if it gave one.
        after: Option<Duration>,
        /// What happened, for the stats and the log.
        error: String,
    },
}

/// The verdict of an HTTP answer.
pub fn classify(status: u16, retry_after: Option<Duration>, body: &str) -> Verdict {
    let text = trim_body(body);
    match status {
        200..=299 => Verdict::Delivered(status),
        400 | 401 | 403 | 413 => Verdict::Rejected {
            status,
            reason: if text.is_empty() {
                status.to_string()
            } else {
                format!("{status}: {text}")
            },
        },
        429 | 503 => Verdict::Retry {
            after: retry_after,
            error: format!("{status}: {text}"),
        },
        _ => Verdict::Retry {
            after: None,
            error: format!("{status}: {text}"),
        },
    }
}

/// The body on one line, at most [`MAX_REASON_BODY`] bytes.
fn trim_body(body: &str) -> String {
    let one_line = body.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.len() <= MAX_REASON_BODY {
        return one_line;
    }
    let mut end = MAX_REASON_BODY;
    while !one_line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &one_line[..end])
}

fn parse_retry_after(h: Option<&reqwest::header::HeaderValue>) -> Option<Duration> {
    h?.to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// An error with its sources (`error sending request: … : invalid peer certificate …`).
fn describe(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = inner.source();
    }
    s
}

fn now_ms() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A copy of the delivery counters, for `/metrics` and `/status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DeliverySnapshot {
    /// Requests sent (every attempt).
    pub attempts: u64,
    /// Records acknowledged (2xx).
    pub sent_ok: u64,
    /// Failed attempts that will be (or were) retried.
    pub retries: u64,
    /// Records dead-lettered by the sender (rejections and `max_attempts`).
    pub dead_lettered: u64,
    /// Attempts that got no HTTP answer (connect, TLS, timeout).
    pub network_errors: u64,
    /// Answers per HTTP status.
    pub by_status: BTreeMap<u16, u64>,
    /// The last failure, if any.
    pub last_error: Option<String>,
    /// When it happened, ms since the Unix epoch.
    pub last_error_at_ms: Option<i64>,
    /// When a record was last acknowledged, ms since the Unix epoch.
    pub last_success_at_ms: Option<i64>,
    /// The wait before the next attempt, ms (0 when not backing off).
    pub current_backoff_ms: u64,
    /// Seq of the record being delivered, if any.
    pub head_seq: Option<u64>,
    /// Failed attempts of that record so far.
    pub head_attempts: u32,
    /// Times the client was rebuilt after the TLS files changed.
    pub tls_reloads: u64,
    /// Times changed TLS files could not be used.
    pub tls_reload_errors: u64,
}

/// Delivery counters, shared between the sender and the local API.
#[derive(Debug, Default)]
pub struct DeliveryStats {
    inner: Mutex<DeliverySnapshot>,
}

impl DeliveryStats {
    /// A consistent copy of every counter.
    pub fn snapshot(&self) -> DeliverySnapshot {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DeliverySnapshot> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn error(&self, e: &str) {
        let mut s = self.lock();
        s.last_error = Some(e.to_owned());
        s.last_error_at_ms = Some(now_ms());
    }
}

struct Transport {
    client: reqwest::Client,
    fingerprint: Option<[u8; 32]>,
    checked: Instant,
}

fn build_client(
    files: Option<&TlsFiles>,
    timeout: Duration,
) -> Result<reqwest::Client, DeliverError> {
    let cfg = match files {
        Some(f) => f.client_config()?,
        None => tls::plain_config()?,
    };
    reqwest::Client::builder()
        .use_preconfigured_tls(cfg)
        .timeout(timeout)
        .connect_timeout(timeout)
        .no_proxy()
        .build()
        .map_err(|e| DeliverError::Client(describe(&e)))
}

/// The sender task. See the module documentation.
pub struct Deliverer {
    outbox: Arc<Outbox>,
    endpoint: String,
    files: Option<TlsFiles>,
    timeout: Duration,
    settings: DeliverySettings,
    reload_interval: Duration,
    stats: Arc<DeliveryStats>,
    transport: Transport,
}

impl std::fmt::Debug for Deliverer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Deliverer({})", self.endpoint)
    }
}

impl Deliverer {
    /// A sender of `outbox` to `verifier.endpoint`. For an `https://` endpoint the three TLS
    /// files must be set and usable (the error names the file); `http://` needs none.
    pub fn new(
        outbox: Arc<Outbox>,
        verifier: &VerifierSettings,
        delivery: &DeliverySettings,
    ) -> Result<Deliverer, DeliverError> {
        let endpoint = verifier.endpoint.trim().trim_end_matches('/').to_owned();
        let files = if endpoint.starts_with("https://") {
            let need = |p: &Option<std::path::PathBuf>, field: &'static str, var: &str| {
                p.clone().ok_or_else(|| DeliverError::Config {
                    field,
                    message: format!("expected a file path (or {var}) for the https endpoint"),
                })
            };
            Some(TlsFiles {
                ca: need(&verifier.ca, "verifier.ca", "COHERENCE_TLS_CA")?,
                cert: need(&verifier.cert, "verifier.cert", "COHERENCE_TLS_CERT")?,
                key: need(&verifier.key, "verifier.key", "COHERENCE_TLS_KEY")?,
            })
        } else if endpoint.starts_with("http://") {
            None
        } else {
            return Err(DeliverError::Config {
                field: "verifier.endpoint",
                message: format!("expected an https:// or http:// URL, got {endpoint:?}"),
            });
        };
        let timeout = verifier.timeout.get();
        let fingerprint = files.as_ref().map(TlsFiles::fingerprint);
        let client = build_client(files.as_ref(), timeout)?;
        Ok(Deliverer {
            outbox,
            endpoint,
            files,
            timeout,
            settings: delivery.clone(),
            reload_interval: DEFAULT_RELOAD_INTERVAL,
            stats: Arc::new(DeliveryStats::default()),
            transport: Transport {
                client,
                fingerprint,
                checked: Instant::now(),
            },
        })
    }

    /// Sets how often the TLS files are checked for changes (default 30 s).
    pub fn with_reload_interval(mut self, every: Duration) -> Deliverer {
        self.reload_interval = every;
        self
    }

    /// Counts into `stats` (so the figures survive a restart of the sender on reload).
    pub fn with_stats(mut self, stats: Arc<DeliveryStats>) -> Deliverer {
        self.stats = stats;
        self
    }

    /// The counters, to share with the local API before [`Deliverer::run`] takes the sender.
    pub fn stats(&self) -> Arc<DeliveryStats> {
        self.stats.clone()
    }

    /// Starts [`Deliverer::run`] on the current runtime.
    pub fn spawn(self, shutdown: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.run(shutdown))
    }

    /// Delivers until `shutdown` turns true (or its sender is dropped).
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut head: Option<(u64, u32)> = None;
        let mut after_failure = false;
        tracing::info!(endpoint = %self.endpoint, "delivery started");
        loop {
            if *shutdown.borrow() {
                break;
            }
            let next = match self.outbox.peek_batch(1) {
                Ok(mut v) => v.pop(),
                Err(e) => {
                    self.outbox_failure(&e);
                    if sleep_or_stop(self.settings.backoff_max.get(), &mut shutdown).await {
                        break;
                    }
                    continue;
                }
            };
            let Some(rec) = next else {
                {
                    let mut s = self.stats.lock();
                    s.head_seq = None;
                    s.head_attempts = 0;
                    s.current_backoff_ms = 0;
                }
                tokio::select! {
                    _ = self.outbox.notified() => {}
                    _ = stop(&mut shutdown) => break,
                    _ = tokio::time::sleep(self.reload_interval) => self.maybe_reload(false),
                }
                continue;
            };
            let failed_before = match head {
                Some((seq, n)) if seq == rec.seq => n,
                _ => 0,
            };
            {
                let mut s = self.stats.lock();
                s.head_seq = Some(rec.seq);
                s.head_attempts = failed_before;
            }
            self.maybe_reload(after_failure);
            let verdict = tokio::select! {
                v = self.send(&rec) => v,
                _ = stop(&mut shutdown) => break,
            };
            match verdict {
                Verdict::Delivered(status) => {
                    head = None;
                    after_failure = false;
                    match self.resolve(rec.seq, None).await {
                        Ok(_) => {
                            let mut s = self.stats.lock();
                            s.sent_ok += 1;
                            s.last_success_at_ms = Some(now_ms());
                            s.current_backoff_ms = 0;
                            tracing::debug!(seq = rec.seq, id = %rec.id, status, "delivered");
                        }
                        Err(e) => {
                            self.outbox_failure(&e);
                            if sleep_or_stop(self.settings.backoff_max.get(), &mut shutdown).await {
                                break;
                            }
                        }
                    }
                }
                Verdict::Rejected { status, reason } => {
                    head = None;
                    tracing::warn!(seq = rec.seq, id = %rec.id, status, %reason, "record rejected; dead-lettered");
                    self.stats.error(&format!("seq {}: {reason}", rec.seq));
                    if let Err(e) = self.resolve(rec.seq, Some(reason)).await {
                        self.outbox_failure(&e);
                        if sleep_or_stop(self.settings.backoff_max.get(), &mut shutdown).await {
                            break;
                        }
                    }
                }
                Verdict::Retry { after, error } => {
                    after_failure = true;
                    let failed = failed_before + 1;
                    self.stats.error(&format!("seq {}: {error}", rec.seq));
                    if failed >= self.settings.max_attempts {
                        head = None;
                        tracing::warn!(seq = rec.seq, id = %rec.id, attempts = failed, %error, "record dead-lettered after max attempts");
                        if let Err(e) = self
                            .resolve(rec.seq, Some(REASON_MAX_ATTEMPTS.to_owned()))
                            .await
                        {
                            self.outbox_failure(&e);
                            if sleep_or_stop(self.settings.backoff_max.get(), &mut shutdown).await {
                                break;
                            }
                        }
                        continue;
                    }
                    head = Some((rec.seq, failed));
                    let max = self.settings.backoff_max.get();
                    let delay = match after {
                        Some(a) => a.min(max),
                        None => full_jitter(
                            backoff_cap(self.settings.backoff_base.get(), max, failed),
                            &mut rand::thread_rng(),
                        ),
                    };
                    {
                        let mut s = self.stats.lock();
                        s.retries += 1;
                        s.head_attempts = failed;
                        s.current_backoff_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
                    }
                    tracing::info!(seq = rec.seq, attempt = failed, delay_ms = delay.as_millis() as u64, %error, "delivery failed; retrying");
                    if sleep_or_stop(delay, &mut shutdown).await {
                        break;
                    }
                }
            }
        }
        tracing::info!("delivery stopped");
    }

    fn outbox_failure(&self, e: &OutboxError) {
        tracing::error!(error = %e, "outbox");
        self.stats.error(&format!("outbox: {e}"));
    }

    /// Acknowledges (`reason` None) or dead-letters the record, on the blocking pool.
    async fn resolve(&self, seq: u64, reason: Option<String>) -> Result<bool, OutboxError> {
        let outbox = self.outbox.clone();
        let dead = reason.is_some();
        let r = tokio::task::spawn_blocking(move || match reason {
            None => outbox.ack(seq),
            Some(r) => outbox.dead_letter(seq, &r),
        })
        .await
        .unwrap_or_else(|e| Err(OutboxError::Failed(format!("outbox task failed: {e}"))));
        if dead && r.is_ok() {
            self.stats.lock().dead_lettered += 1;
        }
        r
    }

    /// One attempt.
    async fn send(&self, rec: &Record) -> Verdict {
        let url = format!("{}{}", self.endpoint, submit_path(rec.kind));
        self.stats.lock().attempts += 1;
        let sent = self
            .transport
            .client
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(rec.body.clone())
            .send()
            .await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => {
                self.stats.lock().network_errors += 1;
                return Verdict::Retry {
                    after: None,
                    error: describe(&e),
                };
            }
        };
        let status = resp.status().as_u16();
        *self.stats.lock().by_status.entry(status).or_insert(0) += 1;
        let retry_after = parse_retry_after(resp.headers().get(reqwest::header::RETRY_AFTER));
        match resp.text().await {
            Ok(body) => classify(status, retry_after, &body),
            // The status was read: a 2xx is stored even if its body was cut.
            Err(_) if (200..300).contains(&status) => Verdict::Delivered(status),
            Err(e) => Verdict::Retry {
                after: retry_after,
                error: format!("{status}, body unreadable: {}", describe(&e)),
            },
        }
    }

    /// Rebuilds the client if the TLS files changed (checked when `force`, or when the interval
    /// has passed since the last check).
    fn maybe_reload(&mut self, force: bool) {
        let Some(files) = &self.files else { return };
        if !force && self.transport.checked.elapsed() < self.reload_interval {
            return;
        }
        self.transport.checked = Instant::now();
        let fp = files.fingerprint();
        if Some(fp) == self.transport.fingerprint {
            return;
        }
        match build_client(Some(files), self.timeout) {
            Ok(client) => {
                self.transport.client = client;
                self.transport.fingerprint = Some(fp);
                self.stats.lock().tls_reloads += 1;
                tracing::info!("TLS files changed; client rebuilt");
            }
            Err(e) => {
                {
                    let mut s = self.stats.lock();
                    s.tls_reload_errors += 1;
                }
                self.stats.error(&format!("TLS reload: {e}"));
                tracing::warn!(error = %e, "TLS files changed but cannot be used; keeping the previous client");
            }
        }
    }
}

/// Resolves when shutdown is asked for or its sender is gone.
async fn stop(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

/// Sleeps `d`; true when shutdown came first.
async fn sleep_or_stop(d: Duration, rx: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = stop(rx) => true,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::config::OutboxSettings;
    use crate::sample::Dur;
    use rand::SeedableRng;

    #[test]
    fn backoff_caps_double_and_stop_at_the_max() {
        let base = Duration::from_millis(200);
        let max = Duration::from_secs(30);
        assert_eq!(backoff_cap(base, max, 1), base);
        assert_eq!(backoff_cap(base, max, 2), Duration::from_millis(400));
        assert_eq!(backoff_cap(base, max, 8), Duration::from_millis(25_600));
        assert_eq!(backoff_cap(base, max, 9), max);
        assert_eq!(backoff_cap(base, max, u32::MAX), max);
        assert_eq!(backoff_cap(base, max, 0), base);
    }

    #[test]
    fn full_jitter_stays_within_zero_and_the_cap() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(5);
        for attempt in 1..=20 {
            let cap = backoff_cap(base, max, attempt);
            let mut lo = cap;
            let mut hi = Duration::ZERO;
            for _ in 0..500 {
                let d = full_jitter(cap, &mut rng);
                assert!(d <= cap, "{d:?} > {cap:?}");
                lo = lo.min(d);
                hi = hi.max(d);
            }
            // Full jitter spreads over the whole range, not only near the cap.
            assert!(lo < cap / 10, "attempt {attempt}: lowest {lo:?} of {cap:?}");
            assert!(
                hi > cap * 9 / 10,
                "attempt {attempt}: highest {hi:?} of {cap:?}"
            );
        }
        assert_eq!(full_jitter(Duration::ZERO, &mut rng), Duration::ZERO);
    }

    #[test]
    fn answers_are_classified() {
        assert_eq!(classify(200, None, "{}"), Verdict::Delivered(200));
        assert_eq!(classify(202, None, "{}"), Verdict::Delivered(202));
        for s in [400, 401, 403, 413] {
            match classify(s, None, "{\"error\": \"x\",\n \"message\": \"y\"}") {
                Verdict::Rejected { status, reason } => {
                    assert_eq!(status, s);
                    assert_eq!(
                        reason,
                        format!("{s}: {{\"error\": \"x\", \"message\": \"y\"}}")
                    );
                }
                v => panic!("{s}: {v:?}"),
            }
        }
        let ra = Some(Duration::from_secs(3));
        assert!(matches!(classify(429, ra, ""), Verdict::Retry { after, .. } if after == ra));
        assert!(matches!(classify(503, ra, ""), Verdict::Retry { after, .. } if after == ra));
        assert!(matches!(
            classify(500, ra, ""),
            Verdict::Retry { after: None, .. }
        ));
        assert!(matches!(classify(404, None, ""), Verdict::Retry { .. }));
        let long = "é".repeat(2000);
        match classify(400, None, &long) {
            Verdict::Rejected { reason, .. } => assert!(reason.len() < 600, "{}", reason.len()),
            v => panic!("{v:?}"),
        }
    }

    /// An outbox with the default settings in `dir`.
    fn outbox_in(dir: &std::path::Path) -> Arc<Outbox> {
        Arc::new(
            Outbox::open(&OutboxSettings {
                dir: dir.to_owned(),
                ..OutboxSettings::default()
            })
            .unwrap(),
        )
    }

    #[test]
    fn https_without_files_names_the_setting() {
        let d = tempfile::tempdir().unwrap();
        let outbox = outbox_in(d.path());
        let e = Deliverer::new(
            outbox.clone(),
            &VerifierSettings::default(),
            &DeliverySettings::default(),
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("verifier.ca:"), "{e}");
        let plain = VerifierSettings {
            endpoint: "http://127.0.0.1:1/".into(),
            timeout: Dur(Duration::from_secs(1)),
            ..VerifierSettings::default()
        };
        let d = Deliverer::new(outbox, &plain, &DeliverySettings::default()).unwrap();
        assert_eq!(d.endpoint, "http://127.0.0.1:1");
    }

    /// A plain-HTTP server answering with `answers` in turn (then 200), recording each request's
    /// head and body.
    async fn scripted(
        answers: Vec<&'static str>,
    ) -> (
        u16,
        Arc<Mutex<Vec<(String, String)>>>,
        tokio::task::JoinHandle<()>,
    ) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let log = seen.clone();
        let task = tokio::spawn(async move {
            let mut answers = answers.into_iter();
            loop {
                let (mut c, _) = l.accept().await.unwrap();
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let (head, body) = loop {
                    let n = c.read(&mut chunk).await.unwrap();
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len: usize = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap())
                            })
                            .unwrap_or(0);
                        if body.len() >= len {
                            break (head.to_owned(), body.to_owned());
                        }
                    }
                    assert!(n > 0, "request cut short");
                };
                log.lock().unwrap().push((head, body));
                let answer = answers.next().unwrap_or("200 OK\r\n");
                let reply =
                    format!("HTTP/1.1 {answer}content-length: 2\r\nconnection: close\r\n\r\n{{}}");
                c.write_all(reply.as_bytes()).await.unwrap();
                c.shutdown().await.unwrap();
            }
        });
        (port, seen, task)
    }

    /// A sender to a plain-HTTP endpoint with backoff `(base, max)` ms and `attempts`.
    fn plain_sender(
        outbox: &Arc<Outbox>,
        endpoint: &str,
        (base_ms, max_ms): (u64, u64),
        attempts: u32,
    ) -> Deliverer {
        let verifier = VerifierSettings {
            endpoint: endpoint.to_string(),
            timeout: Dur(Duration::from_secs(5)),
            ..VerifierSettings::default()
        };
        let delivery = DeliverySettings {
            backoff_base: Dur(Duration::from_millis(base_ms)),
            backoff_max: Dur(Duration::from_millis(max_ms)),
            max_attempts: attempts,
        };
        Deliverer::new(outbox.clone(), &verifier, &delivery).unwrap()
    }

    /// 503 and 429 wait for `Retry-After` capped by `backoffMax`; the body is posted as JSON
    /// to the path of its kind.
    #[tokio::test]
    async fn retry_after_is_honoured_and_capped() {
        let d = tempfile::tempdir().unwrap();
        let outbox = outbox_in(d.path());
        let (port, seen, server) = scripted(vec![
            "503 Service Unavailable\r\nretry-after: 3600\r\n",
            "429 Too Many Requests\r\nretry-after: 0\r\n",
            "500 Internal Server Error\r\n",
        ])
        .await;
        let sender = plain_sender(&outbox, &format!("http://127.0.0.1:{port}/"), (10, 100), 10);
        let stats = sender.stats();
        let (tx, rx) = watch::channel(false);
        let task = sender.spawn(rx);
        let started = Instant::now();
        outbox
            .append(Kind::Signals, "r1", b"{\"report\":1}")
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), async {
            // The outbox is acknowledged on the blocking pool before the sender counts it:
            // wait for both.
            while outbox.pending_len() > 0 || stats.snapshot().sent_ok < 1 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("a one-hour Retry-After is capped by backoffMax");
        assert!(started.elapsed() >= Duration::from_millis(100));
        let s = stats.snapshot();
        assert_eq!((s.attempts, s.retries, s.sent_ok), (4, 3, 1), "{s:?}");
        assert_eq!(
            s.by_status,
            BTreeMap::from([(200, 1), (429, 1), (500, 1), (503, 1)])
        );
        assert_eq!(s.current_backoff_ms, 0);
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 4);
        for (head, body) in &seen {
            assert!(
                head.starts_with("POST /v1/signals/submit HTTP/1.1"),
                "{head}"
            );
            assert!(
                head.to_ascii_lowercase()
                    .contains("content-type: application/json"),
                "{head}"
            );
            assert_eq!(body, "{\"report\":1}");
        }
        tx.send(true).unwrap();
        task.await.unwrap();
        server.abort();
    }

    /// A refused connection is retried with backoff, then dead-lettered after `maxAttempts`;
    /// shutdown stops the task promptly.
    #[tokio::test]
    async fn unreachable_verifier_exhausts_attempts_then_stops_on_shutdown() {
        let d = tempfile::tempdir().unwrap();
        let outbox = outbox_in(d.path());
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let sender = plain_sender(&outbox, &format!("http://127.0.0.1:{port}"), (5, 20), 3);
        let stats = sender.stats();
        let (tx, rx) = watch::channel(false);
        let task = sender.spawn(rx);
        let seq = outbox.append(Kind::Pcs, "a", b"{\"a\":1}").unwrap();
        tokio::time::timeout(Duration::from_secs(10), async {
            while outbox.pending_len() > 0 || stats.snapshot().dead_lettered < 1 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap();
        let s = stats.snapshot();
        assert_eq!((s.attempts, s.retries, s.dead_lettered), (3, 2, 1), "{s:?}");
        assert_eq!(s.network_errors, 3);
        assert!(s.last_error.as_deref().unwrap().contains("seq 1"), "{s:?}");
        let dlq = std::fs::read_to_string(outbox.dlq_path()).unwrap();
        let line: serde_json::Value = serde_json::from_str(dlq.trim()).unwrap();
        assert_eq!(
            (line["seq"].as_u64(), &line["reason"]),
            (Some(seq), &serde_json::json!("max_attempts"))
        );
        tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .expect("stops promptly")
            .unwrap();
    }

    /// A pending record whose bytes were damaged on disk goes to the dead-letter file with its
    /// raw bytes and the reason; the records after it are delivered, in order.
    #[tokio::test]
    async fn a_damaged_record_is_dead_lettered_and_delivery_goes_on() {
        use std::os::unix::fs::FileExt as _;
        let d = tempfile::tempdir().unwrap();
        let outbox = outbox_in(d.path());
        for i in 1..=3 {
            outbox
                .append(
                    Kind::Pcs,
                    &format!("p{i}"),
                    format!("{{\"n\":{i}}}").as_bytes(),
                )
                .unwrap();
        }
        // Flip a byte of the second record's body, inside the segment.
        let seg = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "seg"))
            .unwrap();
        let bytes = std::fs::read(&seg).unwrap();
        let at = bytes.windows(7).position(|w| w == b"{\"n\":2}").unwrap();
        let frame_at = {
            // The frame starts 8 (header) + 12 (type, seq, kind, id length) + 2 (id) before.
            at - 8 - 12 - 2
        };
        let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
        f.write_all_at(b"X", (at + 5) as u64).unwrap();
        drop(f);

        let (port, seen, server) = scripted(vec![]).await;
        let sender = plain_sender(&outbox, &format!("http://127.0.0.1:{port}"), (5, 20), 3);
        let stats = sender.stats();
        let (tx, rx) = watch::channel(false);
        let task = sender.spawn(rx);
        tokio::time::timeout(Duration::from_secs(10), async {
            while outbox.pending_len() > 0 || stats.snapshot().sent_ok < 2 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the records around the damaged one are delivered");
        let bodies: Vec<String> = seen
            .lock()
            .unwrap()
            .iter()
            .map(|(_, b)| b.clone())
            .collect();
        assert_eq!(bodies, vec!["{\"n\":1}", "{\"n\":3}"]);
        let st = outbox.stats();
        assert_eq!((st.unreadable_total, st.dlq_total, st.pending), (1, 1, 0));
        let dlq = std::fs::read_to_string(outbox.dlq_path()).unwrap();
        let lines: Vec<serde_json::Value> = dlq
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 1, "{dlq}");
        let l = &lines[0];
        assert_eq!((l["seq"].as_u64(), l["id"].as_str()), (Some(2), Some("p2")));
        let reason = l["reason"].as_str().unwrap();
        assert!(
            reason.starts_with(&format!("unreadable: crc mismatch at offset {frame_at}")),
            "{reason}"
        );
        use base64::Engine as _;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(l["raw_base64"].as_str().unwrap())
            .unwrap();
        assert!(
            raw.ends_with(b"{\"n\":X}"),
            "the damaged bytes are kept: {raw:?}"
        );
        tx.send(true).unwrap();
        task.await.unwrap();
        server.abort();
    }
}
