//! The tab's main loop: read launch parameters from the page URL, probe, connect, say `Hello`,
//! then answer requests until the host closes the socket.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use bytes::Bytes;
use futures_util::StreamExt;
use js_sys::Reflect;
use shared_proto::{
    ErrorKind, Frame, Hello, Limits, PROTOCOL_VERSION, RemoteError, Reply, Request, Tensor, ToHost, ToTab, decode,
};
use wasm_bindgen::{JsCast, JsValue};

use crate::caps;
use crate::executors::inputs::Check;
use crate::executors::webgpu::{self, WebGpuExecutor};
use crate::executors::webnn::{self, WebNn};
use crate::models::{PartialWeight, TabModel};
use crate::sessions::{self, Sessions};
use crate::socket::{self, Event, Socket};
use crate::weight_cache::WeightCache;

/// WebSocket close code for a protocol violation (RFC 6455 §7.4.1).
const CLOSE_PROTOCOL_ERROR: u16 = 1002;

struct LaunchParams {
    socket_url: String,
    token: String,
    tab_id: u64,
}

fn launch_params() -> Result<LaunchParams, String> {
    let search = web_sys::window().ok_or("no window")?.location().search().map_err(caps::js_text)?;
    let mut socket_url = None;
    let mut token = None;
    let mut tab_id = None;
    for pair in search.trim_start_matches('?').split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = js_sys::decode_uri_component(v).map_err(caps::js_text)?.as_string().unwrap_or_default();
        match k {
            "ws" => socket_url = Some(v),
            "token" => token = Some(v),
            "tab" => tab_id = v.parse().ok(),
            // Before the capabilities are probed: they report it.
            "activations" => {
                use crate::executors::cpu::quantized_int::{Activations, set_activations};
                set_activations(Activations::from_name(&v).ok_or(format!("unknown &activations={v}"))?);
            }
            _ => {}
        }
    }
    Ok(LaunchParams {
        socket_url: socket_url.ok_or("page URL lacks ?ws=")?,
        token: token.ok_or("page URL lacks &token=")?,
        tab_id: tab_id.ok_or("page URL lacks a numeric &tab=")?,
    })
}

/// Shown in the page title so a WebDriver client (and a person) can see where a tab is stuck.
fn status(text: &str) {
    if let Some(doc) = web_sys::window().and_then(|w| w.document()) {
        let _ = js_sys::Reflect::set(&doc, &"title".into(), &format!("tabpool: {text}").into());
    }
}

pub async fn run() -> Result<(), String> {
    let result = serve().await.map(|_| ());
    match &result {
        Ok(()) => status("closed"),
        Err(e) => status(&format!("error: {e}")),
    }
    result
}

async fn serve() -> Result<(u16, String), String> {
    let params = launch_params()?;
    let session = open(&params.socket_url, params.token, params.tab_id, true).await?;
    session.serve().await
}

/// A connection the host welcomed: this tab serves it until either side closes it.
pub(crate) struct Session {
    socket: Rc<Socket>,
    events: futures_channel::mpsc::UnboundedReceiver<Event>,
    state: Rc<TabState>,
    pub tab_id: u64,
    /// Show progress in the page title (the host's own pages; never a page that lends its tab).
    titles: bool,
}

