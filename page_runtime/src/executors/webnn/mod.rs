//! The WebNN executor: the operator graph translated to an `MLGraph` per shape bucket (batch and
//! sequence rounded up, inputs zero-padded, outputs cropped), built once and cached. Tensors go
//! through createTensor / writeTensor / dispatch / readTensor. An op or shape WebNN rejects is
//! reported as `Unsupported` naming the op, so the host can run the model elsewhere.

mod bindings;
mod ops;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use js_sys::{Array, Object, Promise, Reflect, Uint8Array};
use shared_proto::{DType, Dim, ErrorKind, Graph, RemoteError, Tensor};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;

pub use bindings::{MLContext, MLGraph, MLGraphBuilder, MLOperand, MLTensor};

use super::buckets::{batch_bucket, crop, pad, seq_bucket};
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
    Ok(WebNn { context, device: device.into(), lost })
}

/// `{dataType, shape}` (also `dimensions`, the older spelling some builds still read).
pub(crate) fn desc(dtype: DType, shape: &[u32]) -> Object {
    let o = Object::new();
    let t = match dtype {
        DType::F32 => "float32",
        DType::F16 => "float16",
        DType::I32 => "int32",
        DType::U32 => "uint32",
        DType::U8 => "uint8",
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
        DType::U8 => u8s.into(),
    }
}

/// Input shapes of one bucket (one entry per graph input).
type Bucket = Vec<Vec<u32>>;

/// Bucket graphs kept per model (least recently used evicted first).
const MAX_GRAPHS: usize = 8;

/// A model on WebNN: weights kept to build a graph per bucket; graphs cached.
pub struct NnModel {
    graph: Graph,
    nn: Rc<WebNn>,
    weights: RefCell<Vec<Option<Tensor>>>,
    /// Built graphs by bucket, with a last-use tick for eviction (each holds its own copy of
    /// the weights inside the browser, so only the most recent few are kept).
    compiled: RefCell<HashMap<Bucket, (Rc<MLGraph>, u64)>>,
    tick: std::cell::Cell<u64>,
    /// Idle input/output tensors per bucket: creating MLTensors costs a round trip to the ML
    /// service per tensor, so runs borrow a set and give it back (concurrent runs take
    /// different sets, so no run sees another's data).
    tensors: RefCell<HashMap<Bucket, Vec<TensorSet>>>,
}

struct TensorSet {
    inputs: Vec<MLTensor>,
    outputs: Vec<MLTensor>,
}

impl NnModel {
    pub fn new(graph: Graph, nn: Rc<WebNn>) -> Result<NnModel, RemoteError> {
        graph.validate().map_err(|e| RemoteError::new(ErrorKind::BadInput, e.to_string()))?;
        Ok(NnModel {
            weights: RefCell::new(vec![None; graph.weights.len()]),
            graph,
            nn,
            compiled: RefCell::default(),
            tick: Default::default(),
            tensors: RefCell::default(),
        })
    }

    pub fn put_weights(&self, first: usize, tensors: &[Tensor]) -> Result<u64, RemoteError> {
        self.nn.alive()?;
        let mut bytes = 0;
        for (i, t) in tensors.iter().enumerate() {
            inputs::check_weight(&self.graph, first + i, t)?;
            self.weights.borrow_mut()[first + i] = Some(t.clone());
            bytes += t.data.len() as u64;
        }
        Ok(bytes)
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

    async fn graph_for(&self, bucket: &[Vec<u32>]) -> Result<Rc<MLGraph>, RemoteError> {
        self.tick.set(self.tick.get() + 1);
        if let Some((g, used)) = self.compiled.borrow_mut().get_mut(bucket) {
            *used = self.tick.get();
            return Ok(g.clone());
        }
        let weights = self.weights.borrow().clone();
        let g = Rc::new(ops::build(&self.nn.context, &self.graph, &weights, bucket).await?);
        let mut compiled = self.compiled.borrow_mut();
        if compiled.len() >= MAX_GRAPHS {
            let oldest = compiled.iter().min_by_key(|(_, (_, used))| *used).map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                compiled.remove(&k);
                self.tensors.borrow_mut().remove(&k);
            }
        }
        compiled.insert(bucket.to_vec(), (g.clone(), self.tick.get()));
        Ok(g)
    }

