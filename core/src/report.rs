//! `SignalReport`: what a sidecar computed over its windows in one epoch — the window
//! statistics of each signal, the detector findings and the FinOps samples of one pod.
//!
//! It travels beside the PCS (`POST /v1/signals/submit`) and is signed the same way, over the
//! canonical JSON ([`crate::canon`]) of the whole record less `sig`:
//! `message = SHA-256(canonical(record − sig))`, then HMAC-SHA256 or Ed25519 with the PCS keys.
//!
//! **Identity.** `report_id = hex(SHA-256("signals|" + shard_id + "|" + epoch))`: one report per
//! pod and epoch, so a resent report has the same id and the verifier deduplicates it.
//!
//! The record is strict: an unknown field is malformed (it would not be covered by what the
//! receiver recomputes), and every number must be finite.

use crate::canon::{self, CanonError};
use crate::detect::Finding;
use crate::pcs::{KeyRef, Malformed, SignAlg, Signer, Verifier, is_shard_id};
use crate::window::{DriftRisk, WindowSpan};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The `schema` of every signal report.
pub const SCHEMA: &str = "coherence-signals";
/// The `version` of the signal report format.
pub const VERSION: &str = "0.1";

/// One signal's statistics over one window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WindowReport {
    /// Signal name (`cpu`, `latency_p95_ms`, a scraped metric name).
    pub signal: String,
    /// Window span (`5m`).
    pub window: WindowSpan,
    /// Mean over the window.
    pub mean: f64,
    /// Sample standard deviation over the window.
    pub stdev: f64,
    /// `stdev / |mean|` (0 when both are 0).
    pub volatility_index: f64,
    /// Drift risk by the signal's thresholds.
    pub drift_risk: DriftRisk,
    /// Samples in the window.
    pub n: u64,
    /// Exclusive start of the window, ms since the epoch.
    pub window_start_ms: i64,
    /// Inclusive end of the window, ms since the epoch.
    pub window_end_ms: i64,
}

/// One FinOps sample of the pod.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinopsSample {
    /// When, ms since the epoch.
    pub at_ms: i64,
    /// Requests per second.
    pub qps: f64,
    /// p95 latency, ms.
    pub latency_p95_ms: f64,
    /// Cost of the sample's interval, USD.
    pub infra_cost_usd: f64,
}

/// The signed report of one pod for one epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignalReport {
    /// `hex(SHA-256("signals|" + shard_id + "|" + epoch))`.
    pub report_id: String,
    /// Always [`SCHEMA`].
    pub schema: String,
    /// Always [`VERSION`].
    pub version: String,
    /// `<namespace>/<workload>/<pod>`.
    pub shard_id: String,
    /// The sidecar's epoch counter.
    pub epoch: u64,
    /// When the sidecar sent it (RFC 3339).
    pub sent_at: String,
    /// Version of the engine that computed it.
    pub engine_version: String,
    /// Window statistics, one per signal and window.
    #[serde(default)]
    pub windows: Vec<WindowReport>,
    /// Detector findings of the epoch.
    #[serde(default)]
    pub findings: Vec<Finding>,
    /// FinOps samples of the epoch.
    #[serde(default)]
    pub finops: Vec<FinopsSample>,
    /// Base64 signature (empty before signing).
    #[serde(default)]
    pub sig: String,
}

/// `hex(SHA-256("signals|" + shard_id + "|" + epoch))`.
pub fn report_id(shard_id: &str, epoch: u64) -> String {
    hex::encode(Sha256::digest(format!("signals|{shard_id}|{epoch}")))
}

fn malformed(field: impl Into<String>, expected: &str, found: impl Into<String>) -> Malformed {
    Malformed {
        field: field.into(),
        expected: expected.to_owned(),
        found: found.into(),
    }
}