/// Probe, connect to `socket_url`, say `Hello` with `token` (a launched tab's secret and id, or
/// a join token with id 0), and wait for the host's `Welcome`: a `Reject` or a close before it is
/// an error carrying the host's reason.
pub(crate) async fn open(socket_url: &str, token: String, tab_id: u64, titles: bool) -> Result<Session, String> {
    let status = |text: &str| {
        if titles {
            status(text)
        }
    };
    status("probing");
    let (caps, executor) = caps::probe().await;
    status("connecting");
    let (socket, mut events) = socket::connect(socket_url).await?;
    let socket = Rc::new(socket);
    let hello = ToHost::Hello(Box::new(Hello { protocol_version: PROTOCOL_VERSION, tab_id, token, caps }));
    send(&socket, Frame::new(hello))?;
    let state = Rc::new(TabState {
        executor: RefCell::new(executor.map(Rc::new)),
        models: RefCell::default(),
        webnn: RefCell::default(),
        parts: RefCell::default(),
        sessions: RefCell::default(),
        cache: WeightCache::open().await.map(Rc::new),
        caching: RefCell::default(),
    });
    // The host's first frame: Welcome, or Reject (then it closes).
    let bytes = match events.next().await {
        Some(Event::Frame(b)) => b,
        Some(Event::Text) => {
            socket.close(CLOSE_PROTOCOL_ERROR, "text frames are not part of the protocol");
            return Err("host sent a text frame".into());
        }
        Some(Event::Closed { code, reason }) => return Err(format!("closed during handshake: {code} {reason}")),
        None => return Err("the socket ended during the handshake".into()),
    };
    match decode::<ToTab>(Bytes::from(bytes), &Limits::DEFAULT).map(|f| f.msg) {
        Ok(ToTab::Welcome { tab_id }) => {
            status(&format!("ready (tab {tab_id})"));
            Ok(Session { socket, events, state, tab_id, titles })
        }
        Ok(ToTab::Reject { reason, message }) => Err(format!("rejected ({reason:?}): {message}")),
        Ok(ToTab::Request { .. }) => {
            socket.close(CLOSE_PROTOCOL_ERROR, "a request before Welcome");
            Err("host sent a request before Welcome".into())
        }
        Err(e) => {
            socket.close(CLOSE_PROTOCOL_ERROR, "malformed frame");
            Err(format!("malformed frame from host: {e}"))
        }
    }
}

impl Session {
    /// The socket, to close it from the page (`leave`).
    pub fn socket(&self) -> Rc<Socket> {
        self.socket.clone()
    }

    /// Answer requests until the socket closes. Ok with the close code and reason when the host
    /// (or the page) closed it; Err on a protocol violation.
    pub async fn serve(mut self) -> Result<(u16, String), String> {
        while let Some(event) = self.events.next().await {
            let bytes = match event {
                Event::Frame(b) => b,
                Event::Text => {
                    self.socket.close(CLOSE_PROTOCOL_ERROR, "text frames are not part of the protocol");
                    return Err("host sent a text frame".into());
                }
                Event::Closed { code, reason } => {
                    if self.titles {
                        status("closed");
                    }
                    return Ok((code, reason));
                }
            };
            let frame: Frame<ToTab> = match decode(Bytes::from(bytes), &Limits::DEFAULT) {
                Ok(f) => f,
                Err(e) => {
                    self.socket.close(CLOSE_PROTOCOL_ERROR, "malformed frame");
                    return Err(format!("malformed frame from host: {e}"));
                }
            };
            match frame.msg {
                ToTab::Welcome { .. } | ToTab::Reject { .. } => {
                    self.socket.close(CLOSE_PROTOCOL_ERROR, "a second handshake frame");
                    return Err("host sent a handshake frame after Welcome".into());
                }
                ToTab::Request { id, req } => {
                    let (socket, state) = (self.socket.clone(), self.state.clone());
                    wasm_bindgen_futures::spawn_local(async move {
                        let (result, tensors) = handle(&state, req, frame.tensors).await;
                        if let Err(e) = send(&socket, Frame::with_tensors(ToHost::Reply { id, result }, tensors)) {
                            web_sys::console::error_1(&format!("reply {id} not sent: {e}").into());
                        }
                    });
                }
            }
        }
        Ok((1006, "the socket ended".into()))
    }
}

