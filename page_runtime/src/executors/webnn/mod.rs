//! The WebNN executor: the operator graph translated to an `MLGraph` per shape bucket (batch and
//! sequence rounded up, inputs zero-padded, outputs cropped), cached within a memory budget.
//! The weights are written once into shared `MLTensor`s every bucket graph takes as inputs (as
//! constants, each graph would hold its own copy of them). Tensors go through createTensor /
//! writeTensor / dispatch / readTensor. An op or shape WebNN rejects is reported as
//! `Unsupported` naming the op, so the host can run the model elsewhere.

mod bindings;
mod memory;
mod ops;
mod step;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use js_sys::{Array, Object, Promise, Reflect, Uint8Array};
use shared_proto::{DType, Dim, ErrorKind, Graph, RemoteError, Tensor};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;

pub use bindings::{MLContext, MLGraph, MLGraphBuilder, MLOperand, MLTensor};

use super::buckets::{activation_bytes, batch_bucket, crop, pad, seq_bucket};
use super::inputs::Check;
use super::layout::{self, FilterLayout};
use super::{inputs, shapes};
use crate::caps::js_text;

fn unsupported(msg: String) -> RemoteError {
    RemoteError::new(ErrorKind::Unsupported, msg)
}

fn internal(what: &str, e: JsValue) -> RemoteError {
    RemoteError::new(ErrorKind::Internal, format!("WebNN {what}: {}", js_text(e)))
}

/// A WebNN context on one device type.
pub struct WebNn {
    pub context: MLContext,
    pub device: String,
    /// The context prefers channels-last image values (`opSupportLimits().preferredInputLayout
    /// == "nhwc"`: TFLite/XNNPACK): graphs keep conv values in NHWC, filters stored to match.
    pub nhwc: bool,
    /// Why the context was lost (`MLContext.lost` resolved), once it was; a lost context never
    /// comes back: the tab creates a new one (`serve.rs`).
    lost: Rc<RefCell<Option<String>>>,
}

impl WebNn {
    pub fn lost(&self) -> Option<String> {
        self.lost.borrow().clone()
    }

    /// Destroy the context (`MLContext.destroy()`), as a crashed ML service would lose it.
    pub fn destroy(&self) {
        self.lost.borrow_mut().get_or_insert_with(|| "destroy() requested by the host".into());
        let _ = self.context.destroy();
    }

    /// `DeviceLost` once the context is gone.
    pub(crate) fn alive(&self) -> Result<(), RemoteError> {
        match self.lost() {
            Some(why) => Err(RemoteError::new(
                ErrorKind::DeviceLost,
                format!("the WebNN {} context was lost ({why}); loading a model again creates a new one", self.device),
            )),
            None => Ok(()),
        }
    }
}

/// `navigator.ml.createContext({deviceType})`.
pub async fn context(device: &str) -> Result<WebNn, String> {
    let nav = Reflect::get(&js_sys::global(), &"navigator".into()).map_err(js_text)?;
    let ml = Reflect::get(&nav, &"ml".into()).map_err(js_text)?;
    if ml.is_undefined() {
        return Err("navigator.ml is undefined (WebNN not enabled in this browser)".into());
    }
    let f: js_sys::Function =
        Reflect::get(&ml, &"createContext".into()).map_err(js_text)?.dyn_into().map_err(js_text)?;
    let opts = Object::new();
    Reflect::set(&opts, &"deviceType".into(), &device.into()).map_err(js_text)?;
    let p: Promise = f.call1(&ml, &opts).map_err(js_text)?.dyn_into().map_err(js_text)?;
    let context = JsFuture::from(p).await.map_err(js_text)?.unchecked_into::<MLContext>();
    let lost = Rc::new(RefCell::new(None));
    if let Ok(promise) = context.lost().dyn_into::<Promise>() {
        let seen = lost.clone();
        let on_lost = wasm_bindgen::closure::Closure::once(move |info: JsValue| {
            let message = Reflect::get(&info, &"message".into()).ok().and_then(|m| m.as_string());
            seen.borrow_mut().get_or_insert(message.unwrap_or_else(|| "lost".into()));
        });
        let _ = promise.then(&on_lost);
        // The promise settles at most once; JS owns the closure from here.
        on_lost.forget();
    }
    let nhwc = context
        .op_support_limits()
        .ok()
        .and_then(|l| Reflect::get(&l, &"preferredInputLayout".into()).ok())
        .and_then(|v| v.as_string())
        .is_some_and(|v| v == "nhwc");
    Ok(WebNn { context, device: device.into(), nhwc, lost })
}

