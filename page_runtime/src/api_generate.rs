//! Text generation in the page (feature `api`): a llama GGUF (SmolLM2) becomes the same step
//! graph the host sends a tab (`model_graphs::smollm2`), its sessions' KV cache lives in this
//! tab's executor as it does under a pool (`sessions::Sessions`), and a stream steps it one
//! token at a time for the page's `for await` loop: the prompt in chunks of `STEP_TOKENS`, then
//! one token per step until a stop id or `max_tokens`.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use js_sys::Uint8Array;
use model_graphs::smollm2::{self, ChatTemplate, KvLimits, Message, Outputs, Parsed, TextStream};
use model_graphs::tokenizers::Tokenizer;
use shared_proto::{ExecBackend, Sampling, StepRow};
use wasm_bindgen::prelude::*;

use crate::api::{Runtime, error, remote};
use crate::executors::inputs::Check;
use crate::models::TabModel;
use crate::sessions::Sessions;

/// Most prompt tokens in one step (the pool's `step_tokens`): bounds a step's activations.
const STEP_TOKENS: usize = 256;
/// Sessions one loaded generator holds at once.
const SESSIONS: u32 = 4;

struct Inner {
    model: TabModel,
    sessions: RefCell<Sessions>,
    vocab: u32,
    tokenizer: Tokenizer,
    text_tokenizer: Tokenizer,
    chat: ChatTemplate,
    stop_ids: Vec<u32>,
    backend: String,
    context: u32,
    /// A step of this model is running: steps go one at a time (one executor, one KV cache).
    stepping: Cell<bool>,
    next_session: Cell<u64>,
}

/// A text generator loaded in this tab.
#[wasm_bindgen]
pub struct Generator {
    inner: Rc<Inner>,
}

#[wasm_bindgen]
impl Runtime {
    /// A llama-architecture GGUF (SmolLM2-135M-Instruct Q4_1) from its bytes, with a KV cache
    /// for `context` tokens per session (default 2048) and 4 sessions. Backend: the runtime's;
    /// `auto` is WebGPU on a hardware adapter, else the wasm CPU executor (the host's rule for a
    /// decode loop: a software rasteriser decodes slower than wasm).
    #[wasm_bindgen(js_name = loadGenerator)]
    pub async fn load_generator(&self, gguf: Uint8Array, context: Option<u32>) -> Result<Generator, JsValue> {
        let context = context.unwrap_or(2048).clamp(16, 1 << 16);
        let bytes = gguf.to_vec();
        let g = smollm2::gguf::Gguf::from_bytes(&bytes).map_err(|e| error("BadInput", format!("{e:#}")))?;
        drop(bytes);
        let parsed = Parsed::from_gguf(g, "the GGUF").map_err(|e| error("BadInput", format!("{e:#}")))?;
        let limits = KvLimits { max_tokens: context * SESSIONS, max_sessions: SESSIONS };
        let (graph, weights) =
            parsed.graph(limits, Outputs::default()).map_err(|e| error("ModelError", format!("{e:#}")))?;
        let kv = graph.kv.ok_or_else(|| error("ModelError", "the step graph declares no KV cache"))?;
        let vocab = crate::sessions::vocab(&graph);
        let (label, backend) = self.generation_backend()?;
        let nn = self.webnn_for(&backend);
        let model = TabModel::new(graph, &backend, self.webgpu(), nn).map_err(remote)?;
        // The graph declared these very bytes' hashes.
        model.put_weights(0, &weights, Check::Known).await.map_err(remote)?;
        drop(weights);
        model.prepare().await.map_err(remote)?;
        let text_tokenizer = smollm2::tokenizer::as_text_only(&parsed.tokenizer);
        Ok(Generator {
            inner: Rc::new(Inner {
                model,
                sessions: RefCell::new(Sessions::new(kv)),
                vocab,
                tokenizer: parsed.tokenizer,
                text_tokenizer,
                chat: parsed.chat,
                stop_ids: parsed.eos_ids,
                backend: label,
                context: context.min(parsed.context_length),
                stepping: Cell::new(false),
                next_session: Cell::new(1),
            }),
        })
    }
}