/// What a tab holds between requests.
struct TabState {
    /// Replaced by a new device when the old one was lost (see `gpu`).
    executor: RefCell<Option<Rc<WebGpuExecutor>>>,
    models: RefCell<HashMap<String, TabModel>>,
    /// WebNN contexts by device type, created on first use.
    webnn: RefCell<HashMap<String, Rc<WebNn>>>,
    /// A weight arriving in parts, per model.
    parts: RefCell<HashMap<String, PartialWeight>>,
    /// Generation sessions per stateful model (their KV rows live in the model's executor), and
    /// whether a step of that model is running: steps of one model go one at a time (the host
    /// batches sessions into one step; two interleaved steps would plan from the same lengths).
    /// The vocabulary size (derived from the graph once, at load) rides along for the id checks.
    sessions: RefCell<HashMap<String, StepState>>,
    /// Weights by content hash on disk (absent outside secure contexts).
    cache: Option<Rc<WeightCache>>,
    /// Piece offsets of weights being stored in the cache as their parts arrive, by hash.
    caching: RefCell<HashMap<String, Vec<usize>>>,
}

type Answer = (Result<Reply, RemoteError>, Vec<Tensor>);

async fn handle(state: &TabState, req: Request, inputs: Vec<Tensor>) -> Answer {
    match serve_request(state, req, inputs).await {
        Ok(answer) => answer,
        Err(e) => (Err(e), Vec::new()),
    }
}

async fn webnn_context(state: &TabState, device: &str) -> Result<Rc<WebNn>, RemoteError> {
    // A lost context is replaced (models on it fail with `DeviceLost` until loaded again).
    if let Some(c) = state.webnn.borrow().get(device).filter(|c| c.lost().is_none()) {
        return Ok(c.clone());
    }
    let c = Rc::new(
        webnn::context(device)
            .await
            .map_err(|e| RemoteError::new(ErrorKind::Unsupported, format!("WebNN {device}: {e}")))?,
    );
    state.webnn.borrow_mut().insert(device.to_string(), c.clone());
    Ok(c)
}

/// The tab's WebGPU executor for new work (a kernel, a model load). A lost device is replaced by
/// a new one first (a device loss is recovered by loading the model again, not by reloading the
/// page); if no new device can be had, the lost one stays and its work fails with `DeviceLost`.
async fn gpu(state: &TabState) -> Option<Rc<WebGpuExecutor>> {
    let current = state.executor.borrow().clone();
    match current {
        Some(ex) if ex.lost().is_some() => match webgpu::init().await {
            Ok(g) => {
                let fresh = Rc::new(WebGpuExecutor::new(g));
                *state.executor.borrow_mut() = Some(fresh.clone());
                Some(fresh)
            }
            Err(caps) => {
                web_sys::console::error_1(&format!("no new WebGPU device: {:?}", caps.error).into());
                Some(ex)
            }
        },
        other => other,
    }
}