/// `{dataType, shape}` (also `dimensions`, the older spelling some builds still read).
pub(crate) fn desc(dtype: DType, shape: &[u32]) -> Object {
    let o = Object::new();
    let t = match dtype {
        DType::F32 => "float32",
        DType::F16 => "float16",
        DType::I32 => "int32",
        DType::U32 => "uint32",
        DType::U8 | DType::Q4_1 | DType::Q8_0 => "uint8",
    };
    let dims: Array = shape.iter().map(|&d| JsValue::from(d)).collect();
    let _ = Reflect::set(&o, &"dataType".into(), &t.into());
    let _ = Reflect::set(&o, &"shape".into(), &dims);
    let _ = Reflect::set(&o, &"dimensions".into(), &dims);
    o
}

/// A typed-array view of `bytes` in JS memory (one copy out of wasm memory).
pub(crate) fn typed(dtype: DType, bytes: &[u8]) -> Object {
    let u8s = Uint8Array::from(bytes);
    let buf = u8s.buffer();
    match dtype {
        DType::F32 => js_sys::Float32Array::new(&buf).into(),
        DType::I32 => js_sys::Int32Array::new(&buf).into(),
        DType::U32 => js_sys::Uint32Array::new(&buf).into(),
        DType::F16 => js_sys::Uint16Array::new(&buf).into(),
        DType::U8 | DType::Q4_1 | DType::Q8_0 => u8s.into(),
    }
}

/// A view of wasm memory for a call that copies it at once (`writeTensor`): no JS copy of the
/// bytes. Valid only until wasm memory grows, so it never outlives the call it is made for.
fn wasm_view(bytes: &[u8]) -> Uint8Array {
    // SAFETY: the view is passed straight to a synchronous copy; nothing allocates in between.
    unsafe { Uint8Array::view(bytes) }
}

/// Input shapes of one bucket (one entry per graph input).
type Bucket = Vec<Vec<u32>>;

/// Compiled bucket graphs kept per model, least recently used destroyed first: at most this
/// many, holding at most `GRAPH_BUDGET_BYTES` of estimated memory between them. A graph holds
/// its intermediate buffers for as long as it lives (the largest bucket's, 32 × 256 tokens,
/// ~250 MB), while building one takes 10–100 ms (MiniLM) to ~65 ms (EfficientNet-Lite0 at
/// batch 8, a quarter of its run): a graph larger than the whole budget is kept as the model's
/// one *hot* graph while runs keep coming, and destroyed once no run used it for
/// `HOT_IDLE_MS` (or when another oversized bucket replaces it).
const MAX_GRAPHS: usize = 8;
const GRAPH_BUDGET_BYTES: u64 = 24 << 20;
/// How long an oversized graph outlives its last run.
const HOT_IDLE_MS: i32 = 1000;
/// Measured cost of a compiled graph beyond its activations (~4–5 MB for the smallest buckets).
const GRAPH_FIXED_BYTES: u64 = 4 << 20;

/// Weights up to this size stay constants in every bucket graph (biases, norms: a few KiB each,
/// ~0.3 MB for MiniLM); larger ones are one shared `MLTensor` per model bound as a graph input.
const CONSTANT_MAX_BYTES: usize = 64 << 10;

/// A stateless model whose weights (as f32) total at most this keeps every weight a constant:
/// XNNPACK packs constant filters once at build, while filters bound as inputs are repacked
/// on every run. EfficientNet-Lite0 (18.5 MB), one tab, bench vision at load ~1.4: bs1 29.3 →
/// 40.0 img/s, bs8 38.6 → 58.2 img/s, for tab memory 4.5× → 7.9× the weights. Larger models
/// (MiniLM, 86 MB) keep large weights as shared inputs for their memory (ARCHITECTURE "Memory").
const ALL_CONSTANT_MODEL_BYTES: u64 = 32 << 20;

