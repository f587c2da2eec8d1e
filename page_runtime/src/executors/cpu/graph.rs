//! Interprets an operator graph on the CPU: the host's fallback and every test's reference.

use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use shared_proto::{DType, ErrorKind, Graph, Op, RemoteError, Tensor, ValueRef};

use super::cached_attention::{self, CachedDims, KvCache};
use super::{attention, binary, conv, half, matmul, quantized, reduce, reindex, rope, sample, unary};
use crate::executors::{inputs, shapes};

/// A value during a run: shared so reshapes and weights cost no copy.
#[derive(Clone)]
enum Data {
    F32(Arc<[f32]>),
    /// An f32 weight read in place from the bytes it arrived in (4-aligned, little-endian):
    /// copying it into an `Arc<[f32]>` made the wasm heap — which never shrinks — hold every
    /// f32 weight twice at the end of a load.
    F32Bytes(Bytes),
    I32(Arc<[i32]>),
    /// A packed weight (f16 or block-quantized), its bytes as they arrived: only weights are
    /// packed, and kernels widen them as they read.
    Packed(DType, Bytes),
    /// An f32 weight `[n, k]` used only as a Linear's W, stored transposed (`k × n`) on a native
    /// host, where the GEMM reads it faster so (`matmul::linear_t`). Nothing else reads it.
    #[cfg(not(target_arch = "wasm32"))]
    F32T(Arc<[f32]>),
}

#[derive(Clone)]
struct Value {
    shape: Vec<u32>,
    data: Data,
}

impl Value {
    fn dtype(&self) -> DType {
        match self.data {
            Data::F32(_) | Data::F32Bytes(_) => DType::F32,
            #[cfg(not(target_arch = "wasm32"))]
            Data::F32T(_) => DType::F32,
            Data::I32(_) => DType::I32,
            Data::Packed(dt, _) => dt,
        }
    }
    fn f32(&self) -> &[f32] {
        match &self.data {
            Data::F32(d) => d,
            Data::F32Bytes(b) => f32s_in_place(b).expect("checked when stored"),
            _ => unreachable!("dtype checked by shapes::infer"),
        }
    }
    fn i32(&self) -> &[i32] {
        match &self.data {
            Data::I32(d) => d,
            _ => unreachable!("dtype checked by shapes::infer"),
        }
    }
}

/// A graph with its weights resident, ready to run many times. A stateful graph (`Graph::kv`)
/// also owns its KV cache; runs of it take turns on the cache's lock, which is what keeps `run`
/// `&self` for a host that shares the model across threads.
pub struct CpuModel {
    graph: Graph,
    weights: Vec<Data>,
    last_use: Vec<usize>,
    kv: Option<Mutex<KvCache>>,
}