async fn serve_request(state: &TabState, req: Request, inputs: Vec<Tensor>) -> Result<Answer, RemoteError> {
    let model =
        |name: &str| {
            state.models.borrow().get(name).map(TabModel::clone_handle).ok_or_else(|| {
                RemoteError::new(ErrorKind::BadInput, format!("model {name:?} is not loaded in this tab"))
            })
        };
    Ok(match req {
        Request::Ping => (Ok(Reply::Pong), Vec::new()),
        Request::Sink => (Ok(Reply::Sunk { bytes: inputs.iter().map(|t| t.data.len() as u64).sum() }), Vec::new()),
        Request::Kernel(kernel) => {
            let ex = gpu(state).await.ok_or_else(|| {
                RemoteError::new(ErrorKind::Unsupported, "this tab has no WebGPU device (see its capabilities)")
            })?;
            let run = ex.run_kernel(&kernel, &inputs).await?;
            (Ok(Reply::KernelDone { device_ms: run.device_ms }), run.outputs)
        }
        Request::LoadModel { model, graph, backend } => {
            let (nn, ex) = match &backend {
                shared_proto::ExecBackend::WebNn { device } => (Some(webnn_context(state, device).await?), None),
                shared_proto::ExecBackend::WebGpu => (None, gpu(state).await),
                shared_proto::ExecBackend::Cpu => (None, None),
            };
            let kv = graph.kv;
            let vocab = sessions::vocab(&graph);
            let m = TabModel::new(graph, &backend, ex, nn)?;
            state.parts.borrow_mut().remove(&model);
            // A reloaded model starts with an empty cache: its old sessions are gone.
            match kv {
                Some(kv) => {
                    let sessions =
                        if m.copies_kv_rows() { Sessions::new(kv).with_prefix_cache() } else { Sessions::new(kv) };
                    state.sessions.borrow_mut().insert(model.clone(), StepState { sessions, vocab, busy: false })
                }
                None => state.sessions.borrow_mut().remove(&model),
            };
            let handle = m.clone_handle();
            state.models.borrow_mut().insert(model, m);
            let held = match &state.cache {
                Some(cache) => load_held(cache, &handle).await,
                None => Vec::new(),
            };
            let prepare_ms = if handle.missing_weights() == 0 { Some(handle.prepare().await?) } else { None };
            (Ok(Reply::ModelDeclared { held, prepare_ms }), Vec::new())
        }
        Request::PutWeights { model: name, first } => {
            let m = model(&name)?;
            let (bytes, missing) = m.put_weights(first as usize, &inputs, Check::Hash).await?;
            if let Some(cache) = &state.cache {
                for (i, t) in inputs.iter().enumerate() {
                    let hash = &m.graph().weights[first as usize + i].hash;
                    store(cache.put_piece(hash, 0, &t.data).await.and(cache.put_marker(hash, &[0]).await));
                }
            }
            let prepare_ms = if missing == 0 { Some(m.prepare().await?) } else { None };
            (Ok(Reply::WeightsStored { bytes, missing: missing as u32, prepare_ms }), Vec::new())
        }
        Request::PutWeightPart { model: name, index, offset, total } => {
            let m = model(&name)?;
            let [part] = inputs.as_slice() else {
                return Err(RemoteError::new(ErrorKind::BadInput, "PutWeightPart carries one tensor"));
            };
            // Out of the map across the awaits; back in unless the weight is complete (or failed).
            let mut pending = state.parts.borrow_mut().remove(&name);
            let (bytes, missing) = m
                .put_weight_part(&mut pending, index as usize, offset as usize, total as usize, &part.data, Check::Hash)
                .await?;
            if let Some(p) = pending {
                state.parts.borrow_mut().insert(name, p);
            }
            if let Some(cache) = &state.cache {
                // The part passed the order checks; the whole weight's hash was checked if it is complete.
                let hash = m.graph().weights[index as usize].hash.clone();
                store(cache.put_piece(&hash, offset as usize, &part.data).await);
                let offsets = {
                    let mut caching = state.caching.borrow_mut();
                    let list = caching.entry(hash.clone()).or_default();
                    if offset == 0 {
                        list.clear();
                    }
                    list.push(offset as usize);
                    (offset as usize + part.data.len() == total as usize).then(|| caching.remove(&hash)).flatten()
                };
                if let Some(offsets) = offsets {
                    store(cache.put_marker(&hash, &offsets).await);
                }
            }
            let prepare_ms = if missing == 0 { Some(m.prepare().await?) } else { None };
            (Ok(Reply::WeightsStored { bytes, missing: missing as u32, prepare_ms }), Vec::new())
        }
        Request::Run { model: name } => {
            let run = model(&name)?.run(&inputs).await?;
            (Ok(Reply::Ran { device_ms: run.device_ms }), run.outputs)
        }
        Request::UnloadModel { model } => {
            state.parts.borrow_mut().remove(&model);
            state.sessions.borrow_mut().remove(&model);
            state.models.borrow_mut().remove(&model);
            collect_garbage();
            (Ok(Reply::Unloaded), Vec::new())
        }
        Request::LoseDevice => {
            let ex = state.executor.borrow().clone();
            if let Some(ex) = &ex {
                ex.lose_device();
            }
            let contexts: Vec<Rc<WebNn>> = state.webnn.borrow().values().cloned().collect();
            for c in &contexts {
                c.destroy();
            }
            (Ok(Reply::DeviceDestroyed { webgpu: ex.is_some(), webnn_contexts: contexts.len() as u32 }), Vec::new())
        }
        Request::SetThreads { threads } => {
            #[cfg(target_feature = "atomics")]
            let now = crate::executors::cpu::pool::set_limit(threads as usize);
            #[cfg(not(target_feature = "atomics"))]
            let now = {
                let _ = threads;
                1
            };
            (Ok(Reply::ThreadsSet { threads: now as u32 }), Vec::new())
        }
        Request::OpenSession { model: name, session, capacity, prompt } => {
            let m = model(&name)?;
            let mut all = state.sessions.borrow_mut();
            let st = all.get_mut(&name).ok_or_else(|| not_stateful(&name))?;
            let opened = st.sessions.open_reusing(session, capacity, &prompt)?;
            let mut reused = 0;
            if let Some(c) = opened.copy {
                // A copy that fails costs only the saving: the session prefills from the start.
                match m.copy_kv_rows(c.from, c.to, c.rows) {
                    Ok(()) => reused = c.rows,
                    Err(e) => {
                        web_sys::console::warn_1(
                            &format!("prefix copy failed, prefilling in full: {}", e.message).into(),
                        );
                        st.sessions.rewind(session);
                    }
                }
            }
            (Ok(Reply::SessionOpened { kv_bytes: opened.kv_bytes, reused }), Vec::new())
        }
        Request::CloseSession { model: name, session } => {
            let mut all = state.sessions.borrow_mut();
            let st = all.get_mut(&name).ok_or_else(|| not_stateful(&name))?;
            if !st.sessions.close(session) {
                return Err(RemoteError::new(ErrorKind::BadInput, format!("session {session} is not open")));
            }
            (Ok(Reply::SessionClosed), Vec::new())
        }
        Request::PutMemory { model: name, session, first_layer } => {
            let m = model(&name)?;
            let (start, capacity) = session_range(state, &name, session)?;
            let [memory] = inputs.as_slice() else {
                return Err(RemoteError::new(ErrorKind::BadInput, "PutMemory carries one tensor"));
            };
            if memory.shape.get(2).is_none_or(|&rows| rows > capacity) {
                return Err(RemoteError::new(
                    ErrorKind::BadInput,
                    format!("a memory {:?} does not fit session {session}'s {capacity} rows", memory.shape),
                ));
            }
            let bytes = m.put_memory(first_layer as usize, start as usize, memory).await?;
            (Ok(Reply::MemoryStored { bytes }), Vec::new())
        }
        Request::EncodeIntoMemory { model: encoder, decoder, session, first_layer } => {
            let (e, d) = (model(&encoder)?, model(&decoder)?);
            let (start, capacity) = session_range(state, &decoder, session)?;
            let run = e.run(&inputs).await?;
            if run.outputs.first().and_then(|t| t.shape.get(1)).is_none_or(|&rows| rows > capacity) {
                return Err(RemoteError::new(
                    ErrorKind::BadInput,
                    format!("{encoder:?}'s outputs do not fit session {session}'s {capacity} rows"),
                ));
            }
            let bytes = d.put_memory_outputs(first_layer as usize, start as usize, &run.outputs).await?;
            (Ok(Reply::EncodedIntoMemory { device_ms: run.device_ms, bytes }), Vec::new())
        }
        Request::Step { model: name, rows } => {
            let m = model(&name)?;
            let plan = {
                let mut all = state.sessions.borrow_mut();
                let st = all.get_mut(&name).ok_or_else(|| not_stateful(&name))?;
                if st.busy {
                    return Err(RemoteError::new(
                        ErrorKind::BadInput,
                        format!("a step of {name:?} is already running: send one step at a time"),
                    ));
                }
                let plan = st.sessions.plan_stage(m.graph(), &rows, st.vocab, inputs)?;
                st.busy = true;
                plan
            };
            let run = m.run(&plan.inputs).await;
            let mut all = state.sessions.borrow_mut();
            // The model may have been unloaded or reloaded meanwhile: then its sessions are gone.
            if let Some(st) = all.get_mut(&name) {
                st.busy = false;
            }
            let mut run = run?;
            // A stage of a sharded model that does not end with the head hands its hidden state
            // on (to the host, for the next stage): every token's row, no ids.
            if let Some(h) = run.outputs.first().filter(|t| t.dtype == shared_proto::DType::F32) {
                if h.shape.first() != plan.inputs[0].shape.first() {
                    return Err(RemoteError::new(ErrorKind::Internal, "a stage must output one row per token"));
                }
                if let Some(st) = all.get_mut(&name) {
                    st.sessions.commit(&plan);
                }
                let hidden = run.outputs.swap_remove(0);
                return Ok((Ok(Reply::Stepped { tokens: Vec::new(), device_ms: run.device_ms }), vec![hidden]));
            }
            let tokens: Vec<u32> = run
                .outputs
                .first()
                .filter(|t| t.dtype == shared_proto::DType::I32 && t.shape == [rows.len() as u32])
                .map(|t| t.data.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as u32).collect())
                .ok_or_else(|| RemoteError::new(ErrorKind::Internal, "a step must output one i32 token per row"))?;
            if let Some(st) = all.get_mut(&name) {
                st.sessions.commit(&plan);
            }
            // The graph's further outputs (e.g. Whisper's token probabilities) go back as the
            // frame's tensors.
            let extra = run.outputs.split_off(1);
            (Ok(Reply::Stepped { tokens, device_ms: run.device_ms }), extra)
        }
    })
}

