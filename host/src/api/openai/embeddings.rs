//! `POST /v1/embeddings`: `input` as a string, a list of strings, a list of token ids or a list
//! of those; `encoding_format` `float` or `base64` (little-endian f32, what the official Python
//! client asks for by default and decodes); `dimensions` only as the model's own.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use base64::Engine;

use super::types::{Embedding, EmbeddingList, EmbeddingUsage, EmbeddingVector};
use super::{bad, body, pool_error};
use crate::api::input::{TextsOrIds, TextsOrIdsDoc};
use crate::pool::Pool;

#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct EmbeddingsBody {
    /// At most 1024 inputs; an id list at most 8192 ids (refused while parsing, 413).
    #[schema(value_type = TextsOrIdsDoc)]
    input: TextsOrIds,
    model: Option<String>,
    encoding_format: Option<String>,
    dimensions: Option<usize>,
    /// An end-user id (OpenAI's abuse tracking): accepted, not used.
    #[allow(dead_code)]
    user: Option<String>,
}

/// Sentence embeddings (L2-normalised) from an embedding model.
#[utoipa::path(post, path = "/v1/embeddings", request_body = EmbeddingsBody, tag = "openai",
    responses(
        (status = 200, body = EmbeddingList),
        (status = 400, body = super::types::ErrorEnvelope, description = "a bad input, format or `dimensions`"),
        (status = 401, body = super::types::ErrorEnvelope), (status = 404, body = super::types::ErrorEnvelope),
        (status = 413, body = super::types::ErrorEnvelope), (status = 429, body = super::types::ErrorEnvelope),
        (status = 503, body = super::types::ErrorEnvelope)))]
pub(super) async fn embeddings(
    State(pool): State<Arc<Pool>>,
    b: Result<Json<EmbeddingsBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let b = match body(b) {
        Ok(b) => b,
        Err(refused) => return *refused,
    };
    let base64 = match b.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => return bad("encoding_format", format!("encoding_format {other:?}: expected float or base64")),
    };
    let Some(model) = b.model.clone().or_else(|| pool.embedding_model()) else {
        return pool_error(&crate::pool::PoolError::UnknownModel("(no embedding model is loaded)".into()), false);
    };
    crate::api::labelled(embed(&pool, model.clone(), &b, base64).await, model)
}

async fn embed(pool: &Pool, model: String, b: &EmbeddingsBody, base64: bool) -> Response {
    let served = match &b.input {
        TextsOrIds::Text(t) => pool.embed_with(&model, &[t.as_str()], None).await,
        TextsOrIds::Texts(ts) if ts.is_empty() => return bad("input", "input is an empty list: nothing to embed"),
        TextsOrIds::Texts(ts) => {
            pool.embed_with(&model, &ts.iter().map(String::as_str).collect::<Vec<_>>(), None).await
        }
        TextsOrIds::Ids(ids) => pool.embed_ids(&model, std::slice::from_ref(ids), None).await,
        TextsOrIds::IdLists(lists) => pool.embed_ids(&model, lists, None).await,
    };
    let served = match served {
        Ok(s) => s,
        Err(e) => return pool_error(&e, false),
    };
    let dims = served.vectors.first().map_or(0, Vec::len);
    if let Some(d) = b.dimensions
        && d != dims
    {
        return bad("dimensions", format!("{model} gives {dims} dimensions; dimensions = {d} cannot be served"));
    }
    let data: Vec<_> = served
        .vectors
        .into_iter()
        .enumerate()
        .map(|(index, v)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                EmbeddingVector::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                EmbeddingVector::Float(v)
            };
            Embedding { object: "embedding", index, embedding }
        })
        .collect();
    let tokens: usize = served.lengths.iter().sum();
    let usage = EmbeddingUsage { prompt_tokens: tokens, total_tokens: tokens };
    Json(EmbeddingList { object: "list", data, model, usage }).into_response()
}
