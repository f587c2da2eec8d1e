//! `POST /generate`: text from a generation model in the pool, streamed as server-sent events
//! (`placed`, `token`, then one `done` or `error`), or one JSON object with `"stream": false`.
//! A client that disconnects drops the stream, which cancels the session and frees its KV cache
//! in the tab.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use shared_proto::Sampling;

use super::{error, json_body, pool_error};
use crate::exec::GenParams;
use crate::models::smollm2::{Message, TextStream};
use crate::pool::{GenRequest, Generator, Pool, PoolError, StreamEvent};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GenerateBody {
    /// One user turn (chat template applied) — or, with `raw`, the text to continue as it is.
    prompt: Option<String>,
    /// A whole conversation instead of `prompt`: roles system / user / assistant.
    messages: Option<crate::api::input::Bounded<ChatMessage, { crate::api::input::MAX_MESSAGES }>>,
    /// A system prompt instead of the model's default one.
    system: Option<String>,
    #[serde(default)]
    raw: bool,
    model: Option<String>,
    #[serde(default = "default_max_tokens")]
    max_tokens: u32,
    /// 0 (the default): greedy.
    #[serde(default)]
    temperature: f32,
    #[serde(default)]
    top_k: u32,
    #[serde(default = "one")]
    top_p: f32,
    #[serde(default)]
    seed: u64,
    #[serde(default = "yes")]
    stream: bool,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ChatMessage {
    role: String,
    content: String,
}

fn default_max_tokens() -> u32 {
    256
}
fn one() -> f32 {
    1.0
}
fn yes() -> bool {
    true
}

/// The request's token ids and sampling, or what is wrong with it (a 400).
fn prepare(g: &Generator, b: &GenerateBody) -> Result<(Vec<u32>, Sampling), String> {
    if !(b.temperature.is_finite() && b.temperature >= 0.0) {
        return Err(format!("temperature must be ≥ 0, got {}", b.temperature));
    }
    if !(b.top_p > 0.0 && b.top_p <= 1.0) {
        return Err(format!("top_p must be in (0, 1], got {}", b.top_p));
    }
    let sampling = if b.temperature == 0.0 {
        Sampling::Greedy
    } else {
        Sampling::TopKP { temperature: b.temperature, top_k: b.top_k, top_p: b.top_p, seed: b.seed }
    };
    let mut messages: Vec<Message> = b.system.iter().map(|s| Message::new("system", s)).collect();
    let ids = match (&b.prompt, &b.messages) {
        (Some(p), None) if b.raw => g.model.encode(p),
        (Some(p), None) => {
            messages.push(Message::new("user", p));
            g.model.chat_ids(&messages)
        }
        (None, Some(ms)) if !b.raw && !ms.0.is_empty() => {
            for m in &ms.0 {
                if !matches!(m.role.as_str(), "system" | "user" | "assistant") {
                    return Err(format!("message role {:?}: expected system, user or assistant", m.role));
                }
                messages.push(Message::new(&m.role, &m.content));
            }
            g.model.chat_ids(&messages)
        }
        _ => return Err("give either `prompt` (optionally `raw`) or a non-empty `messages` list, not both".into()),
    };
    let ids = ids.map_err(|e| format!("{e:#}"))?;
    if ids.is_empty() {
        return Err("an empty prompt: there is nothing to continue".into());
    }
    Ok((ids, sampling))
}

pub(super) async fn generate(
    State(pool): State<Arc<Pool>>,
    body: Result<Json<GenerateBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let body = match json_body(body) {
        Ok(b) => b,
        Err(refused) => return *refused,
    };
    let (name, g) = match pool.generation_model(body.model.as_deref()) {
        Ok(found) => found,
        Err(e) => return pool_error(&e),
    };
    // Tokenising up to 2 MiB: on a blocking thread, not on the runtime's workers.
    let (gm, body) = (g.clone(), Arc::new(body));
    let b = body.clone();
    let (prompt, sampling) = match tokio::task::spawn_blocking(move || prepare(&gm, &b)).await {
        Ok(Ok(p)) => p,
        Ok(Err(why)) => return error(StatusCode::BAD_REQUEST, "bad_input", why),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("tokenising failed: {e}")),
    };
    let params = GenParams { max_tokens: body.max_tokens, sampling, stop_ids: g.model.stop_ids().to_vec() };
    let prompt_tokens = prompt.len();
    let rx = match pool.generate(Some(&name), GenRequest { prompt, params }) {
        Ok(rx) => rx,
        Err(e) => return pool_error(&e),
    };
    if body.stream {
        let events = Events { rx, g, text: TextStream::default(), ended: false };
        let stream = futures_util::stream::unfold(events, |mut ev| async move {
            let next = ev.next().await?;
            Some((Ok::<_, std::convert::Infallible>(next), ev))
        });
        return Sse::new(stream).keep_alive(KeepAlive::default()).into_response();
    }
    collect(name, g, rx, prompt_tokens).await
}

/// The SSE events of one stream; ends after `done` or `error`.
struct Events {
    rx: tokio::sync::mpsc::UnboundedReceiver<StreamEvent>,
    g: Arc<Generator>,
    text: TextStream,
    ended: bool,
}

impl Events {
    async fn next(&mut self) -> Option<Event> {
        if self.ended {
            return None;
        }
        let ev = match self.rx.recv().await {
            Some(StreamEvent::Placed { tab, kind, backend, replay }) => Event::default()
                .event("placed")
                .json_data(json!({ "tab": tab, "kind": kind, "backend": backend, "replay": replay })),
            Some(StreamEvent::Token(id)) => {
                let piece = self.text.push_with(id, |ids| self.g.model.as_ref().decode(ids)).unwrap_or_default();
                Event::default().event("token").json_data(json!({ "id": id, "text": piece }))
            }
            Some(StreamEvent::Done(s)) => {
                self.ended = true;
                let tail = self.text.finish_with(|ids| self.g.model.as_ref().decode(ids)).unwrap_or_default();
                Event::default().event("done").json_data(json!({
                    "text": tail, "finish_reason": s.finish.name(), "prompt_tokens": s.prompt_tokens,
                    "generated": s.generated, "ttft_ms": s.ttft_ms, "tokens_per_s": s.decode_tok_s,
                    "replays": s.replays, "tab": s.tab, "backend": s.backend,
                }))
            }
            Some(StreamEvent::Failed(e)) => {
                self.ended = true;
                Event::default().event("error").json_data(json!({ "error": e.to_string(), "kind": e.kind() }))
            }
            None => return None,
        };
        Some(ev.unwrap_or_else(|e| Event::default().event("error").data(e.to_string())))
    }
}

/// `"stream": false`: the whole generation as one object.
async fn collect(
    model: String,
    g: Arc<Generator>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<StreamEvent>,
    prompt_tokens: usize,
) -> Response {
    let mut ids = Vec::new();
    while let Some(ev) = rx.recv().await {
        match ev {
            StreamEvent::Placed { .. } => {}
            StreamEvent::Token(id) => ids.push(id),
            StreamEvent::Done(s) => {
                let text = g.model.decode(&ids).unwrap_or_default();
                return Json(json!({
                    "model": model, "prompt_tokens": prompt_tokens, "ids": ids, "text": text,
                    "finish_reason": s.finish.name(), "ttft_ms": s.ttft_ms, "tokens_per_s": s.decode_tok_s,
                    "replays": s.replays, "tab": s.tab, "backend": s.backend,
                }))
                .into_response();
            }
            StreamEvent::Failed(e) => return pool_error(&e),
        }
    }
    pool_error(&PoolError::ShutDown)
}
