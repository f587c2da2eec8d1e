//! The Open Inference Protocol (KServe v2, what Triton, KServe, Seldon and OpenVINO Model Server
//! speak) under `/v2`, for every model the pool serves in batches: health, server and model
//! metadata (model names are the `/v1/models` ids), readiness, and `infer` with JSON tensors or
//! the binary-data extension (`Inference-Header-Content-Length`: a JSON header, then the raw
//! little-endian tensors in order). Errors are `{"error": "..."}` with a 4xx/5xx status.
//! Same key and Host checks as every route (`api::guard`).

use std::fmt;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde_json::json;
use shared_proto::{DType, Tensor};

use crate::family::{Input, Signature, TensorSpec};
use crate::models::whisper::audio::Mel;
use crate::pool::speech::{Audio, Transcribed};
use crate::pool::{Pool, PoolError};

/// Largest `/v2` infer body (a batch of 8 preprocessed images is 4.8 MB binary, ~15 MB as JSON).
pub const MAX_INFER_BODY_BYTES: usize = 32 << 20;
/// Most elements in one input tensor.
pub const MAX_ELEMENTS: usize = 8 << 20;
/// The header naming the JSON part's length in a binary-data request or response.
const HEADER_LEN: &str = "inference-header-content-length";

pub(super) fn routes() -> Router<Arc<Pool>> {
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(|| async { StatusCode::OK }))
        .route("/v2/health/ready", get(server_ready))
        .route("/v2/models/{model}", get(model_metadata))
        .route("/v2/models/{model}/ready", get(model_ready))
        .route("/v2/models/{model}/versions/{version}", get(versioned_metadata))
        .route("/v2/models/{model}/versions/{version}/ready", get(versioned_ready))
        .route("/v2/models/{model}/infer", post(infer).layer(DefaultBodyLimit::max(MAX_INFER_BODY_BYTES)))
        .route(
            "/v2/models/{model}/versions/{version}/infer",
            post(versioned_infer).layer(DefaultBodyLimit::max(MAX_INFER_BODY_BYTES)),
        )
}

/// The only model version served.
const VERSION: &str = "1";

pub(super) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

fn pool_error(e: &PoolError) -> Response {
    error(super::status_of(e), e.to_string())
}

/// Server metadata.
#[utoipa::path(get, path = "/v2", tag = "Open Inference Protocol", responses((status = 200, description = "name, version, extensions")))]
pub(super) async fn server_metadata() -> Json<serde_json::Value> {
    Json(json!({ "name": "tabpool", "version": env!("CARGO_PKG_VERSION"), "extensions": ["binary_tensor_data"] }))
}

/// Ready when every loaded model has a replica.
async fn server_ready(State(pool): State<Arc<Pool>>) -> StatusCode {
    let names = pool.models();
    if !names.is_empty() && names.iter().all(|m| pool.replica_count(m).unwrap_or(0) > 0) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// A model's signature as the protocol's metadata.
fn signature_of(pool: &Pool, model: &str) -> Result<Signature, Box<Response>> {
    match pool.batch_model(model) {
        Ok(m) => Ok(m.signature()),
        Err(_) if pool.speech_model(Some(model)).is_ok() => Ok(speech_signature()),
        Err(PoolError::UnknownModel(_)) => {
            Err(Box::new(error(StatusCode::NOT_FOUND, format!("no model {model:?} is served"))))
        }
        // A generation model: served as text in, text out.
        Err(_) => Ok(Signature {
            inputs: vec![TensorSpec::new("text_input", "BYTES", &[1])],
            outputs: vec![TensorSpec::new("text_output", "BYTES", &[1])],
        }),
    }
}

/// Model metadata: inputs and outputs with datatypes and shapes (-1: the request's batch).
#[utoipa::path(get, path = "/v2/models/{model}", tag = "Open Inference Protocol",
    params(("model" = String, Path, description = "a /v1/models id")),
    responses((status = 200, body = Signature), (status = 404, description = "no such model")))]
pub(super) async fn model_metadata(State(pool): State<Arc<Pool>>, Path(model): Path<String>) -> Response {
    match signature_of(&pool, &model) {
        Ok(sig) => {
            let response = json!({
                "name": model,
                "versions": [VERSION],
                "platform": "tabpool",
                "inputs": sig.inputs,
                "outputs": sig.outputs,
            });
            super::labelled(Json(response).into_response(), model)
        }
        Err(resp) => *resp,
    }
}

