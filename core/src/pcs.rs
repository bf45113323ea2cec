//! Proof-of-Computation Summary (PCS), schema `fractal-lba-kakeya` version `0.1`.
//!
//! A PCS states what a sidecar computed over one window of one pod: the box counts `N_j`, the
//! dimension estimate `D_hat`, the coherence `coh_star`, the compression ratio `r`, the regime
//! and budget that follow from them, and the Merkle root of the window's events. It is signed
//! so a verifier can tell who made it and recheck what can be rechecked.
//!
//! **Identity.** `pcs_id = hex(SHA-256(merkle_root + "|" + epoch + "|" + shard_id))`.
//!
//! **Signature.** The subset `{pcs_id, merkle_root, epoch, shard_id, D_hat, coh_star, r,
//! budget}` is written as canonical JSON ([`crate::canon`]: sorted keys, no spaces, floats as
//! Python's `repr(round(x, 9))`); `message = SHA-256(canonical)`. `hmac` signs the 32-byte
//! message with HMAC-SHA256, `ed25519` with Ed25519 (the message itself, not prehashed); `sig`
//! is the standard base64 of the tag or signature. The two algorithms' signatures differ in
//! length (32 and 64 bytes), so a record never needs to say which one it uses.
//!
//! **Verification** ([`Verifier::verify`]) yields a [`Report`]:
//! - *rejected* (HTTP 400/401): a malformed record, a signature no configured key accepts, or a
//!   `pcs_id` that is not the hash of its inputs;
//! - *escalated* (HTTP 202): signed and well-formed, but a recomputation disagrees — `D_hat` vs
//!   the Theil–Sen slope of `scales`/`N_j` (tolerance `tolD = 0.15`), `coh_star` outside
//!   `[0, 1 + tolCoh]` (`tolCoh = 0.05`), `budget` vs the budget formula applied to the
//!   record's own `r`, `D_hat` and `coh_star` (absolute tolerance 1e-6, after clamping to
//!   [0, 1]; the formula is deterministic, so only float noise may differ), or `regime` vs the
//!   thresholds applied to the record's own `coh_star` and `D_hat`. Using the claimed rather
//!   than the recomputed `D_hat` for budget and regime reports a wrong `D_hat` once, as a `D_hat`
//!   finding, instead of three times;
//! - *accepted* (HTTP 200) otherwise.
//!
//! `r`, `coh_star`, `v_star` and the Merkle root are not recomputed: the window itself does
//! not travel with the record.
//!
//! **Keys from the environment** ([`KeyEnv`]): `PCS_SIGN_ALG` (`hmac` | `ed25519`, default
//! `hmac`), `PCS_HMAC_KEY` (the key is the UTF-8 bytes of the value), `PCS_HMAC_KEYS` (comma
//! list of further verification keys, entries trimmed), `PCS_ED25519_KEY_B64` (base64 of the
//! 32-byte seed or the 64-byte seed ‖ public key), `PCS_ED25519_PUB_B64` (comma list of base64
//! 32-byte public keys). Empty values count as unset. A verifier accepts a signature if any key
//! of the configured algorithm accepts it, which is how keys are rotated.

use crate::canon::{self, CanonError};
use crate::merkle;
use crate::signals::{self, BudgetParams, CohParams, Regime, RegimeThresholds, SignalError};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
use curve25519_dalek::edwards::{CompressedEdwardsY, VartimeEdwardsPrecomputation};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{IsIdentity, VartimePrecomputedMultiscalarMul};
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use hmac::{Hmac, Mac};
use serde::ser::{SerializeMap, SerializeStruct};
use serde::{Serialize, Serializer};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256, Sha512};
use std::fmt;
use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};
use thiserror::Error;

/// The `schema` of every PCS.
pub const SCHEMA: &str = "fractal-lba-kakeya";
/// The `version` of the PCS format.
pub const VERSION: &str = "0.1";

type HmacSha256 = Hmac<Sha256>;

/// Fault-tolerance bookkeeping of the sending sidecar (`ft`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Ft {
    /// Sequence number in the sidecar's outbox.
    pub outbox_seq: u64,
    /// Whether the sidecar ran degraded (e.g. a source was missing).
    pub degraded: bool,
    /// Fallbacks taken while computing the record.
    pub fallbacks: Vec<String>,
    /// Estimated clock skew of the sidecar, in milliseconds.
    pub clock_skew_ms: i64,
}

/// One Proof-of-Computation Summary.
#[derive(Debug, Clone, PartialEq)]
pub struct Pcs {
    /// `hex(SHA-256(merkle_root|epoch|shard_id))`; empty before it is computed.
    pub pcs_id: String,
    /// Always [`SCHEMA`].
    pub schema: String,
    /// Always [`VERSION`].
    pub version: String,
    /// `<namespace>/<workload>/<pod>`.
    pub shard_id: String,
    /// Window number.
    pub epoch: u64,
    /// Delivery attempt.
    pub attempt: u64,
    /// RFC 3339 time of sending.
    pub sent_at: String,
    /// Seed of the projection directions of coh★.
    pub seed: u64,
    /// Box-counting scales, strictly increasing.
    pub scales: Vec<u32>,
    /// Box counts, one per scale, in the order of `scales` (`N_j` on the wire).
    pub n_j: Vec<u64>,
    /// coh★ (`coh_star`).
    pub coh_star: f64,
    /// The direction attaining coh★ (`v_star`).
    pub v_star: [f64; 3],
    /// D̂ (`D_hat`).
    pub d_hat: f64,
    /// Compression ratio.
    pub r: f64,
    /// Claimed regime.
    pub regime: Regime,
    /// Claimed budget in [0, 1].
    pub budget: f64,
    /// Hex Merkle root of the window's events.
    pub merkle_root: String,
    /// Base64 signature; empty when unsigned (and then left out of the JSON).
    pub sig: String,
    /// Fault-tolerance bookkeeping.
    pub ft: Ft,
}

/// A record that does not have the PCS shape: which field, and what it should have been.
#[derive(Debug, Clone, PartialEq, Eq, Error, Serialize)]
#[error("{field}: expected {expected}, found {found}")]
pub struct Malformed {
    /// The field (`N_j`, `ft.outbox_seq`; `record` for the document as a whole).
    pub field: String,
    /// What the field must be.
    pub expected: String,
    /// What was there.
    pub found: String,
}

impl Malformed {
    /// A malformed field: its name, what was expected and what was there.
    pub fn new(field: &str, expected: &str, found: impl Into<String>) -> Self {
        Self {
            field: field.to_owned(),
            expected: expected.to_owned(),
            found: found.into(),
        }
    }
}

const E_PCS_ID: &str = "64 hex digits (or empty before signing)";
const E_SHARD: &str = "<namespace>/<workload>/<pod>";
const E_UINT: &str = "a non-negative integer";
const E_NUM: &str = "a number";
const E_SENT_AT: &str = "an RFC 3339 timestamp";
const E_SCALES: &str = "a strictly increasing array of at least 2 integers >= 1";
const E_NJ: &str = "an object of scale -> positive count with one entry per scale";
const E_VSTAR: &str = "an array of 3 numbers";
const E_REGIME: &str = "one of sticky, mixed, non_sticky";
const E_ROOT: &str = "64 hex digits";
const E_SIG: &str = "a base64 string";

fn describe(v: Option<&Value>) -> String {
    match v {
        None => "nothing (the field is missing)".to_owned(),
        Some(Value::Null) => "null".to_owned(),
        Some(Value::Bool(b)) => format!("{b}"),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::String(s)) => {
            let short: String = s.chars().take(40).collect();
            let more = if s.chars().count() > 40 { "…" } else { "" };
            format!("{short:?}{more}")
        }
        Some(Value::Array(a)) => format!("an array of {} items", a.len()),
        Some(Value::Object(_)) => "an object".to_owned(),
    }
}

fn get_str<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    expected: &str,
) -> Result<&'a str, Malformed> {
    let v = obj.get(key);
    v.and_then(Value::as_str)
        .ok_or_else(|| Malformed::new(key, expected, describe(v)))
}

fn get_u64(obj: &Map<String, Value>, key: &str, field: &str) -> Result<u64, Malformed> {
    let v = obj.get(key);
    v.and_then(Value::as_u64)
        .ok_or_else(|| Malformed::new(field, E_UINT, describe(v)))
}

fn get_f64(obj: &Map<String, Value>, key: &str) -> Result<f64, Malformed> {
    let v = obj.get(key);
    v.and_then(Value::as_f64)
        .filter(|x| x.is_finite())
        .ok_or_else(|| Malformed::new(key, E_NUM, describe(v)))
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Whether `s` has the `<namespace>/<workload>/<pod>` shape (three non-empty parts).
pub fn is_shard_id(s: &str) -> bool {
    let parts: Vec<&str> = s.split('/').collect();
    parts.len() == 3 && parts.iter().all(|p| !p.is_empty() && p.trim() == *p)
}

/// `hex(SHA-256(merkle_root + "|" + epoch + "|" + shard_id))`.
pub fn pcs_id(merkle_root: &str, epoch: u64, shard_id: &str) -> String {
    let mut h = Sha256::new();
    h.update(merkle_root.as_bytes());
    h.update(b"|");
    h.update(epoch.to_string().as_bytes());
    h.update(b"|");
    h.update(shard_id.as_bytes());
    hex::encode(h.finalize())
}

struct NjMap<'a>(&'a [u32], &'a [u64]);

impl Serialize for NjMap<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (scale, count) in self.0.iter().zip(self.1) {
            m.serialize_entry(&scale.to_string(), count)?;
        }
        m.end()
    }
}

