//! `POST /v1/chat/completions` and `POST /v1/completions`: one generation stream from the pool
//! per request, answered whole or as server-sent chunks (`data: {chunk}` … `data: [DONE]`).
//! Stop strings are matched on the streamed text (`stop::StopScan`: text that may start one is
//! held back, the stop text never sent); meeting one drops the stream, which cancels the session
//! in its tab. A client that disconnects drops it too.

use std::collections::VecDeque;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use shared_proto::Sampling;
use tokio::sync::mpsc::UnboundedReceiver;

use super::stop::StopScan;
use super::types::{
    AssistantMessage, Choice, Chunk, ChunkChoice, Completion, Delta, ErrorBody, ErrorEnvelope, PromptTokensDetails,
    Usage,
};
use super::{bad, body, error, now_s, pool_error};
use crate::api::input::{AnyEntries, Bounded, Content, MAX_MESSAGES, Stops, TextsOrIds, TextsOrIdsDoc};
use crate::exec::GenParams;
use crate::models::smollm2::{Message, TextStream};
use crate::pool::{GenRequest, Generator, Pool, PoolError, StreamEvent};

/// The sampling and streaming fields both bodies take, declared once for both (not through
/// `serde(flatten)`, which buffers every field it meets before reading it: a body's allocation
/// would follow its shape, not its limits). Unknown fields are refused by name.
macro_rules! generation_body {
    ($(#[$meta:meta])* $name:ident { $($(#[$fm:meta])* $field:ident: $ty:ty,)* }) => {
        $(#[$meta])*
        #[derive(serde::Deserialize, utoipa::ToSchema)]
        #[serde(deny_unknown_fields)]
        pub(super) struct $name {
            $($(#[$fm])* $field: $ty,)*
            max_tokens: Option<u32>,
            max_completion_tokens: Option<u32>,
            temperature: Option<f32>,
            top_p: Option<f32>,
            seed: Option<u64>,
            /// A string or at most 4 strings, each at most 256 bytes.
            #[schema(value_type = Option<Vec<String>>)]
            stop: Option<Stops>,
            n: Option<u32>,
            stream: Option<bool>,
            stream_options: Option<StreamOptions>,
            /// Only false / null: log-probabilities are not supported.
            #[schema(value_type = Option<bool>)]
            logprobs: Option<Value>,
            top_logprobs: Option<u32>,
            frequency_penalty: Option<f32>,
            presence_penalty: Option<f32>,
            /// Only empty.
            #[schema(value_type = Option<Object>)]
            logit_bias: Option<AnyEntries>,
            /// Only `{"type": "text"}`.
            #[schema(value_type = Option<Object>)]
            response_format: Option<ResponseFormat>,
            /// An end-user id (OpenAI's abuse tracking): accepted, not used.
            #[allow(dead_code)]
            user: Option<String>,
        }

        impl $name {
            /// The options, moved out.
            fn options(&mut self) -> Options {
                Options {
                    max_tokens: self.max_tokens.take(),
                    max_completion_tokens: self.max_completion_tokens.take(),
                    temperature: self.temperature.take(),
                    top_p: self.top_p.take(),
                    seed: self.seed.take(),
                    stop: self.stop.take(),
                    n: self.n.take(),
                    stream: self.stream.take(),
                    stream_options: self.stream_options.take(),
                    logprobs: self.logprobs.take(),
                    top_logprobs: self.top_logprobs.take(),
                    frequency_penalty: self.frequency_penalty.take(),
                    presence_penalty: self.presence_penalty.take(),
                    logit_bias: self.logit_bias.take(),
                    response_format: self.response_format.take(),
                }
            }
        }
    };
}

generation_body!(ChatBody {
    model: Option<String>,
    #[schema(value_type = Vec<ChatMessage>)]
    messages: Bounded<ChatMessage, MAX_MESSAGES>,
});

generation_body!(CompletionBody {
    model: Option<String>,
    #[schema(value_type = TextsOrIdsDoc)]
    prompt: TextsOrIds,
});

#[derive(serde::Deserialize, utoipa::ToSchema)]
struct ChatMessage {
    role: String,
    #[schema(value_type = String)]
    content: Content<ContentPart>,
    /// A participant's name: accepted, not used by the chat template.
    #[serde(default)]
    #[allow(dead_code)]
    name: Option<String>,
}

#[derive(serde::Deserialize, utoipa::ToSchema)]
struct ContentPart {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

#[derive(serde::Deserialize, Default, utoipa::ToSchema)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

/// `response_format`: its type, the rest of it ignored (never buffered).
#[derive(serde::Deserialize, utoipa::ToSchema)]
struct ResponseFormat {
    #[serde(rename = "type")]
    kind: Option<String>,
}

/// The sampling and streaming parameters both endpoints share.
struct Options {
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    seed: Option<u64>,
    stop: Option<Stops>,
    n: Option<u32>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    logprobs: Option<Value>,
    top_logprobs: Option<u32>,
    frequency_penalty: Option<f32>,
    presence_penalty: Option<f32>,
    logit_bias: Option<AnyEntries>,
    response_format: Option<ResponseFormat>,
}

/// Longest stop string, in bytes: every streamed token scans the held text for each stop, so
/// their length bounds the work per token.
const MAX_STOP_BYTES: usize = 256;

/// What a request asks for, checked.
struct Plan {
    sampling: Sampling,
    max_tokens: Option<u32>,
    stops: Vec<String>,
    stream: bool,
    include_usage: bool,
}

impl Options {
    fn check(self) -> Result<Plan, Box<Response>> {
        let no = |param: &str, why: String| Err(Box::new(bad(param, why)));
        if self.n.is_some_and(|n| n != 1) {
            return no(
                "n",
                format!("n = {}: this server generates one choice per request (n = 1)", self.n.unwrap_or(1)),
            );
        }
        if self.logprobs.as_ref().is_some_and(|v| !(v.is_null() || *v == json!(false) || *v == json!(0))) {
            return no("logprobs", "logprobs are not supported by this server".into());
        }
        if self.top_logprobs.is_some_and(|n| n > 0) {
            return no("top_logprobs", "logprobs are not supported by this server".into());
        }
        for (name, v) in [("frequency_penalty", self.frequency_penalty), ("presence_penalty", self.presence_penalty)] {
            if v.is_some_and(|v| v != 0.0) {
                return no(name, format!("{name} is not supported by this server (only 0)"));
            }
        }
        if self.logit_bias.is_some_and(|b| b.0) {
            return no("logit_bias", "logit_bias is not supported by this server".into());
        }
        if let Some(f) = &self.response_format
            && f.kind.as_deref() != Some("text")
        {
            return no("response_format", "only response_format {\"type\": \"text\"} is supported".into());
        }
        let temperature = self.temperature.unwrap_or(1.0);
        if !(temperature.is_finite() && (0.0..=2.0).contains(&temperature)) {
            return no("temperature", format!("temperature must be between 0 and 2, got {temperature}"));
        }
        let top_p = self.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return no("top_p", format!("top_p must be in (0, 1], got {top_p}"));
        }
        let max_tokens = self.max_completion_tokens.or(self.max_tokens);
        if max_tokens == Some(0) {
            return no("max_tokens", "max_tokens must be at least 1".into());
        }
        let stops = self.stop.unwrap_or_default().0;
        if let Some(s) = stops.iter().find(|s| s.len() > MAX_STOP_BYTES) {
            return no("stop", format!("a stop string of {} bytes; at most {MAX_STOP_BYTES}", s.len()));
        }
        let stream = self.stream.unwrap_or(false);
        let include_usage = self.stream_options.as_ref().and_then(|o| o.include_usage).unwrap_or(false);
        if self.stream_options.is_some() && !stream {
            return no("stream_options", "stream_options is only allowed with stream: true".into());
        }
        let sampling = if temperature == 0.0 {
            Sampling::Greedy
        } else {
            // Without a seed every request draws differently, as clients expect.
            let seed = self.seed.unwrap_or_else(rand::random);
            Sampling::TopKP { temperature, top_k: 0, top_p, seed }
        };
        Ok(Plan { sampling, max_tokens, stops, stream, include_usage })
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Chat,
    Text,
}

/// A chat reply from a generation model (the chat template applied to `messages`).
#[utoipa::path(post, path = "/v1/chat/completions", request_body = ChatBody, tag = "openai",
    responses(
        (status = 200, description = "the reply; with `stream`, server-sent `Chunk`s then `data: [DONE]`",
            content((Completion = "application/json"), (Chunk = "text/event-stream"))),
        (status = 400, body = ErrorEnvelope, description = "a bad or unsupported parameter; `context_length_exceeded`"),
        (status = 401, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope, description = "`model_not_found`"),
        (status = 413, body = ErrorEnvelope), (status = 429, body = ErrorEnvelope), (status = 503, body = ErrorEnvelope)))]
pub(super) async fn chat(
    State(pool): State<Arc<Pool>>,
    b: Result<Json<ChatBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    handle(pool, b).await
}

/// What the two endpoints' bodies have in common: a model, a prompt, the options.
trait GenBody {
    const KIND: Kind;
    fn model(&self) -> Option<&str>;
    /// The prompt's token ids and the options, or the 400 refusing them.
    /// Tokenises (up to 2 MiB of text): called off the async runtime.
    fn prompt(self, g: &Generator) -> Result<(Vec<u32>, Options), Box<Response>>;
}

impl GenBody for ChatBody {
    const KIND: Kind = Kind::Chat;
    fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }
    fn prompt(mut self, g: &Generator) -> Result<(Vec<u32>, Options), Box<Response>> {
        let opts = self.options();
        let list = &self.messages.0;
        if list.is_empty() {
            return Err(refuse("messages", "messages is empty: give at least one message"));
        }
        let mut messages = Vec::with_capacity(list.len());
        for (i, m) in list.iter().enumerate() {
            let role = match m.role.as_str() {
                "system" | "developer" => "system",
                "user" => "user",
                "assistant" => "assistant",
                other => {
                    let why = format!("role {other:?} is not supported: system, developer, user or assistant");
                    return Err(refuse(&format!("messages[{i}].role"), why));
                }
            };
            let text = match &m.content {
                Content::Text(t) => t.clone(),
                Content::Parts(parts) => {
                    if let Some(p) = parts.iter().find(|p| p.kind != "text") {
                        let why = format!("content part {:?}: only text", p.kind);
                        return Err(refuse(&format!("messages[{i}].content"), why));
                    }
                    parts.iter().filter_map(|p| p.text.as_deref()).collect()
                }
            };
            messages.push(Message::new(role, &text));
        }
        let ids = g.model.chat_ids(&messages).map_err(|e| refuse("messages", format!("{e:#}")))?;
        Ok((ids, opts))
    }
}

impl GenBody for CompletionBody {
    const KIND: Kind = Kind::Text;
    fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }
    fn prompt(mut self, g: &Generator) -> Result<(Vec<u32>, Options), Box<Response>> {
        let opts = self.options();
        let one = "one prompt per request (n = 1): give a string or a list of token ids";
        let ids = match self.prompt {
            TextsOrIds::Text(t) => g.model.encode(&t),
            TextsOrIds::Texts(v) if v.len() == 1 => g.model.encode(&v[0]),
            TextsOrIds::Ids(ids) => Ok(ids),
            TextsOrIds::IdLists(mut v) if v.len() == 1 => Ok(v.remove(0)),
            _ => return Err(refuse("prompt", one)),
        };
        match ids {
            Ok(p) if !p.is_empty() => Ok((p, opts)),
            Ok(_) => Err(refuse("prompt", "an empty prompt: there is nothing to continue")),
            Err(e) => Err(refuse("prompt", format!("{e:#}"))),
        }
    }
}

/// A body checked, its model found, its prompt built, then generated.
async fn handle<B: GenBody + Send + 'static>(
    pool: Arc<Pool>,
    b: Result<Json<B>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let b = match body(b) {
        Ok(b) => b,
        Err(refused) => return *refused,
    };
    let (name, g) = match pool.generation_model(b.model()) {
        Ok(found) => found,
        Err(e) => return pool_error(&e, true),
    };
    // Tokenising 2 MiB takes a while: on a blocking thread, so the runtime's two workers keep
    // serving tab sockets (heartbeats) and other clients meanwhile.
    let gen_model = g.clone();
    let prompt = match tokio::task::spawn_blocking(move || b.prompt(&gen_model)).await {
        Ok(p) => p,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, format!("tokenising failed: {e}"), None, None),
    };
    match prompt {
        Ok((prompt, opts)) => crate::api::labelled(run(pool, name.clone(), g, prompt, opts, B::KIND).await, name),
        Err(refused) => *refused,
    }
}

