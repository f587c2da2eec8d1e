//! A model resident on the device: its graph, weights uploaded once, pipelines compiled at load;
//! each run uploads only the inputs and records the whole graph into one submission.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use shared_proto::{DType, ErrorKind, Graph, Op, RemoteError, Tensor, ValueRef};

use super::cached_attention::{self, LayerCache};
use super::{Buf, GpuValue, KernelRun, Recorder, WebGpuExecutor, attention, conv, matmul, reduce};
use crate::executors::cpu::last_uses;
use crate::executors::inputs::Check;
use crate::executors::{inputs, shapes};

/// Interior mutability so a shared `Rc<GpuModel>` can take weights while another task runs it
/// (no borrow is held across an `.await`).
pub struct GpuModel {
    /// Concatenated q/k/v weights (and biases) per `QkvAttention` node, built on first use.
    qkv: RefCell<std::collections::HashMap<usize, (GpuValue, Option<GpuValue>)>>,
    graph: Graph,
    weights: RefCell<Vec<Option<Rc<wgpu::Buffer>>>>,
    /// Weights only the fused q/k/v linears read: once concatenated into `qkv` their own
    /// buffers are destroyed (a second copy of 1.7 MiB per layer otherwise).
    folded: RefCell<Vec<bool>>,
    last_use: Vec<usize>,
    weight_bytes: Cell<u64>,
    plan: Vec<Fuse>,
    /// Per-layer KV cache of a stateful graph (`Graph::kv`) and its rows: enough for the highest
    /// row written so far (a power of two from `MIN_KV_ROWS`), grown by a copy on the device. The
    /// cache the graph declares is for every session's whole context — 8 × 2048 rows in the pool,
    /// 755 MB for SmolLM2 — and is not held before it is used.
    kv: RefCell<Option<(u32, Rc<Vec<LayerCache>>)>>,
    /// Rows a cross-attention node reads from each session's start (none in most graphs).
    cross_rows: Option<u32>,
}

/// The fewest rows a KV cache buffer is created with.
const MIN_KV_ROWS: u32 = 64;

/// Kernel fusion decided once per model: a node whose only consumer is the next node may be done
/// by that node's kernel, saving a dispatch and a round trip through memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fuse {
    /// Encode this node on its own.
    Alone,
    /// Done by the next node (its value is never materialised).
    IntoNext,
    /// `Linear → Gelu`: GELU applied in the linear kernel's store.
    LinearGelu,
    /// `Add → LayerNorm`: the residual sum read on the fly by the layer norm.
    AddLayerNorm,
    /// `Conv2d → Clamp` (ReLU6): the clamp applied in the convolution kernel's store.
    ConvClamp,
    /// Three `Linear`s of one input (q, k, v) feeding `Attention`: one linear over the
    /// concatenated weights, and attention reading q, k, v as column ranges of its output.
    QkvAttention,
}

impl Fuse {
    /// How many preceding nodes this node's kernel also does.
    fn absorbs(self) -> usize {
        match self {
            Fuse::LinearGelu | Fuse::AddLayerNorm | Fuse::ConvClamp => 1,
            Fuse::QkvAttention => 3,
            Fuse::Alone | Fuse::IntoNext => 0,
        }
    }
}

