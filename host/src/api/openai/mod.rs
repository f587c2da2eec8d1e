//! The OpenAI-compatible API under `/v1`, so the official clients, LangChain, LlamaIndex and curl
//! scripts talk to the pool as they talk to any inference server: `POST /v1/embeddings`,
//! `POST /v1/chat/completions`, `POST /v1/completions`, `GET /v1/models`. Errors come in the
//! envelope those clients read — `{"error": {"message", "type", "param", "code"}}` — with the
//! status their error classes map from (400, 401, 404, 413, 429, 503, 504). The same key and Host
//! checks as every route (`api::guard`).

mod completions;
mod embeddings;
mod stop;
pub mod types;

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::pool::{Pool, PoolError};

/// The OpenAPI document of the `/v1` API (`GET /openapi.json`), from the handlers' own types.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "tabpool", description = "An OpenAI-compatible API over a pool of browser tabs running models."),
    paths(models, model, embeddings::embeddings, completions::chat, completions::completions, super::events::events,
        super::oip::server_metadata, super::oip::model_metadata, super::oip::infer, super::images::classifications,
        super::audio::transcriptions),
    components(schemas(types::Chunk, crate::family::Signature, crate::family::TensorSpec, super::images::Classified,
        super::audio::Transcription)),
    modifiers(&BearerKey),
    security(("api_key" = []))
)]
pub struct ApiDoc;

/// Every route but `/health` takes `Authorization: Bearer KEY` when `serve` has a key.
struct BearerKey;

impl utoipa::Modify for BearerKey {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let scheme = SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build());
        doc.components.get_or_insert_with(Default::default).add_security_scheme("api_key", scheme);
    }
}

pub(super) fn routes() -> Router<Arc<Pool>> {
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/models/{model}", get(model))
        .route("/v1/embeddings", post(embeddings::embeddings))
        .route("/v1/chat/completions", post(completions::chat))
        .route("/v1/completions", post(completions::completions))
        .route("/openapi.json", get(|| async { Json(<ApiDoc as utoipa::OpenApi>::openapi()) }))
}

/// Who owns the models a pool serves (OpenAI's `owned_by`).
const OWNER: &str = "tabpool";

/// An error in OpenAI's envelope. `param` names the request field at fault, `code` a stable
/// machine-readable reason where there is one.
pub(super) fn error(
    status: StatusCode,
    message: impl Into<String>,
    param: Option<&str>,
    code: Option<&str>,
) -> Response {
    let kind = match status {
        StatusCode::UNAUTHORIZED => "authentication_error",
        StatusCode::NOT_FOUND => "not_found_error",
        StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
        StatusCode::PAYLOAD_TOO_LARGE => "request_too_large",
        StatusCode::GATEWAY_TIMEOUT => "timeout",
        s if s.is_server_error() => "server_error",
        _ => "invalid_request_error",
    };
    let body = types::ErrorEnvelope {
        error: types::ErrorBody {
            message: message.into(),
            kind,
            param: param.map(str::to_string),
            code: code.map(str::to_string),
        },
    };
    (status, Json(body)).into_response()
}

/// A 400 naming the field at fault.
pub(super) fn bad(param: &str, message: impl Into<String>) -> Response {
    error(StatusCode::BAD_REQUEST, message, Some(param), None)
}

/// A pool's refusal or failure in the envelope. A generation too long for the context is 400
/// `context_length_exceeded`, as OpenAI answers it.
pub(super) fn pool_error(e: &PoolError, generation: bool) -> Response {
    let msg = e.to_string();
    match e {
        PoolError::Busy { .. } => error(StatusCode::TOO_MANY_REQUESTS, msg, None, Some("rate_limit_exceeded")),
        PoolError::BadInput(_) => error(StatusCode::BAD_REQUEST, msg, None, None),
        PoolError::TooLarge(_) if generation => {
            error(StatusCode::BAD_REQUEST, msg, Some("messages"), Some("context_length_exceeded"))
        }
        PoolError::TooLarge(_) => error(StatusCode::PAYLOAD_TOO_LARGE, msg, Some("input"), Some("too_large")),
        PoolError::UnknownModel(_) => error(StatusCode::NOT_FOUND, msg, Some("model"), Some("model_not_found")),
        PoolError::Deadline { .. } => error(StatusCode::GATEWAY_TIMEOUT, msg, None, Some("timeout")),
        PoolError::Failed { .. } => error(StatusCode::SERVICE_UNAVAILABLE, msg, None, Some("inference_failed")),
        PoolError::ShutDown => error(StatusCode::SERVICE_UNAVAILABLE, msg, None, Some("shutting_down")),
    }
}

/// A pool's refusal of a request that is not a generation, in the envelope.
pub(super) fn pool_error_of(e: &PoolError) -> Response {
    pool_error(e, false)
}

/// A JSON body, or its refusal in the envelope (413 naming the limit for an oversized one).
pub(super) fn body<T>(b: Result<Json<T>, axum::extract::rejection::JsonRejection>) -> Result<T, Box<Response>> {
    match b {
        Ok(Json(b)) => Ok(b),
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(Box::new(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body exceeds the limit of {} bytes (2 MiB); split it", super::MAX_BODY_BYTES),
            None,
            Some("too_large"),
        ))),
        Err(e) => {
            let text = e.body_text();
            // Limits met while parsing (`input::LIMIT`) are sizes: 413 naming the limit.
            if text.contains(crate::api::input::LIMIT) {
                return Err(Box::new(error(StatusCode::PAYLOAD_TOO_LARGE, text, None, Some("too_large"))));
            }
            // serde's "unknown field `x`, expected one of …": refused by name.
            if let Some(name) = text.split("unknown field `").nth(1).and_then(|r| r.split('`').next()) {
                let msg = format!("unsupported parameter `{name}`");
                return Err(Box::new(error(StatusCode::BAD_REQUEST, msg, Some(name), Some("unsupported_parameter"))));
            }
            Err(Box::new(error(StatusCode::BAD_REQUEST, text, None, Some("invalid_json"))))
        }
    }
}

fn now_s() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn model_object(pool: &Pool, name: &str) -> types::ModelObject {
    types::ModelObject { id: name.into(), object: "model", created: pool.started_unix(), owned_by: OWNER }
}

/// The loaded models.
#[utoipa::path(get, path = "/v1/models", tag = "openai", responses((status = 200, body = types::ModelList),
    (status = 401, body = types::ErrorEnvelope)))]
async fn models(State(pool): State<Arc<Pool>>) -> Response {
    let data: Vec<_> = pool.models().iter().map(|m| model_object(&pool, m)).collect();
    Json(types::ModelList { object: "list", data }).into_response()
}

/// One loaded model.
#[utoipa::path(get, path = "/v1/models/{model}", tag = "openai", params(("model" = String, Path, description = "its id")),
    responses((status = 200, body = types::ModelObject), (status = 404, body = types::ErrorEnvelope)))]
async fn model(State(pool): State<Arc<Pool>>, axum::extract::Path(name): axum::extract::Path<String>) -> Response {
    if pool.models().contains(&name) {
        Json(model_object(&pool, &name)).into_response()
    } else {
        pool_error(&PoolError::UnknownModel(name), false)
    }
}
