//! The pool's control endpoint for `tabpool serve`: `GET /status` (JSON metrics), `GET
//! /status.txt` (the table `tabpool status` prints), `POST /embed`, `GET /dashboard` (a live
//! page over /status) and `GET /report.{md,html,json}[?since=24h]` (from the history database). Errors are JSON
//! `{"error", "kind"}` with a 4xx/5xx status; request bodies are capped (2 MiB → 413 naming it).
//!
//! Locked (see `Security`): an optional API key on every route but `GET /health` (and the Open
//! Inference Protocol's `/v2/health/live` and `/ready` probes), checked in
//! constant time; a Host allow-list against DNS rebinding (421 otherwise); no keyless binding
//! beyond loopback. Connections are bounded (`bounded::Bounds::API`: a share per client address,
//! `/health` answered even past the limits); event streams have their own budget (`Limits`), so
//! listeners cannot starve plain requests; every request is answered within its deadline.

mod audio;
mod events;
mod generate;
mod images;
pub(crate) mod input;
mod oip;
mod openai;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::pool::{Pool, PoolError};
use crate::report::render::{Format, render_as};
use crate::server::bounded::{Admit, Places};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EmbedBody {
    texts: input::Bounded<String, { input::MAX_INPUTS }>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    deadline_ms: Option<u64>,
}

/// Largest request body; a bigger one gets 413 naming this.
pub const MAX_BODY_BYTES: usize = 2 << 20;

/// Who may talk to the API. Without a key it answers any local client that names an allowed
/// Host; `check_bind` refuses to run keyless on a non-loopback address.
#[derive(Debug, Clone, Default)]
pub struct Security {
    /// Required as `Authorization: Bearer KEY` on every route but `GET /health` (and the
    /// dashboard's data-free page shell, which sends the key from its URL fragment).
    pub key: Option<String>,
    /// Host names accepted besides loopback names and the bound address (`--allow-host`).
    pub allow_hosts: Vec<String>,
    /// `GET /metrics` without the key (`--metrics-public`): the counts it shows, not the data.
    pub metrics_public: bool,
}

/// Budgets of the API beyond its connection bounds (`server::bounded::Bounds::API`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A request is answered (a stream: its head sent) within this, else 504 with the limit
    /// named. This, not the connection's idle timer, bounds a silent request.
    pub request_timeout: Duration,
    /// A connection with no request in flight and no byte moved for this long is closed.
    pub idle: Duration,
    /// Server-sent-event responses (`/v1/events`, streamed generations) open at once, in all
    /// and per client address: listeners cannot take the places plain requests need.
    pub max_streams: usize,
    pub streams_per_client: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            request_timeout: Duration::from_secs(600),
            idle: crate::server::bounded::Bounds::API.idle,
            max_streams: 128,
            streams_per_client: 64,
        }
    }
}

/// A response that is a server-sent-event stream holds a stream place for as long as its body
/// lives; without one it is answered 429 instead (its body dropped: a generation is cancelled).
async fn stream_budget(State(streams): State<Places>, req: Request, next: Next) -> Response {
    let client = req.extensions().get::<crate::server::bounded::ClientAddr>().map(|c| c.0);
    let openai = req.uri().path().starts_with("/v1/");
    let resp = next.run(req).await;
    let is_stream =
        resp.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if !is_stream {
        return resp;
    }
    match streams.take(client) {
        Ok(place) => {
            use futures_util::StreamExt;
            let (parts, body) = resp.into_parts();
            let body = body.into_data_stream().map(move |chunk| {
                let _held = &place;
                chunk
            });
            Response::from_parts(parts, axum::body::Body::from_stream(body))
        }
        Err(refused) => {
            let (max, per_client) = streams.limits();
            let why = if refused == Admit::ClientFull {
                format!("this client already holds {per_client} open streams (the limit per client)")
            } else {
                format!("{max} streams are open (the limit)")
            };
            let mut resp = if openai {
                openai::error(StatusCode::TOO_MANY_REQUESTS, why, None, Some("too_many_streams"))
            } else {
                error(StatusCode::TOO_MANY_REQUESTS, "too_many_streams", why)
            };
            resp.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            resp
        }
    }
}