/// A 400 naming the field at fault, boxed (clippy: a `Response` is large for an `Err`).
fn refuse(param: &str, message: impl Into<String>) -> Box<Response> {
    Box::new(bad(param, message))
}

/// Raw text continued (no chat template).
#[utoipa::path(post, path = "/v1/completions", request_body = CompletionBody, tag = "openai",
    responses(
        (status = 200, description = "the continuation; with `stream`, server-sent `Chunk`s then `data: [DONE]`",
            content((Completion = "application/json"), (Chunk = "text/event-stream"))),
        (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope),
        (status = 413, body = ErrorEnvelope), (status = 429, body = ErrorEnvelope), (status = 503, body = ErrorEnvelope)))]
pub(super) async fn completions(
    State(pool): State<Arc<Pool>>,
    b: Result<Json<CompletionBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    handle(pool, b).await
}

async fn run(
    pool: Arc<Pool>,
    model: String,
    g: Arc<Generator>,
    prompt: Vec<u32>,
    opts: Options,
    kind: Kind,
) -> Response {
    let plan = match opts.check() {
        Ok(p) => p,
        Err(refused) => return *refused,
    };
    let limit = pool.context_limit(&g);
    let max_tokens = match plan.max_tokens {
        Some(n) => n,
        // Unset: as many as the context has room for.
        None if prompt.len() < limit => (limit - prompt.len()) as u32,
        None => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("the prompt has {} tokens; the context limit is {limit} tokens", prompt.len()),
                Some("messages"),
                Some("context_length_exceeded"),
            );
        }
    };
    let params = GenParams { max_tokens, sampling: plan.sampling, stop_ids: g.model.stop_ids().to_vec() };
    let prompt_tokens = prompt.len();
    let rx = match pool.generate(Some(&model), GenRequest { prompt, params }) {
        Ok(rx) => rx,
        Err(e) => return pool_error(&e, true),
    };
    let id = format!("{}-{:016x}", if kind == Kind::Chat { "chatcmpl" } else { "cmpl" }, rand::random::<u64>());
    let out = Output {
        rx,
        g,
        text: TextStream::default(),
        scan: StopScan::new(plan.stops),
        completion_tokens: 0,
        prompt_tokens,
        cached_tokens: None,
        ready: VecDeque::new(),
    };
    let head = Head { id, created: now_s(), model, kind };
    if plan.stream {
        let chunks = Chunks {
            out,
            head,
            include_usage: plan.include_usage,
            queue: VecDeque::new(),
            started: false,
            done: false,
        };
        let stream = futures_util::stream::unfold(chunks, |mut c| async move {
            let ev = c.next().await?;
            Some((Ok::<_, std::convert::Infallible>(ev), c))
        });
        return Sse::new(stream).keep_alive(KeepAlive::default()).into_response();
    }
    whole(out, head).await
}