async fn versioned_metadata(State(pool): State<Arc<Pool>>, Path((model, version)): Path<(String, String)>) -> Response {
    if version != VERSION {
        return error(StatusCode::NOT_FOUND, format!("{model} has only version {VERSION}"));
    }
    model_metadata(State(pool), Path(model)).await
}

async fn model_ready(State(pool): State<Arc<Pool>>, Path(model): Path<String>) -> Response {
    match pool.replica_count(&model) {
        None => error(StatusCode::NOT_FOUND, format!("no model {model:?} is served")),
        Some(0) => error(StatusCode::SERVICE_UNAVAILABLE, format!("{model} has no replica loaded yet")),
        Some(_) => StatusCode::OK.into_response(),
    }
}

async fn versioned_ready(State(pool): State<Arc<Pool>>, Path((model, version)): Path<(String, String)>) -> Response {
    if version != VERSION {
        return error(StatusCode::NOT_FOUND, format!("{model} has only version {VERSION}"));
    }
    model_ready(State(pool), Path(model)).await
}

/// One input tensor of a request.
#[derive(serde::Deserialize)]
struct RequestInput {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Parameters,
    #[serde(default)]
    data: Option<Flat>,
}

#[derive(serde::Deserialize, Default)]
struct Parameters {
    #[serde(default)]
    binary_data_size: Option<u64>,
    #[serde(default)]
    binary_data: Option<bool>,
    #[serde(default)]
    binary_data_output: Option<bool>,
}

#[derive(serde::Deserialize)]
struct RequestOutput {
    name: String,
    #[serde(default)]
    parameters: Parameters,
}

#[derive(serde::Deserialize)]
struct InferRequest {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Parameters,
    inputs: Vec<RequestInput>,
    #[serde(default)]
    outputs: Option<Vec<RequestOutput>>,
}

/// A tensor's `data`, flat or nested, read element by element with [`MAX_ELEMENTS`] applied.
enum Flat {
    Numbers(Vec<f64>),
    Strings(Vec<String>),
}

impl<'de> de::Deserialize<'de> for Flat {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Flat, D::Error> {
        struct V<'a>(&'a mut Vec<f64>, &'a mut Vec<String>);
        impl<'de> Visitor<'de> for V<'_> {
            type Value = ();
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "numbers, booleans or strings, flat or nested (at most {MAX_ELEMENTS})")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
                let (nums, strs) = (self.0, self.1);
                while seq.next_element_seed(Seed(nums, strs))?.is_some() {}
                Ok(())
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
                push(self.0, v, self.1.len())
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
                push(self.0, v as f64, self.1.len())
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
                push(self.0, v as f64, self.1.len())
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
                push(self.0, v as u8 as f64, self.1.len())
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
                if self.0.len() + self.1.len() >= MAX_ELEMENTS {
                    return Err(E::custom(format!("more than {MAX_ELEMENTS} elements in one tensor")));
                }
                self.1.push(v.to_string());
                Ok(())
            }
        }
        struct Seed<'a>(&'a mut Vec<f64>, &'a mut Vec<String>);
        impl<'de> de::DeserializeSeed<'de> for Seed<'_> {
            type Value = ();
            fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
                d.deserialize_any(V(self.0, self.1))
            }
        }
        fn push<E: de::Error>(nums: &mut Vec<f64>, v: f64, strings: usize) -> Result<(), E> {
            if nums.len() + strings >= MAX_ELEMENTS {
                return Err(E::custom(format!("more than {MAX_ELEMENTS} elements in one tensor")));
            }
            nums.push(v);
            Ok(())
        }
        let (mut nums, mut strs) = (Vec::new(), Vec::new());
        d.deserialize_any(V(&mut nums, &mut strs))?;
        match (nums.is_empty(), strs.is_empty()) {
            (_, true) => Ok(Flat::Numbers(nums)),
            (true, false) => Ok(Flat::Strings(strs)),
            (false, false) => Err(de::Error::custom("a tensor's data mixes numbers and strings")),
        }
    }
}