impl Serialize for Pcs {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let n = if self.sig.is_empty() { 18 } else { 19 };
        let mut st = s.serialize_struct("Pcs", n)?;
        st.serialize_field("pcs_id", &self.pcs_id)?;
        st.serialize_field("schema", &self.schema)?;
        st.serialize_field("version", &self.version)?;
        st.serialize_field("shard_id", &self.shard_id)?;
        st.serialize_field("epoch", &self.epoch)?;
        st.serialize_field("attempt", &self.attempt)?;
        st.serialize_field("sent_at", &self.sent_at)?;
        st.serialize_field("seed", &self.seed)?;
        st.serialize_field("scales", &self.scales)?;
        st.serialize_field("N_j", &NjMap(&self.scales, &self.n_j))?;
        st.serialize_field("coh_star", &self.coh_star)?;
        st.serialize_field("v_star", &self.v_star)?;
        st.serialize_field("D_hat", &self.d_hat)?;
        st.serialize_field("r", &self.r)?;
        st.serialize_field("regime", &self.regime)?;
        st.serialize_field("budget", &self.budget)?;
        st.serialize_field("merkle_root", &self.merkle_root)?;
        if !self.sig.is_empty() {
            st.serialize_field("sig", &self.sig)?;
        }
        st.serialize_field("ft", &self.ft)?;
        st.end()
    }
}

impl Pcs {
    /// Parses and checks a PCS JSON document; unknown fields are ignored, `sig` and `pcs_id`
    /// may be missing (an unsigned record) and a missing `ft` means the defaults.
    pub fn from_json(text: &str) -> Result<Pcs, Malformed> {
        // A well-formed record is read straight into its fields; anything the typed reading
        // does not take is read again as a document, whose checks name the field at fault.
        if let Some(pcs) = wire::read(text) {
            return Ok(pcs);
        }
        let v: Value = serde_json::from_str(text).map_err(|e| {
            Malformed::new("record", "a JSON document", format!("invalid JSON ({e})"))
        })?;
        Pcs::from_value(&v)
    }

    /// Like [`Pcs::from_json`], from an already parsed document.
    pub fn from_value(v: &Value) -> Result<Pcs, Malformed> {
        let obj = v
            .as_object()
            .ok_or_else(|| Malformed::new("record", "a JSON object", describe(Some(v))))?;
        let pcs_id = match obj.get("pcs_id") {
            None | Some(Value::Null) => String::new(),
            Some(_) => get_str(obj, "pcs_id", E_PCS_ID)?.to_owned(),
        };
        let scales_v = obj.get("scales");
        let scales: Vec<u32> = scales_v
            .and_then(Value::as_array)
            .and_then(|a| {
                a.iter()
                    .map(|x| x.as_u64().and_then(|u| u32::try_from(u).ok()))
                    .collect::<Option<Vec<u32>>>()
            })
            .ok_or_else(|| Malformed::new("scales", E_SCALES, describe(scales_v)))?;
        let nj_v = obj.get("N_j");
        let nj_obj = nj_v
            .and_then(Value::as_object)
            .ok_or_else(|| Malformed::new("N_j", E_NJ, describe(nj_v)))?;
        if nj_obj.len() != scales.len() {
            return Err(Malformed::new(
                "N_j",
                E_NJ,
                format!("{} entries for {} scales", nj_obj.len(), scales.len()),
            ));
        }
        let mut n_j = Vec::with_capacity(scales.len());
        for s in &scales {
            let key = s.to_string();
            let c = nj_obj.get(&key);
            match c.and_then(Value::as_u64) {
                Some(count) => n_j.push(count),
                None => {
                    return Err(Malformed::new(
                        "N_j",
                        E_NJ,
                        format!("{} for scale {key}", describe(c)),
                    ));
                }
            }
        }
        let vs = obj.get("v_star");
        let v_star = vs
            .and_then(Value::as_array)
            .filter(|a| a.len() == 3)
            .and_then(|a| {
                let f: Option<Vec<f64>> = a
                    .iter()
                    .map(|x| x.as_f64().filter(|f| f.is_finite()))
                    .collect();
                f.map(|f| [f[0], f[1], f[2]])
            })
            .ok_or_else(|| Malformed::new("v_star", E_VSTAR, describe(vs)))?;
        let regime_s = get_str(obj, "regime", E_REGIME)?;
        let regime = Regime::parse(regime_s)
            .ok_or_else(|| Malformed::new("regime", E_REGIME, describe(obj.get("regime"))))?;
        let sig = match obj.get("sig") {
            None | Some(Value::Null) => String::new(),
            Some(_) => get_str(obj, "sig", E_SIG)?.to_owned(),
        };
        let ft = match obj.get("ft") {
            None | Some(Value::Null) => Ft::default(),
            Some(Value::Object(ft)) => parse_ft(ft)?,
            Some(other) => {
                return Err(Malformed::new(
                    "ft",
                    "an object {outbox_seq, degraded, fallbacks, clock_skew_ms}",
                    describe(Some(other)),
                ));
            }
        };
        let pcs = Pcs {
            pcs_id,
            schema: get_str(obj, "schema", "\"fractal-lba-kakeya\"")?.to_owned(),
            version: get_str(obj, "version", "\"0.1\"")?.to_owned(),
            shard_id: get_str(obj, "shard_id", E_SHARD)?.to_owned(),
            epoch: get_u64(obj, "epoch", "epoch")?,
            attempt: get_u64(obj, "attempt", "attempt")?,
            sent_at: get_str(obj, "sent_at", E_SENT_AT)?.to_owned(),
            seed: get_u64(obj, "seed", "seed")?,
            scales,
            n_j,
            coh_star: get_f64(obj, "coh_star")?,
            v_star,
            d_hat: get_f64(obj, "D_hat")?,
            r: get_f64(obj, "r")?,
            regime,
            budget: get_f64(obj, "budget")?,
            merkle_root: get_str(obj, "merkle_root", E_ROOT)?.to_owned(),
            sig,
            ft,
        };
        pcs.validate()?;
        Ok(pcs)
    }

    /// Checks the invariants a parsed record always satisfies (for records built in code).
    pub fn validate(&self) -> Result<(), Malformed> {
        if !(self.pcs_id.is_empty() || is_hex64(&self.pcs_id)) {
            return Err(Malformed::new(
                "pcs_id",
                E_PCS_ID,
                format!("{:?}", self.pcs_id),
            ));
        }
        if self.schema != SCHEMA {
            return Err(Malformed::new(
                "schema",
                "\"fractal-lba-kakeya\"",
                format!("{:?}", self.schema),
            ));
        }
        if self.version != VERSION {
            return Err(Malformed::new(
                "version",
                "\"0.1\"",
                format!("{:?}", self.version),
            ));
        }
        if !is_shard_id(&self.shard_id) {
            return Err(Malformed::new(
                "shard_id",
                E_SHARD,
                format!("{:?}", self.shard_id),
            ));
        }
        if time::OffsetDateTime::parse(
            &self.sent_at,
            &time::format_description::well_known::Rfc3339,
        )
        .is_err()
        {
            return Err(Malformed::new(
                "sent_at",
                E_SENT_AT,
                format!("{:?}", self.sent_at),
            ));
        }
        let increasing = self.scales.windows(2).all(|w| w[0] < w[1]);
        if self.scales.len() < 2 || !increasing || self.scales.first().is_some_and(|s| *s == 0) {
            return Err(Malformed::new(
                "scales",
                E_SCALES,
                format!("{:?}", self.scales),
            ));
        }
        if self.n_j.len() != self.scales.len() {
            return Err(Malformed::new(
                "N_j",
                E_NJ,
                format!(
                    "{} entries for {} scales",
                    self.n_j.len(),
                    self.scales.len()
                ),
            ));
        }
        if let Some((s, c)) = self.scales.iter().zip(&self.n_j).find(|(_, c)| **c == 0) {
            return Err(Malformed::new("N_j", E_NJ, format!("{c} for scale {s}")));
        }
        for (name, x) in [
            ("coh_star", self.coh_star),
            ("D_hat", self.d_hat),
            ("r", self.r),
            ("budget", self.budget),
        ] {
            if !x.is_finite() {
                return Err(Malformed::new(name, E_NUM, x.to_string()));
            }
        }
        if self.v_star.iter().any(|x| !x.is_finite()) {
            return Err(Malformed::new(
                "v_star",
                E_VSTAR,
                format!("{:?}", self.v_star),
            ));
        }
        if !is_hex64(&self.merkle_root) {
            return Err(Malformed::new(
                "merkle_root",
                E_ROOT,
                format!("{:?}", self.merkle_root),
            ));
        }
        Ok(())
    }

    /// The record as compact JSON (fields in the order of the design, `N_j` in scale order).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The record as indented JSON.
    pub fn to_json_pretty(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// The `pcs_id` this record's `merkle_root`, `epoch` and `shard_id` hash to.
    pub fn expected_pcs_id(&self) -> String {
        pcs_id(&self.merkle_root, self.epoch, &self.shard_id)
    }

    /// The canonical JSON of the signed subset.
    pub fn canonical_subset(&self) -> Result<String, CanonError> {
        // The canonical JSON of the eight signed fields, written in their sorted key order
        // (`D_hat` sorts first: upper case precedes lower case). `canonical_subset_of_map` in
        // the tests builds the same text through the general canonicaliser.
        let mut out = String::with_capacity(96 + self.merkle_root.len() + 2 * self.shard_id.len());
        out.push_str("{\"D_hat\":");
        canon::write_float(&mut out, self.d_hat, "$.D_hat")?;
        out.push_str(",\"budget\":");
        canon::write_float(&mut out, self.budget, "$.budget")?;
        out.push_str(",\"coh_star\":");
        canon::write_float(&mut out, self.coh_star, "$.coh_star")?;
        let _ = write!(out, ",\"epoch\":{}", self.epoch);
        out.push_str(",\"merkle_root\":");
        canon::write_str(&mut out, &self.merkle_root);
        out.push_str(",\"pcs_id\":");
        canon::write_str(&mut out, &self.pcs_id);
        out.push_str(",\"r\":");
        canon::write_float(&mut out, self.r, "$.r")?;
        out.push_str(",\"shard_id\":");
        canon::write_str(&mut out, &self.shard_id);
        out.push('}');
        Ok(out)
    }

    /// `SHA-256` of [`Pcs::canonical_subset`]: the bytes that are signed.
    pub fn signing_message(&self) -> Result<[u8; 32], CanonError> {
        Ok(Sha256::digest(self.canonical_subset()?.as_bytes()).into())
    }

    /// D̂ recomputed from `scales` and `N_j`.
    pub fn recompute_d_hat(&self) -> Result<f64, SignalError> {
        signals::d_hat(&self.scales, &self.n_j)
    }
}

/// The typed reading of a PCS document: exactly the records [`Pcs::from_value`] accepts, read
/// without building a `serde_json::Value`, or `None` (then the document path decides and
/// explains). Anything not plainly valid is `None`: a repeated key (where the document keeps the
/// last), a number of the wrong kind, a missing field.
mod wire {
    use super::{Ft, Pcs, Regime};
    use serde::Deserialize;
    use std::borrow::Cow;
    use std::fmt::Write as _;