/// Generated text as the client may see it: tokens → text → stop strings.
struct Output {
    rx: UnboundedReceiver<StreamEvent>,
    g: Arc<Generator>,
    text: TextStream,
    scan: StopScan,
    completion_tokens: usize,
    prompt_tokens: usize,
    /// What the replica's prefix cache gave, once the stream's summary came.
    cached_tokens: Option<usize>,
    /// Pieces decided and not yet taken (text, then the end).
    ready: VecDeque<Piece>,
}

enum Piece {
    Text(String),
    /// The end, with its finish reason.
    End(&'static str),
    Failed(PoolError),
}

impl Output {
    /// The next piece; after `End` or `Failed` there is nothing more to take.
    async fn next(&mut self) -> Piece {
        loop {
            if let Some(p) = self.ready.pop_front() {
                return p;
            }
            match self.rx.recv().await {
                Some(StreamEvent::Placed { .. }) => {}
                Some(StreamEvent::Token(id)) => {
                    self.completion_tokens += 1;
                    let piece = self.text.push_with(id, |ids| self.g.model.as_ref().decode(ids)).unwrap_or_default();
                    let s = self.scan.push(&piece);
                    self.ready.extend((!s.text.is_empty()).then_some(Piece::Text(s.text)));
                    if s.stopped {
                        // Closing the receiver ends the stream, which cancels its session.
                        self.rx.close();
                        self.ready.push_back(Piece::End("stop"));
                    }
                }
                Some(StreamEvent::Done(summary)) => {
                    self.cached_tokens = Some(summary.cached_tokens);
                    let tail = self.text.finish_with(|ids| self.g.model.as_ref().decode(ids)).unwrap_or_default();
                    let s = self.scan.push(&tail);
                    let mut text = s.text;
                    if !s.stopped {
                        text.push_str(&self.scan.finish());
                    }
                    self.ready.extend((!text.is_empty()).then_some(Piece::Text(text)));
                    self.ready.push_back(Piece::End(if s.stopped { "stop" } else { summary.finish.name() }));
                }
                Some(StreamEvent::Failed(e)) => return Piece::Failed(e),
                None => return Piece::Failed(PoolError::ShutDown),
            }
        }
    }

