//! The runtime as a library any web page can use (cargo feature `api`; built into the npm package
//! in `www/pkg/npm/`, wrapped by its `index.js`): a model runs in the page's own tab, no host.
//! `Runtime.create(backend)` probes the tab; `loadEncoder` builds a sentence encoder from its
//! files' bytes with `model_graphs` (the graph the host would build, byte for byte), loads it on
//! the chosen backend — with "auto", on every backend the tab has, timed on one sentence, the
//! fastest kept — and `embed` tokenises in the page and returns one unit vector per text.
//! Errors are JS `Error`s whose `name` is the kind: `BadInput`, `Unsupported`, `ModelError`.

use std::rc::Rc;

use js_sys::{Float32Array, Uint8Array};
use model_graphs::minilm;
use model_graphs::tokenizers::Tokenizer;
use shared_proto::{Capabilities, ErrorKind, ExecBackend, RemoteError};
use wasm_bindgen::prelude::*;

use crate::caps;
use crate::executors::inputs::Check;
use crate::executors::webgpu::WebGpuExecutor;
use crate::executors::webnn::{self, WebNn};
use crate::models::TabModel;

/// The sentence every candidate backend is timed on (the host's calibration sentence).
const CALIBRATION_TEXT: &str = "Calibration runs one ordinary sentence through every candidate backend.";
/// Timed runs per candidate after its warm-up; the median counts.
const CALIBRATION_RUNS: usize = 3;

/// A JS `Error` named by its kind.
pub(crate) fn error(kind: &str, message: impl std::fmt::Display) -> JsValue {
    let e = js_sys::Error::new(&message.to_string());
    e.set_name(kind);
    e.into()
}

pub(crate) fn remote(e: RemoteError) -> JsValue {
    let kind = match e.kind {
        ErrorKind::BadInput => "BadInput",
        ErrorKind::Unsupported => "Unsupported",
        _ => "ModelError",
    };
    error(kind, e.message)
}

fn now_ms() -> f64 {
    js_sys::Date::now()
}

/// What this tab offers, probed once: the WebGPU device and the WebNN contexts that opened.
#[wasm_bindgen]
pub struct Runtime {
    wanted: String,
    caps: Capabilities,
    gpu: Option<Rc<WebGpuExecutor>>,
    nn: Vec<(String, Rc<WebNn>)>,
}

#[wasm_bindgen]
impl Runtime {
    /// Probe the tab. `backend`: "auto" (each model is timed on every backend found, the fastest
    /// kept), "webgpu", "webnn" or "cpu" (the wasm CPU executor, always there). A backend asked
    /// for that the tab lacks is an `Unsupported` error naming what the probe found.
    pub async fn create(backend: String) -> Result<Runtime, JsValue> {
        if !["auto", "webgpu", "webnn", "cpu"].contains(&backend.as_str()) {
            return Err(error("BadInput", format!("backend {backend:?}: expected auto, webgpu, webnn or cpu")));
        }
        let (caps, gpu) = caps::probe().await;
        let mut nn = Vec::new();
        for c in caps.webnn.contexts.iter().filter(|c| c.ok) {
            if let Ok(ctx) = webnn::context(&c.device_type).await {
                nn.push((c.device_type.clone(), Rc::new(ctx)));
            }
        }
        let rt = Runtime { wanted: backend, caps, gpu: gpu.map(Rc::new), nn };
        if rt.candidates().is_empty() {
            let found = serde_json::to_string(&rt.caps).unwrap_or_default();
            return Err(error("Unsupported", format!("this tab has no {} (it has: {found})", rt.wanted)));
        }
        Ok(rt)
    }

    /// The probe's findings (user agent, cores, WebGPU adapter, WebNN contexts) as an object.
    #[wasm_bindgen(getter)]
    pub fn capabilities(&self) -> JsValue {
        js_sys::JSON::parse(&serde_json::to_string(&self.caps).unwrap_or_else(|_| "null".into()))
            .unwrap_or(JsValue::NULL)
    }

