//! How the controllers read the verifier: one workload's summary
//! (`GET /v1/workloads/{namespace}/{workload}`, design §6). The trait lets tests and the
//! benchmark answer without a network; [`HttpVerifier`] is the mTLS client of `run`.

use crate::Error;
use crate::verifier::WorkloadSummary;
use futures::future::BoxFuture;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Reads the verifier's workload summaries.
pub trait VerifierApi: Send + Sync {
    /// The summary of `namespace/workload`; `None` when the verifier has no record of it.
    fn workload<'a>(
        &'a self,
        namespace: &'a str,
        workload: &'a str,
    ) -> BoxFuture<'a, Result<Option<WorkloadSummary>, Error>>;
}

/// The verifier over HTTPS with a client certificate (or plain HTTP for development).
#[derive(Debug, Clone)]
pub struct HttpVerifier {
    client: coherence_verifier::client::Client,
}

impl HttpVerifier {
    /// A client of `endpoint`; an `https://` endpoint needs `tls`.
    pub fn new(endpoint: &str, tls: Option<Arc<rustls::ClientConfig>>) -> Result<Self, Error> {
        let client = coherence_verifier::client::Client::new(endpoint, tls)
            .map_err(|e| Error::Verifier(e.to_string()))?;
        Ok(Self { client })
    }
}

/// A path segment with the characters a Kubernetes name can hold passed through, others
/// percent-encoded (names are DNS labels, so this is belt and braces).
fn segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

impl VerifierApi for HttpVerifier {
    fn workload<'a>(
        &'a self,
        namespace: &'a str,
        workload: &'a str,
    ) -> BoxFuture<'a, Result<Option<WorkloadSummary>, Error>> {
        Box::pin(async move {
            let path = format!("/v1/workloads/{}/{}", segment(namespace), segment(workload));
            let r = self
                .client
                .get(&path)
                .await
                .map_err(|e| Error::Verifier(e.to_string()))?;
            match r.status {
                404 => Ok(None),
                s if (200..300).contains(&s) => {
                    let v: serde_json::Value = serde_json::from_slice(&r.body)
                        .map_err(|e| Error::Verifier(format!("GET {path}: body: {e}")))?;
                    WorkloadSummary::from_json(&v).map(Some)
                }
                s => Err(Error::Verifier(format!(
                    "GET {path}: HTTP {s}: {}",
                    r.text().chars().take(200).collect::<String>()
                ))),
            }
        })
    }
}

/// A verifier that answers from memory: summaries by `namespace/workload`, or an outage.
#[derive(Debug, Default)]
pub struct StaticVerifier {
    summaries: Mutex<HashMap<(String, String), WorkloadSummary>>,
    outage: Mutex<Option<String>>,
}

impl StaticVerifier {
    /// An empty verifier (every workload unknown).
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the summary of `summary.namespace/summary.workload`.
    pub fn set(&self, summary: WorkloadSummary) {
        self.summaries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                (summary.namespace.clone(), summary.workload.clone()),
                summary,
            );
    }

    /// Makes every read fail with `reason` (`None` ends the outage).
    pub fn set_outage(&self, reason: Option<&str>) {
        *self.outage.lock().unwrap_or_else(|e| e.into_inner()) = reason.map(str::to_string);
    }
}

impl VerifierApi for StaticVerifier {
    fn workload<'a>(
        &'a self,
        namespace: &'a str,
        workload: &'a str,
    ) -> BoxFuture<'a, Result<Option<WorkloadSummary>, Error>> {
        let out = match self
            .outage
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            Some(reason) => Err(Error::Verifier(reason)),
            None => Ok(self
                .summaries
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&(namespace.to_string(), workload.to_string()))
                .cloned()),
        };
        Box::pin(async move { out })
    }
}