/// Run a model on tensors: JSON, or a JSON header plus binary tensors.
#[utoipa::path(post, path = "/v2/models/{model}/infer", tag = "Open Inference Protocol",
    params(("model" = String, Path, description = "a /v1/models id")),
    request_body(content = String, description = "{\"inputs\": [{\"name\", \"shape\", \"datatype\", \"data\"}]}; or with \
        Inference-Header-Content-Length, that JSON followed by the binary tensors", content_type = "application/json"),
    responses((status = 200, description = "{\"model_name\", \"outputs\": [...]}"), (status = 400, description = "bad tensor")))]
pub(super) async fn infer(
    State(pool): State<Arc<Pool>>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body exceeds the limit of {MAX_INFER_BODY_BYTES} bytes (32 MiB); split the batch"),
            );
        }
        Err(e) => return error(e.status(), e.body_text()),
    };
    let resp = match run_infer(&pool, &model, &headers, body).await {
        Ok(resp) => resp,
        Err(Refused(resp)) => *resp,
    };
    super::labelled(resp, model)
}

async fn versioned_infer(
    State(pool): State<Arc<Pool>>,
    Path((model, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    if version != VERSION {
        return error(StatusCode::NOT_FOUND, format!("{model} has only version {VERSION}"));
    }
    infer(State(pool), Path(model), headers, body).await
}

/// A refusal answered instead of the inference (boxed: a `Response` is large).
struct Refused(Box<Response>);

impl From<Response> for Refused {
    fn from(r: Response) -> Refused {
        Refused(Box::new(r))
    }
}

/// A speech model over /v2: log-mel windows in (`[N, 80, 3000]`, the front end's output), each
/// transcribed on its own (no text carried between rows); per row its ids (INT32, padded with −1
/// to the longest) and text — always both, as JSON.
fn speech_signature() -> Signature {
    Signature {
        inputs: vec![TensorSpec::new("mel", "FP32", &[-1, 80, 3000])],
        outputs: vec![TensorSpec::new("ids", "INT32", &[-1, -1]), TensorSpec::new("text", "BYTES", &[-1])],
    }
}

async fn run_infer(pool: &Pool, model: &str, headers: &HeaderMap, body: Bytes) -> Result<Response, Refused> {
    let bad = |m: String| Refused::from(error(StatusCode::BAD_REQUEST, m));
    let refuse = |status: StatusCode, m: String| Refused::from(error(status, m));
    let speech = pool.speech_model(Some(model)).is_ok();
    let batch = if speech {
        None
    } else {
        Some(pool.batch_model(model).map_err(|e| match e {
            PoolError::UnknownModel(_) => refuse(StatusCode::NOT_FOUND, format!("no model {model:?} is served")),
            _ => bad(format!("{model} generates text: use POST /v1/completions or /v1/chat/completions")),
        })?)
    };
    let sig = batch.as_ref().map_or_else(speech_signature, |b| b.signature());
    // The JSON part, and the binary part after it.
    let json_len = match headers.get(HEADER_LEN) {
        None => body.len(),
        Some(v) => {
            let n: usize = v
                .to_str()
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .ok_or_else(|| bad(format!("{HEADER_LEN} must be a byte count, got {v:?}")))?;
            if n > body.len() {
                return Err(bad(format!("{HEADER_LEN} is {n} but the body has {} bytes", body.len())));
            }
            n
        }
    };
    let req: InferRequest = serde_json::from_slice(&body[..json_len]).map_err(|e| bad(format!("request JSON: {e}")))?;
    let mut binary = body.slice(json_len..);
    let [spec] = sig.inputs.as_slice() else {
        return Err(refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            "models with several inputs are not served over /v2 yet".into(),
        ));
    };
    if req.inputs.len() != 1 {
        return Err(bad(format!("{model} takes exactly one input, {:?}; got {}", spec.name, req.inputs.len())));
    }
    let given = &req.inputs[0];
    if given.name != spec.name {
        return Err(bad(format!("{model} has no input {:?}; its input is {:?}", given.name, spec.name)));
    }
    if given.datatype != spec.datatype {
        return Err(bad(format!("input {:?} takes {}, not {}", spec.name, spec.datatype, given.datatype)));
    }
    let fits = given.shape.len() == spec.shape.len()
        && given.shape.iter().zip(&spec.shape).all(|(&g, &s)| g >= 0 && (s == -1 || g == s));
    if !fits {
        return Err(bad(format!(
            "input {:?} must have shape {:?} (-1: any), got {:?}",
            spec.name, spec.shape, given.shape
        )));
    }
    let count = given.shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d as usize)).unwrap_or(usize::MAX);
    if count > MAX_ELEMENTS {
        return Err(refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("input {:?} has {count} elements; the limit is {MAX_ELEMENTS}", spec.name),
        ));
    }
    let input = match (&given.parameters.binary_data_size, &given.data) {
        (Some(_), Some(_)) => return Err(bad("an input has both data and binary_data_size".into())),
        (None, None) => return Err(bad(format!("input {:?} has no data", spec.name))),
        (Some(size), None) => {
            let size = *size as usize;
            if size > binary.len() {
                return Err(bad(format!("input {:?} claims {size} binary bytes; {} remain", spec.name, binary.len())));
            }
            let bytes = binary.split_to(size);
            from_binary(&spec.datatype, &given.shape, bytes, count).map_err(bad)?
        }
        (None, Some(flat)) => from_json(&spec.datatype, &given.shape, flat, count).map_err(bad)?,
    };
    if !binary.is_empty() {
        return Err(bad(format!("{} bytes of binary data follow the last tensor", binary.len())));
    }
    if speech {
        return speech_infer(pool, model, input, req.id).await;
    }
    let served = pool.submit(model, input, None).await.map_err(|e| Refused::from(pool_error(&e)))?;
    // Outputs: all, or those asked for; binary if asked (per output, or for all).
    let rows = served.vectors.len();
    let all_binary = req.parameters.binary_data_output.unwrap_or(false);
    let wanted: Vec<(usize, bool)> = match &req.outputs {
        None => (0..sig.outputs.len()).map(|i| (i, all_binary)).collect(),
        Some(list) => {
            let mut w = Vec::new();
            for o in list {
                let i = sig.outputs.iter().position(|s| s.name == o.name).ok_or_else(|| {
                    let names: Vec<&str> = sig.outputs.iter().map(|s| s.name.as_str()).collect();
                    bad(format!("{model} has no output {:?}; its outputs are {names:?}", o.name))
                })?;
                w.push((i, o.parameters.binary_data.unwrap_or(all_binary)));
            }
            w
        }
    };
    let mut outputs = Vec::new();
    let mut tail: Vec<u8> = Vec::new();
    for (i, as_binary) in wanted {
        let values: Vec<f32> = (0..rows)
            .flat_map(|r| if i == 0 { served.vectors[r].clone() } else { served.extra[r][i - 1].clone() })
            .collect();
        let width = values.len() / rows.max(1);
        let spec = &sig.outputs[i];
        let mut out = json!({ "name": spec.name, "datatype": "FP32", "shape": [rows, width] });
        if as_binary {
            let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            out["parameters"] = json!({ "binary_data_size": bytes.len() });
            tail.extend(bytes);
        } else {
            out["data"] = json!(values);
        }
        outputs.push(out);
    }
    let mut head = json!({
        "model_name": model,
        "model_version": VERSION,
        "outputs": outputs,
        "parameters": { "tab": served.tab, "backend": served.backend, "kind": served.kind },
    });
    if let Some(id) = req.id {
        head["id"] = json!(id);
    }
    if tail.is_empty() {
        return Ok(Json(head).into_response());
    }
    let mut bytes = serde_json::to_vec(&head).expect("JSON");
    let json_len = bytes.len();
    bytes.extend(tail);
    let mut resp = bytes.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    h.insert(HEADER_LEN, HeaderValue::from(json_len));
    Ok(resp)
}