    #[derive(Deserialize)]
    struct Record<'a> {
        #[serde(borrow)]
        pcs_id: Option<Cow<'a, str>>,
        #[serde(borrow)]
        schema: Cow<'a, str>,
        #[serde(borrow)]
        version: Cow<'a, str>,
        #[serde(borrow)]
        shard_id: Cow<'a, str>,
        epoch: u64,
        attempt: u64,
        #[serde(borrow)]
        sent_at: Cow<'a, str>,
        seed: u64,
        scales: Vec<u32>,
        #[serde(rename = "N_j", borrow, deserialize_with = "pairs")]
        n_j: Vec<(Cow<'a, str>, u64)>,
        coh_star: f64,
        v_star: Vec<f64>,
        #[serde(rename = "D_hat")]
        d_hat: f64,
        r: f64,
        #[serde(borrow)]
        regime: Cow<'a, str>,
        budget: f64,
        #[serde(borrow)]
        merkle_root: Cow<'a, str>,
        #[serde(borrow)]
        sig: Option<Cow<'a, str>>,
        #[serde(borrow)]
        ft: Option<WireFt<'a>>,
    }

    #[derive(Deserialize)]
    struct WireFt<'a> {
        outbox_seq: u64,
        degraded: bool,
        #[serde(borrow)]
        fallbacks: Vec<Cow<'a, str>>,
        clock_skew_ms: i64,
    }

    /// `N_j` as its pairs in document order, so a repeated scale is seen (the document path
    /// keeps the last one of a repeated key).
    fn pairs<'de, D>(d: D) -> Result<Vec<(Cow<'de, str>, u64)>, D::Error>
    where
        D: serde::Deserializer<'de>,
    {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Vec<(Cow<'de, str>, u64)>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of counts")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = m.next_entry::<Cow<'de, str>, u64>()? {
                    out.push((k, v));
                }
                Ok(out)
            }
        }
        d.deserialize_map(V)
    }

    pub(super) fn read(text: &str) -> Option<Pcs> {
        // A struct also reads from an array; the document path wants an object.
        if !text.trim_start().starts_with('{') {
            return None;
        }
        let w: Record<'_> = serde_json::from_str(text).ok()?;
        if w.n_j.len() != w.scales.len() {
            return None;
        }
        let mut n_j = Vec::with_capacity(w.scales.len());
        let mut key = String::new();
        for s in &w.scales {
            // As many keys as scales, and each scale's key found exactly once: no key repeats
            // and none is left over.
            key.clear();
            let _ = write!(key, "{s}");
            let mut found = w.n_j.iter().filter(|(k, _)| **k == *key);
            let (_, count) = found.next()?;
            if found.next().is_some() {
                return None;
            }
            n_j.push(*count);
        }
        let v_star: [f64; 3] = w.v_star.as_slice().try_into().ok()?;
        let pcs = Pcs {
            pcs_id: w.pcs_id.map(Cow::into_owned).unwrap_or_default(),
            schema: w.schema.into_owned(),
            version: w.version.into_owned(),
            shard_id: w.shard_id.into_owned(),
            epoch: w.epoch,
            attempt: w.attempt,
            sent_at: w.sent_at.into_owned(),
            seed: w.seed,
            scales: w.scales,
            n_j,
            coh_star: w.coh_star,
            v_star,
            d_hat: w.d_hat,
            r: w.r,
            regime: Regime::parse(&w.regime)?,
            budget: w.budget,
            merkle_root: w.merkle_root.into_owned(),
            sig: w.sig.map(Cow::into_owned).unwrap_or_default(),
            ft: w
                .ft
                .map(|f| Ft {
                    outbox_seq: f.outbox_seq,
                    degraded: f.degraded,
                    fallbacks: f.fallbacks.into_iter().map(Cow::into_owned).collect(),
                    clock_skew_ms: f.clock_skew_ms,
                })
                .unwrap_or_default(),
        };
        pcs.validate().ok()?;
        Some(pcs)
    }
}

fn parse_ft(ft: &Map<String, Value>) -> Result<Ft, Malformed> {
    let fb = ft.get("fallbacks");
    let fallbacks = fb
        .and_then(Value::as_array)
        .and_then(|a| {
            a.iter()
                .map(|x| x.as_str().map(str::to_owned))
                .collect::<Option<Vec<String>>>()
        })
        .ok_or_else(|| Malformed::new("ft.fallbacks", "an array of strings", describe(fb)))?;
    let degraded_v = ft.get("degraded");
    let cs = ft.get("clock_skew_ms");
    Ok(Ft {
        outbox_seq: get_u64(ft, "outbox_seq", "ft.outbox_seq")?,
        degraded: degraded_v
            .and_then(Value::as_bool)
            .ok_or_else(|| Malformed::new("ft.degraded", "true or false", describe(degraded_v)))?,
        fallbacks,
        clock_skew_ms: cs
            .and_then(Value::as_i64)
            .ok_or_else(|| Malformed::new("ft.clock_skew_ms", "an integer", describe(cs)))?,
    })
}

// ---------------------------------------------------------------------------------------------
// Keys

/// A signature algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SignAlg {
    /// HMAC-SHA256 with a shared key.
    Hmac,
    /// Ed25519.
    Ed25519,
}

impl SignAlg {
    /// The name used in `PCS_SIGN_ALG`.
    pub fn as_str(self) -> &'static str {
        match self {
            SignAlg::Hmac => "hmac",
            SignAlg::Ed25519 => "ed25519",
        }
    }

    /// Parses `PCS_SIGN_ALG`: unset or empty is `hmac`.
    pub fn from_env_value(v: Option<&str>) -> Result<Self, KeyError> {
        match v.map(str::trim) {
            None | Some("") | Some("hmac") => Ok(SignAlg::Hmac),
            Some("ed25519") => Ok(SignAlg::Ed25519),
            Some(other) => Err(KeyError::new(
                "PCS_SIGN_ALG",
                format!("hmac or ed25519, found {other:?}"),
            )),
        }
    }
}

impl fmt::Display for SignAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A key setting that cannot be used: the variable and what it must hold.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{var}: expected {expected}")]
pub struct KeyError {
    /// The environment variable (or variables).
    pub var: &'static str,
    /// What it must hold, and what was wrong.
    pub expected: String,
}

impl KeyError {
    fn new(var: &'static str, expected: impl Into<String>) -> Self {
        Self {
            var,
            expected: expected.into(),
        }
    }
}

/// The values of the key variables, as read by the caller (core never reads the environment).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyEnv {
    /// `PCS_SIGN_ALG`.
    pub sign_alg: Option<String>,
    /// `PCS_HMAC_KEY`.
    pub hmac_key: Option<String>,
    /// `PCS_HMAC_KEYS`.
    pub hmac_keys: Option<String>,
    /// `PCS_ED25519_KEY_B64`.
    pub ed25519_key_b64: Option<String>,
    /// `PCS_ED25519_PUB_B64`.
    pub ed25519_pub_b64: Option<String>,
}

impl KeyEnv {
    /// Reads the variables through `lookup` (e.g. `|k| std::env::var(k).ok()`).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        Self {
            sign_alg: lookup("PCS_SIGN_ALG"),
            hmac_key: lookup("PCS_HMAC_KEY"),
            hmac_keys: lookup("PCS_HMAC_KEYS"),
            ed25519_key_b64: lookup("PCS_ED25519_KEY_B64"),
            ed25519_pub_b64: lookup("PCS_ED25519_PUB_B64"),
        }
    }

    fn alg(&self) -> Result<SignAlg, KeyError> {
        SignAlg::from_env_value(self.sign_alg.as_deref())
    }
}

fn non_empty(v: &Option<String>) -> Option<&str> {
    v.as_deref().filter(|s| !s.is_empty())
}

/// Parses `PCS_ED25519_KEY_B64`: base64 of a 32-byte seed or a 64-byte seed ‖ public key.
pub fn parse_ed25519_secret(b64: &str) -> Result<SigningKey, KeyError> {
    const VAR: &str = "PCS_ED25519_KEY_B64";
    let bytes = B64.decode(b64.trim()).map_err(|e| {
        KeyError::new(
            VAR,
            format!("standard base64 of a 32-byte Ed25519 seed ({e})"),
        )
    })?;
    match bytes.len() {
        32 => {
            let mut seed = [0u8; 32];
            seed.copy_from_slice(&bytes);
            Ok(SigningKey::from_bytes(&seed))
        }
        64 => {
            let mut pair = [0u8; 64];
            pair.copy_from_slice(&bytes);
            SigningKey::from_keypair_bytes(&pair).map_err(|_| {
                KeyError::new(
                    VAR,
                    "a 64-byte keypair whose second half is the public key of its first half",
                )
            })
        }
        n => Err(KeyError::new(
            VAR,
            format!("base64 of a 32-byte seed or a 64-byte keypair, found {n} bytes"),
        )),
    }
}

/// Parses one base64 Ed25519 public key.
pub fn parse_ed25519_public(b64: &str) -> Result<VerifyingKey, String> {
    let bytes = B64
        .decode(b64.trim())
        .map_err(|e| format!("standard base64 of a 32-byte Ed25519 public key ({e})"))?;
    let arr: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
        format!(
            "base64 of a 32-byte Ed25519 public key, found {} bytes",
            bytes.len()
        )
    })?;
    VerifyingKey::from_bytes(&arr)
        .map_err(|_| "a valid Ed25519 public key (point does not decode)".to_owned())
}