/// A failed cache write only costs a re-send later: log it and go on.
fn store(r: Result<(), wasm_bindgen::JsValue>) {
    if let Err(e) = r {
        web_sys::console::warn_1(&format!("weight cache: {}", caps::js_text(e)).into());
    }
}

/// Weights whose Cache Storage reads are in flight while an earlier one is fed to the model.
/// Each read is a round trip to the browser's storage process (two per weight, then one per
/// piece); one after another, MiniLM's 101 weights took most of a replacement tab's load.
const READ_AHEAD: usize = 8;

/// Feed `m` every weight the cache holds, in order, each piece copied into wasm memory alone
/// (the reads of the next few weights meanwhile in flight); the indices it took. A piece
/// missing or failing its checks leaves that weight to the host.
async fn load_held(cache: &WeightCache, m: &TabModel) -> Vec<u32> {
    let decls = m.graph().weights.clone();
    // Each read runs as a task of its own, so its steps (marker, then pieces) advance while the
    // loop below stores the weight before it (a stream's `buffered` advanced them only when
    // polled: they stalled during every store). Reading every marker first, all at once, was
    // slower: nothing was stored until the last marker came.
    let spawn = |i: usize| {
        let (tx, rx) = futures_channel::oneshot::channel();
        let (cache, hash) = (cache.clone(), decls[i].hash.clone());
        wasm_bindgen_futures::spawn_local(async move {
            let _ = tx.send(read_held(&cache, &hash).await);
        });
        rx
    };
    let mut ahead: std::collections::VecDeque<_> = (0..decls.len().min(READ_AHEAD)).map(spawn).collect();
    // While the first reads are under way; a failure leaves each tensor to its weight's store.
    let _ = m.reserve().await;
    let mut held = Vec::new();
    for i in 0..decls.len() {
        let pieces = ahead.pop_front().expect("a read per weight").await.ok().flatten();
        if i + READ_AHEAD < decls.len() {
            ahead.push_back(spawn(i + READ_AHEAD));
        }
        let Some(pieces) = pieces else { continue };
        let d = &decls[i];
        let total = d.dtype.byte_len(&d.shape).unwrap_or(0) as usize;
        let ok = match &pieces[..] {
            [(0, b)] if b.length() as usize == total => {
                let t = Tensor { dtype: d.dtype, shape: d.shape.clone(), data: detached(b).into() };
                m.put_weights(i, &[t], Check::Known).await.is_ok()
            }
            [(0, _)] => false,
            _ => {
                let mut pending = None;
                let mut ok = true;
                for (offset, b) in &pieces {
                    if m.put_weight_part(&mut pending, i, *offset, total, &detached(b), Check::Known).await.is_err() {
                        ok = false;
                        break;
                    }
                }
                ok && pending.is_none()
            }
        };
        if ok {
            held.push(i as u32);
        }
    }
    held
}

