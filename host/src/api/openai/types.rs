//! What the `/v1` endpoints answer, as types: the handlers build these, and `GET /openapi.json`
//! describes them (utoipa) — the document cannot drift from the responses.

use serde::Serialize;
use utoipa::ToSchema;

#[derive(Serialize, ToSchema)]
pub struct ModelObject {
    pub id: String,
    /// Always `model`.
    pub object: &'static str,
    /// When the pool started (Unix seconds).
    pub created: u64,
    pub owned_by: &'static str,
}

#[derive(Serialize, ToSchema)]
pub struct ModelList {
    /// Always `list`.
    pub object: &'static str,
    pub data: Vec<ModelObject>,
}

/// A vector: floats, or (with `encoding_format: base64`) its little-endian f32 bytes in base64.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum EmbeddingVector {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Serialize, ToSchema)]
pub struct Embedding {
    /// Always `embedding`.
    pub object: &'static str,
    pub index: usize,
    pub embedding: EmbeddingVector,
}

#[derive(Serialize, ToSchema)]
pub struct EmbeddingUsage {
    /// Tokens of the inputs as the model saw them ([CLS] and [SEP] included).
    pub prompt_tokens: usize,
    pub total_tokens: usize,
}

#[derive(Serialize, ToSchema)]
pub struct EmbeddingList {
    /// Always `list`.
    pub object: &'static str,
    pub data: Vec<Embedding>,
    pub model: String,
    pub usage: EmbeddingUsage,
}

#[derive(Serialize, ToSchema, Clone, Copy)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    /// As OpenAI reports it; absent when the stream ended before its replica said (a stop string).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
}

#[derive(Serialize, ToSchema, Clone, Copy)]
pub struct PromptTokensDetails {
    /// Prompt tokens whose KV rows came from the replica's prefix cache (not prefilled again).
    pub cached_tokens: usize,
}

#[derive(Serialize, ToSchema)]
pub struct AssistantMessage {
    /// Always `assistant`.
    pub role: &'static str,
    pub content: String,
}

/// One choice of a whole response: `message` (chat) or `text` (completions).
#[derive(Serialize, ToSchema)]
pub struct Choice {
    pub index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<AssistantMessage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Always null: log-probabilities are not supported.
    #[schema(value_type = Option<Object>)]
    pub logprobs: Option<()>,
    /// `stop` (a stop id or stop string) or `length` (`max_tokens`).
    pub finish_reason: &'static str,
}

/// `chat.completion` or `text_completion`.
#[derive(Serialize, ToSchema)]
pub struct Completion {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    #[schema(value_type = Option<String>)]
    pub system_fingerprint: Option<()>,
    pub choices: Vec<Choice>,
    pub usage: Usage,
}

#[derive(Serialize, ToSchema, Default)]
pub struct Delta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// One choice of a streamed chunk: `delta` (chat) or `text` (completions).
#[derive(Serialize, ToSchema)]
pub struct ChunkChoice {
    pub index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta: Option<Delta>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub logprobs: Option<()>,
    pub finish_reason: Option<&'static str>,
}

/// A server-sent chunk (`chat.completion.chunk` or `text_completion`). With
/// `stream_options.include_usage` every chunk has `usage: null` but the last, which has empty
/// `choices` and the usage.
#[derive(Serialize, ToSchema)]
pub struct Chunk {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    #[schema(value_type = Option<String>)]
    pub system_fingerprint: Option<()>,
    pub choices: Vec<ChunkChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<Usage>>,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub message: String,
    /// invalid_request_error, authentication_error, not_found_error, rate_limit_error,
    /// request_too_large, timeout, server_error.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The request field at fault, if one is.
    pub param: Option<String>,
    /// A stable reason: context_length_exceeded, model_not_found, rate_limit_exceeded, ...
    pub code: Option<String>,
}

/// OpenAI's error envelope.
#[derive(Serialize, ToSchema)]
pub struct ErrorEnvelope {
    pub error: ErrorBody,
}
