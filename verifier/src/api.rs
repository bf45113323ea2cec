//! HTTP routes. [`app`] is the TLS port (submit and the workload API); [`admin`] is the plain
//! admin port (`/metrics`, `/healthz`, `/readyz`, the dashboard at `/ui` and the read-only
//! workload API it reads). Both are plain axum routers, so tests drive them with
//! `tower::ServiceExt::oneshot`.
//!
//! The caller's identity arrives as a [`Caller`] request extension, put there by the
//! connection layer from the client certificate (or the insecure-dev identity).

use crate::dedup::{RecordKind, StoreError};
use crate::ingest::Ingest;
use crate::limit::RateLimiter;
use crate::metrics::RouteLabels;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Instant;
use subtle::ConstantTimeEq;

/// The caller of a request: the SPIFFE URI of its client certificate, or `None` when the
/// certificate carried no Coherence identity.
#[derive(Debug, Clone)]
pub struct Caller(pub Option<String>);

/// Basic Auth credentials for `/metrics`.
#[derive(Clone)]
pub struct MetricsAuth {
    /// `METRICS_USER`.
    pub user: String,
    /// `METRICS_PASS`.
    pub pass: String,
}

/// What the routes share.
pub struct AppState {
    /// The ingest path.
    pub ingest: Arc<Ingest>,
    /// Per-caller token buckets.
    pub limiter: RateLimiter,
    /// The metrics registry.
    pub registry: Registry,
    /// Basic Auth for `/metrics`, when set.
    pub metrics_auth: Option<MetricsAuth>,
    /// Largest accepted body.
    pub body_limit: usize,
}

fn json_response(status: u16, body: &Value) -> Response {
    body_response(status, body.to_string())
}

/// A response whose body is already JSON text.
fn body_response(status: u16, json: String) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (code, [(header::CONTENT_TYPE, "application/json")], json).into_response()
}

fn request_id(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| {
            let b: [u8; 8] = rand::random();
            hex::encode(b)
        })
}

fn finish(
    state: &AppState,
    route: &str,
    rid: &str,
    caller: &str,
    started: Instant,
    mut resp: Response,
) -> Response {
    let code = resp.status().as_u16();
    state
        .ingest
        .metrics()
        .requests
        .get_or_create(&RouteLabels {
            route: route.to_owned(),
            code,
        })
        .inc();
    if let Ok(v) = HeaderValue::from_str(rid) {
        resp.headers_mut().insert("x-request-id", v);
    }
    tracing::info!(
        request_id = rid,
        route,
        status = code,
        caller,
        micros = started.elapsed().as_micros() as u64,
        "request"
    );
    resp
}

async fn submit(
    state: Arc<AppState>,
    kind: RecordKind,
    route: &'static str,
    caller: Option<axum::Extension<Caller>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let rid = request_id(&headers);
    let caller = caller.and_then(|c| c.0.0);
    let who = caller.clone().unwrap_or_default();
    let resp = match (caller, body) {
        (_, Err(rej)) if rej.status() == StatusCode::PAYLOAD_TOO_LARGE => json_response(
            413,
            &json!({"error": "too_large", "message": format!("the body is larger than the limit of {} bytes", state.body_limit), "limit": state.body_limit}),
        ),
        (_, Err(rej)) => json_response(
            400,
            &json!({"error": "malformed", "field": "record", "message": rej.body_text()}),
        ),
        (None, _) => json_response(
            403,
            &json!({"error": "forbidden", "message": "the client certificate carries no URI SAN spiffe://coherence.dev/ns/<namespace>/sa/<name>"}),
        ),
        (Some(who), Ok(body)) => match state.limiter.check(&who) {
            Err(wait_s) => {
                let mut r = json_response(
                    429,
                    &json!({"error": "rate_limited", "message": format!("over {} requests/s for {who}", state.limiter.rate()), "retryAfterSeconds": wait_s}),
                );
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(wait_s));
                r
            }
            Ok(()) => {
                let a = state.ingest.submit(kind, &who, &rid, body).await;
                let mut r = body_response(a.status, a.body.as_str().to_owned());
                if let Some(s) = a.retry_after {
                    r.headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from(s));
                }
                r
            }
        },
    };
    finish(&state, route, &rid, &who, started, resp)
}