/// The largest weight kept as a constant for `graph`.
fn constant_max(graph: &Graph) -> usize {
    let f32_bytes: u64 = graph.weights.iter().map(|w| 4 * w.shape.iter().map(|&d| d as u64).product::<u64>()).sum();
    if graph.kv.is_none() && f32_bytes <= ALL_CONSTANT_MODEL_BYTES { usize::MAX } else { CONSTANT_MAX_BYTES }
}

/// An `MLTensor` destroyed when dropped: the ML service's buffer is freed at once, not whenever
/// the garbage collector (which does not see that memory) finalises the JS wrapper.
struct NnTensor(MLTensor);

impl Drop for NnTensor {
    fn drop(&mut self) {
        let _ = self.0.destroy_tensor();
    }
}

/// A model weight as the tab holds it.
enum Weight {
    /// Embedded in each bucket graph (small weights: the bytes stay in wasm memory to build with).
    Constant(Tensor),
    /// Written once into the context; every bucket graph takes it as an input.
    Shared { dtype: DType, shape: Vec<u32>, tensor: NnTensor },
}

/// One bucket's compiled graph, destroyed when dropped (evicted, or the model unloaded) — after
/// any run still holding it has finished.
struct BucketGraph {
    graph: MLGraph,
    /// `dispatch` inputs: the shared weights under their input names; the model inputs are set
    /// on it before each dispatch (synchronously, so concurrent runs cannot interleave).
    inputs: Object,
}

impl Drop for BucketGraph {
    fn drop(&mut self) {
        let _ = self.graph.destroy_graph();
    }
}

/// A model on WebNN: small weights kept to build each bucket's graph with, large ones in shared
/// tensors; graphs cached by bucket.
pub struct NnModel {
    graph: Graph,
    nn: Rc<WebNn>,
    weights: RefCell<Vec<Option<Weight>>>,
    /// Built graphs by bucket, with a last-use tick for eviction and their estimated bytes.
    compiled: RefCell<HashMap<Bucket, Cached>>,
    tick: std::cell::Cell<u64>,
    /// Idle input/output tensors per bucket: creating MLTensors costs a round trip to the ML
    /// service per tensor, so runs borrow a set and give it back (concurrent runs take
    /// different sets, so no run sees another's data).
    tensors: RefCell<HashMap<Bucket, Vec<TensorSet>>>,
    /// A stateful graph's KV cache (created at its first step).
    kv: RefCell<Option<Rc<step::KvTensors>>>,
    /// Its cross-attention memories (created at the first `PutMemory` or step).
    memory: RefCell<Option<Rc<memory::Memory>>>,
    /// Memory writes take turns (each reads a tensor back and writes it whole).
    memory_turn: futures_util::lock::Mutex<()>,
    /// Per weight: the layout a conv filter is stored in (channels-last contexts only).
    prelaid: Vec<Option<FilterLayout>>,
    /// The oversized bucket graph last used, with its idle tensor sets (see `HOT_IDLE_MS`).
    hot: Rc<RefCell<Option<Hot>>>,
    /// Weights larger than this are shared inputs (`constant_max`).
    constant_max: usize,
    /// Shared weights' tensors created ahead of their bytes (`reserve_shared`), taken by
    /// `store` / `put_whole_weight`.
    reserved: RefCell<Vec<Option<NnTensor>>>,
}

/// A graph over the cache budget, kept while runs keep using it.
struct Hot {
    bucket: Bucket,
    graph: Rc<BucketGraph>,
    sets: Vec<TensorSet>,
    used: u64,
}

struct Cached {
    graph: Rc<BucketGraph>,
    used: u64,
    bytes: u64,
}

struct TensorSet {
    inputs: Vec<NnTensor>,
    outputs: Vec<NnTensor>,
}

