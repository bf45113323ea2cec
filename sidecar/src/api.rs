//! The local API on `127.0.0.1:9103` (design §6): `/healthz`, `/metrics`, `/status`,
//! `GET /coherence/metrics?window=1h&signal=NAME` and `GET /coherence/predict?window=1h`, the
//! last two in the original engine's JSON shape with their inputs and method. With
//! `api.metricsListen`, [`metrics_router`] serves `/metrics` and `/healthz` only on that
//! address as well, for Prometheus.

use crate::state::Shared;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use coherence_core::ENGINE_VERSION;
use coherence_core::telemetry::format_ts_ms;
use coherence_core::window::{DriftRisk, DriftThresholds, WINDOW_METHOD, WindowSpan};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

/// The router of the local API.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .route("/coherence/metrics", get(coherence_metrics))
        .route("/coherence/predict", get(coherence_predict))
        .with_state(shared)
}

/// The router of `api.metricsListen`: `/metrics` and `/healthz`, nothing else.
pub fn metrics_router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(shared)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn metrics(State(s): State<Arc<Shared>>) -> Response {
    match crate::metrics::render(&s) {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn status(State(s): State<Arc<Shared>>) -> Response {
    axum::Json(s.status(crate::state::now_ms())).into_response()
}

/// Query of `/coherence/metrics` and `/coherence/predict`.
#[derive(Debug, Deserialize)]
pub struct WindowQuery {
    /// Window label (`1h`); default: the first configured window.
    pub window: Option<String>,
    /// Signal; default: `pcs.signal`, else the first signal in name order.
    pub signal: Option<String>,
}

/// The original engine's answer for one signal over one window, with how it was made.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EngineAnswer {
    /// Signal.
    pub signal: String,
    /// Window label.
    pub window: WindowSpan,
    /// Window length in seconds.
    pub window_sec: i64,
    /// Mean of the window.
    pub coherence_mean: f64,
    /// Sample standard deviation.
    pub stdev: f64,
    /// `stdev / |mean|`.
    pub volatility_index: f64,
    /// Drift risk by the signal's thresholds.
    pub predicted_drift_risk: DriftRisk,
    /// End of the window (RFC 3339).
    pub timestamp: String,
    /// Samples in the window.
    pub n: u64,
    /// Window bounds and source.
    pub inputs: AnswerInputs,
    /// Method, rule, thresholds, engine version, latency.
    pub meta: AnswerMeta,
}

/// Inputs of an [`EngineAnswer`] (the original's snake_case names).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AnswerInputs {
    /// Exclusive start of the window (RFC 3339).
    pub start_ts: String,
    /// Inclusive end of the window (RFC 3339).
    pub end_ts: String,
    /// The source that yields the signal.
    pub source: String,
    /// Samples rejected as NaN/infinite by the window.
    pub rejected_non_finite: u64,
    /// Samples rejected as late by the window.
    pub rejected_late: u64,
}

/// Method of an [`EngineAnswer`] (the original's snake_case names).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AnswerMeta {
    /// How the statistics were computed.
    pub method: &'static str,
    /// The rule that decided the risk.
    pub rule: String,
    /// The thresholds applied.
    pub thresholds: DriftThresholds,
    /// Engine version.
    pub engine_version: &'static str,
    /// Time taken to answer, ms.
    pub latency_ms: f64,
}

/// A 400 answer naming the parameter.
fn bad_request(field: &str, message: String) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({"error": format!("{field}: {message}"), "field": field})),
    )
        .into_response()
}

