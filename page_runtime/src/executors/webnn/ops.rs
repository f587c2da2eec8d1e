//! Translates the operator graph into a WebNN `MLGraph` for one bucket of input shapes. Ops map
//! one-to-one where WebNN has them (matmul, gemm, add, mul, gelu, layerNormalization, softmax,
//! gather, reshape, transpose); masked mean pooling, L2 normalisation and attention are composed
//! from WebNN primitives.

use std::collections::HashMap;

use js_sys::{Array, Object, Reflect};
use shared_proto::{DType, ErrorKind, Graph, Op, RemoteError, Tensor, ValueRef};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;

use super::bindings::{MLContext, MLGraph, MLGraphBuilder, MLOperand};
use super::{desc, typed};
use crate::caps::js_text;
use crate::executors::layout::FilterLayout;
use crate::executors::shapes;

fn opts(pairs: &[(&str, JsValue)]) -> Object {
    let o = Object::new();
    for (k, v) in pairs {
        let _ = Reflect::set(&o, &(*k).into(), v);
    }
    o
}

fn arr(v: &[u32]) -> Array {
    v.iter().map(|&d| JsValue::from(d)).collect()
}

/// Builds one graph; `fail` turns a thrown builder call into an `Unsupported` naming the op.
struct Builder<'a> {
    b: MLGraphBuilder,
    op: &'a str,
}

impl Builder<'_> {
    fn fail(&self, e: JsValue) -> RemoteError {
        RemoteError::new(ErrorKind::Unsupported, format!("WebNN cannot build {}: {}", self.op, js_text(e)))
    }

    fn scalar(&self, v: f32) -> Result<MLOperand, RemoteError> {
        self.b.constant(&desc(DType::F32, &[1]), &typed(DType::F32, &v.to_le_bytes())).map_err(|e| self.fail(e))
    }
}