    fn usage(&self) -> Usage {
        let (prompt_tokens, completion_tokens) = (self.prompt_tokens, self.completion_tokens);
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
            prompt_tokens_details: self.cached_tokens.map(|cached_tokens| PromptTokensDetails { cached_tokens }),
        }
    }
}

/// What every object of one response shares.
struct Head {
    id: String,
    created: u64,
    model: String,
    kind: Kind,
}

impl Head {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.kind, chunk) {
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
            (Kind::Text, _) => "text_completion",
        }
    }

    /// One choice of a chunk: `delta` for chat, `text` for completions.
    fn choice(&self, delta: Delta, finish: Option<&'static str>) -> ChunkChoice {
        let (delta, text) = match self.kind {
            Kind::Chat => (Some(delta), None),
            Kind::Text => (None, Some(delta.content.unwrap_or_default())),
        };
        ChunkChoice { index: 0, delta, text, logprobs: None, finish_reason: finish }
    }

    fn chunk(&self, choices: Vec<ChunkChoice>, usage: Option<Option<Usage>>) -> Chunk {
        let (id, object, created, model) = (self.id.clone(), self.object(true), self.created, self.model.clone());
        Chunk { id, object, created, model, system_fingerprint: None, choices, usage }
    }
}

/// The server-sent chunks of one streamed response: (chat: a role chunk), text chunks, a chunk
/// with the finish reason, (asked: a usage chunk), `[DONE]` — or an error object, then the end.
struct Chunks {
    out: Output,
    head: Head,
    include_usage: bool,
    /// Events decided and not yet sent.
    queue: VecDeque<Event>,
    started: bool,
    done: bool,
}