/// Which configured key verified a signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyRef {
    /// The variable the key came from.
    pub var: &'static str,
    /// Position in that variable's comma list (`None` for a single-key variable).
    pub index: Option<usize>,
}

impl fmt::Display for KeyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.index {
            Some(i) => write!(f, "{}[{i}]", self.var),
            None => f.write_str(self.var),
        }
    }
}

/// A signing key.
#[derive(Clone)]
pub enum Signer {
    /// HMAC-SHA256 with these key bytes.
    Hmac(Vec<u8>),
    /// Ed25519 with this key.
    Ed25519(Box<SigningKey>),
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        write!(f, "Signer({})", self.alg())
    }
}

impl Signer {
    /// An HMAC signer; the key is used as given (the environment's string as UTF-8 bytes).
    pub fn hmac(key: impl Into<Vec<u8>>) -> Self {
        Signer::Hmac(key.into())
    }

    /// An Ed25519 signer from a 32-byte seed.
    pub fn ed25519_from_seed(seed: &[u8; 32]) -> Self {
        Signer::Ed25519(Box::new(SigningKey::from_bytes(seed)))
    }

    /// The signer `PCS_SIGN_ALG` selects, with its key from `PCS_HMAC_KEY` or
    /// `PCS_ED25519_KEY_B64`.
    pub fn from_env(env: &KeyEnv) -> Result<Self, KeyError> {
        match env.alg()? {
            SignAlg::Hmac => non_empty(&env.hmac_key)
                .map(|k| Signer::hmac(k.as_bytes()))
                .ok_or_else(|| {
                    KeyError::new(
                        "PCS_HMAC_KEY",
                        "the HMAC signing key (PCS_SIGN_ALG=hmac), but it is not set",
                    )
                }),
            SignAlg::Ed25519 => {
                let b64 = non_empty(&env.ed25519_key_b64).ok_or_else(|| {
                    KeyError::new(
                        "PCS_ED25519_KEY_B64",
                        "the base64 Ed25519 seed (PCS_SIGN_ALG=ed25519), but it is not set",
                    )
                })?;
                Ok(Signer::Ed25519(Box::new(parse_ed25519_secret(b64)?)))
            }
        }
    }

    /// The algorithm.
    pub fn alg(&self) -> SignAlg {
        match self {
            Signer::Hmac(_) => SignAlg::Hmac,
            Signer::Ed25519(_) => SignAlg::Ed25519,
        }
    }

    /// The verifier that accepts this signer's signatures.
    pub fn verifier(&self) -> Verifier {
        match self {
            Signer::Hmac(k) => Verifier::hmac(vec![k.clone()]),
            Signer::Ed25519(k) => Verifier::ed25519(vec![k.verifying_key()]),
        }
    }

    /// The base64 signature of a 32-byte message.
    pub fn sign_digest(&self, message: &[u8; 32]) -> String {
        match self {
            Signer::Hmac(key) => B64.encode(hmac_tag(key, message)),
            Signer::Ed25519(key) => B64.encode(key.sign(message).to_bytes()),
        }
    }

    /// Signs `pcs` in place (sets `sig`; `pcs_id` must already be right).
    pub fn sign(&self, pcs: &mut Pcs) -> Result<(), CanonError> {
        pcs.sig = self.sign_digest(&pcs.signing_message()?);
        Ok(())
    }
}

fn hmac_mac(key: &[u8], message: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length; new_from_slice cannot fail for it.
    let mut mac = match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC takes keys of every length"),
    };
    mac.update(message);
    mac
}

fn hmac_tag(key: &[u8], message: &[u8]) -> [u8; 32] {
    hmac_mac(key, message).finalize().into_bytes().into()
}

#[derive(Clone)]
enum VerifyKey {
    Hmac(Vec<u8>),
    Ed25519(EdKey),
}

/// An Ed25519 public key, with what batches of its signatures are checked with.
#[derive(Clone)]
struct EdKey {
    key: VerifyingKey,
    /// Multiples of the base point and of this key, made by the first batch and shared by
    /// every clone: a batch's two fixed terms then cost a table lookup each.
    table: Arc<OnceLock<VartimeEdwardsPrecomputation>>,
}

impl From<VerifyingKey> for EdKey {
    fn from(key: VerifyingKey) -> Self {
        EdKey {
            key,
            table: Arc::default(),
        }
    }
}

impl EdKey {
    /// Whether every `(message, signature)` of `batch` is a valid signature by this key, by
    /// the batch equation of `ed25519_dalek::verify_batch` — the same acceptance — with every
    /// signature under one key. With `z_i` 128-bit weights drawn from a hash of the whole
    /// batch, `s_i` the signatures' scalars (canonical, or the batch fails), `R_i` their points
    /// and `h_i = SHA-512(R_i ‖ A ‖ M_i)`, it checks
    ///
    /// `(−Σ z_i·s_i)·B + (Σ z_i·h_i)·A + Σ z_i·R_i = 0`.
    ///
    /// `verify_batch` takes one key per signature, so its sum has a term per signature for `A`
    /// too; here the key's terms fold into one coefficient, and both fixed points, `B` and `A`,
    /// use precomputed tables. A batch that fails says only that some signature is bad.
    fn verify_batch(&self, batch: &[(&[u8; 32], &ed25519_dalek::Signature)]) -> bool {
        let a = self.key.as_bytes();
        let mut seed = Sha512::new();
        seed.update(b"coherence ed25519 batch v1");
        let mut terms: Vec<(Scalar, Scalar, CompressedEdwardsY)> = Vec::with_capacity(batch.len());
        for (message, sig) in batch {
            let Some(s) = Option::<Scalar>::from(Scalar::from_canonical_bytes(*sig.s_bytes()))
            else {
                return false;
            };
            let hram: [u8; 64] = Sha512::new()
                .chain_update(sig.r_bytes())
                .chain_update(a)
                .chain_update(message)
                .finalize()
                .into();
            // The weights depend on every input, as verify_batch's transcript does: R, A and
            // M through h_i, and s.
            seed.update(hram);
            seed.update(sig.s_bytes());
            terms.push((
                s,
                Scalar::from_bytes_mod_order_wide(&hram),
                CompressedEdwardsY(*sig.r_bytes()),
            ));
        }
        let seed = seed.finalize();
        let mut block = [0u8; 64];
        let zs: Vec<Scalar> = (0..terms.len())
            .map(|i| {
                if i % 4 == 0 {
                    block = Sha512::new()
                        .chain_update(seed)
                        .chain_update((i as u64 / 4).to_le_bytes())
                        .finalize()
                        .into();
                }
                let mut z = [0u8; 16];
                z.copy_from_slice(&block[(i % 4) * 16..][..16]);
                Scalar::from(u128::from_le_bytes(z))
            })
            .collect();
        let mut b_coefficient = Scalar::ZERO;
        let mut a_coefficient = Scalar::ZERO;
        for ((s, h, _), z) in terms.iter().zip(&zs) {
            b_coefficient += z * s;
            a_coefficient += z * h;
        }
        let table = self.table.get_or_init(|| {
            VartimeEdwardsPrecomputation::new([ED25519_BASEPOINT_POINT, self.key.to_edwards()])
        });
        table
            .optional_mixed_multiscalar_mul(
                [-b_coefficient, a_coefficient],
                &zs,
                terms.iter().map(|(_, _, r)| r.decompress()),
            )
            .is_some_and(|sum| sum.is_identity())
    }
}

/// Keys that may have signed a record; a signature is valid if any of them accepts it.
#[derive(Clone, Default)]
pub struct Verifier {
    keys: Vec<(KeyRef, VerifyKey)>,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let refs: Vec<String> = self.keys.iter().map(|(r, _)| r.to_string()).collect();
        write!(f, "Verifier({refs:?})")
    }
}

impl Verifier {
    /// A verifier of HMAC keys (reported as `PCS_HMAC_KEYS[i]`).
    pub fn hmac(keys: Vec<Vec<u8>>) -> Self {
        let keys = keys
            .into_iter()
            .enumerate()
            .map(|(i, k)| {
                (
                    KeyRef {
                        var: "PCS_HMAC_KEYS",
                        index: Some(i),
                    },
                    VerifyKey::Hmac(k),
                )
            })
            .collect();
        Self { keys }
    }

    /// A verifier of Ed25519 public keys (reported as `PCS_ED25519_PUB_B64[i]`).
    pub fn ed25519(keys: Vec<VerifyingKey>) -> Self {
        let keys = keys
            .into_iter()
            .enumerate()
            .map(|(i, k)| {
                (
                    KeyRef {
                        var: "PCS_ED25519_PUB_B64",
                        index: Some(i),
                    },
                    VerifyKey::Ed25519(k.into()),
                )
            })
            .collect();
        Self { keys }
    }

