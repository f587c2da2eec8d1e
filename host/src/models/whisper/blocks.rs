//! Graph blocks shared by Whisper's encoder and decoder: weights fetched by their CTranslate2
//! names, CTranslate2's fused projections split back into separate linears, pre-norms.
//!
//! Matrices that feed `Linear` and `Gather` keep the dtype they are stored in (f16 for this
//! model: the executors widen halves as they read, exactly, so the model costs its file's
//! bytes, not twice them); everything else (norms, biases, conv filters, added positions) is
//! widened to f32 here.

use bytes::Bytes;
use shared_proto::{DType, Op, Tensor};

use model_graphs::builder::{GraphBuilder, V};

/// LayerNorm epsilon of every Whisper norm.
pub const LN_EPS: f32 = 1e-5;

/// A weight by its CTranslate2 name, as stored: f16 kept as f16, every other dtype as f32.
pub type Fetch<'a> = dyn Fn(&str) -> anyhow::Result<Tensor> + 'a;

pub fn tensor(shape: &[usize], data: &[f32]) -> Tensor {
    Tensor::from_f32(shape.iter().map(|&d| d as u32).collect(), data)
}

/// A stored weight's shape and its values widened to f32.
pub fn values(get: &Fetch, name: &str) -> anyhow::Result<(Vec<usize>, Vec<f32>)> {
    let t = get(name)?;
    let shape = t.shape.iter().map(|&d| d as usize).collect();
    let data = match t.dtype {
        DType::F32 => t.to_f32().expect("f32"),
        dt => {
            let mut out = vec![0.0f32; t.elements() as usize];
            shared_proto::quant::dequantize_row(dt, &t.data, &mut out);
            out
        }
    };
    Ok((shape, data))
}

/// `t` with `shape` (element count checked).
fn reshaped(name: &str, t: Tensor, shape: Option<&[usize]>) -> anyhow::Result<Tensor> {
    let Some(shape) = shape else { return Ok(t) };
    anyhow::ensure!(
        shape.iter().product::<usize>() as u64 == t.elements(),
        "{name}: {} values do not make {shape:?}",
        t.elements()
    );
    Ok(Tensor { shape: shape.iter().map(|&d| d as u32).collect(), ..t })
}

/// Declare `name` as an f32 graph weight, reshaped to `shape` when given.
pub fn weight(g: &mut GraphBuilder, get: &Fetch, name: &str, shape: Option<&[usize]>) -> anyhow::Result<V> {
    let (s, data) = values(get, name)?;
    let t = reshaped(name, tensor(&s, &data), shape)?;
    Ok(g.weight(name, t))
}

/// Declare `name` as a graph weight in its stored dtype (for `Linear` and `Gather` only).
pub fn matrix(g: &mut GraphBuilder, get: &Fetch, name: &str, shape: Option<&[usize]>) -> anyhow::Result<V> {
    let t = reshaped(name, get(name)?, shape)?;
    Ok(g.weight(name, t))
}

/// Rows `first..first + rows` of a `[R, C]` weight, in its dtype.
fn rows_of(t: &Tensor, first: usize, rows: usize) -> Tensor {
    let row_bytes = t.data.len() / t.shape[0] as usize;
    Tensor {
        dtype: t.dtype,
        shape: vec![rows as u32, t.shape[1]],
        data: Bytes::copy_from_slice(&t.data[first * row_bytes..(first + rows) * row_bytes]),
    }
}

/// A fused `[parts·d, d]` projection (and its `[parts·d]` bias) as `parts` separate `(w, b)`.
pub fn split(g: &mut GraphBuilder, get: &Fetch, prefix: &str, parts: usize) -> anyhow::Result<Vec<(V, V)>> {
    let w = get(&format!("{prefix}/weight"))?;
    let (_, b) = values(get, &format!("{prefix}/bias"))?;
    let ws = &w.shape;
    anyhow::ensure!(
        ws.len() == 2 && (ws[0] as usize).is_multiple_of(parts) && b.len() == ws[0] as usize,
        "{prefix}: {ws:?} is not {parts} stacked projections"
    );
    let rows = ws[0] as usize / parts;
    Ok((0..parts)
        .map(|i| {
            let wv = g.weight(&format!("{prefix}/weight[{i}]"), rows_of(&w, i * rows, rows));
            let bv = g.weight(&format!("{prefix}/bias[{i}]"), tensor(&[rows], &b[i * rows..(i + 1) * rows]));
            (wv, bv)
        })
        .collect())
}

pub fn layer_norm(g: &mut GraphBuilder, get: &Fetch, x: V, prefix: &str) -> anyhow::Result<V> {
    let gamma = weight(g, get, &format!("{prefix}/gamma"), None)?;
    let beta = weight(g, get, &format!("{prefix}/beta"), None)?;
    Ok(g.op(Op::LayerNorm { eps: LN_EPS }, &[x, gamma, beta]))
}

pub fn linear(g: &mut GraphBuilder, get: &Fetch, x: V, prefix: &str) -> anyhow::Result<V> {
    let w = matrix(g, get, &format!("{prefix}/weight"), None)?;
    let b = weight(g, get, &format!("{prefix}/bias"), None)?;
    Ok(g.linear(x, w, Some(b)))
}

/// A layer's pre-norm GELU feed-forward block with its residual: `x + mlp(norm(x))`, from the
/// weights under `{layer}/ffn/`.
pub fn ffn(g: &mut GraphBuilder, get: &Fetch, x: V, layer: &str) -> anyhow::Result<V> {
    let h = layer_norm(g, get, x, &format!("{layer}/ffn/layer_norm"))?;
    let up = (
        matrix(g, get, &format!("{layer}/ffn/linear_0/weight"), None)?,
        weight(g, get, &format!("{layer}/ffn/linear_0/bias"), None)?,
    );
    let down = (
        matrix(g, get, &format!("{layer}/ffn/linear_1/weight"), None)?,
        weight(g, get, &format!("{layer}/ffn/linear_1/bias"), None)?,
    );
    let f = g.gelu_mlp(h, up, down);
    Ok(g.op(Op::Add, &[x, f]))
}