    /// Run on `inputs`; a failure on a lost context is reported as `DeviceLost`, whatever call
    /// noticed it first.
    pub async fn run(&self, inputs: &[Tensor]) -> Result<super::RunOutput, RemoteError> {
        self.nn.alive()?;
        let result = self.run_on_context(inputs).await;
        result.map_err(|e| self.nn.alive().err().unwrap_or(e))
    }

    async fn run_on_context(&self, inputs: &[Tensor]) -> Result<super::RunOutput, RemoteError> {
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
        let graph = self.graph_for(&bucket).await?;
        let set = self.borrow_tensors(&bucket, &out_padded).await?;
        let t0 = js_sys::Date::now();
        let ctx = &self.nn.context;
        let ins = Object::new();
        for (((d, t), shape), tensor) in g.inputs.iter().zip(inputs).zip(&bucket).zip(&set.inputs) {
            let padded = pad(&t.data, &t.shape, shape);
            ctx.write_tensor(tensor, &typed(t.dtype, &padded)).map_err(|e| internal("writeTensor", e))?;
            Reflect::set(&ins, &d.name.as_str().into(), tensor).map_err(|e| internal("inputs", e))?;
        }
        let outs = Object::new();
        for (i, tensor) in set.outputs.iter().enumerate() {
            Reflect::set(&outs, &format!("out{i}").into(), tensor).map_err(|e| internal("outputs", e))?;
        }
        ctx.dispatch(&graph, &ins, &outs).map_err(|e| internal("dispatch", e))?;
        let reads: Vec<JsFuture> = set
            .outputs
            .iter()
            .map(|t| ctx.read_tensor(t).map(JsFuture::from).map_err(|e| internal("readTensor", e)))
            .collect::<Result<_, _>>()?;
        let mut outputs = Vec::new();
        for (read, &o) in reads.into_iter().zip(&g.outputs) {
            let buf = read.await.map_err(|e| internal("readTensor", e))?;
            let bytes = Uint8Array::new(&buf).to_vec();
            let data = crop(&bytes, &out_padded[o as usize], &out_real[o as usize]);
            outputs.push(Tensor { dtype: DType::F32, shape: out_real[o as usize].clone(), data: data.into() });
        }
        self.tensors.borrow_mut().entry(bucket).or_default().push(set);
        Ok(super::RunOutput { outputs, device_ms: js_sys::Date::now() - t0 })
    }
}

impl NnModel {
    /// An idle tensor set for `bucket`, or a new one (all tensors requested at once).
    async fn borrow_tensors(&self, bucket: &[Vec<u32>], out_shapes: &[Vec<u32>]) -> Result<TensorSet, RemoteError> {
        if let Some(set) = self.tensors.borrow_mut().get_mut(bucket).and_then(Vec::pop) {
            return Ok(set);
        }
        let ctx = &self.nn.context;
        let g = &self.graph;
        let inputs = g.inputs.iter().zip(bucket).map(|(d, shape)| create_tensor(ctx, d.dtype, shape, "writable"));
        let outputs = g.outputs.iter().map(|&o| create_tensor(ctx, DType::F32, &out_shapes[o as usize], "readable"));
        let inputs = futures_util::future::try_join_all(inputs).await?;
        let outputs = futures_util::future::try_join_all(outputs).await?;
        Ok(TensorSet { inputs, outputs })
    }
}

async fn create_tensor(ctx: &MLContext, dtype: DType, shape: &[u32], usage: &str) -> Result<MLTensor, RemoteError> {
    let d = desc(dtype, shape);
    let _ = Reflect::set(&d, &usage.into(), &JsValue::TRUE);
    let p = ctx.create_tensor(&d).map_err(|e| internal("createTensor", e))?;
    Ok(JsFuture::from(p).await.map_err(|e| internal("createTensor", e))?.unchecked_into())
}
