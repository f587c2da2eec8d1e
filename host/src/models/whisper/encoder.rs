//! Whisper's audio encoder as an operator graph, from ops every backend already has: the two
//! conv1d stems are `Conv2d` over a height-1 image (`[B, 80, 1, 3000]`, kernel `1×3`), then
//! sinusoidal positions (stored in the model), four pre-LN transformer layers and a final
//! LayerNorm. Output: `[B, 1500, 384]`, what the decoder's cross-attention reads.
//!
//! CTranslate2 fuses the self-attention projections (`linear_0` is `[3·d, d]`, q/k/v stacked);
//! the graph keeps them as three weights so the ordinary `Linear` + `Attention` ops serve.

use shared_proto::{DType, Dim, Graph, Op, Tensor};

use crate::models::builder::{Conv, GraphBuilder, V};

/// Mel bins and frames of a 30-s window (the encoder's fixed input).
pub const N_MELS: usize = 80;
pub const N_FRAMES: usize = 3000;
/// Encoder positions: frames after the stride-2 convolution.
pub const N_AUDIO_CTX: usize = N_FRAMES / 2;
/// LayerNorm epsilon of every Whisper norm.
const LN_EPS: f32 = 1e-5;

/// Sizes read from the weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncoderDims {
    pub d_model: usize,
    pub heads: usize,
    pub layers: usize,
}

/// A weight by its CTranslate2 name: shape and f32 values.
pub type Fetch<'a> = dyn Fn(&str) -> anyhow::Result<(Vec<usize>, Vec<f32>)> + 'a;

fn tensor(shape: &[usize], data: &[f32]) -> Tensor {
    Tensor::from_f32(shape.iter().map(|&d| d as u32).collect(), data)
}