impl Chunks {
    async fn next(&mut self) -> Option<Event> {
        if let Some(e) = self.queue.pop_front() {
            return Some(e);
        }
        if self.done {
            return None;
        }
        // With include_usage every chunk carries `usage: null` but the last (OpenAI's shape).
        let usage = self.include_usage.then_some(None);
        if !self.started && self.head.kind == Kind::Chat {
            self.started = true;
            let delta = Delta { role: Some("assistant"), content: Some(String::new()) };
            return Some(data(&self.head.chunk(vec![self.head.choice(delta, None)], usage)));
        }
        self.started = true;
        match self.out.next().await {
            Piece::Text(t) => {
                let choice = self.head.choice(Delta { role: None, content: Some(t) }, None);
                Some(data(&self.head.chunk(vec![choice], usage)))
            }
            Piece::End(reason) => {
                self.done = true;
                let choice = self.head.choice(Delta::default(), Some(reason));
                let last = data(&self.head.chunk(vec![choice], usage));
                if self.include_usage {
                    self.queue.push_back(data(&self.head.chunk(vec![], Some(Some(self.out.usage())))));
                }
                self.queue.push_back(Event::default().data("[DONE]"));
                Some(last)
            }
            Piece::Failed(e) => {
                self.done = true;
                let status = pool_error(&e, true).status();
                let error = ErrorBody {
                    message: e.to_string(),
                    kind: if status.is_server_error() { "server_error" } else { "invalid_request_error" },
                    param: None,
                    code: Some(e.kind().into()),
                };
                Some(data(&ErrorEnvelope { error }))
            }
        }
    }
}

fn data(v: &impl serde::Serialize) -> Event {
    Event::default().data(serde_json::to_string(v).unwrap_or_default())
}

/// A response whole (`stream` false or absent).
async fn whole(mut out: Output, head: Head) -> Response {
    let mut text = String::new();
    let reason = loop {
        match out.next().await {
            Piece::Text(t) => text.push_str(&t),
            Piece::End(reason) => break reason,
            Piece::Failed(e) => return pool_error(&e, true),
        }
    };
    let (message, text) = match head.kind {
        Kind::Chat => (Some(AssistantMessage { role: "assistant", content: text }), None),
        Kind::Text => (None, Some(text)),
    };
    let choice = Choice { index: 0, message, text, logprobs: None, finish_reason: reason };
    Json(Completion {
        object: head.object(false),
        id: head.id,
        created: head.created,
        model: head.model,
        system_fingerprint: None,
        choices: vec![choice],
        usage: out.usage(),
    })
    .into_response()
}