impl Runtime {
    fn generation_backend(&self) -> Result<(String, ExecBackend), JsValue> {
        let hardware_gpu = self
            .caps()
            .webgpu
            .adapter
            .as_ref()
            .is_some_and(|a| !a.is_fallback && !a.device_type.eq_ignore_ascii_case("cpu"));
        match self.wanted() {
            "webgpu" => Ok(("webgpu".into(), ExecBackend::WebGpu)),
            "webnn" => Ok(("webnn-cpu".into(), ExecBackend::WebNn { device: "cpu".into() })),
            "auto" if hardware_gpu && self.webgpu().is_some() => Ok(("webgpu".into(), ExecBackend::WebGpu)),
            _ => Ok(("wasm-cpu".into(), ExecBackend::Cpu)),
        }
    }
}

#[wasm_bindgen]
impl Generator {
    /// The backend it runs on ("wasm-cpu", "webgpu", "webnn-cpu").
    #[wasm_bindgen(getter)]
    pub fn backend(&self) -> String {
        self.inner.backend.clone()
    }

    /// Ids that end a stream (left out of its text).
    #[wasm_bindgen(getter, js_name = stopIds)]
    pub fn stop_ids(&self) -> Vec<u32> {
        self.inner.stop_ids.clone()
    }

    /// Token ids of a chat: `messages` is `[{ role, content }]`; the template's markers are the
    /// only control tokens (what a message says is text), the assistant's turn opened.
    #[wasm_bindgen(js_name = chatIds)]
    pub fn chat_ids(&self, messages: JsValue) -> Result<Vec<u32>, JsValue> {
        let text = js_sys::JSON::stringify(&messages).map_err(|_| error("BadInput", "messages must be JSON"))?;
        let v: Vec<serde_json::Value> = serde_json::from_str(&String::from(text))
            .map_err(|_| error("BadInput", "messages is an array of { role, content }"))?;
        let mut msgs = Vec::with_capacity(v.len());
        for m in &v {
            let (Some(role), Some(content)) = (m["role"].as_str(), m["content"].as_str()) else {
                return Err(error("BadInput", "each message has a string role and content"));
            };
            if !["system", "user", "assistant"].contains(&role) {
                return Err(error("BadInput", format!("role {role:?}: expected system, user or assistant")));
            }
            msgs.push(Message::new(role, content));
        }
        let i = &self.inner;
        smollm2::chat_ids(&i.chat, &i.tokenizer, &i.text_tokenizer, &msgs).map_err(|e| error("BadInput", e))
    }

