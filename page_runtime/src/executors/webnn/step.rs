//! Steps of a stateful (generation) graph on WebNN. The KV cache is two sets of per-layer
//! `MLTensor`s `[max_tokens + 1, kv_heads·head_dim]`: a step reads one set and writes the other
//! (the cache with its new rows scattered in), and the next step swaps them — WebNN has no
//! in-place update and a tensor cannot be a dispatch's input and output at once. The last row
//! is scratch: padding tokens write there. Per step the executor computes in wasm which cache
//! rows each token reads (`gidx`, clamped to rows it already wrote, so no unwritten memory is
//! ever read), the causal mask, and the rope angles in f64; greedy ids come from `argMax` in the
//! graph, sampled rows are drawn in wasm from their logits read back (the CPU executor's kernel).

use std::cell::Cell;
use std::rc::Rc;

use js_sys::{Object, Reflect, Uint8Array};
use shared_proto::{DType, ErrorKind, Graph, Op, RemoteError, Tensor, ValueRef};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;

use super::ops::{self, StepShape};
use super::{NnModel, NnTensor, TensorSet, create_tensor, internal, wasm_view};
use crate::executors::buckets::{batch_bucket, crop, pad, seq_bucket};
use crate::executors::{RunOutput, cpu, inputs, shapes};

/// The model's KV cache tensors, for the layers a `CachedAttention` writes (cross-attention
/// layers hold fixed memories: `memory.rs`).
pub(super) struct KvTensors {
    /// Those layers, ascending.
    layers: Vec<u32>,
    /// Per set, per layer of `layers`: (keys, values).
    sets: [Vec<(NnTensor, NnTensor)>; 2],
    /// The set holding the cache as of the last step.
    current: Cell<usize>,
    /// Rows in each tensor: the highest row a step has written, plus one, plus the scratch row,
    /// rounded up to a power of two (never past the declared cache). Every step's scatter copies
    /// whole tensors (WebNN has no in-place update), so a cache sized for every session's full
    /// context (16 385 rows in the pool: 755 MB copied per decode step) is grown only as it is used.
    rows: u32,
}

/// The fewest rows a KV tensor is created with.
const MIN_KV_ROWS: u32 = 64;

/// Rows a KV tensor needs so that row `highest` and a scratch row above it fit: a power of two
/// from `MIN_KV_ROWS`, at most the declared cache plus its scratch row.
fn kv_rows(highest: u32, max_tokens: u32) -> u32 {
    (highest + 2).next_power_of_two().max(MIN_KV_ROWS).min(max_tokens + 1)
}

/// The narrowest attention window a graph is built for: windows are powers of two from here,
/// so a generation of n tokens builds about log2(n / 16) decode graphs.
const MIN_WINDOW: u32 = 16;

/// Additive mask of cache rows a token must not see: exp underflows to exactly 0 (finite, so a
/// padding token's all-masked row gives no NaN).
const MASKED: f32 = -1e30;