/// Every request answered within `Limits::request_timeout` (a stream: its head), else 504.
async fn deadline(State(limits): State<Limits>, req: Request, next: Next) -> Response {
    let openai = req.uri().path().starts_with("/v1/");
    let limit = limits.request_timeout;
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => {
            let why =
                format!("no answer within the request timeout of {} s (serve --request-timeout)", limit.as_secs_f64());
            if openai {
                openai::error(StatusCode::GATEWAY_TIMEOUT, why, None, Some("timeout"))
            } else {
                error(StatusCode::GATEWAY_TIMEOUT, "timeout", why)
            }
        }
    }
}

/// Shortest API key accepted: a guessable key is no lock.
pub const MIN_KEY_LEN: usize = 16;

impl Security {
    /// Refuse settings that would leave the API open: no key on a non-loopback address, or a
    /// key too short to be a secret.
    pub fn check_bind(&self, addr: SocketAddr) -> anyhow::Result<()> {
        if let Some(k) = &self.key {
            anyhow::ensure!(
                k.chars().count() >= MIN_KEY_LEN && !k.chars().any(char::is_whitespace),
                "the API key must be at least {MIN_KEY_LEN} characters without spaces (e.g. `openssl rand -hex 24`)"
            );
        }
        anyhow::ensure!(
            self.key.is_some() || addr.ip().is_loopback(),
            "refusing to serve the API on {addr} without an API key: anyone who can reach that address could read \
             /status and run models. Pass --api-key, --api-key-file or TABPOOL_API_KEY, or bind to 127.0.0.1"
        );
        Ok(())
    }

    /// Whether a request's Host header names this server. Loopback names and the bound address
    /// always; any IP literal when bound to every interface (a DNS-rebinding page can only use
    /// a name it controls, never an IP literal); `--allow-host` names. Everything else is what
    /// DNS rebinding looks like.
    fn host_allowed(&self, host: Option<&str>, bound: IpAddr) -> bool {
        let Some(host) = host else { return false };
        let name = host_name(host).to_ascii_lowercase();
        let ip: Option<IpAddr> = name.trim_start_matches('[').trim_end_matches(']').parse().ok();
        name == "localhost"
            || ip.is_some_and(|ip| ip.is_loopback() || ip == bound || bound.is_unspecified())
            || self.allow_hosts.iter().any(|a| host_name(a).eq_ignore_ascii_case(&name))
    }
}

/// `host[:port]` or `[v6]:port` → the host part (brackets kept for IPv6).
fn host_name(h: &str) -> &str {
    let h = h.trim();
    if h.starts_with('[') {
        return h.find(']').map(|i| &h[..=i]).unwrap_or(h);
    }
    match h.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => h,
    }
}

#[derive(Clone)]
struct Guard {
    security: Arc<Security>,
    bound: IpAddr,
}

async fn guard(State(g): State<Guard>, req: Request, next: Next) -> Response {
    let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok());
    // OpenAI clients read their own error envelope.
    let openai = req.uri().path().starts_with("/v1/");
    let error = |status, kind: &str, message: String| {
        if openai { openai::error(status, message, None, Some(kind)) } else { error(status, kind, message) }
    };
    if !g.security.host_allowed(host, g.bound) {
        return error(
            StatusCode::MISDIRECTED_REQUEST,
            "host_not_allowed",
            format!(
                "Host {:?} is not served here (allowed: loopback names, the bound address, --allow-host)",
                host.unwrap_or("")
            ),
        );
    }
    let path = req.uri().path();
    let open =
        // Liveness and readiness (ours and the Open Inference Protocol's, which Kubernetes-style
        // probes call without credentials) say nothing about data.
        matches!(path, "/health" | "/v2/health/live" | "/v2/health/ready" | "/dashboard" | "/")
            || (path == "/metrics" && g.security.metrics_public);
    if let (Some(key), false) = (&g.security.key, open) {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(crate::secret::bearer)
            .unwrap_or("");
        if !crate::secret::same(given, key) {
            let mut resp = error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or wrong API key: send `Authorization: Bearer KEY`".into(),
            );
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
            return resp;
        }
    }
    next.run(req).await
}

/// The model a response served, for the request counter's `model` label (set by handlers).
#[derive(Clone)]
struct ModelLabel(String);