    /// The verifier of the algorithm `PCS_SIGN_ALG` selects. `hmac`: `PCS_HMAC_KEY` then every
    /// entry of `PCS_HMAC_KEYS`. `ed25519`: every entry of `PCS_ED25519_PUB_B64`, then the public
    /// key of `PCS_ED25519_KEY_B64` if set.
    pub fn from_env(env: &KeyEnv) -> Result<Self, KeyError> {
        let mut keys = Vec::new();
        match env.alg()? {
            SignAlg::Hmac => {
                if let Some(k) = non_empty(&env.hmac_key) {
                    keys.push((
                        KeyRef {
                            var: "PCS_HMAC_KEY",
                            index: None,
                        },
                        VerifyKey::Hmac(k.as_bytes().to_vec()),
                    ));
                }
                if let Some(list) = non_empty(&env.hmac_keys) {
                    for (i, k) in list.split(',').enumerate() {
                        let k = k.trim();
                        if k.is_empty() {
                            return Err(KeyError::new(
                                "PCS_HMAC_KEYS",
                                format!(
                                    "a comma-separated list of non-empty keys, but entry {i} is empty"
                                ),
                            ));
                        }
                        keys.push((
                            KeyRef {
                                var: "PCS_HMAC_KEYS",
                                index: Some(i),
                            },
                            VerifyKey::Hmac(k.as_bytes().to_vec()),
                        ));
                    }
                }
                if keys.is_empty() {
                    return Err(KeyError::new(
                        "PCS_HMAC_KEY",
                        "an HMAC key in PCS_HMAC_KEY or PCS_HMAC_KEYS (PCS_SIGN_ALG=hmac), but neither is set",
                    ));
                }
            }
            SignAlg::Ed25519 => {
                if let Some(list) = non_empty(&env.ed25519_pub_b64) {
                    for (i, k) in list.split(',').enumerate() {
                        let key = parse_ed25519_public(k).map_err(|e| {
                            KeyError::new("PCS_ED25519_PUB_B64", format!("{e} in entry {i}"))
                        })?;
                        keys.push((
                            KeyRef {
                                var: "PCS_ED25519_PUB_B64",
                                index: Some(i),
                            },
                            VerifyKey::Ed25519(key.into()),
                        ));
                    }
                }
                if let Some(b64) = non_empty(&env.ed25519_key_b64) {
                    let sk = parse_ed25519_secret(b64)?;
                    keys.push((
                        KeyRef {
                            var: "PCS_ED25519_KEY_B64",
                            index: None,
                        },
                        VerifyKey::Ed25519(sk.verifying_key().into()),
                    ));
                }
                if keys.is_empty() {
                    return Err(KeyError::new(
                        "PCS_ED25519_PUB_B64",
                        "base64 Ed25519 public keys in PCS_ED25519_PUB_B64 (or a seed in PCS_ED25519_KEY_B64) (PCS_SIGN_ALG=ed25519), but neither is set",
                    ));
                }
            }
        }
        Ok(Self { keys })
    }

    /// Number of configured keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is configured (then nothing verifies).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Which key accepts `sig` (base64) over `message`, or why none does.
    pub fn verify_signature(
        &self,
        message: &[u8; 32],
        sig: &str,
    ) -> Result<(SignAlg, KeyRef), String> {
        if sig.is_empty() {
            return Err("the record is unsigned (no sig)".to_owned());
        }
        let raw = B64
            .decode(sig)
            .map_err(|e| format!("sig is not standard base64 ({e})"))?;
        let (alg, sig64) = match raw.len() {
            32 => (SignAlg::Hmac, None),
            64 => {
                let mut b = [0u8; 64];
                b.copy_from_slice(&raw);
                (
                    SignAlg::Ed25519,
                    Some(ed25519_dalek::Signature::from_bytes(&b)),
                )
            }
            n => {
                return Err(format!(
                    "sig has {n} bytes; expected 32 (hmac) or 64 (ed25519)"
                ));
            }
        };
        for (r, key) in &self.keys {
            let ok = match (key, &sig64) {
                // verify_slice compares in constant time.
                (VerifyKey::Hmac(k), None) => hmac_mac(k, message).verify_slice(&raw).is_ok(),
                (VerifyKey::Ed25519(k), Some(s)) => k.key.verify_strict(message, s).is_ok(),
                _ => false,
            };
            if ok {
                return Ok((alg, r.clone()));
            }
        }
        let tried = self
            .keys
            .iter()
            .filter(|(_, k)| {
                matches!(
                    (k, alg),
                    (VerifyKey::Hmac(_), SignAlg::Hmac) | (VerifyKey::Ed25519(_), SignAlg::Ed25519)
                )
            })
            .count();
        Err(if tried == 0 {
            format!("the record is signed with {alg}, but no {alg} key is configured")
        } else {
            format!("no configured {alg} key accepts the signature ({tried} tried)")
        })
    }

    /// [`Verifier::verify_signature`] of every item, in order, with the same answers.
    ///
    /// Ed25519 signatures are checked together by batch verification (one multiscalar
    /// multiplication for the whole batch: about half the work per signature at 64). A batch
    /// that fails is halved until the signatures at fault are isolated, and those are checked
    /// one by one, so every item gets the answer the single check gives it, including which
    /// key accepted it. Only signatures whose `R` is a canonical encoding, under keys not of
    /// small order, go into a batch; the rest take the single (strict) check, which refuses
    /// them. The one difference from the strict check: a batch does not refuse a signature
    /// whose `R` is of small order or carries a small torsion component when its equation
    /// holds, which only the holder of the signing key can bring about; the strict check
    /// refuses those too.
    pub fn verify_signatures(
        &self,
        items: &[([u8; 32], &str)],
    ) -> Vec<Result<(SignAlg, KeyRef), String>> {
        let mut out: Vec<Option<Result<(SignAlg, KeyRef), String>>> =
            items.iter().map(|_| None).collect();
        let ed_keys: Vec<(&KeyRef, &EdKey)> = self
            .keys
            .iter()
            .filter_map(|(r, k)| match k {
                VerifyKey::Ed25519(k) if !k.key.is_weak() => Some((r, k)),
                _ => None,
            })
            .collect();
        let sigs: Vec<Option<ed25519_dalek::Signature>> = if ed_keys.is_empty() {
            items.iter().map(|_| None).collect()
        } else {
            items.iter().map(|(_, sig)| batchable(sig)).collect()
        };
        let mut open: Vec<usize> = (0..items.len()).filter(|&i| sigs[i].is_some()).collect();
        if open.len() >= 2 {
            for (r, key) in ed_keys {
                if open.is_empty() {
                    break;
                }
                let batch = Batch {
                    key,
                    items,
                    sigs: &sigs,
                };
                let mut accepted = Vec::new();
                batch.settle(&open, &mut accepted);
                for i in accepted {
                    out[i] = Some(Ok((SignAlg::Ed25519, r.clone())));
                }
                open.retain(|&i| out[i].is_none());
            }
        }
        out.into_iter()
            .zip(items)
            .map(|(done, (message, sig))| {
                done.unwrap_or_else(|| self.verify_signature(message, sig))
            })
            .collect()
    }

    /// Verifies `pcs`: signature, then `pcs_id`, then the recomputable claims.
    pub fn verify(&self, pcs: &Pcs, params: &Params) -> Report {
        match Verifier::signing_input(pcs) {
            Ok(message) => {
                let sig = self.verify_signature(&message, &pcs.sig);
                Verifier::finish(pcs, params, sig)
            }
            Err(report) => *report,
        }
    }

    /// The first half of [`Verifier::verify`]: the record's shape, then the message its
    /// signature covers; a record that fails here is already refused (the report says why).
    pub fn signing_input(pcs: &Pcs) -> Result<[u8; 32], Box<Report>> {
        let mut report = Report {
            pcs_id: pcs.pcs_id.clone(),
            outcome: Outcome::Rejected,
            alg: None,
            key: None,
            rejection: None,
            escalations: Vec::new(),
        };
        if let Err(m) = pcs.validate() {
            report.rejection = Some(Rejection::Malformed(m));
            return Err(Box::new(report));
        }
        pcs.signing_message().map_err(|e| {
            report.rejection = Some(Rejection::Malformed(Malformed::new(
                "record",
                E_NUM,
                e.to_string(),
            )));
            Box::new(report)
        })
    }

    /// The second half of [`Verifier::verify`], given the answer of the signature check on
    /// the message [`Verifier::signing_input`] returned: `pcs_id`, then the recomputable claims.
    pub fn finish(pcs: &Pcs, params: &Params, sig: Result<(SignAlg, KeyRef), String>) -> Report {
        let mut report = Report {
            pcs_id: pcs.pcs_id.clone(),
            outcome: Outcome::Rejected,
            alg: None,
            key: None,
            rejection: None,
            escalations: Vec::new(),
        };
        match sig {
            Ok((alg, key)) => {
                report.alg = Some(alg);
                report.key = Some(key);
            }
            Err(reason) => {
                report.rejection = Some(Rejection::BadSignature { reason });
                return report;
            }
        }
        let expected = pcs.expected_pcs_id();
        if pcs.pcs_id != expected {
            report.rejection = Some(Rejection::PcsIdMismatch {
                claimed: pcs.pcs_id.clone(),
                recomputed: expected,
            });
            return report;
        }
        report.escalations = check_claims(pcs, params);
        report.outcome = if report.escalations.is_empty() {
            Outcome::Accepted
        } else {
            Outcome::Escalated
        };
        report
    }

    /// Parses and verifies a JSON record; a malformed record is a rejection naming the field.
    pub fn verify_json(&self, text: &str, params: &Params) -> Report {
        match Pcs::from_json(text) {
            Ok(pcs) => self.verify(&pcs, params),
            Err(m) => Report {
                pcs_id: String::new(),
                outcome: Outcome::Rejected,
                alg: None,
                key: None,
                rejection: Some(Rejection::Malformed(m)),
                escalations: Vec::new(),
            },
        }
    }
}

/// The signature, when it can go into an Ed25519 batch: 64 bytes whose `R` is a canonical
/// encoding (the single strict check refuses the others). Whether `R` decodes is left to the
/// batch, which fails on a point that does not (and the halving finds it): decoding it here
/// too cost a fifth of the time of a batch.
fn batchable(sig: &str) -> Option<ed25519_dalek::Signature> {
    let raw = B64.decode(sig).ok()?;
    let bytes: [u8; 64] = raw.try_into().ok()?;
    let mut r = [0u8; 32];
    r.copy_from_slice(&bytes[..32]);
    // y must be below p = 2^255 - 19: the non-canonical encodings are y in [p, 2^255).
    let y_high = r[31] & 0x7f == 0x7f && r[1..31].iter().all(|&b| b == 0xff) && r[0] >= 0xed;
    if y_high {
        return None;
    }
    Some(ed25519_dalek::Signature::from_bytes(&bytes))
}

/// Signatures checked against one key as a batch.
struct Batch<'a> {
    key: &'a EdKey,
    items: &'a [([u8; 32], &'a str)],
    sigs: &'a [Option<ed25519_dalek::Signature>],
}

