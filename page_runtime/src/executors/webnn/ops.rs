//! Translates the operator graph into a WebNN `MLGraph` for one bucket of input shapes. Ops map
//! one-to-one where WebNN has them (matmul, gemm, add, mul, gelu, layerNormalization, softmax,
//! gather, reshape, transpose); masked mean pooling, L2 normalisation and attention are composed
//! from WebNN primitives.

use js_sys::{Array, Object, Reflect};
use shared_proto::{DType, ErrorKind, Graph, Op, RemoteError, Tensor, ValueRef};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;

use super::bindings::{MLContext, MLGraph, MLGraphBuilder, MLOperand};
use super::{desc, typed};
use crate::caps::js_text;
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
) -> Result<Building, RemoteError> {
    let shapes = shapes::graph_shapes(g, input_shapes)?;
    let b = MLGraphBuilder::new(ctx)
        .map_err(|e| RemoteError::new(ErrorKind::Unsupported, format!("MLGraphBuilder: {}", js_text(e))))?;
    let mut bl = Builder { b, op: "input" };
    let mut vals: Vec<Option<MLOperand>> = (0..g.value_count()).map(|_| None).collect();
    for (i, d) in g.inputs.iter().enumerate() {
        vals[i] = Some(bl.b.input(&d.name, &desc(d.dtype, &input_shapes[i])).map_err(|e| bl.fail(e))?);
    }
    let mut weight_inputs = Vec::new();
    // Weights are declared when first used (a bucket graph takes only what it needs).
    for (ni, node) in g.nodes.iter().enumerate() {
        bl.op = node.op.name();
        for &a in &node.args {
            if let ValueRef::Weight(w) = g.value(a)
                && vals[a as usize].is_none()
            {
                let operand = match &weights[w] {
                    WeightUse::Constant(t) => bl.b.constant(&desc(t.dtype, &t.shape), &typed(t.dtype, &t.data)),
                    WeightUse::Input { dtype, shape } => {
                        weight_inputs.push(w);
                        bl.b.input(&weight_input(w), &desc(*dtype, shape))
                    }
                };
                vals[a as usize] = Some(operand.map_err(|e| bl.fail(e))?);
            }
        }
        let args: Vec<&MLOperand> = node.args.iter().map(|&a| vals[a as usize].as_ref().expect("defined")).collect();
        let arg_shapes: Vec<&[u32]> = node.args.iter().map(|&a| shapes[a as usize].as_slice()).collect();
        let out_shape = &shapes[g.node_value(ni) as usize];
        let out = translate(&bl, &node.op, &args, &arg_shapes, out_shape)?;
        vals[g.node_value(ni) as usize] = Some(out);
    }
    let outs = Object::new();
    for (i, &o) in g.outputs.iter().enumerate() {
        let _ = Reflect::set(&outs, &format!("out{i}").into(), vals[o as usize].as_ref().expect("defined"));
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
) -> Result<MLOperand, RemoteError> {
    let b = &bl.b;
    let f = |e| bl.fail(e);
    let rank = |i: usize| s[i].len() as u32;
    Ok(match op {
        Op::MatMul => b.matmul(a[0], a[1]).map_err(f)?,
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
        Op::SiluMul | Op::RmsNorm { .. } | Op::Rope { .. } | Op::Argmax | Op::Sample | Op::CachedAttention { .. } => {
            return Err(RemoteError::new(
                shared_proto::ErrorKind::Unsupported,
                format!("{} is not implemented on WebNN yet", op.name()),
            ));
        }
    })
}