impl NnModel {
    pub fn new(graph: Graph, nn: Rc<WebNn>) -> Result<NnModel, RemoteError> {
        graph.validate().map_err(|e| RemoteError::new(ErrorKind::BadInput, e.to_string()))?;
        let prelaid = if nn.nhwc { layout::filter_layouts(&graph) } else { vec![None; graph.weights.len()] };
        Ok(NnModel {
            constant_max: constant_max(&graph),
            prelaid,
            weights: RefCell::new((0..graph.weights.len()).map(|_| None).collect()),
            graph,
            nn,
            compiled: RefCell::default(),
            tick: Default::default(),
            tensors: RefCell::default(),
            kv: RefCell::default(),
            memory: RefCell::default(),
            memory_turn: futures_util::lock::Mutex::new(()),
            hot: Rc::default(),
            reserved: RefCell::default(),
        })
    }

    /// Whether weight `index` of `bytes` bytes (as it arrives) is a shared tensor, not a constant.
    fn is_shared(&self, dtype: DType, bytes: usize) -> bool {
        bytes > self.constant_max || dtype.is_packed()
    }

    /// Create the tensors of every shared weight still missing, all at once: each creation is
    /// a round trip to the ML service, and one after another as the weights came they took a
    /// fifth of a model's load from the tab's cache (MiniLM: ~40 tensors, 120 ms). Conv filters
    /// reordered at store are left to it (their layout decides their shape).
    pub async fn reserve_shared(&self) -> Result<(), RemoteError> {
        self.nn.alive()?;
        let wanted: Vec<usize> = (0..self.graph.weights.len())
            .filter(|&i| {
                let d = &self.graph.weights[i];
                let bytes = d.dtype.byte_len(&d.shape).unwrap_or(0) as usize;
                self.prelaid[i].is_none() && self.weights.borrow()[i].is_none() && self.is_shared(d.dtype, bytes)
            })
            .collect();
        let ctx = &self.nn.context;
        let created = futures_util::future::try_join_all(wanted.iter().map(|&i| {
            let d = &self.graph.weights[i];
            create_tensor(ctx, stored_dtype(d.dtype), &d.shape, &["writable"])
        }))
        .await?;
        let mut reserved = self.reserved.borrow_mut();
        reserved.resize_with(self.graph.weights.len(), || None);
        for (i, t) in wanted.into_iter().zip(created) {
            reserved[i] = Some(t);
        }
        Ok(())
    }

    /// The shared tensor of weight `index`: reserved, or created now.
    async fn shared_tensor(&self, index: usize, dtype: DType, shape: &[u32]) -> Result<NnTensor, RemoteError> {
        let reserved = self.reserved.borrow_mut().get_mut(index).and_then(Option::take);
        match reserved {
            Some(t) => Ok(t),
            None => create_tensor(&self.nn.context, dtype, shape, &["writable"]).await,
        }
    }

    /// Check and store weights: large ones are written into their shared tensor now, so the
    /// frame that carried them can be freed (wasm memory holds one frame, not the model).
    pub async fn put_weights(&self, first: usize, tensors: &[Tensor], check: Check) -> Result<u64, RemoteError> {
        self.nn.alive()?;
        let mut bytes = 0;
        for (i, t) in tensors.iter().enumerate() {
            inputs::check_weight(&self.graph, first + i, t, check)?;
            bytes += t.data.len() as u64;
        }
        self.store(first, tensors).await?;
        Ok(bytes)
    }