impl Batch<'_> {
    /// Pushes onto `accepted` the indices in `idx` whose signature the key accepts: the whole
    /// batch when it verifies, else each half settled in turn, down to single checks.
    fn settle(&self, idx: &[usize], accepted: &mut Vec<usize>) {
        let sig = |i: usize| self.sigs[i].as_ref();
        if idx.len() <= 1 {
            for &i in idx {
                if sig(i).is_some_and(|s| self.key.key.verify_strict(&self.items[i].0, s).is_ok()) {
                    accepted.push(i);
                }
            }
            return;
        }
        let batch: Vec<(&[u8; 32], &ed25519_dalek::Signature)> = idx
            .iter()
            .filter_map(|&i| Some((&self.items[i].0, sig(i)?)))
            .collect();
        if batch.len() == idx.len() && self.key.verify_batch(&batch) {
            accepted.extend_from_slice(idx);
            return;
        }
        let (a, b) = idx.split_at(idx.len() / 2);
        self.settle(a, accepted);
        self.settle(b, accepted);
    }
}

/// The recomputation checks that escalate a record (empty when every claim holds).
pub fn check_claims(pcs: &Pcs, params: &Params) -> Vec<Escalation> {
    let tol = &params.tolerances;
    let mut out = Vec::new();
    match pcs.recompute_d_hat() {
        Ok(d) if (d - pcs.d_hat).abs() <= tol.d_hat => {}
        Ok(d) => out.push(Escalation::DHat {
            claimed: pcs.d_hat,
            recomputed: d,
            tolerance: tol.d_hat,
        }),
        // validate() guarantees distinct scales and positive counts, so this cannot happen
        // for a validated record; report it rather than trust the claim.
        Err(_) => out.push(Escalation::DHat {
            claimed: pcs.d_hat,
            recomputed: f64::NAN,
            tolerance: tol.d_hat,
        }),
    }
    let coh_max = 1.0 + tol.coh_star;
    if !(0.0..=coh_max).contains(&pcs.coh_star) {
        out.push(Escalation::CohStar {
            claimed: pcs.coh_star,
            min: 0.0,
            max: coh_max,
            tolerance: tol.coh_star,
        });
    }
    let b = signals::budget(pcs.r, pcs.d_hat, pcs.coh_star, &params.budget);
    if (b - pcs.budget).abs() > tol.budget {
        out.push(Escalation::Budget {
            claimed: pcs.budget,
            recomputed: b,
            tolerance: tol.budget,
        });
    }
    let reg = signals::regime(pcs.coh_star, pcs.d_hat, &params.regime);
    if reg != pcs.regime {
        out.push(Escalation::Regime {
            claimed: pcs.regime,
            recomputed: reg,
            coh_star: pcs.coh_star,
            d_hat: pcs.d_hat,
        });
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Parameters and reports

/// Verification tolerances.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Tolerances {
    /// `tolD`: largest accepted |claimed D̂ − recomputed D̂|.
    pub d_hat: f64,
    /// `tolCoh`: coh★ may exceed 1 by this much.
    pub coh_star: f64,
    /// Largest accepted |claimed budget − recomputed budget| (both clamped to [0, 1]).
    pub budget: f64,
}

impl Default for Tolerances {
    fn default() -> Self {
        Self {
            d_hat: 0.15,
            coh_star: 0.05,
            budget: 1e-6,
        }
    }
}

/// Everything that shapes how records are built and checked; `Default` is the design's values.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Params {
    /// Verification tolerances.
    pub tolerances: Tolerances,
    /// Budget formula.
    pub budget: BudgetParams,
    /// Regime thresholds.
    pub regime: RegimeThresholds,
    /// coh★ sampling.
    pub coh: CohParams,
}

/// The verdict on a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Signed, consistent: HTTP 200.
    Accepted,
    /// Signed, but a recomputation disagrees: HTTP 202.
    Escalated,
    /// Malformed, badly signed or with a wrong `pcs_id`: HTTP 400 or 401.
    Rejected,
}

/// Why a record was rejected.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Rejection {
    /// The record does not have the PCS shape.
    Malformed(Malformed),
    /// No configured key accepts the signature.
    BadSignature {
        /// What went wrong.
        reason: String,
    },
    /// `pcs_id` is not `sha256(merkle_root|epoch|shard_id)`.
    PcsIdMismatch {
        /// The record's `pcs_id`.
        claimed: String,
        /// The hash of its inputs.
        recomputed: String,
    },
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::Malformed(m) => write!(f, "malformed record: {m}"),
            Rejection::BadSignature { reason } => write!(f, "bad signature: {reason}"),
            Rejection::PcsIdMismatch {
                claimed,
                recomputed,
            } => write!(
                f,
                "pcs_id mismatch: claimed {claimed:?}, recomputed sha256(merkle_root|epoch|shard_id) = {recomputed}"
            ),
        }
    }
}

/// A claim that recomputation does not confirm; each carries the claimed value, the
/// recomputed value (or the allowed range) and the tolerance.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "check", rename_all = "snake_case")]
pub enum Escalation {
    /// `D_hat` differs from the Theil–Sen slope of `scales`/`N_j` by more than `tolerance`.
    DHat {
        /// The record's `D_hat`.
        claimed: f64,
        /// Recomputed from `scales` and `N_j`.
        recomputed: f64,
        /// `tolD`.
        tolerance: f64,
    },
    /// `coh_star` is outside `[min, max]`.
    CohStar {
        /// The record's `coh_star`.
        claimed: f64,
        /// Lower bound (0).
        min: f64,
        /// Upper bound (`1 + tolCoh`).
        max: f64,
        /// `tolCoh`.
        tolerance: f64,
    },
    /// `budget` differs from the budget formula by more than `tolerance`.
    Budget {
        /// The record's `budget`.
        claimed: f64,
        /// The formula on the record's `r`, `D_hat`, `coh_star`.
        recomputed: f64,
        /// Budget tolerance.
        tolerance: f64,
    },
    /// `regime` is not what the thresholds give for the record's `coh_star` and `D_hat`.
    Regime {
        /// The record's `regime`.
        claimed: Regime,
        /// What the thresholds give.
        recomputed: Regime,
        /// The `coh_star` used.
        coh_star: f64,
        /// The `D_hat` used.
        d_hat: f64,
    },
}

impl fmt::Display for Escalation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Escalation::DHat {
                claimed,
                recomputed,
                tolerance,
            } => write!(
                f,
                "D̂ (D_hat) outside tolerance: claimed {claimed}, recomputed {recomputed} from scales/N_j, |diff| {} > tol {tolerance}",
                (claimed - recomputed).abs()
            ),
            Escalation::CohStar {
                claimed,
                min,
                max,
                tolerance,
            } => write!(
                f,
                "coh★ (coh_star) out of range: claimed {claimed}, allowed [{min}, {max}] (tol {tolerance})"
            ),
            Escalation::Budget {
                claimed,
                recomputed,
                tolerance,
            } => write!(
                f,
                "budget inconsistent: claimed {claimed}, recomputed {recomputed} from r, D_hat, coh_star, |diff| {} > tol {tolerance}",
                (claimed - recomputed).abs()
            ),
            Escalation::Regime {
                claimed,
                recomputed,
                coh_star,
                d_hat,
            } => write!(
                f,
                "regime inconsistent: claimed {claimed}, recomputed {recomputed} from coh_star {coh_star} and D_hat {d_hat}"
            ),
        }
    }
}

/// The result of verifying one record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// The record's `pcs_id` (empty when it could not be read).
    pub pcs_id: String,
    /// The verdict.
    pub outcome: Outcome,
    /// The algorithm of the accepted signature.
    pub alg: Option<SignAlg>,
    /// The key that accepted the signature.
    pub key: Option<KeyRef>,
    /// Why the record was rejected (when `outcome` is `Rejected`).
    pub rejection: Option<Rejection>,
    /// Claims recomputation did not confirm (when `outcome` is `Escalated`).
    pub escalations: Vec<Escalation>,
}

impl Report {
    /// The HTTP status of `/v1/pcs/submit` for this report: 200 accepted, 202 escalated,
    /// 401 bad signature, 400 malformed or wrong `pcs_id`.
    pub fn http_status(&self) -> u16 {
        match (&self.outcome, &self.rejection) {
            (Outcome::Accepted, _) => 200,
            (Outcome::Escalated, _) => 202,
            (Outcome::Rejected, Some(Rejection::BadSignature { .. })) => 401,
            (Outcome::Rejected, _) => 400,
        }
    }

    /// Whether the record was accepted as is.
    pub fn is_accepted(&self) -> bool {
        self.outcome == Outcome::Accepted
    }

    /// One line per reason (empty when accepted).
    pub fn reasons(&self) -> Vec<String> {
        let mut out: Vec<String> = self.rejection.iter().map(ToString::to_string).collect();
        out.extend(self.escalations.iter().map(ToString::to_string));
        out
    }
}

// ---------------------------------------------------------------------------------------------
// Builder

/// Why a record cannot be built.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum BuildError {
    /// An input field is not acceptable.
    #[error(transparent)]
    Input(#[from] Malformed),
    /// A signal cannot be computed from the window.
    #[error(transparent)]
    Signal(#[from] SignalError),
}

/// What a PCS is built from: one window of one pod.
#[derive(Debug, Clone, Copy)]
pub struct BuildInput<'a> {
    /// The window's values, in time order.
    pub values: &'a [f64],
    /// The window's events (Merkle leaves), in order.
    pub events: &'a [Vec<u8>],
    /// `<namespace>/<workload>/<pod>`.
    pub shard_id: &'a str,
    /// Window number.
    pub epoch: u64,
    /// Delivery attempt.
    pub attempt: u64,
    /// RFC 3339 time of sending.
    pub sent_at: &'a str,
    /// Seed of the coh★ directions.
    pub seed: u64,
    /// Box-counting scales (strictly increasing, at least 2).
    pub scales: &'a [u32],
}