/// Each mel row transcribed on its own, all at once (the pool queues them for its replicas).
async fn speech_infer(pool: &Pool, model: &str, input: Input, id: Option<String>) -> Result<Response, Refused> {
    let Input::Tensor(t) = input else { unreachable!("an FP32 input is a tensor") };
    // The shape was checked against the signature: rows of 80 × 3000 values.
    let values = t.to_f32().unwrap_or_default();
    if let Some(bad) = values.iter().find(|x| !x.is_finite()) {
        return Err(Refused::from(error(
            StatusCode::BAD_REQUEST,
            format!("the mel tensor holds {bad}: values must be finite"),
        )));
    }
    let runs = values.chunks_exact(80 * 3000).map(|row| {
        let mel = Mel { data: row.to_vec(), content_frames: 3000 };
        pool.transcribe(Some(model), Audio::Windows(vec![(0, mel)], 30.0), vec![], None)
    });
    let done: Vec<_> = futures_util::future::join_all(runs)
        .await
        .into_iter()
        .collect::<Result<_, _>>()
        .map_err(|e| Refused::from(pool_error(&e)))?;
    let width = done.iter().map(|d: &Transcribed| d.transcript.ids.len()).max().unwrap_or(0);
    let ids: Vec<i64> = done
        .iter()
        .flat_map(|d| {
            let ids = &d.transcript.ids;
            ids.iter().map(|&i| i as i64).chain(std::iter::repeat_n(-1, width - ids.len()))
        })
        .collect();
    let texts: Vec<&str> = done.iter().map(|d| d.transcript.text.as_str()).collect();
    let (tab, backend) = done.first().map_or((0, String::new()), |d| (d.tab, d.backend.clone()));
    let mut head = json!({
        "model_name": model,
        "model_version": VERSION,
        "outputs": [
            { "name": "ids", "datatype": "INT32", "shape": [done.len(), width], "data": ids },
            { "name": "text", "datatype": "BYTES", "shape": [done.len()], "data": texts },
        ],
        "parameters": { "tab": tab, "backend": backend },
    });
    if let Some(id) = id {
        head["id"] = json!(id);
    }
    Ok(Json(head).into_response())
}