/// Every piece of weight `hash` the cache holds, with its offset, in order (read at once);
/// `None` unless all are there.
async fn read_held(cache: &WeightCache, hash: &str) -> Option<Vec<(usize, js_sys::Uint8Array)>> {
    let offsets = cache.pieces(hash).await?;
    let pieces = futures_util::future::join_all(offsets.iter().map(|&o| cache.piece(hash, o))).await;
    offsets.into_iter().zip(pieces).map(|(o, b)| Some((o, b?))).collect()
}

/// A full garbage collection now, where the browser exposes one (`--js-flags=--expose-gc`, which
/// the host passes to Chromium): an unloaded model's JS-side buffers — the weight pieces read
/// back from the cache, the parts gathered for its tensors — are garbage, and V8 otherwise
/// collects them only when its heap heuristics say so (measured: the renderer swung between
/// 160 and 293 MiB across MiniLM reloads, a model's worth of garbage every other cycle).
fn collect_garbage() {
    if let Ok(gc) = Reflect::get(&js_sys::global(), &"gc".into())
        && let Ok(gc) = gc.dyn_into::<js_sys::Function>()
    {
        let _ = gc.call0(&JsValue::UNDEFINED);
    }
}

/// A cached piece's bytes copied into wasm memory, its `ArrayBuffer` detached: the copy is
/// freed now, not at a garbage collection that may come long after (a model's worth of them —
/// 64 MiB over three reloads of MiniLM — stayed in the renderer).
fn detached(b: &js_sys::Uint8Array) -> Vec<u8> {
    let bytes = b.to_vec();
    let _ = b.buffer().transfer_with_length(0);
    bytes
}