/// The fusion plan: pure function of the graph (uses counted over nodes and outputs).
pub fn fusion_plan(g: &Graph) -> Vec<Fuse> {
    let mut uses = vec![0usize; g.value_count()];
    for n in &g.nodes {
        for &a in &n.args {
            uses[a as usize] += 1;
        }
    }
    for &o in &g.outputs {
        uses[o as usize] += 1;
    }
    let mut plan = vec![Fuse::Alone; g.nodes.len()];
    for i in 0..g.nodes.len().saturating_sub(3) {
        let (a, b, c, att) = (&g.nodes[i], &g.nodes[i + 1], &g.nodes[i + 2], &g.nodes[i + 3]);
        let linear =
            |n: &shared_proto::Node| matches!(n.op, Op::Linear { .. }) && n.op == a.op && n.args[0] == a.args[0];
        let vals = [g.node_value(i), g.node_value(i + 1), g.node_value(i + 2)];
        if linear(a)
            && linear(b)
            && linear(c)
            && matches!(att.op, Op::Attention { .. })
            && att.args[..3] == vals
            && vals.iter().all(|&v| uses[v as usize] == 1)
        {
            plan[i..i + 3].fill(Fuse::IntoNext);
            plan[i + 3] = Fuse::QkvAttention;
        }
    }
    for i in 0..g.nodes.len().saturating_sub(1) {
        if plan[i] != Fuse::Alone || plan[i + 1] != Fuse::Alone {
            continue;
        }
        let v = g.node_value(i);
        let next = &g.nodes[i + 1];
        if uses[v as usize] != 1 || next.args.first() != Some(&v) {
            continue;
        }
        let fused = match (&g.nodes[i].op, &next.op) {
            (Op::Linear { .. }, Op::Gelu) => Fuse::LinearGelu,
            (Op::Add, Op::LayerNorm { .. }) => Fuse::AddLayerNorm,
            (Op::Conv2d { .. }, Op::Clamp { .. }) => Fuse::ConvClamp,
            _ => continue,
        };
        plan[i] = Fuse::IntoNext;
        plan[i + 1] = fused;
    }
    plan
}

fn bad(msg: String) -> RemoteError {
    RemoteError::new(ErrorKind::BadInput, msg)
}