/// Dimensions as the pool's tensor shape.
fn dims(shape: &[i64]) -> Vec<u32> {
    shape.iter().map(|&d| d as u32).collect()
}

fn from_binary(datatype: &str, shape: &[i64], bytes: Bytes, count: usize) -> Result<Input, String> {
    match datatype {
        "FP32" => {
            if bytes.len() != count * 4 {
                return Err(format!("FP32 {shape:?} needs {} bytes, got {}", count * 4, bytes.len()));
            }
            Ok(Input::Tensor(Tensor { dtype: DType::F32, shape: dims(shape), data: bytes }))
        }
        "BYTES" => {
            // Each element: a 4-byte little-endian length, then that many bytes.
            let mut texts = Vec::with_capacity(count.min(1024));
            let mut rest = &bytes[..];
            while !rest.is_empty() {
                if rest.len() < 4 {
                    return Err("BYTES data ends inside a length prefix".into());
                }
                let n = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                if rest.len() - 4 < n {
                    return Err(format!("a BYTES element claims {n} bytes; {} remain", rest.len() - 4));
                }
                let s = std::str::from_utf8(&rest[4..4 + n]).map_err(|_| "a BYTES element is not UTF-8 text")?;
                texts.push(s.to_string());
                rest = &rest[4 + n..];
            }
            if texts.len() != count {
                return Err(format!("{count} elements expected by the shape, {} in the data", texts.len()));
            }
            Ok(Input::Texts(texts))
        }
        other => Err(format!("datatype {other} is not taken by this model")),
    }
}

fn from_json(datatype: &str, shape: &[i64], flat: &Flat, count: usize) -> Result<Input, String> {
    match (datatype, flat) {
        ("FP32", Flat::Numbers(v)) => {
            if v.len() != count {
                return Err(format!("shape {shape:?} has {count} elements, the data {}", v.len()));
            }
            let data: Vec<u8> = v.iter().flat_map(|&x| (x as f32).to_le_bytes()).collect();
            Ok(Input::Tensor(Tensor { dtype: DType::F32, shape: dims(shape), data: data.into() }))
        }
        ("BYTES", Flat::Strings(v)) => {
            if v.len() != count {
                return Err(format!("shape {shape:?} has {count} elements, the data {}", v.len()));
            }
            Ok(Input::Texts(v.clone()))
        }
        (dt, _) => Err(format!("the data does not match datatype {dt}")),
    }
}