/// How a bucket graph gets weight `i`: its bytes embedded as a constant (a copy per graph), or
/// a graph input the model's one shared `MLTensor` is bound to at dispatch.
pub(super) enum WeightUse<'a> {
    Constant(&'a Tensor),
    Input { dtype: DType, shape: &'a [u32] },
}

/// The graph input name of a shared weight (model inputs never start with `__`).
pub(super) fn weight_input(i: usize) -> String {
    format!("__w{i}")
}

/// A graph being compiled: `MLGraphBuilder.build`'s promise and the weights it takes as inputs.
pub(super) struct Building {
    promise: JsFuture,
    pub weight_inputs: Vec<usize>,
}

impl Building {
    pub async fn graph(self) -> Result<MLGraph, RemoteError> {
        let graph = self.promise.await.map_err(|e| {
            RemoteError::new(ErrorKind::Unsupported, format!("WebNN cannot build graph: {}", js_text(e)))
        })?;
        Ok(graph.unchecked_into())
    }
}

/// Describe the graph for one bucket and start compiling it. Synchronous up to the promise: the
/// builder copies constants when they are declared, so no weight is borrowed across an await.
pub(super) fn build(
    ctx: &MLContext,
    g: &Graph,
    weights: &[WeightUse<'_>],
    input_shapes: &[Vec<u32>],
    step: Option<StepShape>,
    layout: Layout<'_>,
) -> Result<Building, RemoteError> {
    let shapes = shapes::graph_shapes(g, input_shapes)?;
    let b = MLGraphBuilder::new(ctx)
        .map_err(|e| RemoteError::new(ErrorKind::Unsupported, format!("MLGraphBuilder: {}", js_text(e))))?;
    let mut bl = Builder { b, op: "input" };
    let mut vals = Vals::new(g.value_count());
    for (i, d) in g.inputs.iter().enumerate() {
        vals.v[i] = Some(bl.b.input(&d.name, &desc(d.dtype, &input_shapes[i])).map_err(|e| bl.fail(e))?);
    }
    let mut st = match (step, g.kv) {
        (Some(shape), Some(kv)) => Some(StepCtx::declare(&bl, g, shape, kv, input_shapes[0][0])?),
        _ => None,
    };
    let mut weight_inputs = Vec::new();
    // Weights are declared when first used (a bucket graph takes only what it needs).
    for (ni, node) in g.nodes.iter().enumerate() {
        bl.op = node.op.name();
        for &a in &node.args {
            if let ValueRef::Weight(w) = g.value(a)
                && vals.v[a as usize].is_none()
            {
                let operand = match &weights[w] {
                    WeightUse::Constant(t) => bl.b.constant(&desc(t.dtype, &t.shape), &typed(t.dtype, &t.data)),
                    WeightUse::Input { dtype, shape } => {
                        weight_inputs.push(w);
                        bl.b.input(&weight_input(w), &desc(*dtype, shape))
                    }
                };
                vals.v[a as usize] = Some(operand.map_err(|e| bl.fail(e))?);
            }
        }
        let arg_shapes: Vec<&[u32]> = node.args.iter().map(|&a| shapes[a as usize].as_slice()).collect();
        let out_shape = &shapes[g.node_value(ni) as usize];
        let (out, nhwc) = match image_op(&bl, g, node, &arg_shapes, &mut vals, layout)? {
            Some(done) => done,
            None => {
                // Every other op reads its arguments as declared (NCHW).
                let args: Vec<MLOperand> =
                    node.args.iter().map(|&a| vals.get(&bl, a, false)).collect::<Result<_, _>>()?;
                let args: Vec<&MLOperand> = args.iter().collect();
                (translate(&bl, &node.op, &args, &arg_shapes, out_shape, st.as_mut())?, false)
            }
        };
        vals.v[g.node_value(ni) as usize] = Some(out);
        vals.nhwc[g.node_value(ni) as usize] = nhwc;
    }
    let outs = Object::new();
    for (i, &o) in g.outputs.iter().enumerate() {
        bl.op = "output";
        let _ = Reflect::set(&outs, &format!("out{i}").into(), &vals.get(&bl, o, false)?.into());
    }
    if let Some(st) = st {
        for (name, operand) in &st.outputs {
            let _ = Reflect::set(&outs, &name.into(), operand);
        }
        if let Some(logits) = st.logits.filter(|_| !g.outputs.iter().any(|&o| is_logits_output(g, o))) {
            let _ = Reflect::set(&outs, &LOGITS.into(), &logits);
        }
    }
    bl.op = "graph";
    let p = bl.b.build(&outs).map_err(|e| bl.fail(e))?;
    Ok(Building { promise: JsFuture::from(p), weight_inputs })
}

fn translate(
    bl: &Builder,
    op: &Op,
    a: &[&MLOperand],
    s: &[&[u32]],
    out_shape: &[u32],
    st: Option<&mut StepCtx>,
) -> Result<MLOperand, RemoteError> {
    let b = &bl.b;
    let f = |e| bl.fail(e);
    let rank = |i: usize| s[i].len() as u32;
    Ok(match op {
        Op::MatMul => b.matmul(a[0], a[1]).map_err(f)?,
        Op::Conv2d { .. } | Op::Clamp { .. } | Op::GlobalAvgPool => unreachable!("lowered by image_op"),
        Op::Linear { bias } => {
            // gemm wants 2-D: fold leading dims into rows, transpose the [N, K] weight in gemm.
            let k = *s[0].last().expect("rank ≥ 1");
            let rows = s[0].iter().product::<u32>() / k;
            let x2 = b.reshape(a[0], &arr(&[rows, k])).map_err(f)?;
            let mut o = vec![("bTranspose", JsValue::TRUE)];
            if *bias {
                o.push(("c", a[2].into()));
            }
            let y = b.gemm(&x2, a[1], &opts(&o)).map_err(f)?;
            b.reshape(&y, &arr(out_shape)).map_err(f)?
        }
        Op::Add => b.add(a[0], a[1]).map_err(f)?,
        Op::Mul => b.mul(a[0], a[1]).map_err(f)?,
        Op::Gelu => b.gelu(a[0]).map_err(f)?,
        Op::LayerNorm { eps } => {
            let o = opts(&[
                ("scale", a[1].into()),
                ("bias", a[2].into()),
                ("axes", arr(&[rank(0) - 1]).into()),
                ("epsilon", JsValue::from(*eps)),
            ]);
            b.layer_normalization(a[0], &o).map_err(f)?
        }
        Op::Softmax => b.softmax(a[0], rank(0) - 1).map_err(f)?,
        Op::MeanPool => {
            let (bb, ss) = (s[0][0], s[0][1]);
            let m3 = b.reshape(a[1], &arr(&[bb, ss, 1])).map_err(f)?;
            let masked = b.mul(a[0], &m3).map_err(f)?;
            let sum = b.reduce_sum(&masked, &opts(&[("axes", arr(&[1]).into())])).map_err(f)?;
            let count = b.reduce_sum(&m3, &opts(&[("axes", arr(&[1]).into())])).map_err(f)?;
            let count = b.max(&count, &bl.scalar(1e-9)?).map_err(f)?;
            b.div(&sum, &count).map_err(f)?
        }
        Op::L2Normalize { eps } => {
            let o = opts(&[("axes", arr(&[rank(0) - 1]).into()), ("keepDimensions", JsValue::TRUE)]);
            let norm = b.reduce_l2(a[0], &o).map_err(f)?;
            let norm = b.max(&norm, &bl.scalar(*eps)?).map_err(f)?;
            b.div(a[0], &norm).map_err(f)?
        }
        Op::Gather => b.gather(a[0], a[1], &opts(&[("axis", JsValue::from(0))])).map_err(f)?,
        Op::Reshape { .. } => b.reshape(a[0], &arr(out_shape)).map_err(f)?,
        Op::Transpose { perm } => {
            let p: Array = perm.iter().map(|&d| JsValue::from(d)).collect();
            b.transpose(a[0], &opts(&[("permutation", p.into())])).map_err(f)?
        }
        Op::Attention { heads } => {
            let (bb, ss, hh) = (s[0][0], s[0][1], s[0][2]);
            let d = hh / heads;
            let split = |x: &MLOperand, perm: [u32; 4]| -> Result<MLOperand, RemoteError> {
                let r = b.reshape(x, &arr(&[bb, ss, *heads, d])).map_err(f)?;
                let p: Array = perm.iter().map(|&v| JsValue::from(v)).collect();
                b.transpose(&r, &opts(&[("permutation", p.into())])).map_err(f)
            };
            let q = split(a[0], [0, 2, 1, 3])?; // [B, heads, S, d]
            let kt = split(a[1], [0, 2, 3, 1])?; // [B, heads, d, S]
            let v = split(a[2], [0, 2, 1, 3])?;
            let scores = b.matmul(&q, &kt).map_err(f)?;
            let scores = b.mul(&scores, &bl.scalar(1.0 / (d as f32).sqrt())?).map_err(f)?;
            // Masked keys: (mask − 1)·1e9 added before softmax, so exp underflows to exactly 0.
            let m4 = b.reshape(a[3], &arr(&[bb, 1, 1, ss])).map_err(f)?;
            let bias = b.sub(&m4, &bl.scalar(1.0)?).map_err(f)?;
            let bias = b.mul(&bias, &bl.scalar(1e9)?).map_err(f)?;
            let p = b.softmax(&b.add(&scores, &bias).map_err(f)?, 3).map_err(f)?;
            let ctx = b.matmul(&p, &v).map_err(f)?; // [B, heads, S, d]
            let perm: Array = [0u32, 2, 1, 3].iter().map(|&v| JsValue::from(v)).collect();
            let ctx = b.transpose(&ctx, &opts(&[("permutation", perm.into())])).map_err(f)?;
            b.reshape(&ctx, &arr(&[bb, ss, hh])).map_err(f)?
        }
        Op::SiluMul => {
            let silu = b.mul(a[0], &b.sigmoid(a[0]).map_err(f)?).map_err(f)?;
            b.mul(&silu, a[1]).map_err(f)?
        }
        Op::RmsNorm { eps } => {
            let o = opts(&[("axes", arr(&[rank(0) - 1]).into()), ("keepDimensions", JsValue::TRUE)]);
            let ms = b.reduce_mean(&b.mul(a[0], a[0]).map_err(f)?, &o).map_err(f)?;
            let rms = b.sqrt(&b.add(&ms, &bl.scalar(*eps)?).map_err(f)?).map_err(f)?;
            b.mul(&b.div(a[0], &rms).map_err(f)?, a[1]).map_err(f)?
        }
        Op::Argmax => argmax(bl, a[0], rank(0))?,
        Op::Sample => {
            // Greedy in the graph; rows that sample are drawn in wasm from the logits read back
            // (the step runner does that, so only a step graph has it).
            let st = st.ok_or_else(|| stateful_only(op))?;
            st.logits = Some(JsValue::clone(a[0]).unchecked_into());
            argmax(bl, a[0], rank(0))?
        }
        Op::Rope { heads, .. } => {
            let st = st.ok_or_else(|| stateful_only(op))?;
            st.rope(bl, a[0], s[0], *heads)?
        }
        Op::CachedAttention { layer, heads, kv_heads } => {
            let st = st.ok_or_else(|| stateful_only(op))?;
            st.attention(bl, a, s, *layer, *heads, *kv_heads)?
        }
        Op::CrossAttention { layer, heads, rows } => {
            let st = st.ok_or_else(|| stateful_only(op))?;
            st.cross(bl, a[0], s[0], *layer, *heads, *rows)?
        }
    })
}

/// How the graph lays out image values: `nhwc` when the context prefers channels-last
/// (`opSupportLimits().preferredInputLayout`, TFLite/XNNPACK); `prelaid` per weight, the layout
/// a conv filter was stored in at load (`layout::filter_layouts`, applied by `NnModel`).
#[derive(Clone, Copy)]
pub(super) struct Layout<'a> {
    pub nhwc: bool,
    pub prelaid: &'a [Option<FilterLayout>],
}

/// The graph's values, each as built (NCHW or, for image values of a channels-last graph, NHWC)
/// and in the other layout once a consumer needed it (one transpose per value, kept).
struct Vals {
    v: Vec<Option<MLOperand>>,
    nhwc: Vec<bool>,
    other: Vec<Option<MLOperand>>,
}

impl Vals {
    fn new(n: usize) -> Vals {
        Vals { v: (0..n).map(|_| None).collect(), nhwc: vec![false; n], other: (0..n).map(|_| None).collect() }
    }

    fn built(&self, i: u32) -> MLOperand {
        self.v[i as usize].clone().expect("defined earlier")
    }

    /// Value `i` in NHWC (`want_nhwc`, rank 4 only) or as declared.
    fn get(&mut self, bl: &Builder, i: u32, want_nhwc: bool) -> Result<MLOperand, RemoteError> {
        let at = i as usize;
        if self.nhwc[at] == want_nhwc {
            return Ok(self.built(i));
        }
        if let Some(o) = &self.other[at] {
            return Ok(o.clone());
        }
        let perm = if want_nhwc { [0, 2, 3, 1] } else { [0, 3, 1, 2] };
        let t = bl.b.transpose(&self.built(i), &opts(&[("permutation", arr(&perm).into())])).map_err(|e| bl.fail(e))?;
        self.other[at] = Some(t.clone());
        Ok(t)
    }
}

/// The image ops (conv2d, clamp, global average pool, and an add / mul of two image values in a
/// channels-last graph), which choose their layout: the operand and whether it is NHWC. `None`
/// for every other op.
fn image_op(
    bl: &Builder,
    g: &Graph,
    node: &shared_proto::Node,
    s: &[&[u32]],
    vals: &mut Vals,
    layout: Layout<'_>,
) -> Result<Option<(MLOperand, bool)>, RemoteError> {
    let b = &bl.b;
    let f = |e| bl.fail(e);
    let a = &node.args;
    let cl = layout.nhwc;
    Ok(Some(match &node.op {
        Op::Conv2d { stride, pad, groups, bias } => {
            let x = vals.get(bl, a[0], cl)?;
            let fl = FilterLayout::for_filter(s[1], *groups);
            let filter = match g.value(a[1]) {
                ValueRef::Weight(w) if cl && layout.prelaid.get(w) == Some(&Some(fl)) => vals.built(a[1]),
                _ if cl => {
                    let oihw = vals.get(bl, a[1], false)?;
                    let p = opts(&[("permutation", arr(&fl.perm_from_oihw()).into())]);
                    b.transpose(&oihw, &p).map_err(f)?
                }
                _ => vals.get(bl, a[1], false)?,
            };
            // WebNN's padding is [begin_h, end_h, begin_w, end_w]; ours [top, left, bottom, right].
            let mut o = vec![
                ("padding", arr(&[pad[0], pad[2], pad[1], pad[3]]).into()),
                ("strides", arr(stride).into()),
                ("groups", JsValue::from(*groups)),
                ("inputLayout", (if cl { "nhwc" } else { "nchw" }).into()),
                ("filterLayout", (if cl { fl.name() } else { "oihw" }).into()),
            ];
            if *bias {
                o.push(("bias", vals.get(bl, a[2], false)?.into()));
            }
            (b.conv2d(&x, &filter, &opts(&o)).map_err(f)?, cl)
        }
        Op::Clamp { min, max } => {
            let o = opts(&[("minValue", JsValue::from(*min)), ("maxValue", JsValue::from(*max))]);
            (b.clamp(&vals.built(a[0]), &o).map_err(f)?, vals.nhwc[a[0] as usize])
        }
        Op::GlobalAvgPool => {
            let (n, c, h, w) = (s[0][0], s[0][1], s[0][2], s[0][3]);
            let nhwc = vals.nhwc[a[0] as usize];
            let o = opts(&[
                ("windowDimensions", arr(&[h, w]).into()),
                ("layout", (if nhwc { "nhwc" } else { "nchw" }).into()),
            ]);
            let pooled = b.average_pool2d(&vals.built(a[0]), &o).map_err(f)?;
            (b.reshape(&pooled, &arr(&[n, c])).map_err(f)?, false)
        }
        Op::Add | Op::Mul
            if s[0].len() == 4 && s[0] == s[1] && (vals.nhwc[a[0] as usize] || vals.nhwc[a[1] as usize]) =>
        {
            let (x, y) = (vals.get(bl, a[0], true)?, vals.get(bl, a[1], true)?);
            let out = if node.op == Op::Add { b.add(&x, &y) } else { b.mul(&x, &y) };
            (out.map_err(f)?, true)
        }
        _ => return Ok(None),
    }))
}

fn stateful_only(op: &Op) -> RemoteError {
    RemoteError::new(ErrorKind::Unsupported, format!("{} runs on WebNN only inside a stateful step graph", op.name()))
}

/// Index of the largest along the last axis, as int32 (the first among equals, as the CPU's).
fn argmax(bl: &Builder, x: &MLOperand, rank: u32) -> Result<MLOperand, RemoteError> {
    let o = opts(&[("keepDimensions", JsValue::FALSE), ("outputDataType", "int32".into())]);
    bl.b.arg_max(x, rank - 1, &o).map_err(|e| bl.fail(e))
}

/// The dispatch output name of the logits a `Sample` node chose from (when the graph does not
/// output them itself).
pub(super) const LOGITS: &str = "__logits";

/// Whether graph output `o` is the logits a `Sample` node reads.
pub(super) fn is_logits_output(g: &Graph, o: u32) -> bool {
    g.nodes.iter().any(|n| n.op == Op::Sample && n.args[0] == o)
}

/// The shape of a step graph beyond its inputs: `c` cache rows gathered per token (a power of
/// two ≥ the longest context in the step), `rows` rows in each KV tensor (the cache plus the
/// scratch row padding tokens write to) and `slots` sessions' memories in each cross-attention
/// memory tensor (`memory.rs`; 0 without cross-attention).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct StepShape {
    pub c: u32,
    pub rows: u32,
    pub slots: u32,
}