    /// A sentence encoder (BERT in the sentence-transformers layout, e.g. all-MiniLM-L6-v2)
    /// from the bytes of its `model.safetensors`, the text of its `tokenizer.json` and of its
    /// `config.json` (absent: all-MiniLM-L6-v2's values).
    #[wasm_bindgen(js_name = loadEncoder)]
    pub async fn load_encoder(
        &self,
        safetensors: Uint8Array,
        tokenizer: String,
        config: Option<String>,
    ) -> Result<Encoder, JsValue> {
        let e = minilm::Encoder::from_bytes(&safetensors.to_vec(), config.as_deref(), tokenizer.as_bytes())
            .map_err(|e| error("BadInput", format!("{e:#}")))?;
        let (ids, _) = minilm::tokenize(&e.tokenizer, &[CALIBRATION_TEXT]).map_err(|e| error("ModelError", e))?;
        let probe = minilm::inputs_from_ids(&ids);
        let mut best: Option<(TabModel, String, f64)> = None;
        let mut calibration = Vec::new();
        let mut failures = Vec::new();
        for (label, backend) in self.candidates() {
            let loaded = async {
                let gpu = self.gpu.clone();
                let nn = self.nn.iter().find(|(d, _)| matches!(&backend, ExecBackend::WebNn { device } if device == d));
                let m = TabModel::new(e.graph.clone(), &backend, gpu, nn.map(|(_, c)| c.clone()))?;
                // The graph declared these very bytes' hashes.
                m.put_weights(0, &e.weights, Check::Known).await?;
                m.prepare().await?;
                let mut ms = Vec::with_capacity(CALIBRATION_RUNS);
                for _ in 0..CALIBRATION_RUNS {
                    let t = now_ms();
                    m.run(&probe).await?;
                    ms.push(now_ms() - t);
                }
                ms.sort_by(f64::total_cmp);
                Ok::<_, RemoteError>((m, ms[ms.len() / 2]))
            }
            .await;
            match loaded {
                Ok((m, ms)) => {
                    calibration.push((label.clone(), ms));
                    if best.as_ref().is_none_or(|(_, _, b)| ms < *b) {
                        best = Some((m, label, ms));
                    }
                }
                Err(err) => failures.push(format!("{label}: {}", err.message)),
            }
        }
        let Some((model, backend, _)) = best else {
            return Err(error("Unsupported", format!("no backend could run the model: {}", failures.join("; "))));
        };
        Ok(Encoder { model, tokenizer: e.tokenizer, backend, calibration, failures, hidden: e.config.hidden_size })
    }
}

#[wasm_bindgen]
impl Runtime {
    /// Lend this tab to a pool: connect to a `tabpool serve --join` at `url` (its
    /// `ws://host:port/join`) with a join token from `tabpool token create`, and serve what the
    /// pool sends — the models the token names, their batches and streams — until the pool or
    /// the page (`leave()`, or closing the page) ends it. Resolves once the pool admitted the
    /// tab; a refused token is a `Refused` error with the pool's reason.
    pub async fn join(&self, url: String, token: String) -> Result<Lending, JsValue> {
        if !(url.starts_with("ws://") || url.starts_with("wss://")) {
            return Err(error("BadInput", format!("{url:?}: a pool's join URL is ws://host:port/join or wss://…")));
        }
        // A join token says who it is; the tab id is the pool's to give.
        let session = crate::serve::open(&url, token, 0, false).await.map_err(|e| error("Refused", e))?;
        let (tab_id, socket) = (session.tab_id, session.socket());
        let closed = wasm_bindgen_futures::future_to_promise(async move {
            match session.serve().await {
                Ok((code, reason)) => {
                    let o = js_sys::Object::new();
                    js_sys::Reflect::set(&o, &"code".into(), &code.into())?;
                    js_sys::Reflect::set(&o, &"reason".into(), &reason.into())?;
                    Ok(o.into())
                }
                Err(e) => Err(error("ModelError", e)),
            }
        });
        Ok(Lending { tab_id, socket, closed })
    }
}

/// This tab lent to a pool.
#[wasm_bindgen]
pub struct Lending {
    tab_id: u64,
    socket: Rc<crate::socket::Socket>,
    closed: js_sys::Promise,
}

#[wasm_bindgen]
impl Lending {
    /// The id the pool gave this tab.
    #[wasm_bindgen(getter, js_name = tabId)]
    pub fn tab_id(&self) -> f64 {
        self.tab_id as f64
    }

