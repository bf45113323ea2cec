//! HTTP plumbing shared by the network sources: the client (rustls with the `ring` provider,
//! roots only from a configured CA file), bounded body reads, retries with exponential
//! backoff and full jitter, and [`Secret`].

use super::PollError;
use crate::sample::SourceStats;
use rand::Rng;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// A credential read from a file or the environment; its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a credential.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The credential, for a request header only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A client with `timeout` per request. Trust comes only from `ca` (a PEM bundle); without
/// it https requests fail, plain http works.
pub(crate) fn client(timeout: Duration, ca: Option<&Path>) -> Result<reqwest::Client, PollError> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = ca {
        let certs = CertificateDer::pem_file_iter(ca)
            .map_err(|e| PollError::new("ca", format!("ca {}: cannot read: {e}", ca.display())))?;
        for cert in certs {
            let cert = cert.map_err(|e| {
                PollError::new(
                    "ca",
                    format!("ca {}: not PEM certificates: {e}", ca.display()),
                )
            })?;
            roots.add(cert).map_err(|e| {
                PollError::new("ca", format!("ca {}: bad certificate: {e}", ca.display()))
            })?;
        }
        if roots.is_empty() {
            return Err(PollError::new(
                "ca",
                format!("ca {}: expected PEM certificates, found none", ca.display()),
            ));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PollError::new("tls", format!("TLS configuration: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(timeout)
        .connect_timeout(timeout)
        .pool_max_idle_per_host(1)
        .build()
        .map_err(|e| PollError::new("client", format!("HTTP client: {e}")))
}

/// How one request failed.
#[derive(Debug)]
pub(crate) struct FetchError {
    pub(crate) error: PollError,
    /// Worth retrying: a network error or a 5xx.
    pub(crate) retryable: bool,
}

/// A successful (2xx) answer.
#[derive(Debug)]
pub(crate) struct Fetched {
    pub(crate) body: Vec<u8>,
}

fn reason_of(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else if e.is_body() || e.is_decode() {
        "body"
    } else {
        "request"
    }
}

/// Sends `req` once and reads at most `limit` bytes of a 2xx body.
pub(crate) async fn fetch_once(
    req: reqwest::RequestBuilder,
    limit: usize,
) -> Result<Fetched, FetchError> {
    let net = |e: reqwest::Error| FetchError {
        // Without the URL: it may carry a query with credentials.
        error: PollError::new(reason_of(&e), e.without_url().to_string()),
        retryable: true,
    };
    let mut resp = req.send().await.map_err(net)?;
    let status = resp.status();
    if !status.is_success() {
        // A short excerpt of the answer helps (Datadog explains its 4xx in the body).
        let mut excerpt = Vec::new();
        while let Ok(Some(chunk)) = resp.chunk().await {
            excerpt.extend_from_slice(&chunk);
            if excerpt.len() >= 512 {
                break;
            }
        }
        excerpt.truncate(512);
        let text = String::from_utf8_lossy(&excerpt);
        return Err(FetchError {
            error: PollError::new(
                format!("status_{}", status.as_u16()),
                format!("HTTP {status}: {}", text.trim()),
            ),
            retryable: status.is_server_error(),
        });
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(net)? {
        if body.len() + chunk.len() > limit {
            return Err(FetchError {
                error: PollError::new("too_large", format!("answer larger than {limit} bytes")),
                retryable: false,
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Fetched { body })
}

/// Retries: `retries` more attempts after the first on network errors and 5xx (never on
/// 4xx), sleeping a uniformly random time in `[0, min(cap, base·2^k)]` before retry `k`
/// (exponential backoff with full jitter). Every failed attempt is recorded in `stats` as a
/// poll error with its reason; the last error is returned when all attempts failed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Retry {
    pub(crate) retries: u32,
    pub(crate) base: Duration,
    pub(crate) cap: Duration,
}

impl Retry {
    pub(crate) fn backoff(&self, k: u32) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32.checked_shl(k.min(20)).unwrap_or(u32::MAX))
            .min(self.cap);
        let ms = u64::try_from(exp.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rand::thread_rng().gen_range(0..=ms))
    }

    /// Runs `make()` → [`fetch_once`] with retries.
    pub(crate) async fn fetch(
        &self,
        stats: &SourceStats,
        limit: usize,
        make: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<Fetched, PollError> {
        let mut k = 0;
        loop {
            match fetch_once(make(), limit).await {
                Ok(f) => return Ok(f),
                Err(e) => {
                    stats.poll_error(&e.error.reason, e.error.message.clone());
                    if !e.retryable || k >= self.retries {
                        return Err(e.error);
                    }
                    tokio::time::sleep(self.backoff(k)).await;
                    k += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_jittered_below_the_exponential_cap() {
        let r = Retry {
            retries: 3,
            base: Duration::from_millis(100),
            cap: Duration::from_millis(1000),
        };
        for _ in 0..200 {
            assert!(r.backoff(0) <= Duration::from_millis(100));
            assert!(r.backoff(2) <= Duration::from_millis(400));
            assert!(r.backoff(10) <= Duration::from_millis(1000));
            assert!(r.backoff(u32::MAX) <= Duration::from_millis(1000));
        }
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
        assert_eq!(s.expose(), "hunter2");
    }
}
