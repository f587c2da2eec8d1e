//! `POST /v1/images/classifications`: image bytes in (the raw body, or multipart form files),
//! the top labels with their probabilities out, per image. Any image model the pool serves in
//! batches that names its classes; `?model=` picks one (default: the first vision model),
//! `?top=` how many labels (default 5), `?embedding=true` adds the pooled features.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;

use crate::family::Input;
use crate::policy::routing::ModelType;
use crate::pool::Pool;

/// Largest body: a few large photos (each is also checked against the model's pixel limit).
pub const MAX_IMAGE_BODY_BYTES: usize = 32 << 20;
/// Most images in one request.
pub const MAX_IMAGES: usize = 64;
/// Most labels per image.
pub const MAX_TOP: usize = 1000;

pub(super) fn routes() -> Router<Arc<Pool>> {
    Router::new()
        .route("/v1/images/classifications", post(classifications).layer(DefaultBodyLimit::max(MAX_IMAGE_BODY_BYTES)))
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct Options {
    /// A `/v1/models` id (default: the first image model loaded).
    model: Option<String>,
    /// Labels per image (default 5).
    top: Option<usize>,
    /// Add each image's pooled features (the model's second output).
    #[serde(default)]
    embedding: bool,
}

/// One label of one image.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(super) struct Label {
    /// The class index.
    class: usize,
    label: String,
    /// Softmax probability.
    probability: f32,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub(super) struct ImageResult {
    index: usize,
    top: Vec<Label>,
    #[serde(skip_serializing_if = "Option::is_none")]
    embedding: Option<Vec<f32>>,
}

/// The answer: per image in request order.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(super) struct Classified {
    object: &'static str,
    model: String,
    data: Vec<ImageResult>,
    tab: u64,
    backend: String,
}

fn refuse(status: StatusCode, message: impl Into<String>) -> Response {
    super::openai::error(status, message, None, None)
}

/// Classify images.
#[utoipa::path(post, path = "/v1/images/classifications", tag = "Images",
    params(Options),
    request_body(content = Vec<u8>, description = "an image (PNG, JPEG, WebP, GIF) as the body, or multipart/form-data \
        with one or more image files", content_type = "image/*"),
    responses((status = 200, body = Classified), (status = 400, description = "not an image, truncated, 0x0"),
        (status = 413, description = "over the body limit, 50 megapixels or 64 images")))]
pub(super) async fn classifications(
    State(pool): State<Arc<Pool>>,
    query: Result<Query<Options>, axum::extract::rejection::QueryRejection>,
    req: Request,
) -> Response {
    let Ok(Query(opts)) = query else {
        return refuse(StatusCode::BAD_REQUEST, "query parameters: model, top, embedding");
    };
    let Some(model) = opts.model.clone().or_else(|| pool.model_of_type(ModelType::Vision)) else {
        return refuse(StatusCode::NOT_FOUND, "no image model is loaded");
    };
    let top = opts.top.unwrap_or(5);
    if top == 0 || top > MAX_TOP {
        return refuse(StatusCode::BAD_REQUEST, format!("top must be 1 to {MAX_TOP}"));
    }
    let images = match read_images(req).await {
        Ok(v) => v,
        Err(resp) => return *resp,
    };
    let resp = match classify(&pool, &model, images, top, opts.embedding).await {
        Ok(c) => Json(c).into_response(),
        Err(resp) => *resp,
    };
    super::labelled(resp, model)
}

async fn classify(
    pool: &Pool,
    model: &str,
    images: Vec<Bytes>,
    top: usize,
    embedding: bool,
) -> Result<Classified, Box<Response>> {
    let batch = pool.batch_model(model).map_err(|e| Box::new(super::openai::pool_error_of(&e)))?;
    let Some(names) = batch.class_names().map(<[String]>::to_vec) else {
        return Err(Box::new(refuse(StatusCode::BAD_REQUEST, format!("{model} does not classify images"))));
    };
    let served = pool
        .submit(model, Input::Images(images), None)
        .await
        .map_err(|e| Box::new(super::openai::pool_error_of(&e)))?;
    let data = served
        .vectors
        .iter()
        .enumerate()
        .map(|(index, logits)| ImageResult {
            index,
            top: crate::stats::top_k_softmax(logits, top)
                .into_iter()
                .map(|(class, probability)| Label {
                    class,
                    label: names.get(class).cloned().unwrap_or_default(),
                    probability,
                })
                .collect(),
            embedding: embedding.then(|| served.extra.get(index).and_then(|e| e.first()).cloned().unwrap_or_default()),
        })
        .collect();
    Ok(Classified { object: "list", model: model.to_string(), data, tab: served.tab, backend: served.backend })
}

/// The images of a request: its body, or the files of a multipart form.
async fn read_images(req: Request) -> Result<Vec<Bytes>, Box<Response>> {
    let too_large = || {
        Box::new(refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body exceeds the limit of {MAX_IMAGE_BODY_BYTES} bytes (32 MiB)"),
        ))
    };
    let content_type =
        req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase();
    if content_type.starts_with("multipart/form-data") {
        let mut form =
            Multipart::from_request(req, &()).await.map_err(|e| Box::new(refuse(e.status(), e.body_text())))?;
        let mut images = Vec::new();
        loop {
            let field = match form.next_field().await {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => return Err(too_large()),
                Err(e) => return Err(Box::new(refuse(e.status(), e.body_text()))),
            };
            if field.file_name().is_none() && !matches!(field.name(), Some("image" | "images" | "file")) {
                continue;
            }
            if images.len() == MAX_IMAGES {
                return Err(Box::new(refuse(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("more than {MAX_IMAGES} images in one request (the limit)"),
                )));
            }
            match field.bytes().await {
                Ok(b) => images.push(b),
                Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => return Err(too_large()),
                Err(e) => return Err(Box::new(refuse(e.status(), e.body_text()))),
            }
        }
        if images.is_empty() {
            return Err(Box::new(refuse(StatusCode::BAD_REQUEST, "the form has no image file (field image or file)")));
        }
        return Ok(images);
    }
    match Bytes::from_request(req, &()).await {
        Ok(b) if b.is_empty() => Err(Box::new(refuse(StatusCode::BAD_REQUEST, "the body is empty: send an image"))),
        Ok(b) => Ok(vec![b]),
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(too_large()),
        Err(e) => Err(Box::new(refuse(e.status(), e.body_text()))),
    }
}
