//! Graph blocks shared by Whisper's encoder and decoder: weights fetched by their CTranslate2
//! names, CTranslate2's fused projections split back into separate linears, pre-norms.

use shared_proto::{Op, Tensor};

use model_graphs::builder::{GraphBuilder, V};

/// LayerNorm epsilon of every Whisper norm.
pub const LN_EPS: f32 = 1e-5;

/// A weight by its CTranslate2 name: shape and f32 values.
pub type Fetch<'a> = dyn Fn(&str) -> anyhow::Result<(Vec<usize>, Vec<f32>)> + 'a;

pub fn tensor(shape: &[usize], data: &[f32]) -> Tensor {
    Tensor::from_f32(shape.iter().map(|&d| d as u32).collect(), data)
}

/// Declare `name` as a graph weight, reshaped to `shape` when given (element count checked).
pub fn weight(g: &mut GraphBuilder, get: &Fetch, name: &str, shape: Option<&[usize]>) -> anyhow::Result<V> {
    let (s, data) = get(name)?;
    let shape = shape.unwrap_or(&s);
    anyhow::ensure!(
        shape.iter().product::<usize>() == data.len(),
        "{name}: {} values do not make {shape:?}",
        data.len()
    );
    Ok(g.weight(name, tensor(shape, &data)))
}

/// A fused `[parts·d, d]` projection (and its `[parts·d]` bias) as `parts` separate `(w, b)`.
pub fn split(g: &mut GraphBuilder, get: &Fetch, prefix: &str, parts: usize) -> anyhow::Result<Vec<(V, V)>> {
    let (ws, w) = get(&format!("{prefix}/weight"))?;
    let (_, b) = get(&format!("{prefix}/bias"))?;
    anyhow::ensure!(
        ws.len() == 2 && ws[0] % parts == 0 && b.len() == ws[0],
        "{prefix}: {ws:?} is not {parts} stacked projections"
    );
    let (rows, cols) = (ws[0] / parts, ws[1]);
    Ok((0..parts)
        .map(|i| {
            let wv = g.weight(
                &format!("{prefix}/weight[{i}]"),
                tensor(&[rows, cols], &w[i * rows * cols..(i + 1) * rows * cols]),
            );
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
    let w = weight(g, get, &format!("{prefix}/weight"), None)?;
    let b = weight(g, get, &format!("{prefix}/bias"), None)?;
    Ok(g.linear(x, w, Some(b)))
}

/// A layer's pre-norm GELU feed-forward block with its residual: `x + mlp(norm(x))`, from the
/// weights under `{layer}/ffn/`.
pub fn ffn(g: &mut GraphBuilder, get: &Fetch, x: V, layer: &str) -> anyhow::Result<V> {
    let h = layer_norm(g, get, x, &format!("{layer}/ffn/layer_norm"))?;
    let up = (
        weight(g, get, &format!("{layer}/ffn/linear_0/weight"), None)?,
        weight(g, get, &format!("{layer}/ffn/linear_0/bias"), None)?,
    );
    let down = (
        weight(g, get, &format!("{layer}/ffn/linear_1/weight"), None)?,
        weight(g, get, &format!("{layer}/ffn/linear_1/bias"), None)?,
    );
    let f = g.gelu_mlp(h, up, down);
    Ok(g.op(Op::Add, &[x, f]))
}