impl CpuModel {
    /// `weights` in the graph's declared order, of the declared dtypes (f32, or f16 / Q4_1 / Q8_0
    /// kept as they are) and shapes. An f16 weight holding an infinity or NaN is refused.
    pub fn new(graph: Graph, weights: Vec<Tensor>) -> Result<CpuModel, RemoteError> {
        graph.validate().map_err(|e| RemoteError::new(ErrorKind::BadInput, e.to_string()))?;
        if weights.len() != graph.weights.len() {
            return Err(RemoteError::new(
                ErrorKind::BadInput,
                format!("graph declares {} weights, got {}", graph.weights.len(), weights.len()),
            ));
        }
        let mut ws = Vec::with_capacity(weights.len());
        for (decl, t) in graph.weights.iter().zip(&weights) {
            let plain = t.dtype == DType::F32 || t.dtype.is_packed();
            let len_ok = decl.dtype.byte_len(&decl.shape) == Some(t.data.len() as u64);
            if t.shape != decl.shape || t.dtype != decl.dtype || !plain || !len_ok {
                return Err(RemoteError::new(
                    ErrorKind::BadInput,
                    format!(
                        "weight {}: got {:?} {:?}, declared {:?} {:?}",
                        decl.name, t.dtype, t.shape, decl.dtype, decl.shape
                    ),
                ));
            }
            if t.dtype == DType::F16
                && let Some(i) = half::first_not_finite(&t.data)
            {
                return Err(RemoteError::new(
                    ErrorKind::BadInput,
                    format!("weight {}: element {i} is not finite (an f16 weight must be)", decl.name),
                ));
            }
            ws.push(match t.dtype {
                DType::F32 if f32s_in_place(&t.data).is_some() => Data::F32Bytes(t.data.clone()),
                DType::F32 => Data::F32(Arc::from(t.to_f32().expect("f32"))),
                dt => Data::Packed(dt, t.data.clone()),
            });
        }
        #[cfg(not(target_arch = "wasm32"))]
        for (i, w) in ws.iter_mut().enumerate() {
            let [n, k] = graph.weights[i].shape[..] else { continue };
            if only_linear_weight(&graph, i)
                && let Data::F32(_) | Data::F32Bytes(_) = w
            {
                let v = Value { shape: vec![n, k], data: w.clone() };
                *w = Data::F32T(matmul::transpose(v.f32(), n as usize, k as usize).into());
            }
        }
        let last_use = last_uses(&graph);
        let kv = graph.kv.as_ref().map(|kv| Mutex::new(KvCache::new(kv)));
        Ok(CpuModel { graph, weights: ws, last_use, kv })
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Write `memory` (`[layers, 2, rows, width]`: keys then values per layer) into cache layers
    /// `first_layer..` at rows `start..start + rows` (see `Request::PutMemory`).
    pub fn put_memory(&self, first_layer: usize, start: usize, memory: &Tensor) -> Result<u64, RemoteError> {
        let m = self.kv.as_ref().ok_or_else(|| RemoteError::new(ErrorKind::BadInput, "the model has no KV cache"))?;
        let mut cache = m.lock().unwrap_or_else(PoisonError::into_inner);
        if memory.dtype != DType::F32 {
            return Err(RemoteError::new(ErrorKind::BadInput, "a memory is an f32 tensor"));
        }
        cache.put_memory(first_layer, start, &memory.shape, &memory.data)?;
        Ok(memory.data.len() as u64)
    }

    /// Copy KV rows `from..from + rows` to `to..` in every layer (a cached prefix).
    pub fn copy_kv_rows(&self, from: u32, to: u32, rows: u32) -> Result<(), RemoteError> {
        let m = self.kv.as_ref().ok_or_else(|| RemoteError::new(ErrorKind::BadInput, "the model has no KV cache"))?;
        let mut cache = m.lock().unwrap_or_else(PoisonError::into_inner);
        cache.copy_rows(from as usize, to as usize, rows as usize)
    }

    /// Write an encoder's outputs (keys, values, … per layer, `[1, rows, width]` f32 each) as a
    /// memory, without assembling it (`Request::EncodeIntoMemory`).
    pub fn put_memory_outputs(&self, first_layer: usize, start: usize, outputs: &[Tensor]) -> Result<u64, RemoteError> {
        let m = self.kv.as_ref().ok_or_else(|| RemoteError::new(ErrorKind::BadInput, "the model has no KV cache"))?;
        let bad = |m: String| RemoteError::new(ErrorKind::BadInput, m);
        let rows = match outputs.first().map(|t| t.shape.as_slice()) {
            Some(&[1, rows, _]) => rows as usize,
            other => return Err(bad(format!("an encoder's memory outputs are [1, rows, width], got {other:?}"))),
        };
        if outputs.iter().any(|t| t.dtype != DType::F32 || t.shape[..2] != [1, rows as u32]) {
            return Err(bad("an encoder's memory outputs are f32 [1, rows, width] alike".into()));
        }
        let parts: Vec<&[u8]> = outputs.iter().map(|t| &t.data[..]).collect();
        let mut cache = m.lock().unwrap_or_else(PoisonError::into_inner);
        cache.put_memory_parts(first_layer, start, rows, &parts)?;
        Ok(parts.iter().map(|p| p.len() as u64).sum())
    }

    /// Run on `inputs` (in declared order); returns the graph outputs.
    pub fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, RemoteError> {
        let g = &self.graph;
        inputs::check(g, inputs)?;
        // Held for the whole run: a step's layers must see one consistent cache. A panic in an
        // earlier run leaves at worst rows of that step half written, which no session reads
        // before writing them again.
        let mut cache = self.kv.as_ref().map(|m| m.lock().unwrap_or_else(PoisonError::into_inner));
        let mut values: Vec<Option<Value>> = vec![None; g.value_count()];
        for (i, t) in inputs.iter().enumerate() {
            let data = match t.dtype {
                DType::F32 => Data::F32(t.to_f32().expect("f32").into()),
                DType::I32 => Data::I32(
                    t.data
                        .chunks_exact(4)
                        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect::<Vec<_>>()
                        .into(),
                ),
                other => {
                    return Err(RemoteError::new(
                        ErrorKind::BadInput,
                        format!("input {i}: dtype {other:?} unsupported"),
                    ));
                }
            };
            values[i] = Some(Value { shape: t.shape.clone(), data });
        }
        for (i, decl) in g.weights.iter().enumerate() {
            values[g.inputs.len() + i] = Some(Value { shape: decl.shape.clone(), data: self.weights[i].clone() });
        }
        for (ni, node) in g.nodes.iter().enumerate() {
            let args: Vec<&Value> =
                node.args.iter().map(|&a| values[a as usize].as_ref().expect("defined earlier")).collect();
            let shapes_: Vec<&[u32]> = args.iter().map(|v| v.shape.as_slice()).collect();
            let dtypes: Vec<DType> = args.iter().map(|v| v.dtype()).collect();
            let (shape, _) = shapes::infer(&node.op, &shapes_, &dtypes)
                .map_err(|e| RemoteError::new(e.kind, format!("node {ni}: {}", e.message)))?;
            let data = eval(&node.op, &args, &shape, cache.as_deref_mut())?;
            let own = g.node_value(ni) as usize;
            values[own] = Some(Value { shape, data });
            // Free what no later node or output needs.
            for &a in &node.args {
                if self.last_use[a as usize] == ni && matches!(g.value(a), ValueRef::Node(_)) {
                    values[a as usize] = None;
                }
            }
        }
        g.outputs
            .iter()
            .map(|&o| {
                let v = values[o as usize].as_ref().expect("outputs are kept");
                Ok(match &v.data {
                    Data::F32(_) | Data::F32Bytes(_) => Tensor::from_f32(v.shape.clone(), v.f32()),
                    Data::I32(d) => Tensor {
                        dtype: DType::I32,
                        shape: v.shape.clone(),
                        data: d.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>().into(),
                    },
                    Data::Packed(dt, b) => Tensor { dtype: *dt, shape: v.shape.clone(), data: b.clone() },
                    #[cfg(not(target_arch = "wasm32"))]
                    Data::F32T(_) => unreachable!("a transposed weight is never an output"),
                })
            })
            .collect()
    }
}

/// Whether weight `i` is used by Linear nodes as their W and by nothing else (nor an output).
#[cfg(not(target_arch = "wasm32"))]
fn only_linear_weight(g: &Graph, i: usize) -> bool {
    let id = (g.inputs.len() + i) as u32;
    let mut used = false;
    for n in &g.nodes {
        for (pos, &a) in n.args.iter().enumerate() {
            if a == id {
                if !(matches!(n.op, Op::Linear { .. }) && pos == 1) {
                    return false;
                }
                used = true;
            }
        }
    }
    used && !g.outputs.contains(&id)
}

/// `b` as f32 values without a copy, when its address allows it (4-aligned) and the machine
/// reads little-endian as the wire does (wasm32 and x86-64 both do).
fn f32s_in_place(b: &Bytes) -> Option<&[f32]> {
    if cfg!(target_endian = "big") || !(b.as_ptr() as usize).is_multiple_of(4) || !b.len().is_multiple_of(4) {
        return None;
    }
    // SAFETY: 4-aligned, a whole number of f32s, every bit pattern is an f32, and the bytes are
    // immutable and live as long as the borrow of `b`.
    Some(unsafe { std::slice::from_raw_parts(b.as_ptr().cast::<f32>(), b.len() / 4) })
}

/// For each value, the index of the last node using it (`usize::MAX` for outputs: never freed).
pub fn last_uses(g: &Graph) -> Vec<usize> {
    let mut last = vec![0usize; g.value_count()];
    for (ni, n) in g.nodes.iter().enumerate() {
        for &a in &n.args {
            last[a as usize] = ni;
        }
    }
    for &o in &g.outputs {
        last[o as usize] = usize::MAX;
    }
    last
}

fn eval(op: &Op, args: &[&Value], out_shape: &[u32], cache: Option<&mut KvCache>) -> Result<Data, RemoteError> {
    let dim = |v: &Value, i: usize| v.shape[i] as usize;
    let last = |v: &Value| *v.shape.last().expect("rank ≥ 1") as usize;
    let f = |v: Vec<f32>| Data::F32(v.into());
    Ok(match op {
        Op::MatMul => {
            let (a, b) = (args[0], args[1]);
            let (k, n) = (dim(b, 0), dim(b, 1));
            let m = a.f32().len() / k;
            f(matmul::matmul(a.f32(), b.f32(), m, k, n))
        }
        Op::Linear { bias } => {
            let (x, w) = (args[0], args[1]);
            let (n, k) = (dim(w, 0), dim(w, 1));
            let (bias, m) = (bias.then(|| args[2].f32()), x.f32().len() / k);
            f(match &w.data {
                Data::Packed(DType::F16, b) => half::linear(x.f32(), b, bias, m, k, n),
                Data::Packed(dt, b) => quantized::linear(x.f32(), b, *dt, bias, m, k, n),
                #[cfg(not(target_arch = "wasm32"))]
                Data::F32T(wt) => matmul::linear_t(x.f32(), wt, bias, m, k, n),
                _ => matmul::linear(x.f32(), w.f32(), bias, m, k, n),
            })
        }
        Op::Add => f(binary::add(args[0].f32(), args[1].f32())),
        Op::Mul => f(binary::mul(args[0].f32(), args[1].f32())),
        Op::Gelu => f(unary::gelu(args[0].f32())),
        Op::LayerNorm { eps } => f(reduce::layer_norm(args[0].f32(), args[1].f32(), args[2].f32(), *eps)),
        Op::Softmax => f(reduce::softmax(args[0].f32(), last(args[0]))),
        Op::MeanPool => {
            let x = args[0];
            f(reduce::mean_pool(x.f32(), args[1].f32(), dim(x, 0), dim(x, 1), dim(x, 2)))
        }
        Op::L2Normalize { eps } => f(reduce::l2_normalize(args[0].f32(), last(args[0]), *eps)),
        Op::Gather => {
            let (table, h) = (args[0], dim(args[0], 1));
            f(match &table.data {
                Data::Packed(DType::F16, b) => half::gather(b, h, args[1].i32())?,
                Data::Packed(dt, b) => quantized::gather(b, *dt, h, args[1].i32())?,
                _ => reindex::gather(table.f32(), h, args[1].i32())?,
            })
        }
        Op::Reshape { .. } => args[0].data.clone(),
        Op::Transpose { perm } => match &args[0].data {
            Data::F32(_) | Data::F32Bytes(_) => {
                Data::F32(reindex::transpose(args[0].f32(), &args[0].shape, perm).into())
            }
            Data::I32(d) => Data::I32(reindex::transpose(d, &args[0].shape, perm).into()),
            Data::Packed(..) => unreachable!("shapes::infer refuses packed operands here"),
            #[cfg(not(target_arch = "wasm32"))]
            Data::F32T(_) => unreachable!("only Linear reads a transposed weight"),
        },
        Op::Attention { heads } => {
            let q = args[0];
            let (b, s, h) = (dim(q, 0), dim(q, 1), dim(q, 2));
            let dims = attention::AttnDims { b, s, h, heads: *heads as usize };
            f(attention::attention(q.f32(), args[1].f32(), args[2].f32(), args[3].f32(), dims))
        }
        Op::Conv2d { stride, pad, groups, bias } => {
            let (x, w) = (args[0], args[1]);
            let d = conv::ConvDims {
                n: dim(x, 0),
                c: dim(x, 1),
                h: dim(x, 2),
                w: dim(x, 3),
                o: dim(w, 0),
                kh: dim(w, 2),
                kw: dim(w, 3),
                stride: [stride[0] as usize, stride[1] as usize],
                pad: pad.map(|p| p as usize),
                groups: *groups as usize,
            };
            f(conv::conv2d(x.f32(), w.f32(), bias.then(|| args[2].f32()), &d))
        }
        Op::Clamp { min, max } => f(unary::clamp(args[0].f32(), *min, *max)),
        Op::GlobalAvgPool => {
            let x = args[0];
            f(conv::global_avg_pool(x.f32(), dim(x, 0) * dim(x, 1), dim(x, 2) * dim(x, 3)))
        }
        Op::SiluMul => f(binary::silu_mul(args[0].f32(), args[1].f32())),
        Op::RmsNorm { eps } => f(reduce::rms_norm(args[0].f32(), args[1].f32(), *eps)),
        Op::Rope { heads, base } => f(rope::rope(args[0].f32(), args[1].i32(), *heads as usize, *base)),
        Op::Argmax => Data::I32(sample::argmax(args[0].f32(), last(args[0])).into()),
        Op::Sample => Data::I32(sample::sample(args[0].f32(), args[1].f32(), last(args[0])).into()),
        Op::CachedAttention { layer, heads, kv_heads } => {
            let cache =
                cache.ok_or_else(|| RemoteError::new(ErrorKind::BadInput, "cached attention without a KV cache"))?;
            let dims = CachedDims { layer: *layer as usize, heads: *heads as usize, kv_heads: *kv_heads as usize };
            let [q, k, v, pos, start] = args else { unreachable!("arity 5") };
            f(cached_attention::cached_attention(cache, dims, q.f32(), k.f32(), v.f32(), pos.i32(), start.i32())?)
        }
        Op::CrossAttention { layer, heads, rows } => {
            let cache =
                cache.ok_or_else(|| RemoteError::new(ErrorKind::BadInput, "cross attention without a KV cache"))?;
            let (layer, heads, rows) = (*layer as usize, *heads as usize, *rows as usize);
            f(cached_attention::cross_attention(cache, layer, heads, rows, args[0].f32(), args[1].i32())?)
        }
    })
    .inspect(|_| debug_assert!(!out_shape.is_empty() || matches!(op, Op::Reshape { .. })))
}