/// Names of the extra inputs and outputs of a step graph (model inputs never start with `__`).
pub(super) const KV_ROW: &str = "__kv_row";
pub(super) const GIDX: &str = "__gidx";
pub(super) const MASK: &str = "__mask";
pub(super) const COS: &str = "__cos";
pub(super) const SIN: &str = "__sin";
pub(super) const MSLOT: &str = "__mslot";

pub(super) fn kv_name(kind: char, layer: u32, dir: &str) -> String {
    format!("__{kind}{layer}_{dir}")
}

/// The input name of a cross-attention layer's memory keys (`'k'`) or values (`'v'`).
pub(super) fn mem_name(kind: char, layer: u32) -> String {
    format!("__m{kind}{layer}")
}

/// The extra inputs a step graph of `t` tokens declares, in the order the executor fills them:
/// cache rows, gather indices and mask for `CachedAttention`, rope angles for `Rope`, and each
/// token's memory slot for `CrossAttention` over more than one slot (one slot is broadcast).
pub(super) fn step_extras(g: &Graph, shape: StepShape, t: u32) -> Vec<(&'static str, DType, Vec<u32>)> {
    let has = |f: fn(&Op) -> bool| g.nodes.iter().any(|n| f(&n.op));
    let mut extras = Vec::new();
    if has(|op| matches!(op, Op::CachedAttention { .. })) {
        extras.push((KV_ROW, DType::I32, vec![t, 1]));
        extras.push((GIDX, DType::I32, vec![t, shape.c]));
        extras.push((MASK, DType::F32, vec![t, shape.c]));
    }
    if has(|op| matches!(op, Op::Rope { .. })) {
        let half = g.kv.map_or(0, |kv| kv.head_dim / 2);
        extras.push((COS, DType::F32, vec![t, half]));
        extras.push((SIN, DType::F32, vec![t, half]));
    }
    if has(|op| matches!(op, Op::CrossAttention { .. })) && shape.slots > 1 {
        extras.push((MSLOT, DType::I32, vec![t]));
    }
    extras
}