impl SignalReport {
    /// Parses a JSON record; the error names the field (`windows[2].mean`) and what it should be.
    pub fn from_json(text: &str) -> Result<SignalReport, Malformed> {
        let de = &mut serde_json::Deserializer::from_str(text);
        let report: SignalReport = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." {
                "record".to_owned()
            } else {
                path
            };
            malformed(field, "a signal report field", e.inner().to_string())
        })?;
        report.validate()?;
        Ok(report)
    }

    /// Checks what the types do not: schema, version, shard id, finite numbers.
    pub fn validate(&self) -> Result<(), Malformed> {
        if self.schema != SCHEMA {
            return Err(malformed("schema", SCHEMA, format!("{:?}", self.schema)));
        }
        if self.version != VERSION {
            return Err(malformed("version", VERSION, format!("{:?}", self.version)));
        }
        if !is_shard_id(&self.shard_id) {
            return Err(malformed(
                "shard_id",
                "<namespace>/<workload>/<pod>",
                format!("{:?}", self.shard_id),
            ));
        }
        if !(self.report_id.is_empty()
            || self.report_id.len() == 64 && self.report_id.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(malformed(
                "report_id",
                "64 hex digits (or empty before signing)",
                format!("{:?}", self.report_id),
            ));
        }
        for (i, w) in self.windows.iter().enumerate() {
            for (name, v) in [
                ("mean", w.mean),
                ("stdev", w.stdev),
                ("volatilityIndex", w.volatility_index),
            ] {
                if !v.is_finite() {
                    return Err(malformed(
                        format!("windows[{i}].{name}"),
                        "a finite number",
                        v.to_string(),
                    ));
                }
            }
            if w.stdev < 0.0 || w.volatility_index < 0.0 {
                return Err(malformed(
                    format!("windows[{i}].stdev"),
                    "a non-negative stdev and volatilityIndex",
                    format!("{} and {}", w.stdev, w.volatility_index),
                ));
            }
            if w.window_end_ms < w.window_start_ms {
                return Err(malformed(
                    format!("windows[{i}].windowEndMs"),
                    "not before windowStartMs",
                    format!("{} < {}", w.window_end_ms, w.window_start_ms),
                ));
            }
        }
        for (i, f) in self.findings.iter().enumerate() {
            if !(0.0..=1.0).contains(&f.risk) {
                return Err(malformed(
                    format!("findings[{i}].risk"),
                    "a number in [0, 1]",
                    f.risk.to_string(),
                ));
            }
        }
        for (i, s) in self.finops.iter().enumerate() {
            for (name, v) in [
                ("qps", s.qps),
                ("latency_p95_ms", s.latency_p95_ms),
                ("infra_cost_usd", s.infra_cost_usd),
            ] {
                if !v.is_finite() || v < 0.0 {
                    return Err(malformed(
                        format!("finops[{i}].{name}"),
                        "a finite number >= 0",
                        v.to_string(),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The namespace part of `shard_id`.
    pub fn namespace(&self) -> &str {
        self.shard_id.split('/').next().unwrap_or("")
    }

    /// The workload part of `shard_id`.
    pub fn workload(&self) -> &str {
        self.shard_id.split('/').nth(1).unwrap_or("")
    }

    /// The `report_id` this record's shard and epoch give.
    pub fn expected_report_id(&self) -> String {
        report_id(&self.shard_id, self.epoch)
    }

    /// The canonical JSON of the record less `sig`.
    pub fn canonical(&self) -> Result<String, CanonError> {
        let mut v = serde_json::to_value(self).map_err(|e| CanonError::NonFinite {
            path: "$".to_owned(),
            value: e.to_string(),
        })?;
        if let Value::Object(map) = &mut v {
            map.remove("sig");
        }
        canon::canonical_json(&v)
    }

    /// `SHA-256(canonical(record − sig))`.
    pub fn signing_message(&self) -> Result<[u8; 32], CanonError> {
        Ok(Sha256::digest(self.canonical()?.as_bytes()).into())
    }

    /// Sets `report_id` and signs.
    pub fn sign(&mut self, signer: &Signer) -> Result<(), CanonError> {
        self.report_id = self.expected_report_id();
        self.sig = signer.sign_digest(&self.signing_message()?);
        Ok(())
    }

    /// Verifies the signature and `report_id`; `Ok` names the key that accepted it.
    pub fn verify(&self, verifier: &Verifier) -> Result<String, ReportRejection> {
        let message = self.signing_message().map_err(|e| {
            ReportRejection::Malformed(malformed("record", "finite numbers", e.to_string()))
        })?;
        self.finish(verifier.verify_signature(&message, &self.sig))
    }

    /// The rest of [`SignalReport::verify`], given the answer of the signature check on
    /// [`SignalReport::signing_message`]: the signature's verdict, then `report_id`.
    pub fn finish(
        &self,
        sig: Result<(SignAlg, KeyRef), String>,
    ) -> Result<String, ReportRejection> {
        let (_, key) = sig.map_err(|reason| ReportRejection::BadSignature { reason })?;
        let expected = self.expected_report_id();
        if self.report_id != expected {
            return Err(ReportRejection::IdMismatch {
                claimed: self.report_id.clone(),
                recomputed: expected,
            });
        }
        Ok(key.to_string())
    }
}

/// Why a signal report is refused.
#[derive(Debug, Clone, PartialEq, Serialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ReportRejection {
    /// Not the report shape (HTTP 400).
    #[error("malformed record: {0}")]
    Malformed(Malformed),
    /// No configured key accepts the signature (HTTP 401).
    #[error("bad signature: {reason}")]
    BadSignature {
        /// What went wrong.
        reason: String,
    },
    /// `report_id` is not the hash of its shard and epoch (HTTP 400).
    #[error("report_id mismatch: claimed {claimed:?}, recomputed {recomputed}")]
    IdMismatch {
        /// The record's `report_id`.
        claimed: String,
        /// `sha256("signals|" + shard_id + "|" + epoch)`.
        recomputed: String,
    },
}

impl ReportRejection {
    /// The HTTP status of `/v1/signals/submit` for this rejection.
    pub fn http_status(&self) -> u16 {
        match self {
            ReportRejection::BadSignature { .. } => 401,
            _ => 400,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SignalReport {
        SignalReport {
            report_id: String::new(),
            schema: SCHEMA.into(),
            version: VERSION.into(),
            shard_id: "shop/checkout-api/checkout-api-0".into(),
            epoch: 7,
            sent_at: "2026-11-01T00:01:10Z".into(),
            engine_version: crate::ENGINE_VERSION.into(),
            windows: vec![WindowReport {
                signal: "cpu".into(),
                window: "5m".parse().unwrap(),
                mean: 41.25,
                stdev: 3.5,
                volatility_index: 3.5 / 41.25,
                drift_risk: DriftRisk::Medium,
                n: 30,
                window_start_ms: 1_000,
                window_end_ms: 301_000,
            }],
            findings: vec![],
            finops: vec![FinopsSample {
                at_ms: 301_000,
                qps: 120.0,
                latency_p95_ms: 80.0,
                infra_cost_usd: 0.0005,
            }],
            sig: String::new(),
        }
    }

    #[test]
    fn a_window_ending_in_a_multibyte_character_is_malformed_not_a_panic() {
        // The input the fuzzer found (`fuzz/fuzz_targets/signal_report_json.rs`).
        let mut r = serde_json::to_value(sample()).unwrap();
        r["windows"][0]["window"] = serde_json::json!("5\u{333d}");
        let e = SignalReport::from_json(&r.to_string()).unwrap_err();
        assert_eq!(e.field, "windows[0].window", "{e}");
        let crash = "\n{\"windows\" :\t\t[\r  [\" k\", \"[@@@@@@@@@@@@@\u{4e3}\u{311}@3329-\\u333d\", )@@u\"";
        assert!(SignalReport::from_json(crash).is_err());
    }

    #[test]
    fn signed_report_round_trips_and_verifies() {
        let signer = Signer::hmac(b"k1".to_vec());
        let mut r = sample();
        r.sign(&signer).unwrap();
        let text = serde_json::to_string(&r).unwrap();
        let back = SignalReport::from_json(&text).unwrap();
        assert_eq!(back, r);
        let v = Verifier::hmac(vec![b"k0".to_vec(), b"k1".to_vec()]);
        assert_eq!(back.verify(&v).unwrap(), "PCS_HMAC_KEYS[1]");
    }

    #[test]
    fn tampered_value_fails_the_signature() {
        let signer = Signer::hmac(b"k1".to_vec());
        let mut r = sample();
        r.sign(&signer).unwrap();
        r.windows[0].mean = 41.26;
        let err = r.verify(&signer.verifier()).unwrap_err();
        assert_eq!(err.http_status(), 401, "{err}");
    }

    #[test]
    fn wrong_report_id_is_400() {
        let signer = Signer::hmac(b"k1".to_vec());
        let mut r = sample();
        r.report_id = report_id("shop/other/p", 7);
        r.sig = signer.sign_digest(&r.signing_message().unwrap());
        let err = r.verify(&signer.verifier()).unwrap_err();
        assert!(matches!(err, ReportRejection::IdMismatch { .. }), "{err}");
        assert_eq!(err.http_status(), 400);
    }

    #[test]
    fn malformed_names_the_field() {
        let mut v = serde_json::to_value(sample()).unwrap();
        v["windows"][0]["n"] = Value::from("thirty");
        let err = SignalReport::from_json(&v.to_string()).unwrap_err();
        assert_eq!(err.field, "windows[0].n");
        v["windows"][0]["n"] = Value::from(30);
        v["extra"] = Value::from(1);
        let err = SignalReport::from_json(&v.to_string()).unwrap_err();
        assert!(err.found.contains("extra"), "{err}");
        let mut bad = sample();
        bad.shard_id = "no-slashes".into();
        let err = SignalReport::from_json(&serde_json::to_string(&bad).unwrap()).unwrap_err();
        assert_eq!(err.field, "shard_id");
    }
}