impl GpuModel {
    pub fn new(ex: &WebGpuExecutor, graph: Graph) -> Result<GpuModel, RemoteError> {
        graph.validate().map_err(|e| bad(e.to_string()))?;
        let last_use = last_uses(&graph);
        let plan = fusion_plan(&graph);
        if let Some(decl) = &graph.kv {
            ex.check_kv(decl)?;
        }
        let cross_rows = graph.nodes.iter().find_map(|n| match n.op {
            Op::CrossAttention { rows, .. } => Some(rows),
            _ => None,
        });
        Ok(GpuModel {
            cross_rows,
            kv: RefCell::default(),
            qkv: RefCell::default(),
            plan,
            weights: RefCell::new(vec![None; graph.weights.len()]),
            folded: RefCell::new(vec![false; graph.weights.len()]),
            graph,
            last_use,
            weight_bytes: Cell::new(0),
        })
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Store weights `first..first + tensors.len()`, each checked against its declared dtype,
    /// shape and content hash. Returns the bytes stored.
    pub fn put_weights(
        &self,
        ex: &WebGpuExecutor,
        first: usize,
        tensors: &[Tensor],
        check: Check,
    ) -> Result<u64, RemoteError> {
        ex.alive()?;
        let mut bytes = 0;
        for (i, t) in tensors.iter().enumerate() {
            let idx = first + i;
            inputs::check_weight(&self.graph, idx, t, check)?;
            let mut weights = self.weights.borrow_mut();
            if weights[idx].is_none() && !self.folded.borrow()[idx] {
                self.weight_bytes.set(self.weight_bytes.get() + t.data.len() as u64);
            }
            weights[idx] = Some(ex.weight_buffer(t));
            bytes += t.data.len() as u64;
        }
        Ok(bytes)
    }

    /// Store weight `index` from a buffer already written (`PutWeightPart`; checked by the caller).
    pub(crate) fn set_weight(
        &self,
        ex: &WebGpuExecutor,
        index: usize,
        buf: Rc<wgpu::Buffer>,
        bytes: u64,
    ) -> Result<(), RemoteError> {
        ex.alive()?;
        let mut weights = self.weights.borrow_mut();
        if weights[index].is_none() && !self.folded.borrow()[index] {
            self.weight_bytes.set(self.weight_bytes.get() + bytes);
        }
        weights[index] = Some(buf);
        Ok(())
    }

    pub fn missing_weights(&self) -> usize {
        let folded = self.folded.borrow();
        self.weights.borrow().iter().zip(folded.iter()).filter(|(w, f)| w.is_none() && !**f).count()
    }

    /// Weights whose buffers were destroyed once concatenated for a fused q/k/v linear.
    pub fn folded_weights(&self) -> usize {
        self.folded.borrow().iter().filter(|f| **f).count()
    }

    pub fn weight_bytes(&self) -> u64 {
        self.weight_bytes.get()
    }

    /// Compile every pipeline the graph needs by running it once on the smallest input
    /// (batch 1, sequence 1, zeros). Returns the time taken in ms.
    pub async fn prepare(&self, ex: &WebGpuExecutor) -> Result<f64, RemoteError> {
        let t0 = super::now_ms();
        let inputs = inputs::minimal(&self.graph);
        self.run(ex, &inputs).await?;
        Ok(super::now_ms() - t0)
    }

    pub async fn run(&self, ex: &WebGpuExecutor, inputs: &[Tensor]) -> Result<KernelRun, RemoteError> {
        let g = &self.graph;
        if self.missing_weights() > 0 {
            return Err(RemoteError::new(
                ErrorKind::Unsupported,
                format!("{} weights not uploaded yet", self.missing_weights()),
            ));
        }
        inputs::check(g, inputs)?;
        inputs::check_gather_ids(g, inputs)?;
        let kv = match &g.kv {
            Some(decl) => {
                let need = (check_cache_rows(decl, inputs)? + 1).max(cross_end(self.cross_rows, decl, inputs)?);
                self.kv_rows(ex, decl, need)
            }
            None => Rc::default(),
        };
        let mut values: Vec<Option<GpuValue>> = vec![None; g.value_count()];
        for (i, t) in inputs.iter().enumerate() {
            values[i] = Some(ex.upload_value(t));
        }
        let weights = self.weights.borrow().clone();
        for (i, decl) in g.weights.iter().enumerate() {
            // A folded weight has no buffer: only the q/k/v concatenation reads it.
            values[g.inputs.len() + i] = weights[i].clone().map(|buf| GpuValue {
                shape: decl.shape.clone(),
                dtype: decl.dtype,
                buf: Rc::new(Buf::Weight(buf)),
            });
        }
        let mut rec = Recorder::default();
        let mut shapes: Vec<Option<(Vec<u32>, DType)>> = vec![None; g.value_count()];
        for (i, v) in values.iter().enumerate() {
            shapes[i] = v.as_ref().map(|v| (v.shape.clone(), v.dtype));
        }
        for (i, decl) in g.weights.iter().enumerate() {
            // Folded weights have no value but still have a shape (the fused linears infer theirs).
            shapes[g.inputs.len() + i] = Some((decl.shape.clone(), decl.dtype));
        }
        for (ni, node) in g.nodes.iter().enumerate() {
            // Shapes are inferred for every node, fused or not, so errors name the right node.
            let (shape, dtype) = {
                let known = |a: u32| shapes[a as usize].as_ref().expect("defined earlier");
                let s: Vec<&[u32]> = node.args.iter().map(|&a| known(a).0.as_slice()).collect();
                let d: Vec<DType> = node.args.iter().map(|&a| known(a).1).collect();
                shapes::infer(&node.op, &s, &d)
                    .map_err(|e| RemoteError::new(e.kind, format!("node {ni}: {}", e.message)))?
            };
            shapes[g.node_value(ni) as usize] = Some((shape.clone(), dtype));
            if self.plan[ni] == Fuse::IntoNext {
                continue; // encoded with the next node; its arguments stay alive until then
            }
            let arg = |a: u32| values[a as usize].as_ref().expect("defined");
            let mut out = match self.plan[ni] {
                Fuse::LinearGelu => {
                    let lin = &g.nodes[ni - 1];
                    let args: Vec<&GpuValue> = lin.args.iter().map(|&a| arg(a)).collect();
                    matmul::encode_linear_act(ex, &mut rec, &args, &shape, true)?
                }
                Fuse::ConvClamp => {
                    let conv = &g.nodes[ni - 1];
                    let Op::Clamp { min, max } = node.op else { unreachable!("planned on Clamp") };
                    let args: Vec<&GpuValue> = conv.args.iter().map(|&a| arg(a)).collect();
                    conv::encode(ex, &mut rec, &conv.op, &args, &shape, Some((min, max)))?
                }
                Fuse::QkvAttention => {
                    let Op::Attention { heads } = node.op else { unreachable!("planned on Attention") };
                    let (w, bias) = self.qkv_weights(ex, ni, &values)?;
                    let x = arg(g.nodes[ni - 3].args[0]);
                    let h = shape[2];
                    let mut qkv_shape = shape.clone();
                    qkv_shape[2] = 3 * h;
                    let mut largs = vec![x, &w];
                    largs.extend(bias.as_ref());
                    let qkv = matmul::encode_linear(ex, &mut rec, &largs, &qkv_shape)?;
                    attention::encode_packed(ex, &mut rec, heads, &qkv, arg(node.args[3]), h)?
                }
                Fuse::Alone if matches!(node.op, Op::CachedAttention { .. }) => {
                    let Op::CachedAttention { layer, heads, kv_heads } = node.op else { unreachable!("matched") };
                    let args: Vec<&GpuValue> = node.args.iter().map(|&a| arg(a)).collect();
                    cached_attention::encode(ex, &mut rec, heads, kv_heads, &args, &kv[layer as usize])?
                }
                Fuse::Alone if matches!(node.op, Op::CrossAttention { .. }) => {
                    let Op::CrossAttention { layer, heads, rows } = node.op else { unreachable!("matched") };
                    let args: Vec<&GpuValue> = node.args.iter().map(|&a| arg(a)).collect();
                    cached_attention::encode_cross(ex, &mut rec, heads, rows, &args, &kv[layer as usize])?
                }
                Fuse::AddLayerNorm => {
                    let add = &g.nodes[ni - 1];
                    let (a, b) = (arg(add.args[0]), arg(add.args[1]));
                    let Op::LayerNorm { eps } = node.op else { unreachable!("planned on LayerNorm") };
                    if a.shape == b.shape {
                        reduce::encode_add_layer_norm(ex, &mut rec, a, b, arg(node.args[1]), arg(node.args[2]), eps)?
                    } else {
                        // A broadcast residual has no fused kernel: encode both.
                        let sum = ex.encode_op(&mut rec, &Op::Add, &[a, b], &a.shape)?;
                        ex.encode_op(&mut rec, &node.op, &[&sum, arg(node.args[1]), arg(node.args[2])], &shape)?
                    }
                }
                _ => {
                    let args: Vec<&GpuValue> = node.args.iter().map(|&a| arg(a)).collect();
                    ex.encode_op(&mut rec, &node.op, &args, &shape)?
                }
            };
            out.dtype = dtype;
            values[g.node_value(ni) as usize] = Some(out);
            // Buffers past their last use go back to the pool; later dispatches in the same
            // submission may reuse them (WebGPU orders dispatches within a pass). A fused pair
            // releases the arguments of both its nodes here.
            let first = ni - self.plan[ni].absorbs();
            for n in first..=ni {
                for &a in &g.nodes[n].args {
                    if self.last_use[a as usize] <= ni && !matches!(g.value(a), ValueRef::Weight(_)) {
                        values[a as usize] = None;
                    }
                }
            }
        }
        let outs: Vec<GpuValue> =
            g.outputs.iter().map(|&o| values[o as usize].clone().expect("outputs kept")).collect();
        let refs: Vec<&GpuValue> = outs.iter().collect();
        let (bytes, device_ms) = ex.submit(rec, &refs, 1).await?;
        let outputs =
            outs.iter().zip(bytes).map(|(v, data)| Tensor { dtype: v.dtype, shape: v.shape.clone(), data }).collect();
        Ok(KernelRun { outputs, device_ms })
    }

    /// The q, k, v weights (and biases) of the three linears before attention node `ni`, as one
    /// `[3H, K]` weight: concatenated on the device once, then reused by every run.
    fn qkv_weights(
        &self,
        ex: &WebGpuExecutor,
        ni: usize,
        values: &[Option<GpuValue>],
    ) -> Result<(GpuValue, Option<GpuValue>), RemoteError> {
        if let Some(w) = self.qkv.borrow().get(&ni) {
            return Ok(w.clone());
        }
        let g = &self.graph;
        let linears = &g.nodes[ni - 3..ni];
        let part = |k: usize, j: usize| values[linears[j].args[k] as usize].clone().expect("weights bound");
        let w: Vec<GpuValue> = (0..3).map(|j| part(1, j)).collect();
        if w.iter().any(|v| v.shape != w[0].shape) {
            return Err(RemoteError::new(ErrorKind::BadInput, format!("node {ni}: q, k, v weights differ in shape")));
        }
        let concat = |parts: &[GpuValue]| {
            let mut shape = parts[0].shape.clone();
            shape[0] *= 3;
            GpuValue { shape, dtype: parts[0].dtype, buf: Rc::new(Buf::Weight(ex.concat_buffers(parts))) }
        };
        let bias = matches!(linears[0].op, Op::Linear { bias: true })
            .then(|| concat(&(0..3).map(|j| part(2, j)).collect::<Vec<_>>()));
        let fused = (concat(&w), bias);
        self.qkv.borrow_mut().insert(ni, fused.clone());
        self.fold_weights(ni);
        Ok(fused)
    }
}

/// Every token row's cache row `kv_start[t] + pos[t]` must lie inside the cache: the kernels
/// index the cache buffers with it. The highest row.
fn check_cache_rows(kv: &shared_proto::KvDecl, inputs: &[Tensor]) -> Result<u32, RemoteError> {
    let ints = |t: &Tensor| -> Vec<i64> {
        t.data.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64).collect()
    };
    let (pos, start) = (ints(&inputs[1]), ints(&inputs[2]));
    let mut highest = 0;
    for (t, (&p, &s)) in pos.iter().zip(&start).enumerate() {
        if p < 0 || s < 0 || p + s >= kv.max_tokens as i64 {
            return Err(bad(format!(
                "token row {t}: kv_start {s} + pos {p} is outside the KV cache of {} rows",
                kv.max_tokens
            )));
        }
        highest = highest.max((p + s) as u32);
    }
    Ok(highest)
}