/// The step graph's view of the tab's KV cache: per layer the cache comes in as `__k{l}_in` /
/// `__v{l}_in` and leaves, with this step's rows scattered in, as `__k{l}_out` / `__v{l}_out`
/// (WebNN has no in-place update: the executor swaps two sets of tensors between steps). Each
/// token reads its own rows through `__gidx [T, C]` (row indices, clamped to rows it wrote) under
/// the additive `__mask [T, C]`; rope angles come in as `__cos` / `__sin [T, d/2]`, computed in
/// f64 by the executor. A cross-attention layer reads its memory (`__mk{l}`, `__mv{l}`), which
/// only `PutMemory` writes: not swapped, never copied by a step.
struct StepCtx {
    shape: StepShape,
    head_dim: u32,
    inputs: HashMap<&'static str, MLOperand>,
    outputs: Vec<(String, MLOperand)>,
    logits: Option<MLOperand>,
}

impl StepCtx {
    fn declare(
        bl: &Builder,
        g: &Graph,
        shape: StepShape,
        kv: shared_proto::KvDecl,
        t: u32,
    ) -> Result<StepCtx, RemoteError> {
        let f = |e| bl.fail(e);
        let mut inputs = HashMap::new();
        for (name, dtype, dims) in step_extras(g, shape, t) {
            inputs.insert(name, bl.b.input(name, &desc(dtype, &dims)).map_err(f)?);
        }
        Ok(StepCtx { shape, head_dim: kv.head_dim, inputs, outputs: Vec::new(), logits: None })
    }