    /// Resolves with `{ code, reason }` when the lending ends: the pool let the tab go (a
    /// quarantine says why), the network dropped, or the page left.
    #[wasm_bindgen(getter)]
    pub fn closed(&self) -> js_sys::Promise {
        self.closed.clone()
    }

    /// Stop lending: the pool retries what this tab was running elsewhere.
    pub fn leave(&self) {
        self.socket.close(1000, "the page left the pool");
    }
}

impl Runtime {
    pub(crate) fn caps(&self) -> &Capabilities {
        &self.caps
    }

    pub(crate) fn wanted(&self) -> &str {
        &self.wanted
    }

    pub(crate) fn webgpu(&self) -> Option<Rc<WebGpuExecutor>> {
        self.gpu.clone()
    }

    pub(crate) fn webnn_for(&self, backend: &ExecBackend) -> Option<Rc<WebNn>> {
        let ExecBackend::WebNn { device } = backend else { return None };
        self.nn.iter().find(|(d, _)| d == device).map(|(_, c)| c.clone())
    }

    /// (label, backend) of every backend to try for `wanted`, fastest-first guesses first.
    fn candidates(&self) -> Vec<(String, ExecBackend)> {
        let mut out = Vec::new();
        if matches!(self.wanted.as_str(), "auto" | "webnn") {
            for (device, _) in &self.nn {
                out.push((format!("webnn-{device}"), ExecBackend::WebNn { device: device.clone() }));
            }
        }
        if matches!(self.wanted.as_str(), "auto" | "webgpu") && self.gpu.is_some() {
            out.push(("webgpu".into(), ExecBackend::WebGpu));
        }
        if matches!(self.wanted.as_str(), "auto" | "cpu") {
            out.push(("wasm-cpu".into(), ExecBackend::Cpu));
        }
        out
    }
}

/// A sentence encoder loaded in this tab.
#[wasm_bindgen]
pub struct Encoder {
    model: TabModel,
    tokenizer: Tokenizer,
    backend: String,
    calibration: Vec<(String, f64)>,
    failures: Vec<String>,
    hidden: usize,
}

#[wasm_bindgen]
impl Encoder {
    /// The backend it runs on ("webnn-cpu", "webgpu", "wasm-cpu", …).
    #[wasm_bindgen(getter)]
    pub fn backend(&self) -> String {
        self.backend.clone()
    }

    /// What loading measured: `[{backend, ms}]` (median of 3 runs of one sentence), and
    /// `[{backend, error}]` for backends that could not run it.
    #[wasm_bindgen(getter)]
    pub fn calibration(&self) -> JsValue {
        let rows: Vec<serde_json::Value> = self
            .calibration
            .iter()
            .map(|(b, ms)| serde_json::json!({ "backend": b, "ms": ms }))
            .chain(self.failures.iter().map(|f| serde_json::json!({ "error": f })))
            .collect();
        js_sys::JSON::parse(&serde_json::Value::from(rows).to_string()).unwrap_or(JsValue::NULL)
    }

    /// The width of each vector (384 for all-MiniLM-L6-v2).
    #[wasm_bindgen(getter)]
    pub fn dimensions(&self) -> usize {
        self.hidden
    }

    /// One L2-normalised vector per text, in order. Empty texts are a `BadInput` error.
    pub async fn embed(&self, texts: Vec<String>) -> Result<Vec<Float32Array>, JsValue> {
        if texts.is_empty() {
            return Err(error("BadInput", "no texts to embed"));
        }
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let (ids, _) = minilm::tokenize(&self.tokenizer, &refs).map_err(|e| error("BadInput", e))?;
        let out = self.model.run(&minilm::inputs_from_ids(&ids)).await.map_err(remote)?;
        let flat = out.outputs.first().and_then(|t| t.to_f32()).ok_or_else(|| error("ModelError", "no output"))?;
        if flat.len() != texts.len() * self.hidden {
            return Err(error("ModelError", format!("{} values for {} texts", flat.len(), texts.len())));
        }
        Ok(flat.chunks_exact(self.hidden).map(Float32Array::from).collect())
    }
}
