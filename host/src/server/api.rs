//! The pool's control endpoint for `tabpool serve`: `GET /status` (JSON metrics), `GET
//! /status.txt` (the table `tabpool status` prints), `POST /embed`, `GET /dashboard` (a live
//! page over /status) and `GET /report.{md,html,json}[?since=24h]` (from the history database). Errors are JSON
//! `{"error", "kind"}` with a 4xx/5xx status; request bodies are capped by axum (2 MB → 413).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::commands::report::{Format, render_as};
use crate::pool::{Pool, PoolError};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EmbedBody {
    texts: Vec<String>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    deadline_ms: Option<u64>,
}

pub async fn serve(pool: Arc<Pool>, addr: SocketAddr) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("binding {addr}: {e}"))?;
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route("/status", get(|State(p): State<Arc<Pool>>| async move { Json(p.metrics()) }))
        .route("/status.txt", get(|State(p): State<Arc<Pool>>| async move { p.metrics().render() }))
        .route("/embed", post(embed))
        .route("/", get(|| async { axum::response::Redirect::temporary("/dashboard") }))
        .route("/dashboard", get(|| async { axum::response::Html(include_str!("dashboard.html")) }))
        .route("/report.md", get(|s, q| report(s, q, Format::Md)))
        .route("/report.html", get(|s, q| report(s, q, Format::Html)))
        .route("/report.json", get(|s, q| report(s, q, Format::Json)))
        .with_state(pool);
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("api server stopped: {e}");
        }
    });
    Ok((addr, task))
}

#[derive(serde::Deserialize)]
struct ReportQuery {
    since: Option<String>,
}

async fn report(State(pool): State<Arc<Pool>>, Query(q): Query<ReportQuery>, format: Format) -> Response {
    let Some(store) = pool.store() else {
        return error(StatusCode::NOT_FOUND, "no_history", "this pool records no history (--no-history)".into());
    };
    // What was recorded so far, including the last moments.
    if let Err(e) = pool.flush_history() {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "history", format!("{e:#}"));
    }
    let built = tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
        let since = q.since.map(|s| crate::report::parse_since(&store, &s)).transpose()?;
        Ok(render_as(&crate::report::Report::build(&store, since)?, format))
    })
    .await;
    let content_type = match format {
        Format::Md => "text/markdown; charset=utf-8",
        Format::Html => "text/html; charset=utf-8",
        Format::Json => "application/json",
    };
    match built {
        Ok(Ok(text)) => ([(axum::http::header::CONTENT_TYPE, content_type)], text).into_response(),
        Ok(Err(e)) => error(StatusCode::BAD_REQUEST, "bad_report_request", format!("{e:#}")),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
    }
}

fn error(status: StatusCode, kind: &str, message: String) -> Response {
    (status, Json(json!({ "error": message, "kind": kind }))).into_response()
}

async fn embed(
    State(pool): State<Arc<Pool>>,
    body: Result<Json<EmbedBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(body) = match body {
        Ok(b) => b,
        Err(e) => return error(e.status(), "bad_request", e.body_text()),
    };
    let model = match body.model.or_else(|| pool.models().into_iter().next()) {
        Some(m) => m,
        None => return error(StatusCode::SERVICE_UNAVAILABLE, "no_model", "no model is loaded".into()),
    };
    let texts: Vec<&str> = body.texts.iter().map(String::as_str).collect();
    match pool.embed_with(&model, &texts, body.deadline_ms.map(Duration::from_millis)).await {
        Ok(served) => Json(served).into_response(),
        Err(e) => {
            let (status, kind) = match &e {
                PoolError::Busy { .. } => (StatusCode::TOO_MANY_REQUESTS, "busy"),
                PoolError::BadInput(_) => (StatusCode::BAD_REQUEST, "bad_input"),
                PoolError::UnknownModel(_) => (StatusCode::NOT_FOUND, "unknown_model"),
                PoolError::Deadline { .. } => (StatusCode::GATEWAY_TIMEOUT, "deadline"),
                PoolError::Failed { .. } => (StatusCode::BAD_GATEWAY, "failed"),
                PoolError::ShutDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            };
            error(status, kind, e.to_string())
        }
    }
}

/// `GET http://{addr}{path}` → (status, body). For `tabpool status`.
pub async fn get_text(addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    use http_body_util::BodyExt;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let uri: axum::http::Uri = format!("http://{addr}{path}").parse()?;
    let resp = tokio::time::timeout(Duration::from_secs(10), client.get(uri))
        .await
        .map_err(|_| anyhow::anyhow!("{addr} did not answer within 10 s"))?
        .map_err(|e| anyhow::anyhow!("no tabpool serve at {addr} ({e}); start one with `tabpool serve`"))?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