    fn input(&self, name: &str) -> Result<&MLOperand, RemoteError> {
        self.inputs.get(name).ok_or_else(|| {
            RemoteError::new(ErrorKind::Internal, format!("WebNN step graph: extra input {name} not declared"))
        })
    }

    /// Interleaved pairs (2i, 2i+1) of each head rotated by the angle of pair i.
    fn rope(&self, bl: &Builder, x: &MLOperand, s: &[u32], heads: u32) -> Result<MLOperand, RemoteError> {
        let b = &bl.b;
        let f = |e| bl.fail(e);
        let (t, w) = (s[0], s[1]);
        if w / heads != self.head_dim {
            return Err(RemoteError::new(
                ErrorKind::Unsupported,
                format!("WebNN rope: head size {} differs from the cache's {}", w / heads, self.head_dim),
            ));
        }
        let half = self.head_dim / 2;
        let cos = b.reshape(self.input(COS)?, &arr(&[t, 1, half, 1])).map_err(f)?;
        let sin = b.reshape(self.input(SIN)?, &arr(&[t, 1, half, 1])).map_err(f)?;
        let x4 = b.reshape(x, &arr(&[t, heads, half, 2])).map_err(f)?;
        let x0 = b.slice(&x4, &arr(&[0, 0, 0, 0]), &arr(&[t, heads, half, 1])).map_err(f)?;
        let x1 = b.slice(&x4, &arr(&[0, 0, 0, 1]), &arr(&[t, heads, half, 1])).map_err(f)?;
        let mul = |p: &MLOperand, q: &MLOperand| b.mul(p, q).map_err(f);
        let o0 = b.sub(&mul(&x0, &cos)?, &mul(&x1, &sin)?).map_err(f)?;
        let o1 = b.add(&mul(&x0, &sin)?, &mul(&x1, &cos)?).map_err(f)?;
        let pair: Array = [o0, o1].into_iter().map(JsValue::from).collect();
        let y = b.concat(&pair, 3).map_err(f)?;
        b.reshape(&y, &arr(&[t, w])).map_err(f)
    }