    /// Token ids of `text` as written (control tokens in it are theirs: a raw prompt).
    pub fn encode(&self, text: String) -> Result<Vec<u32>, JsValue> {
        let enc = self.inner.tokenizer.encode(text.as_str(), false).map_err(|e| error("BadInput", e))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Start a stream continuing `prompt` (token ids) for at most `max_tokens` tokens, greedy
    /// when `temperature` is 0, else sampled with top-k / top-p from `seed` (the draw of a
    /// position depends on the seed and the position only, as in the pool).
    pub fn start(
        &self,
        prompt: Vec<u32>,
        max_tokens: u32,
        temperature: f32,
        top_k: u32,
        top_p: f32,
        seed: f64,
    ) -> Result<GenStream, JsValue> {
        let i = &self.inner;
        if prompt.is_empty() {
            return Err(error("BadInput", "an empty prompt: there is nothing to continue"));
        }
        if max_tokens == 0 {
            return Err(error("BadInput", "maxTokens must be at least 1"));
        }
        if prompt.len() as u64 + max_tokens as u64 > i.context as u64 {
            return Err(error(
                "BadInput",
                format!(
                    "the prompt ({} tokens) plus maxTokens {max_tokens} exceeds the context of {}",
                    prompt.len(),
                    i.context
                ),
            ));
        }
        if let Some(t) = prompt.iter().find(|&&t| t >= i.vocab) {
            return Err(error("BadInput", format!("token {t} is outside the vocabulary of {}", i.vocab)));
        }
        if !(temperature.is_finite() && temperature >= 0.0 && top_p.is_finite() && top_p > 0.0 && top_p <= 1.0) {
            return Err(error("BadInput", "temperature ≥ 0 and 0 < topP ≤ 1"));
        }
        let sampling = if temperature == 0.0 {
            Sampling::Greedy
        } else {
            Sampling::TopKP { temperature, top_k, top_p, seed: seed as u64 }
        };
        let session = i.next_session.get();
        i.next_session.set(session + 1);
        i.sessions.borrow_mut().open(session, prompt.len() as u32 + max_tokens).map_err(remote)?;
        Ok(GenStream {
            inner: i.clone(),
            session,
            sampling,
            prompt: RefCell::new(Some(prompt)),
            left: Cell::new(max_tokens),
            last: Cell::new(None),
            text: RefCell::default(),
            ids: RefCell::default(),
            ended: Cell::new(false),
        })
    }
}

/// One stream: `next()` steps the model and returns the next piece of text.
#[wasm_bindgen]
pub struct GenStream {
    inner: Rc<Inner>,
    session: u64,
    sampling: Sampling,
    /// The prompt, until it has been run.
    prompt: RefCell<Option<Vec<u32>>>,
    left: Cell<u32>,
    /// The token sampled last, fed in at the next step.
    last: Cell<Option<u32>>,
    text: RefCell<TextStream>,
    ids: RefCell<Vec<u32>>,
    ended: Cell<bool>,
}

#[wasm_bindgen]
impl GenStream {
    /// The next `{ text, id }`: `id` the token generated (its text may be held back until a
    /// character is whole, then `text` is ""), or `{ text, done: true, finish }` once it ended
    /// ("stop": a stop id; "length": `maxTokens`), the held-back text with it; `null` after.
    pub async fn next(&self) -> Result<JsValue, JsValue> {
        if self.ended.get() {
            return Ok(JsValue::NULL);
        }
        let i = &self.inner;
        if i.stepping.replace(true) {
            return Err(error("BadInput", "another stream of this generator is stepping: await one step at a time"));
        }
        let stepped = self.step().await;
        i.stepping.set(false);
        let id = match stepped {
            Ok(id) => id,
            Err(e) => {
                self.close();
                return Err(e);
            }
        };
        let o = js_sys::Object::new();
        let set = |k: &str, v: JsValue| js_sys::Reflect::set(&o, &k.into(), &v).map(|_| ());
        let finish = if i.stop_ids.contains(&id) {
            Some("stop")
        } else {
            self.ids.borrow_mut().push(id);
            self.left.set(self.left.get() - 1);
            (self.left.get() == 0).then_some("length")
        };
        let mut text = String::new();
        if finish != Some("stop") {
            let decode = |ids: &[u32]| i.tokenizer.decode(ids, true).map_err(|e| anyhow::anyhow!("{e}"));
            text = self.text.borrow_mut().push_with(id, decode).map_err(|e| error("ModelError", e))?;
            set("id", id.into())?;
        }
        if let Some(f) = finish {
            let decode = |ids: &[u32]| i.tokenizer.decode(ids, true).map_err(|e| anyhow::anyhow!("{e}"));
            text.push_str(&self.text.borrow_mut().finish_with(decode).map_err(|e| error("ModelError", e))?);
            set("done", true.into())?;
            set("finish", f.into())?;
            self.close();
        }
        self.last.set(Some(id));
        set("text", text.into())?;
        Ok(o.into())
    }

    /// The ids generated so far (stop id excluded).
    #[wasm_bindgen(getter)]
    pub fn ids(&self) -> Vec<u32> {
        self.ids.borrow().clone()
    }

    /// End the stream now (an aborted `for await`): its KV rows are freed.
    pub fn close(&self) {
        if !self.ended.replace(true) {
            self.inner.sessions.borrow_mut().close(self.session);
        }
    }
}

impl GenStream {
    /// Run the prompt (in chunks) or the last token; the token sampled after it.
    async fn step(&self) -> Result<u32, JsValue> {
        let i = &self.inner;
        let chunks: Vec<Vec<u32>> = match self.prompt.borrow_mut().take() {
            Some(p) => p.chunks(STEP_TOKENS).map(<[u32]>::to_vec).collect(),
            None => vec![vec![self.last.get().ok_or_else(|| error("ModelError", "no token to continue from"))?]],
        };
        let mut sampled = None;
        for tokens in chunks {
            let rows = [StepRow { session: self.session, tokens, sampling: self.sampling }];
            let plan = i.sessions.borrow().plan(&rows, i.vocab).map_err(remote)?;
            let out = i.model.run(&plan.inputs).await.map_err(remote)?;
            i.sessions.borrow_mut().commit(&plan);
            let t = out
                .outputs
                .first()
                .filter(|t| t.dtype == shared_proto::DType::I32 && t.data.len() == 4)
                .ok_or_else(|| error("ModelError", "a step must output one i32 token"))?;
            sampled = Some(i32::from_le_bytes([t.data[0], t.data[1], t.data[2], t.data[3]]) as u32);
        }
        sampled.ok_or_else(|| error("ModelError", "an empty step"))
    }
}

impl Drop for GenStream {
    fn drop(&mut self) {
        self.close();
    }
}