/// The cache rows cross-attention reads to (`kv_start[t] + rows` at most), which must exist in
/// the cache buffers: 0 for a graph without it.
fn cross_end(rows: Option<u32>, kv: &shared_proto::KvDecl, inputs: &[Tensor]) -> Result<u32, RemoteError> {
    let Some(rows) = rows else { return Ok(0) };
    let starts = inputs[2].data.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]));
    let end = starts.map(|s| s.max(0) as u32 + rows).max().unwrap_or(0);
    if end > kv.max_tokens {
        return Err(bad(format!("cross attention reads to row {end}, past the KV cache of {} rows", kv.max_tokens)));
    }
    Ok(end)
}

impl GpuModel {
    /// Write a session's cross-attention memory (`[layers, 2, rows, width]`: per layer its keys,
    /// then its values) into cache layers `first_layer..` at rows `start..start + rows`; the
    /// bytes written.
    pub fn put_memory(
        &self,
        ex: &WebGpuExecutor,
        first_layer: usize,
        start: usize,
        memory: &Tensor,
    ) -> Result<u64, RemoteError> {
        ex.alive()?;
        let decl = self.graph.kv.as_ref().ok_or_else(|| bad("the model has no KV cache".into()))?;
        let width = (decl.kv_heads * decl.head_dim) as usize;
        let &[layers, two, rows, w] = memory.shape.as_slice() else {
            return Err(bad(format!("a memory is [layers, 2, rows, width], got {:?}", memory.shape)));
        };
        let (layers, rows) = (layers as usize, rows as usize);
        if memory.dtype != DType::F32
            || two != 2
            || w as usize != width
            || memory.data.len() != layers * 2 * rows * width * 4
        {
            return Err(bad(format!("a memory {:?} does not fit cache rows of {width} values", memory.shape)));
        }
        if first_layer + layers > decl.layers as usize || start + rows > decl.max_tokens as usize {
            return Err(bad(format!(
                "a memory of {layers} layers × {rows} rows at layer {first_layer}, row {start} is outside the cache ({} layers × {} rows)",
                decl.layers, decl.max_tokens
            )));
        }
        let kv = self.kv_rows(ex, decl, (start + rows) as u32);
        let block = rows * width * 4;
        let offset = (start * width * 4) as u64;
        for l in 0..layers {
            let cache = &kv[first_layer + l];
            let k = &memory.data[2 * l * block..(2 * l + 1) * block];
            let v = &memory.data[(2 * l + 1) * block..(2 * l + 2) * block];
            ex.gpu.queue.write_buffer(&cache.k, offset, k);
            ex.gpu.queue.write_buffer(&cache.v, offset, v);
        }
        Ok(memory.data.len() as u64)
    }