    /// Store checked weights `first..`: conv filters reordered into the layout their convs read
    /// (once here, not per graph), large ones written into their shared tensor.
    async fn store(&self, first: usize, tensors: &[Tensor]) -> Result<(), RemoteError> {
        let tensors: Vec<std::borrow::Cow<Tensor>> = tensors
            .iter()
            .enumerate()
            .map(|(i, t)| match self.prelaid[first + i] {
                Some(l) => std::borrow::Cow::Owned(layout::reorder_filter(t, l)),
                None => std::borrow::Cow::Borrowed(t),
            })
            .collect();
        let ctx = &self.nn.context;
        let shared = |t: &std::borrow::Cow<Tensor>| self.is_shared(t.dtype, t.data.len());
        let created = futures_util::future::try_join_all(
            tensors
                .iter()
                .enumerate()
                .filter(|(_, t)| shared(t))
                .map(|(i, t)| self.shared_tensor(first + i, stored_dtype(t.dtype), &t.shape)),
        )
        .await?;
        let mut created = created.into_iter();
        for (i, t) in tensors.iter().enumerate() {
            let w = if shared(t) {
                let tensor = created.next().expect("one per large weight");
                if t.dtype.is_packed() {
                    // One weight's f32 at a time (≤ a few MB of wasm memory), written and dropped.
                    let f = dequantize(t.dtype, &t.data);
                    ctx.write_tensor(&tensor.0, &wasm_view(f32_bytes(&f))).map_err(|e| internal("writeTensor", e))?;
                } else {
                    ctx.write_tensor(&tensor.0, &wasm_view(&t.data)).map_err(|e| internal("writeTensor", e))?;
                }
                Weight::Shared { dtype: stored_dtype(t.dtype), shape: t.shape.clone(), tensor }
            } else {
                // A copy: a slice would keep the whole frame it arrived in alive.
                Weight::Constant(Tensor { dtype: t.dtype, shape: t.shape.clone(), data: t.data.to_vec().into() })
            };
            self.weights.borrow_mut()[first + i] = Some(w);
        }
        Ok(())
    }