/// `resp`, marked as served by `model` for the request counter.
pub(crate) fn labelled(mut resp: Response, model: String) -> Response {
    resp.extensions_mut().insert(ModelLabel(model));
    resp
}

/// Count every request by endpoint (its route, never the raw path: bounded), model and status,
/// and time it to the response head.
async fn count(State(pool): State<Arc<Pool>>, req: Request, next: Next) -> Response {
    let endpoint = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let t = std::time::Instant::now();
    let resp = next.run(req).await;
    // Only names the pool serves become label values: a client naming models without end
    // would otherwise create series without end (memory, scrape size).
    let model = match resp.extensions().get::<ModelLabel>() {
        None => String::new(),
        Some(m) if pool.models().contains(&m.0) => m.0.clone(),
        Some(_) => "other".to_string(),
    };
    let tm = pool.telemetry();
    let status = resp.status().as_u16().to_string();
    tm.count("tabpool_requests_total", &[("endpoint", &endpoint), ("model", &model), ("status", &status)], 1);
    tm.observe("tabpool_request_duration_seconds", &[("endpoint", &endpoint)], t.elapsed().as_secs_f64());
    resp
}

pub async fn serve(
    pool: Arc<Pool>,
    addr: SocketAddr,
    security: Security,
    limits: Limits,
) -> anyhow::Result<(SocketAddr, crate::server::bounded::Server)> {
    security.check_bind(addr)?;
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("binding {addr}: {e}"))?;
    let addr = listener.local_addr()?;
    let guard_state = Guard { security: Arc::new(security), bound: addr.ip() };
    let app = Router::new()
        .route("/health", get(|| async { Json(json!({ "status": "ok" })) }))
        .route("/status", get(|State(p): State<Arc<Pool>>| async move { Json(p.metrics()) }))
        .route("/status.txt", get(|State(p): State<Arc<Pool>>| async move { p.metrics().render() }))
        .route(
            "/metrics",
            get(|State(p): State<Arc<Pool>>| async move {
                ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], p.prometheus())
            }),
        )
        .route("/embed", post(embed))
        .route("/generate", post(generate::generate))
        .merge(openai::routes())
        .merge(oip::routes())
        .merge(images::routes())
        .merge(audio::routes())
        .route("/v1/events", get(events::events))
        .route("/", get(|| async { axum::response::Redirect::temporary("/dashboard") }))
        .route("/dashboard", get(|| async { axum::response::Html(include_str!("dashboard.html")) }))
        .route("/report.md", get(|s, q| report(s, q, Format::Md)))
        .route("/report.html", get(|s, q| report(s, q, Format::Html)))
        .route("/report.json", get(|s, q| report(s, q, Format::Json)))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .fallback(|uri: axum::http::Uri| async move {
            if uri.path().starts_with("/v1/") {
                openai::error(StatusCode::NOT_FOUND, format!("no route {}", uri.path()), None, Some("unknown_url"))
            } else {
                error(StatusCode::NOT_FOUND, "not_found", "no such route".into())
            }
        })
        .layer(axum::middleware::from_fn_with_state(
            Places::new(limits.max_streams, limits.streams_per_client),
            stream_budget,
        ))
        .layer(axum::middleware::from_fn_with_state(limits, deadline))
        // Outermost: the Host and key checks see every request, unknown routes included.
        .layer(axum::middleware::from_fn_with_state(guard_state, guard))
        // Around the guard: refusals are counted too.
        .layer(axum::middleware::from_fn_with_state(pool.clone(), count))
        .with_state(pool);
    let bounds = crate::server::bounded::Bounds { idle: limits.idle, ..crate::server::bounded::Bounds::API };
    let server = crate::server::bounded::serve(listener, app, bounds, "api server");
    Ok((addr, server))
}

#[derive(serde::Deserialize)]
struct ReportQuery {
    since: Option<String>,
}