    /// Writes this step's k, v rows into the layer's cache, then causal GQA for each token over
    /// the rows `__gidx` names.
    fn attention(
        &mut self,
        bl: &Builder,
        a: &[&MLOperand],
        s: &[&[u32]],
        layer: u32,
        heads: u32,
        kv_heads: u32,
    ) -> Result<MLOperand, RemoteError> {
        let b = &bl.b;
        let f = |e| bl.fail(e);
        let (t, kvw) = (s[1][0], s[1][1]);
        let d = kvw / kv_heads;
        let (c, group) = (self.shape.c, heads / kv_heads);
        let cache = desc(DType::F32, &[self.shape.rows, kvw]);
        let mut kv = Vec::new();
        for (kind, new) in [('k', a[1]), ('v', a[2])] {
            let input = b.input(&kv_name(kind, layer, "in"), &cache).map_err(f)?;
            let out = b.scatter_nd(&input, self.input(KV_ROW)?, new).map_err(f)?;
            let rows = b.gather(&out, self.input(GIDX)?, &opts(&[("axis", JsValue::from(0))])).map_err(f)?;
            self.outputs.push((kv_name(kind, layer, "out"), out));
            kv.push(b.reshape(&rows, &arr(&[t, c, kv_heads, d])).map_err(f)?);
        }
        let perm = |p: [u32; 4]| opts(&[("permutation", arr(&p).into())]);
        let kt = b.transpose(&kv[0], &perm([0, 2, 3, 1])).map_err(f)?; // [T, kvh, d, C]
        let v = b.transpose(&kv[1], &perm([0, 2, 1, 3])).map_err(f)?; // [T, kvh, C, d]
        // Head h reads kv head h / group: q's heads grouped as [kvh, group].
        let q = b.reshape(a[0], &arr(&[t, kv_heads, group, d])).map_err(f)?;
        let scores = b.matmul(&q, &kt).map_err(f)?; // [T, kvh, group, C]
        let scores = b.mul(&scores, &bl.scalar(1.0 / (d as f32).sqrt())?).map_err(f)?;
        let mask = b.reshape(self.input(MASK)?, &arr(&[t, 1, 1, c])).map_err(f)?;
        let p = b.softmax(&b.add(&scores, &mask).map_err(f)?, 3).map_err(f)?;
        let ctx = b.matmul(&p, &v).map_err(f)?; // [T, kvh, group, d]
        b.reshape(&ctx, &arr(&[t, heads * d])).map_err(f)
    }

