//! `GET /v1/events`: the pool's live events as server-sent events, one JSON object per `data:`
//! line, its `type` first: `tab` (launched, lost, reloaded, retired, ...), `breaker`
//! (transitions), `scaling` (decisions), `recovery`, with the same fields as their history rows,
//! and `model_load` (started, weights — each tenth of the bytes —, loaded, failed, spare).
//! Server-sent events rather than a WebSocket: the stream only flows one way, any HTTP client
//! (curl, `fetch`) reads it, and it passes the same key and Host checks as every route. A
//! listener that falls more than 1024 events behind gets `{"type": "lagged", "missed": n}`.

use std::sync::Arc;

use axum::extract::State;
use axum::response::IntoResponse;
use axum::response::sse::{Event, KeepAlive, Sse};
use tokio::sync::broadcast::error::RecvError;

use crate::pool::Pool;

/// The pool's live events (server-sent, one JSON object per `data:` line).
#[utoipa::path(get, path = "/v1/events", tag = "pool",
    responses((status = 200, description = "server-sent events: `{\"type\": \"tab\" | \"breaker\" | \"scaling\" | \"recovery\" | \"model_load\" | \"lagged\", ...}`",
        content_type = "text/event-stream", body = String)))]
pub(super) async fn events(State(pool): State<Arc<Pool>>) -> impl IntoResponse {
    let rx = pool.subscribe_events();
    let hello = serde_json::json!({ "type": "subscribed", "tabs": pool.tabs().len(), "models": pool.models() });
    let first = futures_util::stream::once(async move {
        Ok::<_, std::convert::Infallible>(Event::default().data(hello.to_string()))
    });
    let rest = futures_util::stream::unfold(rx, |mut rx| async move {
        let data = match rx.recv().await {
            Ok(text) => text.to_string(),
            Err(RecvError::Lagged(n)) => serde_json::json!({ "type": "lagged", "missed": n }).to_string(),
            Err(RecvError::Closed) => return None,
        };
        Some((Ok(Event::default().data(data)), rx))
    });
    Sse::new(futures_util::StreamExt::chain(first, rest)).keep_alive(KeepAlive::default())
}