    /// The KV cache with at least `need` rows: created at the first run, grown (the rows so far
    /// copied on the device, ordered before this run's submission) when a run writes past it.
    /// Copy KV rows `from..from + rows` to `to..` in every layer (a cached prefix). WebGPU
    /// forbids a copy within one buffer, so the rows pass through a scratch buffer.
    pub fn copy_kv_rows(&self, ex: &WebGpuExecutor, from: u32, to: u32, rows: u32) -> Result<(), RemoteError> {
        ex.alive()?;
        let decl = self.graph.kv.as_ref().ok_or_else(|| bad("the model has no KV cache".into()))?;
        if from.max(to) + rows > decl.max_tokens || (from < to + rows && to < from + rows) {
            return Err(bad(format!("a copy of rows {from}.. to {to}.. ({rows} rows) overlaps or leaves the cache")));
        }
        let kv = self.kv_rows(ex, decl, from.max(to) + rows);
        let row = decl.kv_heads as u64 * decl.head_dim as u64 * 4;
        let bytes = rows as u64 * row;
        let scratch = ex.gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("kv rows"),
            size: 2 * bytes * kv.len() as u64,
            usage: wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut encoder = ex.gpu.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        for (l, c) in kv.iter().enumerate() {
            let at = 2 * l as u64 * bytes;
            encoder.copy_buffer_to_buffer(&c.k, from as u64 * row, &scratch, at, bytes);
            encoder.copy_buffer_to_buffer(&c.v, from as u64 * row, &scratch, at + bytes, bytes);
        }
        for (l, c) in kv.iter().enumerate() {
            let at = 2 * l as u64 * bytes;
            encoder.copy_buffer_to_buffer(&scratch, at, &c.k, to as u64 * row, bytes);
            encoder.copy_buffer_to_buffer(&scratch, at + bytes, &c.v, to as u64 * row, bytes);
        }
        ex.gpu.queue.submit([encoder.finish()]);
        scratch.destroy();
        Ok(())
    }