    /// Each token's query rows over its session's memory, unmasked: the memory tensors hold
    /// keys already transposed per head (`[slots, heads, d, rows]`) and values `[slots, heads,
    /// rows, d]` (`memory.rs` lays them out at `PutMemory`), so a step only multiplies. One
    /// slot broadcasts over the tokens; more are gathered per token by `__mslot`.
    fn cross(
        &self,
        bl: &Builder,
        q: &MLOperand,
        s: &[u32],
        layer: u32,
        heads: u32,
        rows: u32,
    ) -> Result<MLOperand, RemoteError> {
        let b = &bl.b;
        let f = |e| bl.fail(e);
        let (t, w) = (s[0], s[1]);
        let d = w / heads;
        let slots = self.shape.slots.max(1);
        let k = b.input(&mem_name('k', layer), &desc(DType::F32, &[slots, heads, d, rows])).map_err(f)?;
        let v = b.input(&mem_name('v', layer), &desc(DType::F32, &[slots, heads, rows, d])).map_err(f)?;
        let (k, v) = if slots == 1 {
            (k, v)
        } else {
            let by_token =
                |m: &MLOperand| b.gather(m, self.input(MSLOT)?, &opts(&[("axis", JsValue::from(0))])).map_err(f);
            (by_token(&k)?, by_token(&v)?)
        };
        let q = b.reshape(q, &arr(&[t, heads, 1, d])).map_err(f)?;
        let scores = b.matmul(&q, &k).map_err(f)?; // [T, heads, 1, rows]
        let scores = b.mul(&scores, &bl.scalar(1.0 / (d as f32).sqrt())?).map_err(f)?;
        let p = b.softmax(&scores, 3).map_err(f)?;
        let ctx = b.matmul(&p, &v).map_err(f)?; // [T, heads, 1, d]
        b.reshape(&ctx, &arr(&[t, w])).map_err(f)
    }
}