async fn report(State(pool): State<Arc<Pool>>, Query(q): Query<ReportQuery>, format: Format) -> Response {
    let Some(store) = pool.store() else {
        return error(StatusCode::NOT_FOUND, "no_history", "this pool records no history (--no-history)".into());
    };
    // Off the async runtime, all of it: the flush waits for the writer thread, and the queries
    // hold the store's connection; neither may stall the request path or the pool's tasks.
    let built = tokio::task::spawn_blocking(move || -> Result<String, (StatusCode, String)> {
        let bad = |e: anyhow::Error| (StatusCode::BAD_REQUEST, format!("{e:#}"));
        let since = q.since.map(|s| crate::report::parse_since(&store, &s)).transpose().map_err(bad)?;
        // What was recorded so far, including the last moments.
        pool.flush_history().map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")))?;
        let report = crate::report::Report::build(&store, since)
            .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")))?;
        Ok(render_as(&report, format))
    })
    .await;
    let content_type = match format {
        Format::Md => "text/markdown; charset=utf-8",
        Format::Html => "text/html; charset=utf-8",
        Format::Json => "application/json",
    };
    match built {
        Ok(Ok(text)) => ([(axum::http::header::CONTENT_TYPE, content_type)], text).into_response(),
        Ok(Err((status, e))) if status == StatusCode::BAD_REQUEST => error(status, "bad_report_request", e),
        Ok(Err((status, e))) => error(status, "history", e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
    }
}

pub(super) fn error(status: StatusCode, kind: &str, message: String) -> Response {
    (status, Json(json!({ "error": message, "kind": kind }))).into_response()
}

async fn embed(
    State(pool): State<Arc<Pool>>,
    body: Result<Json<EmbedBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let body = match json_body(body) {
        Ok(b) => b,
        Err(refused) => return *refused,
    };
    let model = match body.model.or_else(|| pool.embedding_model()) {
        Some(m) => m,
        None => return error(StatusCode::SERVICE_UNAVAILABLE, "no_model", "no model is loaded".into()),
    };
    let texts: Vec<&str> = body.texts.0.iter().map(String::as_str).collect();
    match pool.embed_with(&model, &texts, body.deadline_ms.map(Duration::from_millis)).await {
        Ok(served) => Json(served).into_response(),
        Err(e) => pool_error(&e),
    }
}

/// A pool's refusal or failure as a status and a JSON error.
pub(super) fn pool_error(e: &PoolError) -> Response {
    error(status_of(e), e.kind(), e.to_string())
}

/// The status a pool's refusal or failure is answered with, on every API.
pub(super) fn status_of(e: &PoolError) -> StatusCode {
    match e {
        PoolError::Busy { .. } => StatusCode::TOO_MANY_REQUESTS,
        PoolError::BadInput(_) => StatusCode::BAD_REQUEST,
        PoolError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        PoolError::UnknownModel(_) => StatusCode::NOT_FOUND,
        PoolError::Deadline { .. } => StatusCode::GATEWAY_TIMEOUT,
        PoolError::Failed { .. } => StatusCode::BAD_GATEWAY,
        PoolError::ShutDown => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// A JSON body, or the response refusing it (413 naming the limit for an oversized one).
pub(super) fn json_body<T>(body: Result<Json<T>, axum::extract::rejection::JsonRejection>) -> Result<T, Box<Response>> {
    match body {
        Ok(Json(b)) => Ok(b),
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            let msg = format!("the request body exceeds the limit of {MAX_BODY_BYTES} bytes (2 MiB); split it");
            Err(Box::new(error(StatusCode::PAYLOAD_TOO_LARGE, "too_large", msg)))
        }
        Err(e) if e.body_text().contains(input::LIMIT) => {
            Err(Box::new(error(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.body_text())))
        }
        Err(e) => Err(Box::new(error(e.status(), "bad_request", e.body_text()))),
    }
}

/// `GET http://{addr}{path}` → (status, body), with the API key if one is given. For `tabpool
/// status` and `tabpool report --api`.
pub async fn get_text(addr: &str, path: &str, key: Option<&str>) -> anyhow::Result<(u16, String)> {
    use http_body_util::BodyExt;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let uri: axum::http::Uri = format!("http://{addr}{path}").parse()?;
    let mut req = axum::http::Request::get(uri);
    if let Some(k) = key {
        req = req.header(header::AUTHORIZATION, format!("Bearer {k}"));
    }
    let req = req.body(http_body_util::Empty::new())?;
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .map_err(|_| anyhow::anyhow!("{addr} did not answer within 10 s"))?
        .map_err(|e| anyhow::anyhow!("no tabpool serve at {addr} ({e}); start one with `tabpool serve`"))?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