/// Resolves the window parameter against the configured windows.
fn resolve_window(s: &Shared, q: &WindowQuery) -> Result<WindowSpan, Box<Response>> {
    let engine = s.engine();
    let windows = &engine.config().windows;
    let known = || {
        windows
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    match &q.window {
        None => windows
            .first()
            .copied()
            .ok_or_else(|| Box::new(bad_request("window", "no window is configured".into()))),
        Some(text) => {
            let span: WindowSpan = text.parse().map_err(|_| {
                Box::new(bad_request(
                    "window",
                    format!(
                        "expected one of the configured windows ({}), got {text:?}",
                        known()
                    ),
                ))
            })?;
            if windows.contains(&span) {
                Ok(span)
            } else {
                Err(Box::new(bad_request(
                    "window",
                    format!(
                        "expected one of the configured windows ({}), got {text:?}",
                        known()
                    ),
                )))
            }
        }
    }
}

/// The answer for `signal` over `span` at `now_ms`.
pub fn answer(
    s: &Shared,
    signal: &str,
    span: WindowSpan,
    now_ms: i64,
    started: Instant,
) -> Option<EngineAnswer> {
    let engine = s.engine();
    let (stats, source) = engine.window_stats(signal, span, now_ms)?;
    let thresholds = *engine.thresholds(signal);
    let (risk, rule) = thresholds.assess(&stats);
    Some(EngineAnswer {
        signal: signal.to_string(),
        window: span,
        window_sec: span.as_millis() / 1000,
        coherence_mean: stats.mean,
        stdev: stats.stdev,
        volatility_index: stats.volatility_index,
        predicted_drift_risk: risk,
        timestamp: format_ts_ms(stats.end_ms),
        n: stats.n,
        inputs: AnswerInputs {
            start_ts: format_ts_ms(stats.start_ms),
            end_ts: format_ts_ms(stats.end_ms),
            source: source.to_string(),
            rejected_non_finite: stats.rejected_non_finite,
            rejected_late: stats.rejected_late,
        },
        meta: AnswerMeta {
            method: WINDOW_METHOD,
            rule,
            thresholds,
            engine_version: ENGINE_VERSION,
            latency_ms: started.elapsed().as_secs_f64() * 1000.0,
        },
    })
}

fn resolve_signal(s: &Shared, q: &WindowQuery) -> Result<String, Box<Response>> {
    let engine = s.engine();
    let name = match &q.signal {
        Some(n) => n.clone(),
        None => match engine.primary_signal() {
            Some(n) => n.to_string(),
            None => {
                return Err(Box::new(
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        axum::Json(json!({"error": "signal: no signal has reported yet"})),
                    )
                        .into_response(),
                ));
            }
        },
    };
    if engine.signal_names().any(|n| n == name) {
        Ok(name)
    } else {
        let mut known: Vec<&str> = engine.signal_names().take(20).collect();
        if engine.signal_count() > known.len() {
            known.push("…");
        }
        Err(Box::new(bad_request(
            "signal",
            format!(
                "expected a signal the sources yield ({}), got {name:?}",
                known.join(", ")
            ),
        )))
    }
}

/// The answer the query asks for, or the 400/503 that says why there is none.
fn answer_query(
    s: &Shared,
    q: &WindowQuery,
    now_ms: i64,
    started: Instant,
) -> Result<EngineAnswer, Box<Response>> {
    let span = resolve_window(s, q)?;
    let signal = resolve_signal(s, q)?;
    answer(s, &signal, span, now_ms, started).ok_or_else(|| {
        Box::new(bad_request(
            "signal",
            format!("{signal:?} has no {span} window"),
        ))
    })
}

async fn coherence_metrics(State(s): State<Arc<Shared>>, Query(q): Query<WindowQuery>) -> Response {
    match answer_query(&s, &q, crate::state::now_ms(), Instant::now()) {
        Ok(a) => axum::Json(a).into_response(),
        Err(r) => *r,
    }
}

async fn coherence_predict(State(s): State<Arc<Shared>>, Query(q): Query<WindowQuery>) -> Response {
    let started = Instant::now();
    let now = crate::state::now_ms();
    let primary = match answer_query(&s, &q, now, started) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    let span = primary.window;
    // Every signal's risk over the same window; the overall risk is the highest known level.
    let mut signals: BTreeMap<String, DriftRisk> = BTreeMap::new();
    {
        let engine = s.engine();
        for name in engine.signal_names() {
            if let Some((stats, _)) = engine.window_stats(name, span, now) {
                signals.insert(name.to_string(), engine.thresholds(name).risk(&stats));
            }
        }
    }
    let overall = signals
        .values()
        .filter_map(|r| r.level().map(|l| (l, *r)))
        .max_by_key(|(l, _)| *l)
        .map_or(DriftRisk::InsufficientData, |(_, r)| r);
    let body = json!({
        "predictedDriftRisk": primary.predicted_drift_risk,
        "overallDriftRisk": overall,
        "signal": primary.signal,
        "window": primary.window,
        "windowSec": primary.window_sec,
        "coherenceMean": primary.coherence_mean,
        "volatilityIndex": primary.volatility_index,
        "timestamp": primary.timestamp,
        "n": primary.n,
        "signals": signals,
        "inputs": primary.inputs,
        "meta": {
            "method": "drift-risk rules of each signal over the window; overall = highest level",
            "rule": primary.meta.rule,
            "thresholds": primary.meta.thresholds,
            "engine_version": ENGINE_VERSION,
            "latency_ms": started.elapsed().as_secs_f64() * 1000.0,
        },
    });
    axum::Json(body).into_response()
}