/// The TLS port's routes.
pub fn app(state: Arc<AppState>) -> Router {
    let limit = state.body_limit;
    Router::new()
        .route(
            "/v1/pcs/submit",
            post({
                let s = state.clone();
                move |c: Option<axum::Extension<Caller>>,
                      h: HeaderMap,
                      b: Result<Bytes, BytesRejection>| {
                    submit(s, RecordKind::Pcs, "/v1/pcs/submit", c, h, b)
                }
            }),
        )
        .route(
            "/v1/signals/submit",
            post({
                let s = state.clone();
                move |c: Option<axum::Extension<Caller>>,
                      h: HeaderMap,
                      b: Result<Bytes, BytesRejection>| {
                    submit(s, RecordKind::Signals, "/v1/signals/submit", c, h, b)
                }
            }),
        )
        .route("/v1/workloads", get(list_workloads))
        .route("/v1/workloads/{namespace}/{workload}", get(one_workload))
        .route(
            "/v1/workloads/{namespace}/{workload}/history",
            get(workload_history),
        )
        .route("/v1/records/{id}", get(record))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// `?limit=N` of the history route.
#[derive(Debug, serde::Deserialize)]
pub struct HistoryQuery {
    /// Newest points to return (default and at most `views::HISTORY_POINTS`).
    pub limit: Option<usize>,
}

async fn workload_history(
    State(state): State<Arc<AppState>>,
    Path((ns, wl)): Path<(String, String)>,
    query: Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let started = Instant::now();
    let rid = request_id(&headers);
    let r = match query {
        Err(e) => json_response(
            400,
            &json!({"error": "malformed", "field": "limit", "expected": "a number of points", "message": e.body_text()}),
        ),
        Ok(Query(q)) => match state.ingest.history(&ns, &wl, q.limit) {
            Some(v) => json_response(200, &v),
            None => json_response(
                404,
                &json!({"error": "not_found", "message": format!("no records for workload {ns}/{wl}")}),
            ),
        },
    };
    finish(
        &state,
        "/v1/workloads/{namespace}/{workload}/history",
        &rid,
        "",
        started,
        r,
    )
}

async fn list_workloads(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let started = Instant::now();
    let rid = request_id(&headers);
    let r = json_response(200, &state.ingest.workloads());
    finish(&state, "/v1/workloads", &rid, "", started, r)
}

async fn one_workload(
    State(state): State<Arc<AppState>>,
    Path((ns, wl)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let started = Instant::now();
    let rid = request_id(&headers);
    let r = match state.ingest.workload(&ns, &wl) {
        Some(v) => json_response(200, &v),
        None => json_response(
            404,
            &json!({"error": "not_found", "message": format!("no records for workload {ns}/{wl}")}),
        ),
    };
    finish(
        &state,
        "/v1/workloads/{namespace}/{workload}",
        &rid,
        "",
        started,
        r,
    )
}

async fn record(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let started = Instant::now();
    let rid = request_id(&headers);
    let r = match state.ingest.lookup(&id).await {
        Ok(Some(o)) => json_response(
            200,
            &json!({"id": id, "status": o.status, "kind": o.kind, "seq": o.seq, "atMs": o.at_ms, "outcome": o.body}),
        ),
        Ok(None) => json_response(
            404,
            &json!({"error": "not_found", "message": format!("no stored outcome for {id}")}),
        ),
        Err(StoreError::Unavailable(why)) => {
            let mut r = json_response(503, &json!({"error": "store_unavailable", "message": why}));
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(1u64));
            r
        }
    };
    finish(&state, "/v1/records/{id}", &rid, "", started, r)
}

/// The admin port's routes: metrics and probes, the dashboard (`/ui`, its embedded assets
/// under `/ui/assets/`) and the read-only workload API the dashboard reads, so a browser needs
/// no client certificate. With `METRICS_USER`/`METRICS_PASS` set, the dashboard and the
/// workload API take the same Basic Auth as `/metrics`.
pub fn admin(state: Arc<AppState>) -> Router {
    let guarded = Router::new()
        .route("/ui", get(crate::ui::index))
        .route("/ui/", get(crate::ui::index))
        .route("/ui/assets/{file}", get(crate::ui::asset))
        .route("/v1/workloads", get(list_workloads))
        .route("/v1/workloads/{namespace}/{workload}", get(one_workload))
        .route(
            "/v1/workloads/{namespace}/{workload}/history",
            get(workload_history),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_auth,
        ));
    Router::new()
        .route("/metrics", get(metrics))
        .route(
            "/healthz",
            get(|| async { json_response(200, &json!({"status": "ok"})) }),
        )
        .route("/readyz", get(readyz))
        .merge(guarded)
        .with_state(state)
}

async fn require_auth(
    State(state): State<Arc<AppState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match &state.metrics_auth {
        Some(auth) if !authorized(auth, req.headers()) => unauthorized(),
        _ => next.run(req).await,
    }
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(
            header::WWW_AUTHENTICATE,
            "Basic realm=\"coherence-metrics\"",
        )],
        "this route requires Basic Auth (METRICS_USER/METRICS_PASS)\n",
    )
        .into_response()
}

fn authorized(auth: &MetricsAuth, headers: &HeaderMap) -> bool {
    let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some(b64) = v.strip_prefix("Basic ") else {
        return false;
    };
    let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b64.trim()) else {
        return false;
    };
    let expected = format!("{}:{}", auth.user, auth.pass);
    // Constant time, and the length check does not short-circuit on content.
    raw.len() == expected.len() && bool::from(raw.as_slice().ct_eq(expected.as_bytes()))
}

async fn metrics(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Some(auth) = &state.metrics_auth {
        if !authorized(auth, &headers) {
            return unauthorized();
        }
    }
    let text = crate::metrics::encode(&state.registry);
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let (ready, detail) = state.ingest.is_ready();
    json_response(
        if ready { 200 } else { 503 },
        &json!({"ready": ready, "detail": detail}),
    )
}