    fn kv_rows(&self, ex: &WebGpuExecutor, decl: &shared_proto::KvDecl, need: u32) -> Rc<Vec<LayerCache>> {
        let have = self.kv.borrow().clone();
        if let Some((rows, layers)) = &have
            && *rows >= need
        {
            return layers.clone();
        }
        let rows = need.next_power_of_two().max(MIN_KV_ROWS).min(decl.max_tokens);
        let layers = Rc::new(ex.kv_cache(decl, rows));
        if let Some((old_rows, old)) = have {
            ex.copy_kv(&old, &layers, old_rows as u64 * decl.kv_heads as u64 * decl.head_dim as u64 * 4);
        }
        *self.kv.borrow_mut() = Some((rows, layers.clone()));
        layers
    }
}

impl GpuModel {
    /// Destroy the q/k/v weights (and biases) of attention node `ni` that nothing but its three
    /// fused linears reads, now that they live in the concatenation. The copy into it was
    /// submitted already, and `destroy` waits for submitted work that uses the buffer.
    fn fold_weights(&self, ni: usize) {
        let g = &self.graph;
        let mut weights = self.weights.borrow_mut();
        let mut folded = self.folded.borrow_mut();
        for lin in &g.nodes[ni - 3..ni] {
            for &a in &lin.args[1..] {
                let elsewhere =
                    g.nodes.iter().enumerate().any(|(n, node)| !(ni - 3..ni).contains(&n) && node.args.contains(&a))
                        || g.outputs.contains(&a);
                let ValueRef::Weight(idx) = g.value(a) else { continue };
                if elsewhere || folded[idx] {
                    continue;
                }
                if let Some(buf) = weights[idx].take() {
                    buf.destroy();
                }
                folded[idx] = true;
            }
        }
    }
}