    /// Store weight `index` from a JS buffer holding all its bytes (checked by the caller):
    /// written into its shared tensor without passing through wasm memory.
    pub async fn put_whole_weight(&self, index: usize, bytes: &Uint8Array) -> Result<(), RemoteError> {
        self.nn.alive()?;
        let decl = &self.graph.weights[index];
        if self.prelaid[index].is_some() {
            // A conv filter to reorder: through wasm memory (filters are at most a few MB).
            let t = Tensor { dtype: decl.dtype, shape: decl.shape.clone(), data: bytes.to_vec().into() };
            return self.store(index, &[t]).await;
        }
        let w = if decl.dtype.is_packed() {
            let tensor = self.shared_tensor(index, DType::F32, &decl.shape).await?;
            let f = dequantize_js(decl.dtype, bytes);
            self.nn.context.write_tensor(&tensor.0, &f).map_err(|e| internal("writeTensor", e))?;
            // Copied into the tensor: detaching frees the f32 buffer now, not at GC.
            let _ = f.buffer().transfer_with_length(0);
            Weight::Shared { dtype: DType::F32, shape: decl.shape.clone(), tensor }
        } else if bytes.length() as usize > self.constant_max {
            let tensor = self.shared_tensor(index, decl.dtype, &decl.shape).await?;
            self.nn.context.write_tensor(&tensor.0, bytes).map_err(|e| internal("writeTensor", e))?;
            Weight::Shared { dtype: decl.dtype, shape: decl.shape.clone(), tensor }
        } else {
            Weight::Constant(Tensor { dtype: decl.dtype, shape: decl.shape.clone(), data: bytes.to_vec().into() })
        };
        self.weights.borrow_mut()[index] = Some(w);
        Ok(())
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    pub fn missing_weights(&self) -> usize {
        self.weights.borrow().iter().filter(|w| w.is_none()).count()
    }

    /// Graphs built so far (one per shape bucket).
    pub fn compiled_graphs(&self) -> usize {
        self.compiled.borrow().len()
    }

    /// Build and run the smallest bucket: fails with `Unsupported` if WebNN lacks an op.
    pub async fn prepare(&self) -> Result<f64, RemoteError> {
        let t0 = js_sys::Date::now();
        self.run(&inputs::minimal(&self.graph)).await?;
        Ok(js_sys::Date::now() - t0)
    }

    /// Input shapes rounded up to their bucket along symbolic dims.
    fn bucket_shapes(&self, inputs: &[Tensor]) -> Vec<Vec<u32>> {
        self.graph
            .inputs
            .iter()
            .zip(inputs)
            .map(|(d, t)| {
                d.dims
                    .iter()
                    .zip(&t.shape)
                    .map(|(dim, &n)| match dim {
                        Dim::Batch => batch_bucket(n),
                        Dim::Seq => seq_bucket(n),
                        Dim::Fixed(_) => n,
                    })
                    .collect()
            })
            .collect()
    }

    /// The graph for `bucket` (all value shapes in `shapes`), and whether it stays cached.
    async fn graph_for(
        &self,
        bucket: &[Vec<u32>],
        shapes: &[Vec<u32>],
        step: Option<ops::StepShape>,
    ) -> Result<(Rc<BucketGraph>, bool), RemoteError> {
        self.tick.set(self.tick.get() + 1);
        if let Some(c) = self.compiled.borrow_mut().get_mut(bucket) {
            c.used = self.tick.get();
            return Ok((c.graph.clone(), true));
        }
        if let Some(h) = self.hot.borrow_mut().as_mut().filter(|h| h.bucket == bucket) {
            h.used = self.tick.get();
            return Ok((h.graph.clone(), false));
        }
        let bytes = activation_bytes(&self.graph, shapes) + GRAPH_FIXED_BYTES;
        if bytes > GRAPH_BUDGET_BYTES {
            // At most one oversized graph at a time: the previous one goes before this is built.
            self.hot.borrow_mut().take();
        }
        let building = {
            let weights = self.weights.borrow();
            let uses: Vec<ops::WeightUse> = weights
                .iter()
                .map(|w| match w.as_ref().expect("checked complete") {
                    Weight::Constant(t) => ops::WeightUse::Constant(t),
                    Weight::Shared { dtype, shape, .. } => ops::WeightUse::Input { dtype: *dtype, shape },
                })
                .collect();
            let inputs = &bucket[..self.graph.inputs.len()];
            let layout = ops::Layout { nhwc: self.nn.nhwc, prelaid: &self.prelaid };
            ops::build(&self.nn.context, &self.graph, &uses, inputs, step, layout)?
        };
        let weight_inputs = building.weight_inputs.clone();
        let graph = building.graph().await?;
        let inputs = Object::new();
        for &w in &weight_inputs {
            if let Some(Weight::Shared { tensor, .. }) = &self.weights.borrow()[w] {
                Reflect::set(&inputs, &ops::weight_input(w).into(), &tensor.0).map_err(|e| internal("inputs", e))?;
            }
        }
        let g = Rc::new(BucketGraph { graph, inputs });
        if bytes > GRAPH_BUDGET_BYTES {
            *self.hot.borrow_mut() =
                Some(Hot { bucket: bucket.to_vec(), graph: g.clone(), sets: Vec::new(), used: self.tick.get() });
            return Ok((g, false));
        }
        let mut compiled = self.compiled.borrow_mut();
        while compiled.len() >= MAX_GRAPHS
            || compiled.values().map(|c| c.bytes).sum::<u64>() + bytes > GRAPH_BUDGET_BYTES
        {
            let Some(oldest) = compiled.iter().min_by_key(|(_, c)| c.used).map(|(k, _)| k.clone()) else { break };
            // Dropping the last handle destroys the graph (a run still using it keeps it alive).
            compiled.remove(&oldest);
            self.tensors.borrow_mut().remove(&oldest);
        }
        compiled.insert(bucket.to_vec(), Cached { graph: g.clone(), used: self.tick.get(), bytes });
        Ok((g, true))
    }

    /// Run on `inputs`; a failure on a lost context is reported as `DeviceLost`, whatever call
    /// noticed it first.
    pub async fn run(&self, inputs: &[Tensor]) -> Result<super::RunOutput, RemoteError> {
        self.nn.alive()?;
        let result = self.run_on_context(inputs).await;
        result.map_err(|e| self.nn.alive().err().unwrap_or(e))
    }

    async fn run_on_context(&self, inputs: &[Tensor]) -> Result<super::RunOutput, RemoteError> {
        if self.graph.kv.is_some() {
            return self.step(inputs).await;
        }
        let g = &self.graph;
        if self.missing_weights() > 0 {
            return Err(unsupported(format!("{} weights not uploaded yet", self.missing_weights())));
        }
        inputs::check(g, inputs)?;
        inputs::check_gather_ids(g, inputs)?;
        let real: Vec<Vec<u32>> = inputs.iter().map(|t| t.shape.clone()).collect();
        let bucket = self.bucket_shapes(inputs);
        let out_real = shapes::graph_shapes(g, &real)?;
        let out_padded = shapes::graph_shapes(g, &bucket)?;
        let (graph, cached) = self.graph_for(&bucket, &out_padded, None).await?;
        let set = match self.hot.borrow_mut().as_mut().filter(|h| !cached && h.bucket == bucket) {
            Some(h) => h.sets.pop(),
            None => None,
        };
        let set = match set {
            Some(set) => set,
            None => self.borrow_tensors(&bucket, &out_padded).await?,
        };
        let t0 = js_sys::Date::now();
        let ctx = &self.nn.context;
        let ins = &graph.inputs;
        for (((d, t), shape), tensor) in g.inputs.iter().zip(inputs).zip(&bucket).zip(&set.inputs) {
            // Written from the frame itself when no padding is needed (no copy in wasm memory).
            let padded;
            let bytes: &[u8] = if &t.shape == shape {
                &t.data
            } else {
                padded = pad(&t.data, &t.shape, shape);
                &padded
            };
            ctx.write_tensor(&tensor.0, &wasm_view(bytes)).map_err(|e| internal("writeTensor", e))?;
            Reflect::set(ins, &d.name.as_str().into(), &tensor.0).map_err(|e| internal("inputs", e))?;
        }
        let outs = Object::new();
        for (i, tensor) in set.outputs.iter().enumerate() {
            Reflect::set(&outs, &format!("out{i}").into(), &tensor.0).map_err(|e| internal("outputs", e))?;
        }
        ctx.dispatch(&graph.graph, ins, &outs).map_err(|e| internal("dispatch", e))?;
        let reads: Vec<JsFuture> = set
            .outputs
            .iter()
            .map(|t| ctx.read_tensor(&t.0).map(JsFuture::from).map_err(|e| internal("readTensor", e)))
            .collect::<Result<_, _>>()?;
        let mut outputs = Vec::new();
        for (read, &o) in reads.into_iter().zip(&g.outputs) {
            let bytes = step::take_bytes(read.await.map_err(|e| internal("readTensor", e))?);
            let (padded, real) = (&out_padded[o as usize], &out_real[o as usize]);
            let data = if padded == real { bytes } else { crop(&bytes, padded, real) };
            let dtype = step::out_dtype(g, o);
            outputs.push(Tensor { dtype, shape: out_real[o as usize].clone(), data: data.into() });
        }
        // An uncached bucket's tensors go with its graph (dropped: destroyed).
        if cached && self.compiled.borrow().contains_key(&bucket) {
            self.tensors.borrow_mut().entry(bucket).or_default().push(set);
        } else {
            self.ran_hot(&bucket, Some(set));
        }
        Ok(super::RunOutput { outputs, device_ms: js_sys::Date::now() - t0 })
    }
}

impl NnModel {
    /// After a run of an uncached bucket: when it is the hot graph, keep `set` with it and
    /// destroy both once idle (`HOT_IDLE_MS`).
    fn ran_hot(&self, bucket: &[Vec<u32>], set: Option<TensorSet>) {
        if let Some(h) = self.hot.borrow_mut().as_mut().filter(|h| h.bucket == bucket) {
            h.sets.extend(set);
            release_when_idle(&self.hot, h.used);
        }
    }