/// Declare `name` as a graph weight, reshaped to `shape` when given (element count checked).
fn weight(g: &mut GraphBuilder, get: &Fetch, name: &str, shape: Option<&[usize]>) -> anyhow::Result<V> {
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
fn split(g: &mut GraphBuilder, get: &Fetch, prefix: &str, parts: usize) -> anyhow::Result<Vec<(V, V)>> {
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

fn layer_norm(g: &mut GraphBuilder, get: &Fetch, x: V, prefix: &str) -> anyhow::Result<V> {
    let gamma = weight(g, get, &format!("{prefix}/gamma"), None)?;
    let beta = weight(g, get, &format!("{prefix}/beta"), None)?;
    Ok(g.op(Op::LayerNorm { eps: LN_EPS }, &[x, gamma, beta]))
}

fn linear(g: &mut GraphBuilder, get: &Fetch, x: V, prefix: &str) -> anyhow::Result<V> {
    let w = weight(g, get, &format!("{prefix}/weight"), None)?;
    let b = weight(g, get, &format!("{prefix}/bias"), None)?;
    Ok(g.linear(x, w, Some(b)))
}

/// The encoder graph: inputs `mel [B, 80, 3000]` and `mask [B, 1500]` (all ones: every position
/// of a 30-s window is attended, padding frames included, as Whisper was trained), output
/// `[B, 1500, d_model]`.
pub fn build(get: &Fetch, heads: usize) -> anyhow::Result<(Graph, Vec<Tensor>, EncoderDims)> {
    let (c1, _) = get("encoder/conv1/weight")?;
    anyhow::ensure!(c1.len() == 3 && c1[1] == N_MELS && c1[2] == 3, "encoder/conv1/weight is {c1:?}");
    let d = c1[0];
    anyhow::ensure!(d % heads == 0, "d_model {d} is not divisible by {heads} heads");
    let mut g = GraphBuilder::default();
    let mel = g.input("mel", DType::F32, vec![Dim::Batch, Dim::Fixed(N_MELS as u32), Dim::Fixed(N_FRAMES as u32)]);
    let mask = g.input("mask", DType::F32, vec![Dim::Batch, Dim::Fixed(N_AUDIO_CTX as u32)]);
    let x = g.op(Op::Reshape { shape: vec![-1, N_MELS as i32, 1, N_FRAMES as i32] }, &[mel]);
    let stem = |g: &mut GraphBuilder, x: V, name: &str, c: usize, stride: u32| -> anyhow::Result<V> {
        let (_, w) = get(&format!("{name}/weight"))?;
        let (_, b) = get(&format!("{name}/bias"))?;
        let conv = Conv { stride: [1, stride], pad: [0, 1, 0, 1], groups: 1, clamp: None };
        let y = g.conv(x, name, tensor(&[d, c, 1, 3], &w), Some(tensor(&[d], &b)), conv);
        Ok(g.op(Op::Gelu, &[y]))
    };
    let x = stem(&mut g, x, "encoder/conv1", N_MELS, 1)?;
    let x = stem(&mut g, x, "encoder/conv2", d, 2)?;
    let x = g.op(Op::Reshape { shape: vec![-1, d as i32, N_AUDIO_CTX as i32] }, &[x]);
    let x = g.op(Op::Transpose { perm: vec![0, 2, 1] }, &[x]);
    let pos = weight(&mut g, get, "encoder/position_encodings/encodings", Some(&[N_AUDIO_CTX, d]))?;
    let mut x = g.op(Op::Add, &[x, pos]);
    let mut layers = 0;
    while get(&format!("encoder/layer_{layers}/self_attention/layer_norm/gamma")).is_ok() {
        let p = format!("encoder/layer_{layers}");
        let h = layer_norm(&mut g, get, x, &format!("{p}/self_attention/layer_norm"))?;
        let qkv = split(&mut g, get, &format!("{p}/self_attention/linear_0"), 3)?;
        let [q, k, v] = g.qkv(h, [0, 1, 2].map(|i| (qkv[i].0, Some(qkv[i].1))));
        let a = g.op(Op::Attention { heads: heads as u32 }, &[q, k, v, mask]);
        let a = linear(&mut g, get, a, &format!("{p}/self_attention/linear_1"))?;
        x = g.op(Op::Add, &[x, a]);
        let h = layer_norm(&mut g, get, x, &format!("{p}/ffn/layer_norm"))?;
        let up = (
            weight(&mut g, get, &format!("{p}/ffn/linear_0/weight"), None)?,
            weight(&mut g, get, &format!("{p}/ffn/linear_0/bias"), None)?,
        );
        let down = (
            weight(&mut g, get, &format!("{p}/ffn/linear_1/weight"), None)?,
            weight(&mut g, get, &format!("{p}/ffn/linear_1/bias"), None)?,
        );
        let f = g.gelu_mlp(h, up, down);
        x = g.op(Op::Add, &[x, f]);
        layers += 1;
    }
    anyhow::ensure!(layers > 0, "no encoder/layer_0 in the model");
    let out = layer_norm(&mut g, get, x, "encoder/layer_norm")?;
    let (graph, weights) = g.finish(&[out]);
    Ok((graph, weights, EncoderDims { d_model: d, heads, layers }))
}

/// The encoder's inputs for a batch of mel windows (each `[80, 3000]` row-major).
pub fn inputs(mels: &[&[f32]]) -> anyhow::Result<Vec<Tensor>> {
    for m in mels {
        anyhow::ensure!(m.len() == N_MELS * N_FRAMES, "a mel window has {} values, not 80×3000", m.len());
    }
    let b = mels.len() as u32;
    let flat: Vec<f32> = mels.iter().flat_map(|m| m.iter().copied()).collect();
    Ok(vec![
        Tensor::from_f32(vec![b, N_MELS as u32, N_FRAMES as u32], &flat),
        Tensor::from_f32(vec![b, N_AUDIO_CTX as u32], &vec![1.0; mels.len() * N_AUDIO_CTX]),
    ])
}