impl WebGpuExecutor {
    /// Zero-filled K and V buffers per layer for `kv`, each checked against the device's largest
    /// storage binding (a layer's buffer is bound whole).
    /// Refused at load with `Capacity` when the declared cache cannot fit one buffer per layer.
    pub(crate) fn check_kv(&self, kv: &shared_proto::KvDecl) -> Result<(), RemoteError> {
        let bytes = kv.max_tokens as u64 * kv.kv_heads as u64 * kv.head_dim as u64 * 4;
        let limits = self.gpu.device.limits();
        let limit = limits.max_storage_buffer_binding_size.min(limits.max_buffer_size);
        if bytes > limit {
            return Err(RemoteError::new(
                ErrorKind::Capacity,
                format!(
                    "KV cache of {} tokens needs {bytes} bytes per layer for keys (and as many for values); this \
                     device binds at most {limit} bytes per buffer, i.e. {} tokens",
                    kv.max_tokens,
                    limit / (kv.kv_heads as u64 * kv.head_dim as u64 * 4)
                ),
            ));
        }
        Ok(())
    }

    /// Zero-filled key and value buffers of `rows` rows for every layer.
    pub(crate) fn kv_cache(&self, kv: &shared_proto::KvDecl, rows: u32) -> Vec<LayerCache> {
        let bytes = rows as u64 * kv.kv_heads as u64 * kv.head_dim as u64 * 4;
        let make = |label| {
            self.gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: bytes.next_multiple_of(16),
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        };
        (0..kv.layers).map(|_| LayerCache { k: make("kv_k"), v: make("kv_v") }).collect()
    }

    /// The first `bytes` of every layer's keys and values from `old` into `new`, submitted now.
    pub(crate) fn copy_kv(&self, old: &[LayerCache], new: &[LayerCache], bytes: u64) {
        let mut encoder = self.gpu.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        for (o, n) in old.iter().zip(new) {
            encoder.copy_buffer_to_buffer(&o.k, 0, &n.k, 0, bytes);
            encoder.copy_buffer_to_buffer(&o.v, 0, &n.v, 0, bytes);
        }
        self.gpu.queue.submit([encoder.finish()]);
    }

    /// Convenience for tests and single-op graphs: create, upload all weights, prepare.
    pub async fn load_model(&self, graph: Graph, weights: &[Tensor]) -> Result<GpuModel, RemoteError> {
        let m = GpuModel::new(self, graph)?;
        m.put_weights(self, 0, weights, Check::Hash)?;
        if m.missing_weights() > 0 {
            return Err(bad(format!("{} weights missing", m.missing_weights())));
        }
        m.prepare(self).await?;
        Ok(m)
    }
}