fn i32s(t: &Tensor) -> Vec<i32> {
    t.data.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

fn i32_bytes(v: &[i32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The dtype of graph output value `o`: token ids from `Argmax` / `Sample`, else f32.
pub(super) fn out_dtype(g: &Graph, o: u32) -> DType {
    match g.value(o) {
        ValueRef::Node(n) if matches!(g.nodes[n].op, Op::Argmax | Op::Sample) => DType::I32,
        _ => DType::F32,
    }
}

/// Where a `Sample` node's logits are read from: a graph output's index, or the extra output.
fn logits_slot(g: &Graph) -> Option<usize> {
    let sample = g.nodes.iter().find(|n| n.op == Op::Sample)?;
    Some(g.outputs.iter().position(|&o| o == sample.args[0]).unwrap_or(g.outputs.len()))
}

/// Whether graph input `i` feeds the WebNN graph: positions, cache starts and sampling
/// parameters reach it only through the step's extra inputs (an unused input must not be bound).
fn feeds_graph(g: &Graph, i: u32) -> bool {
    g.nodes.iter().any(|n| {
        let read = match n.op {
            Op::Rope { .. } | Op::Sample => &n.args[..1],
            Op::CachedAttention { .. } => &n.args[..3],
            Op::CrossAttention { .. } => &n.args[..1],
            _ => &n.args[..],
        };
        read.contains(&i)
    })
}

/// The cache layers `CachedAttention` nodes write, ascending.
fn self_layers(g: &Graph) -> Vec<u32> {
    let mut l: Vec<u32> = g
        .nodes
        .iter()
        .filter_map(|n| if let Op::CachedAttention { layer, .. } = n.op { Some(layer) } else { None })
        .collect();
    l.sort_unstable();
    l.dedup();
    l
}

fn rope_base(g: &Graph) -> f32 {
    g.nodes.iter().find_map(|n| if let Op::Rope { base, .. } = n.op { Some(base) } else { None }).unwrap_or(1e4)
}

impl NnModel {
    /// The KV tensors, with at least `rows` rows: created at the first step, grown (the written
    /// rows copied over through wasm; log2 times over a model's life) when a step writes past them.
    async fn kv_tensors(&self, rows: u32) -> Result<Rc<KvTensors>, RemoteError> {
        let old = self.kv.borrow().clone();
        if let Some(kv) = &old
            && kv.rows >= rows
        {
            return Ok(kv.clone());
        }
        let kv = self.graph.kv.expect("a stateful graph");
        let width = kv.kv_heads * kv.head_dim;
        let ctx = &self.nn.context;
        let shape = [rows, width];
        let layers = self_layers(&self.graph);
        let mut sets = Vec::new();
        for _ in 0..2 {
            let all = futures_util::future::try_join_all(
                (0..layers.len() * 2).map(|_| create_tensor(ctx, DType::F32, &shape, &["readable", "writable"])),
            )
            .await?;
            let mut it = all.into_iter();
            sets.push(layers.iter().map(|_| (it.next().expect("k"), it.next().expect("v"))).collect::<Vec<_>>());
        }
        let [a, b]: [Vec<_>; 2] = sets.try_into().map_err(|_| internal("kv", "two sets".into()))?;
        let made = KvTensors { layers, sets: [a, b], current: Cell::new(0), rows };
        if let Some(old) = old {
            // The old rows move to the new current set; rows past them were never written.
            let from = &old.sets[old.current.get()];
            for ((ok, ov), (nk, nv)) in from.iter().zip(&made.sets[0]) {
                for (src, dst) in [(ok, nk), (ov, nv)] {
                    let mut bytes = read(ctx, src).await?;
                    bytes.resize(rows as usize * width as usize * 4, 0);
                    ctx.write_tensor(&dst.0, &wasm_view(&bytes)).map_err(|e| internal("writeTensor", e))?;
                }
            }
        }
        let made = Rc::new(made);
        *self.kv.borrow_mut() = Some(made.clone());
        Ok(made)
    }

    /// Input and output tensors of a step bucket: the graph's inputs, then the step's extra
    /// inputs (`ops::step_extras`); the graph's outputs, then the logits when the graph does not
    /// output them.
    async fn step_tensors(
        &self,
        bucket: &[Vec<u32>],
        out_shapes: &[Vec<u32>],
        extra: &[(DType, Vec<u32>)],
        logits: Option<(usize, Vec<u32>)>,
    ) -> Result<TensorSet, RemoteError> {
        if let Some(set) = self.tensors.borrow_mut().get_mut(bucket).and_then(Vec::pop) {
            return Ok(set);
        }
        let (ctx, g) = (&self.nn.context, &self.graph);
        let ins = g.inputs.iter().zip(bucket).map(|(d, s)| (d.dtype, s.clone())).chain(extra.iter().cloned());
        let ins = ins.map(|(dtype, shape)| async move { create_tensor(ctx, dtype, &shape, &["writable"]).await });
        let mut outs: Vec<(DType, Vec<u32>)> =
            g.outputs.iter().map(|&o| (out_dtype(g, o), out_shapes[o as usize].clone())).collect();
        if let Some((slot, shape)) = logits.filter(|(slot, _)| *slot == g.outputs.len()) {
            debug_assert_eq!(slot, outs.len());
            outs.push((DType::F32, shape));
        }
        let outs = outs
            .into_iter()
            .map(|(dtype, shape)| async move { create_tensor(ctx, dtype, &shape, &["readable"]).await });
        let inputs = futures_util::future::try_join_all(ins).await?;
        let outputs = futures_util::future::try_join_all(outs).await?;
        Ok(TensorSet { inputs, outputs })
    }

    /// One step: `inputs` are `STEP_INPUTS` (checked here; rows and positions are the session
    /// table's, `sessions.rs`).
    pub(super) async fn step(&self, inputs: &[Tensor]) -> Result<RunOutput, RemoteError> {
        let g = &self.graph;
        let kvd = g.kv.expect("a stateful graph");
        if self.missing_weights() > 0 {
            return Err(super::unsupported(format!("{} weights not uploaded yet", self.missing_weights())));
        }
        inputs::check(g, inputs)?;
        inputs::check_gather_ids(g, inputs)?;
        let (pos, start) = (i32s(&inputs[1]), i32s(&inputs[2]));
        for (&p, &s) in pos.iter().zip(&start) {
            if p < 0 || s < 0 || s as i64 + p as i64 >= kvd.max_tokens as i64 {
                return Err(RemoteError::new(
                    ErrorKind::BadInput,
                    format!("kv_start {s} + pos {p} outside the cache of {} rows", kvd.max_tokens),
                ));
            }
        }
        let (t, r) = (pos.len() as u32, inputs[3].shape[0]);
        // Decode steps are one token: not rounded up (each padded token costs a whole token).
        let tb = if t == 1 { 1 } else { seq_bucket(t) };
        let rb = batch_bucket(r);
        let window = pos.iter().map(|&p| p as u32 + 1).max().unwrap_or(1).next_power_of_two().max(MIN_WINDOW);
        let highest = pos.iter().zip(&start).map(|(&p, &s)| (p + s) as u32).max().unwrap_or(0);
        let kv = self.kv_tensors(kv_rows(highest, kvd.max_tokens)).await?;
        // Each token's cross-attention memory slot (a session without one gets a zeroed slot,
        // as the CPU executor reads zeros from rows no PutMemory wrote).
        let (mem, mslot) = match self.memory_layout() {
            Some(layout) => {
                let (mem, slots) = self.memory_slots(layout, &start).await?;
                (Some(mem), slots)
            }
            None => (None, Vec::new()),
        };
        let shape = StepShape { c: window, rows: kv.rows, slots: mem.as_ref().map_or(0, |m| m.slots()) };
        // Input 0 is `ids [T]`, or a stage's `hidden [T, width]`.
        let first: Vec<u32> = std::iter::once(tb).chain(inputs[0].shape.iter().skip(1).copied()).collect();
        let mut bucket: Vec<Vec<u32>> = vec![first, vec![tb], vec![tb], vec![rb], vec![rb, 4]];
        let out_padded = shapes::graph_shapes(g, &bucket)?;
        let real: Vec<Vec<u32>> = inputs.iter().map(|t| t.shape.clone()).collect();
        let out_real = shapes::graph_shapes(g, &real)?;
        bucket.push(vec![shape.c, shape.rows, shape.slots]);
        let (graph, cached) = self.graph_for(&bucket, &out_padded, Some(shape)).await?;

        let half = kvd.head_dim / 2;
        let extra = ops::step_extras(g, shape, tb);
        let slot = logits_slot(g);
        let vocab = slot.and_then(|_| {
            let sample = g.nodes.iter().find(|n| n.op == Op::Sample)?;
            out_padded[sample.args[0] as usize].last().copied()
        });
        let logits_shape = slot.zip(vocab).map(|(s, v)| (s, vec![rb, v]));
        let extra_decl: Vec<(DType, Vec<u32>)> = extra.iter().map(|(_, d, s)| (*d, s.clone())).collect();
        let set = self.step_tensors(&bucket, &out_padded, &extra_decl, logits_shape.clone()).await?;

        // The step's extra inputs; padding tokens write the scratch row and read only it.
        let scratch = kv.rows as i32 - 1;
        let (mut kv_row, mut gidx, mut mask) = (vec![scratch; tb as usize], vec![], vec![]);
        let (mut cos, mut sin) = (vec![1f32; (tb * half) as usize], vec![0f32; (tb * half) as usize]);
        let inv_freq: Vec<f64> =
            (0..half).map(|i| (rope_base(g) as f64).powf(-2.0 * i as f64 / kvd.head_dim as f64)).collect();
        for ti in 0..tb as usize {
            let Some((&p, &s)) = pos.get(ti).zip(start.get(ti)) else {
                gidx.extend(std::iter::repeat_n(scratch, window as usize));
                mask.extend(std::iter::repeat_n(0f32, window as usize));
                continue;
            };
            kv_row[ti] = s + p;
            for c in 0..window as i32 {
                gidx.push(s + c.min(p));
                mask.push(if c <= p { 0.0 } else { MASKED });
            }
            for (i, f) in inv_freq.iter().enumerate() {
                let (sn, cs) = (p as f64 * f).sin_cos();
                cos[ti * half as usize + i] = cs as f32;
                sin[ti * half as usize + i] = sn as f32;
            }
        }
        // Padding tokens read slot 0.
        let mslot: Vec<i32> = (0..tb as usize).map(|ti| mslot.get(ti).copied().unwrap_or(0)).collect();
        let extra_data: Vec<Vec<u8>> = extra
            .iter()
            .map(|(name, _, _)| match *name {
                ops::KV_ROW => i32_bytes(&kv_row),
                ops::GIDX => i32_bytes(&gidx),
                ops::MASK => f32_bytes(&mask),
                ops::COS => f32_bytes(&cos),
                ops::SIN => f32_bytes(&sin),
                _ => i32_bytes(&mslot),
            })
            .collect();

        let t0 = js_sys::Date::now();
        let ctx = &self.nn.context;
        let ins = &graph.inputs;
        let names = g.inputs.iter().map(|d| d.name.as_str()).chain(extra.iter().map(|e| e.0));
        let padded = inputs.iter().zip(&bucket).map(|(t, s)| pad(&t.data, &t.shape, s)).chain(extra_data);
        let bound = (0..g.inputs.len() as u32).map(|i| feeds_graph(g, i)).chain(extra.iter().map(|_| true));
        for (((name, data), tensor), bound) in names.zip(padded).zip(&set.inputs).zip(bound) {
            if !bound {
                continue;
            }
            ctx.write_tensor(&tensor.0, &wasm_view(&data)).map_err(|e| internal("writeTensor", e))?;
            Reflect::set(ins, &name.into(), &tensor.0).map_err(|e| internal("inputs", e))?;
        }
        let outs = Object::new();
        for (i, tensor) in set.outputs.iter().enumerate() {
            let name = if i < g.outputs.len() { format!("out{i}") } else { ops::LOGITS.into() };
            Reflect::set(&outs, &name.into(), &tensor.0).map_err(|e| internal("outputs", e))?;
        }
        let cur = kv.current.get();
        for (&l, ((k_in, v_in), (k_out, v_out))) in kv.layers.iter().zip(kv.sets[cur].iter().zip(&kv.sets[1 - cur])) {
            for (name, tensor, target) in [
                (ops::kv_name('k', l, "in"), k_in, ins),
                (ops::kv_name('v', l, "in"), v_in, ins),
                (ops::kv_name('k', l, "out"), k_out, &outs),
                (ops::kv_name('v', l, "out"), v_out, &outs),
            ] {
                Reflect::set(target, &name.into(), &tensor.0).map_err(|e| internal("kv", e))?;
            }
        }
        if let Some(mem) = &mem {
            mem.bind(ins)?;
        }
        ctx.dispatch(&graph.graph, ins, &outs).map_err(|e| internal("dispatch", e))?;
        // Dispatches run in order on the context's timeline: the next step reads what this wrote.
        kv.current.set(1 - cur);

        let params: Vec<f32> =
            inputs[4].data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        let sampled = params.chunks_exact(4).any(|p| p[0] > 0.0);
        let mut outputs = Vec::new();
        for (i, &o) in g.outputs.iter().enumerate() {
            let buf = read(ctx, &set.outputs[i]).await?;
            let dtype = out_dtype(g, o);
            let data = crop(&buf, &out_padded[o as usize], &out_real[o as usize]);
            outputs.push(Tensor { dtype, shape: out_real[o as usize].clone(), data: data.into() });
        }
        if let (true, Some((slot, _)), Some(v)) = (sampled, &logits_shape, vocab) {
            let bytes = read(ctx, &set.outputs[*slot]).await?;
            let logits: Vec<f32> = crop(&bytes, &[rb, v], &[r, v])
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            let ids = cpu::sample::sample(&logits, &params, v as usize);
            if let Some(first) = outputs.iter_mut().zip(&g.outputs).find(|(_, o)| out_dtype(g, **o) == DType::I32) {
                first.0.data = i32_bytes(&ids).into();
            }
        }
        if cached && self.compiled.borrow().contains_key(&bucket) {
            self.tensors.borrow_mut().entry(bucket).or_default().push(set);
        } else {
            // A step's tensor set depends on more than the bucket: not kept with a hot graph.
            self.ran_hot(&bucket, None);
        }
        Ok(RunOutput { outputs, device_ms: js_sys::Date::now() - t0 })
    }
}

pub(super) async fn read(ctx: &super::MLContext, t: &NnTensor) -> Result<Vec<u8>, RemoteError> {
    let p = ctx.read_tensor(&t.0).map_err(|e| internal("readTensor", e))?;
    Ok(take_bytes(JsFuture::from(p).await.map_err(|e| internal("readTensor", e))?))
}

/// The bytes of a `readTensor` result copied into wasm memory, the JS buffer detached at once:
/// left to the garbage collector, a Whisper window's 18 MB of outputs piled up run after run
/// (the tab's memory grew by about that much per window until a major GC).
pub(super) fn take_bytes(buf: JsValue) -> Vec<u8> {
    let bytes = Uint8Array::new(&buf).to_vec();
    if let Some(b) = buf.dyn_ref::<js_sys::ArrayBuffer>() {
        let _ = b.transfer_with_length(0);
    }
    bytes
}