/// Builds an unsigned record: every field computed from `input` with `params`.
pub fn build(input: &BuildInput<'_>, params: &Params) -> Result<Pcs, BuildError> {
    // Checked first so a bad scale list is reported as such, not as a failed regression.
    let increasing = input.scales.windows(2).all(|w| w[0] < w[1]);
    if input.scales.len() < 2 || !increasing || input.scales.first().is_some_and(|s| *s == 0) {
        return Err(Malformed::new("scales", E_SCALES, format!("{:?}", input.scales)).into());
    }
    let points = signals::delay_embed(input.values)?;
    let n_j = signals::box_counts(&points, input.scales)?;
    let d_hat = signals::d_hat(input.scales, &n_j)?;
    let coh = signals::coh_star(&points, input.seed, &params.coh)?;
    let r = signals::compression_ratio(input.values)?;
    let merkle_root = merkle::merkle_root_hex(input.events);
    let mut pcs = Pcs {
        pcs_id: pcs_id(&merkle_root, input.epoch, input.shard_id),
        schema: SCHEMA.to_owned(),
        version: VERSION.to_owned(),
        shard_id: input.shard_id.to_owned(),
        epoch: input.epoch,
        attempt: input.attempt,
        sent_at: input.sent_at.to_owned(),
        seed: input.seed,
        scales: input.scales.to_vec(),
        n_j,
        coh_star: coh.coh_star,
        v_star: coh.v_star.map(|x| canon::py_round(x, 6)),
        d_hat,
        r,
        regime: signals::regime(coh.coh_star, d_hat, &params.regime),
        budget: signals::budget(r, d_hat, coh.coh_star, &params.budget),
        merkle_root,
        sig: String::new(),
        ft: Ft::default(),
    };
    pcs.validate()?;
    // Normalise -0.0 in v_star so the record reads cleanly.
    pcs.v_star = pcs.v_star.map(|x| if x == 0.0 { 0.0 } else { x });
    Ok(pcs)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn sample() -> Pcs {
        let values: Vec<f64> = (0..200)
            .map(|i| (f64::from(i) * 0.37).sin() * 10.0 + 50.0)
            .collect();
        let events: Vec<Vec<u8>> = (0..7).map(|i| format!("e{i}").into_bytes()).collect();
        build(
            &BuildInput {
                values: &values,
                events: &events,
                shard_id: "default/web/web-0",
                epoch: 3,
                attempt: 1,
                sent_at: "2026-11-01T00:00:00Z",
                seed: 42,
                scales: &[2, 4, 8, 16, 32],
            },
            &Params::default(),
        )
        .unwrap()
    }

    /// The signed fields as a map through the general canonicaliser: what
    /// [`Pcs::canonical_subset`] writes directly.
    fn canonical_subset_of_map(p: &Pcs) -> Result<String, CanonError> {
        let mut m = Map::new();
        m.insert("pcs_id".into(), Value::from(p.pcs_id.clone()));
        m.insert("merkle_root".into(), Value::from(p.merkle_root.clone()));
        m.insert("epoch".into(), Value::from(p.epoch));
        m.insert("shard_id".into(), Value::from(p.shard_id.clone()));
        for (k, x) in [
            ("D_hat", p.d_hat),
            ("coh_star", p.coh_star),
            ("r", p.r),
            ("budget", p.budget),
        ] {
            let n = serde_json::Number::from_f64(x).ok_or_else(|| CanonError::NonFinite {
                path: format!("$.{k}"),
                value: x.to_string(),
            })?;
            m.insert(k.into(), Value::Number(n));
        }
        canon::canonical_json(&Value::Object(m))
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]
        /// The directly written signed subset is byte for byte the general canonical JSON of
        /// the same fields, whatever the strings and numbers.
        #[test]
        fn the_signed_subset_equals_the_canonical_json_of_its_fields(
            id in "\\PC{0,70}", root in "[0-9a-f]{64}|\\PC{0,20}", shard in "\\PC{0,40}",
            epoch in proptest::prelude::any::<u64>(),
            floats in proptest::array::uniform4(proptest::prelude::any::<f64>()),
        ) {
            let mut p = sample();
            p.pcs_id = id;
            p.merkle_root = root;
            p.shard_id = shard;
            p.epoch = epoch;
            [p.d_hat, p.coh_star, p.r, p.budget] = floats;
            let direct = p.canonical_subset();
            let general = canonical_subset_of_map(&p);
            match (&direct, &general) {
                (Ok(a), Ok(b)) => proptest::prop_assert_eq!(a, b),
                // Both refuse a non-finite float (the error may name a different one first).
                (Err(_), Err(_)) => {}
                _ => proptest::prop_assert!(false, "{:?} against {:?}", direct, general),
            }
        }
    }

    /// Applies mutation `op` (with `arg` choosing what) to a PCS document's text.
    fn mutate(text: &str, op: u8, arg: usize) -> String {
        const KEYS: [&str; 20] = [
            "pcs_id",
            "schema",
            "version",
            "shard_id",
            "epoch",
            "attempt",
            "sent_at",
            "seed",
            "scales",
            "N_j",
            "coh_star",
            "v_star",
            "D_hat",
            "r",
            "regime",
            "budget",
            "merkle_root",
            "sig",
            "ft",
            "extra",
        ];
        let values = [
            json!(null),
            json!(1),
            json!(-1),
            json!(1.5),
            json!(3.0),
            json!(u64::MAX),
            json!("x"),
            json!([]),
            json!({}),
            json!(true),
            json!([1.0, 2.0]),
            json!({"2": 1, "4": 2}),
            json!({"outbox_seq": 1, "degraded": false, "fallbacks": [], "clock_skew_ms": -3}),
        ];
        let key = KEYS[arg % KEYS.len()];
        let mut v: Value = serde_json::from_str(text).unwrap_or(Value::Null);
        let Some(obj) = v.as_object_mut() else {
            return text.to_owned();
        };
        match op % 8 {
            0 => {
                obj.remove(key);
            }
            1 => {
                obj.insert(key.to_owned(), values[arg % values.len()].clone());
            }
            2 => {
                // A repeated key: the document keeps the last.
                let body = serde_json::to_string(&v).unwrap();
                let dup = format!(",\"{key}\":{}}}", values[arg % values.len()]);
                return format!("{}{dup}", &body[..body.len() - 1]);
            }
            3 => {
                if let Some(Value::Object(nj)) = obj.get_mut("N_j") {
                    match arg % 4 {
                        0 => {
                            let k = nj.keys().next().cloned().unwrap_or_default();
                            let c = nj.remove(&k).unwrap_or(Value::Null);
                            nj.insert(format!("0{k}"), c);
                        }
                        1 => {
                            nj.insert("99".into(), json!(3));
                        }
                        2 => {
                            let k = nj.keys().next_back().cloned().unwrap_or_default();
                            nj.remove(&k);
                        }
                        _ => {
                            let k = nj.keys().next().cloned().unwrap_or_default();
                            nj.insert(k, json!(0));
                        }
                    }
                }
            }
            4 => {
                // An escaped key and an escaped value.
                let body = serde_json::to_string(&v).unwrap();
                return body
                    .replacen("\"shard_id\"", "\"sha\\u0072d_id\"", 1)
                    .replacen(
                        "\"regime\":\"",
                        "\"regime\":\"\\u0073",
                        usize::from(arg % 2 == 0),
                    );
            }
            5 => {
                if let Some(Value::Object(ft)) = obj.get_mut("ft") {
                    let fk = ["outbox_seq", "degraded", "fallbacks", "clock_skew_ms"][arg % 4];
                    if arg % 3 == 0 {
                        ft.remove(fk);
                    } else {
                        ft.insert(fk.to_owned(), values[arg % values.len()].clone());
                    }
                }
            }
            6 => return format!("[{text}]"),
            _ => {
                obj.insert("unknown_field".into(), json!({"deep": [1, {"x": null}]}));
            }
        }
        serde_json::to_string(&v).unwrap()
    }

    #[test]
    fn a_well_formed_record_is_read_by_the_typed_path() {
        let p = sample();
        let text = p.to_json();
        assert_eq!(wire::read(&text), Some(p.clone()));
        let mut unsigned = p;
        unsigned.sig.clear();
        unsigned.ft = Ft::default();
        assert_eq!(wire::read(&unsigned.to_json()), Some(unsigned));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2048))]
        /// Whatever the typed reading accepts, the document reading accepts as the same record;
        /// what it leaves, the document reading decides.
        #[test]
        fn the_typed_reading_agrees_with_the_document_reading(
            ops in proptest::collection::vec((0u8..8, 0usize..64), 0..4),
        ) {
            let mut text = sample().to_json();
            for (op, arg) in ops {
                text = mutate(&text, op, arg);
            }
            let document = serde_json::from_str::<Value>(&text)
                .map_err(|e| Malformed::new("record", "a JSON document", e.to_string()))
                .and_then(|v| Pcs::from_value(&v));
            if let Some(typed) = wire::read(&text) {
                proptest::prop_assert_eq!(&Ok(typed), &document, "{}", text);
            }
            proptest::prop_assert_eq!(Pcs::from_json(&text).ok(), document.ok());
        }
    }

    /// `s + l`: the same signature with a non-canonical scalar, which strict checks refuse.
    fn add_group_order(sig: &mut [u8; 64]) {
        const L: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9,
            0xde, 0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        let mut carry = 0u16;
        for (b, l) in sig[32..].iter_mut().zip(L) {
            let v = u16::from(*b) + u16::from(l) + carry;
            *b = v as u8;
            carry = v >> 8;
        }
    }

    #[test]
    fn batched_signature_checks_give_the_single_checks_answers() {
        let a = SigningKey::from_bytes(&[7; 32]);
        let b = SigningKey::from_bytes(&[8; 32]);
        let stranger = SigningKey::from_bytes(&[9; 32]);
        let verifier = Verifier::ed25519(vec![a.verifying_key(), b.verifying_key()]);
        let message = |i: u32| -> [u8; 32] { Sha256::digest(i.to_le_bytes()).into() };
        let sign = |k: &SigningKey, m: &[u8; 32]| k.sign(m).to_bytes();
        let mut items: Vec<([u8; 32], String)> = Vec::new();
        let mut kinds = Vec::new();
        for i in 0..97u32 {
            let m = message(i);
            let (sig, kind) = match i % 13 {
                // Most are good, under the first key or the second.
                0..=6 => (B64.encode(sign(&a, &m)), "a"),
                7 | 8 => (B64.encode(sign(&b, &m)), "b"),
                // Signed over another message.
                9 => (B64.encode(sign(&a, &message(i + 1000))), "tampered"),
                10 => (B64.encode(sign(&stranger, &m)), "stranger"),
                11 => {
                    let mut s = sign(&a, &m);
                    add_group_order(&mut s);
                    (B64.encode(s), "non-canonical s")
                }
                _ => match i % 4 {
                    // R is the identity (small order), s = 0.
                    0 => {
                        let mut s = [0u8; 64];
                        s[0] = 1;
                        (B64.encode(s), "small-order R")
                    }
                    1 => (B64.encode([3u8; 32]), "hmac length"),
                    2 => (String::new(), "unsigned"),
                    _ => ("not base64!".to_owned(), "not base64"),
                },
            };
            items.push((m, sig));
            kinds.push(kind);
        }
        let refs: Vec<([u8; 32], &str)> = items.iter().map(|(m, s)| (*m, s.as_str())).collect();
        let batched = verifier.verify_signatures(&refs);
        assert_eq!(batched.len(), refs.len());
        for ((i, (m, s)), got) in refs.iter().enumerate().zip(&batched) {
            let single = verifier.verify_signature(m, s);
            assert_eq!(got, &single, "item {i} ({})", kinds[i]);
            let expect_ok = matches!(kinds[i], "a" | "b");
            assert_eq!(got.is_ok(), expect_ok, "item {i} ({}): {got:?}", kinds[i]);
            if kinds[i] == "b" {
                assert_eq!(got.as_ref().unwrap().1.index, Some(1), "item {i}");
            }
        }
        // One batch that verifies whole, a batch of two, one item, none.
        for n in [64, 2, 1, 0] {
            let good: Vec<([u8; 32], &str)> = refs
                .iter()
                .zip(&kinds)
                .filter(|(_, k)| **k == "a")
                .map(|(r, _)| *r)
                .take(n)
                .collect();
            let got = verifier.verify_signatures(&good);
            assert_eq!(got.len(), good.len());
            assert!(
                got.iter().all(|r| r
                    .as_ref()
                    .is_ok_and(|(alg, key)| *alg == SignAlg::Ed25519 && key.index == Some(0))),
                "{got:?}"
            );
        }
        // Without Ed25519 keys, every item gets the single check's answer.
        let hmac = Verifier::hmac(vec![b"k".to_vec()]);
        for ((m, s), got) in refs.iter().zip(hmac.verify_signatures(&refs)) {
            assert_eq!(got, hmac.verify_signature(m, s));
        }
    }

    /// The `i`-th test message and a signature of it by `key`, damaged as `damage` says: 0 not
    /// at all, 1 byte `at` of the signature xor `x`, 2 byte `at % 32` of the message xor `x`,
    /// 3 `s` made non-canonical, 4 signed by another key.
    fn damaged_item(
        key: &SigningKey,
        i: usize,
        damage: u8,
        at: usize,
        x: u8,
    ) -> ([u8; 32], [u8; 64]) {
        let mut msg: [u8; 32] = Sha256::digest((i as u64).to_le_bytes()).into();
        let mut sig = key.sign(&msg).to_bytes();
        match damage {
            1 => sig[at] ^= x,
            2 => msg[at % 32] ^= x,
            3 => add_group_order(&mut sig),
            4 => sig = SigningKey::from_bytes(&[13; 32]).sign(&msg).to_bytes(),
            _ => {}
        }
        (msg, sig)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
        /// Any batch of good signatures and signatures with bytes changed gets, item by item,
        /// the single check's answer.
        #[test]
        fn batches_with_damaged_signatures_answer_like_single_checks(
            damage in proptest::collection::vec((0u8..4, 0usize..64, 1u8..=255), 2..40),
        ) {
            let key = SigningKey::from_bytes(&[11; 32]);
            let verifier = Verifier::ed25519(vec![key.verifying_key()]);
            let items: Vec<([u8; 32], String)> = damage
                .iter()
                .enumerate()
                .map(|(i, &(kind, at, x))| {
                    // Kind 0 and 1 stay good; 2 changes a byte of the signature, 3 of the message.
                    let (msg, sig) = damaged_item(&key, i, [0, 0, 1, 2][usize::from(kind)], at, x);
                    (msg, B64.encode(sig))
                })
                .collect();
            let refs: Vec<([u8; 32], &str)> = items.iter().map(|(m, s)| (*m, s.as_str())).collect();
            let batched = verifier.verify_signatures(&refs);
            for ((i, (m, s)), got) in refs.iter().enumerate().zip(&batched) {
                proptest::prop_assert_eq!(got, &verifier.verify_signature(m, s), "item {}", i);
                proptest::prop_assert_eq!(got.is_ok(), damage[i].0 < 2, "item {}", i);
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// The one-key batch check accepts exactly the batches `ed25519_dalek::verify_batch`
        /// accepts, and those are the batches whose every signature is good.
        #[test]
        fn one_key_batches_accept_what_verify_batch_accepts(
            damage in proptest::collection::vec((0u8..8, 0usize..64, 1u8..=255), 1..24),
        ) {
            let key = SigningKey::from_bytes(&[12; 32]);
            let ed: EdKey = key.verifying_key().into();
            let mut messages: Vec<[u8; 32]> = Vec::new();
            let mut sigs: Vec<ed25519_dalek::Signature> = Vec::new();
            for (i, &(kind, at, x)) in damage.iter().enumerate() {
                // Kinds 0 to 3 stay good; 4 to 7 are the four kinds of damage.
                let (msg, sig) =
                    damaged_item(&key, i, [0, 0, 0, 0, 1, 2, 3, 4][usize::from(kind)], at, x);
                messages.push(msg);
                sigs.push(ed25519_dalek::Signature::from_bytes(&sig));
            }
            let batch: Vec<(&[u8; 32], &ed25519_dalek::Signature)> =
                messages.iter().zip(&sigs).collect();
            let ours = ed.verify_batch(&batch);
            let refs: Vec<&[u8]> = messages.iter().map(|m| &m[..]).collect();
            let keys = vec![key.verifying_key(); sigs.len()];
            let theirs = ed25519_dalek::verify_batch(&refs, &sigs, &keys).is_ok();
            proptest::prop_assert_eq!(ours, theirs);
            proptest::prop_assert_eq!(ours, damage.iter().all(|d| d.0 < 4));
        }
    }

    #[test]
    fn json_round_trips_with_n_j_in_scale_order() {
        let mut p = sample();
        Signer::hmac("k").sign(&mut p).unwrap();
        let text = p.to_json();
        let i2 = text.find("\"2\":").unwrap();
        let i16 = text.find("\"16\":").unwrap();
        assert!(i2 < i16, "{text}");
        assert!(text.starts_with("{\"pcs_id\":"));
        assert_eq!(Pcs::from_json(&text).unwrap(), p);
    }

    #[test]
    fn malformed_fields_are_named() {
        let p = sample();
        let mut v: Value = serde_json::from_str(&p.to_json()).unwrap();
        v["coh_star"] = Value::from("high");
        let e = Pcs::from_value(&v).unwrap_err();
        assert_eq!(e.to_string(), "coh_star: expected a number, found \"high\"");
        let mut v: Value = serde_json::from_str(&p.to_json()).unwrap();
        v["N_j"].as_object_mut().unwrap().remove("8");
        let e = Pcs::from_value(&v).unwrap_err();
        assert_eq!(e.field, "N_j");
        assert_eq!(e.expected, E_NJ);
        let mut v: Value = serde_json::from_str(&p.to_json()).unwrap();
        v["shard_id"] = Value::from("web-0");
        assert_eq!(Pcs::from_value(&v).unwrap_err().expected, E_SHARD);
        assert_eq!(Pcs::from_json("[1]").unwrap_err().field, "record");
        assert_eq!(Pcs::from_json("{").unwrap_err().field, "record");
    }

    #[test]
    fn key_env_errors_name_the_variable() {
        let e = Signer::from_env(&KeyEnv::default()).unwrap_err();
        assert_eq!(e.var, "PCS_HMAC_KEY");
        let env = KeyEnv {
            sign_alg: Some("rsa".into()),
            ..KeyEnv::default()
        };
        assert_eq!(Signer::from_env(&env).unwrap_err().var, "PCS_SIGN_ALG");
        let env = KeyEnv {
            sign_alg: Some("ed25519".into()),
            ed25519_key_b64: Some("AAAA".into()),
            ..KeyEnv::default()
        };
        let e = Signer::from_env(&env).unwrap_err();
        assert_eq!(e.var, "PCS_ED25519_KEY_B64");
        assert!(e.expected.contains("found 3 bytes"), "{e}");
        let env = KeyEnv {
            sign_alg: Some("ed25519".into()),
            ..KeyEnv::default()
        };
        assert_eq!(
            Verifier::from_env(&env).unwrap_err().var,
            "PCS_ED25519_PUB_B64"
        );
    }

    #[test]
    fn http_statuses() {
        let signer = Signer::hmac("k");
        let mut p = sample();
        signer.sign(&mut p).unwrap();
        let v = signer.verifier();
        assert_eq!(v.verify(&p, &Params::default()).http_status(), 200);
        assert_eq!(
            Verifier::hmac(vec![b"other".to_vec()])
                .verify(&p, &Params::default())
                .http_status(),
            401
        );
        let mut bad = p.clone();
        bad.pcs_id = "0".repeat(64);
        signer.sign(&mut bad).unwrap();
        assert_eq!(v.verify(&bad, &Params::default()).http_status(), 400);
        let mut esc = p.clone();
        esc.regime = Regime::Sticky;
        esc.coh_star = 0.1;
        signer.sign(&mut esc).unwrap();
        let report = v.verify(&esc, &Params::default());
        assert_eq!(report.http_status(), 202, "{:?}", report.reasons());
    }
}