    /// An idle tensor set for `bucket`, or a new one (all tensors requested at once).
    async fn borrow_tensors(&self, bucket: &[Vec<u32>], out_shapes: &[Vec<u32>]) -> Result<TensorSet, RemoteError> {
        if let Some(set) = self.tensors.borrow_mut().get_mut(bucket).and_then(Vec::pop) {
            return Ok(set);
        }
        let ctx = &self.nn.context;
        let g = &self.graph;
        let inputs = g.inputs.iter().zip(bucket).map(|(d, shape)| create_tensor(ctx, d.dtype, shape, &["writable"]));
        let outputs = g
            .outputs
            .iter()
            .map(|&o| create_tensor(ctx, step::out_dtype(g, o), &out_shapes[o as usize], &["readable"]));
        let inputs = futures_util::future::try_join_all(inputs).await?;
        let outputs = futures_util::future::try_join_all(outputs).await?;
        Ok(TensorSet { inputs, outputs })
    }
}

/// Destroy the hot graph (and its tensors) `HOT_IDLE_MS` from now unless a run used it since
/// tick `used`.
fn release_when_idle(hot: &Rc<RefCell<Option<Hot>>>, used: u64) {
    let hot = Rc::downgrade(hot);
    wasm_bindgen_futures::spawn_local(async move {
        let _ = JsFuture::from(sleep(HOT_IDLE_MS)).await;
        if let Some(hot) = hot.upgrade() {
            let mut h = hot.borrow_mut();
            if h.as_ref().is_some_and(|h| h.used == used) {
                // Dropping destroys the graph (a run still holding it keeps it until done).
                *h = None;
            }
        }
    });
}

/// A promise resolved after `ms` (`setTimeout`).
fn sleep(ms: i32) -> Promise {
    Promise::new(&mut |resolve, _| {
        let set_timeout = Reflect::get(&js_sys::global(), &"setTimeout".into())
            .ok()
            .and_then(|f| f.dyn_into::<js_sys::Function>().ok());
        match set_timeout {
            Some(f) => {
                let _ = f.call2(&JsValue::NULL, &resolve, &JsValue::from(ms));
            }
            None => {
                let _ = resolve.call0(&JsValue::NULL);
            }
        }
    })
}

async fn create_tensor(ctx: &MLContext, dtype: DType, shape: &[u32], usage: &[&str]) -> Result<NnTensor, RemoteError> {
    let d = desc(dtype, shape);
    for u in usage {
        let _ = Reflect::set(&d, &(*u).into(), &JsValue::TRUE);
    }
    let p = ctx.create_tensor(&d).map_err(|e| internal("createTensor", e))?;
    Ok(NnTensor(JsFuture::from(p).await.map_err(|e| internal("createTensor", e))?.unchecked_into()))
}

/// How a weight is held on WebNN: packed weights as f32 (`dequantizeLinear` on int4 measured
/// 150× slower than f32 in Chromium 153's XNNPACK backend; f16 is widened too, as the graph's
/// ops are built in f32), others as they come.
fn stored_dtype(dtype: DType) -> DType {
    if dtype.is_packed() { DType::F32 } else { dtype }
}

/// `bytes` of a packed dtype as f32 values.
fn dequantize(dtype: DType, bytes: &[u8]) -> Vec<f32> {
    let (per, block_bytes) = dtype.packing().expect("a packed dtype");
    let mut out = vec![0f32; bytes.len() / block_bytes * per];
    shared_proto::quant::dequantize_row(dtype, bytes, &mut out);
    out
}

fn f32_bytes(v: &[f32]) -> &[u8] {
    // SAFETY: f32 has no padding or invalid bit patterns; the slice covers exactly v's memory.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast(), std::mem::size_of_val(v)) }
}

/// Dequantize a whole weight held in JS into a JS `Float32Array`, a few MB of blocks at a time
/// through wasm memory (which never shrinks: the whole weight must not pass through it at once).
fn dequantize_js(dtype: DType, bytes: &Uint8Array) -> js_sys::Float32Array {
    let (per, block_bytes) = dtype.packing().expect("a packed dtype");
    let (block_bytes, per) = (block_bytes as u32, per as u32);
    let blocks = bytes.length() / block_bytes;
    let out = js_sys::Float32Array::new_with_length(blocks * per);
    const CHUNK: u32 = 1 << 15;
    let mut at = 0;
    while at < blocks {
        let n = CHUNK.min(blocks - at);
        let piece = bytes.subarray(at * block_bytes, (at + n) * block_bytes).to_vec();
        let f = dequantize(dtype, &piece);
        // SAFETY: `set` copies from the view at once; nothing allocates in between.
        out.set(&unsafe { js_sys::Float32Array::view(&f) }.into(), at * per);
        at += n;
    }
    out
}