/// A stateful model's sessions, its vocabulary, and whether a step of it is running.
struct StepState {
    sessions: Sessions,
    vocab: u32,
    busy: bool,
}

/// The cache rows (first row, capacity) of `session` of model `name`.
fn session_range(state: &TabState, name: &str, session: u64) -> Result<(u32, u32), RemoteError> {
    let all = state.sessions.borrow();
    let st = all.get(name).ok_or_else(|| not_stateful(name))?;
    st.sessions
        .range(session)
        .ok_or_else(|| RemoteError::new(ErrorKind::BadInput, format!("session {session} is not open")))
}

fn not_stateful(name: &str) -> RemoteError {
    RemoteError::new(ErrorKind::BadInput, format!("model {name:?} keeps no sessions (its graph has no KV cache)"))
}

/// Frames past this size are assembled in a JS buffer, piece by piece, instead of in wasm memory.
const ASSEMBLE_IN_JS: usize = 1 << 20;

fn send(socket: &Socket, frame: Frame<ToHost>) -> Result<(), String> {
    let pieces = shared_proto::codec::encode_pieces(&frame, &Limits::DEFAULT).map_err(|e| e.to_string())?;
    let total: usize = pieces.iter().map(|p| p.len()).sum();
    if total <= ASSEMBLE_IN_JS {
        return socket.send(&pieces.concat());
    }
    // A large reply (a Whisper window's 18 MB of cross keys and values) would otherwise exist
    // twice in the wasm heap — its tensors and the frame — whose high-water mark never falls.
    let buf = js_sys::Uint8Array::new_with_length(total as u32);
    let mut at = 0u32;
    for p in &pieces {
        // SAFETY: `set` copies from the view at once; nothing allocates in wasm in between.
        buf.set(&unsafe { js_sys::Uint8Array::view(p) }.into(), at);
        at += p.len() as u32;
    }
    socket.send_js(&buf)
}
