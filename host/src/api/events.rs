//! `GET /v1/events`: the pool's live events as server-sent events, one JSON object per `data:`
//! line, its `type` first: `tab` (launched, lost, reloaded, retired, ...), `breaker`
//! (transitions), `scaling` (decisions), `recovery`, with the same fields as their history rows,
//! and `model_load` (started, weights — each tenth of the bytes —, loaded, failed, spare).
//! Server-sent events rather than a WebSocket: the stream only flows one way, any HTTP client
//! (curl, `fetch`) reads it, and it passes the same key and Host checks as every route. A
//! listener that falls more than 1024 events behind gets `{"type": "lagged", "missed": n}`; when
//! the pool stops, `{"type": "shutdown"}` ends the stream.

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
    // The stream ends (after a `shutdown` event) when the pool stops, so a stopping server can
    // close its listeners' connections cleanly instead of cutting them.
    let rest = futures_util::stream::unfold((rx, pool, false), |(mut rx, pool, ended)| async move {
        if ended {
            return None;
        }
        let data = loop {
            if pool.is_shut_down() {
                let bye = serde_json::json!({ "type": "shutdown" }).to_string();
                return Some((Ok(Event::default().data(bye)), (rx, pool, true)));
            }
            match tokio::time::timeout(std::time::Duration::from_millis(250), rx.recv()).await {
                Err(_) => continue,
                Ok(Ok(text)) => break text.to_string(),
                Ok(Err(RecvError::Lagged(n))) => {
                    break serde_json::json!({ "type": "lagged", "missed": n }).to_string();
                }
                Ok(Err(RecvError::Closed)) => return None,
            }
        };
        Some((Ok(Event::default().data(data)), (rx, pool, false)))
    });
    Sse::new(futures_util::StreamExt::chain(first, rest)).keep_alive(KeepAlive::default())
}
