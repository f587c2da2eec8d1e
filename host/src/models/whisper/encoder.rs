//! Whisper's audio encoder as an operator graph, from ops every backend already has: the two
//! conv1d stems are `Conv2d` over a height-1 image (`[B, 80, 1, 3000]`, kernel `1×3`), then
//! sinusoidal positions (stored in the model), four pre-LN transformer layers and a final
//! LayerNorm. Outputs: for each decoder layer the keys and values its cross-attention reads (the
//! decoder's `attention/linear_1`, applied here), after the hidden state `[B, 1500, 384]` when
//! `build` is asked for it.
//!
//! CTranslate2 fuses the self-attention projections (`linear_0` is `[3·d, d]`, q/k/v stacked);
//! the graph keeps them as three weights so the ordinary `Linear` + `Attention` ops serve.

use shared_proto::{DType, Dim, Graph, Op, Tensor};

use super::blocks::{Fetch, ffn, layer_norm, linear, split, tensor, values, weight};
use model_graphs::builder::{Conv, GraphBuilder, V};

/// Mel bins and frames of a 30-s window (the encoder's fixed input).
pub const N_MELS: usize = 80;
pub const N_FRAMES: usize = 3000;
/// Encoder positions: frames after the stride-2 convolution.
pub const N_AUDIO_CTX: usize = N_FRAMES / 2;

/// Sizes read from the weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncoderDims {
    pub d_model: usize,
    pub heads: usize,
    pub layers: usize,
    /// Decoder layers whose cross-attention keys and values the encoder outputs (`k0, v0, k1,
    /// v1, …`, each `[B, 1500, d_model]`, after the hidden state when asked for).
    pub cross_layers: usize,
}

/// The encoder graph: inputs `mel [B, 80, 3000]` and `mask [B, 1500]` (all ones: every position
/// of a 30-s window is attended, padding frames included, as Whisper was trained), output
/// `[B, 1500, d_model]`.
pub fn build(get: &Fetch, heads: usize, hidden: bool) -> anyhow::Result<(Graph, Vec<Tensor>, EncoderDims)> {
    let c1: Vec<usize> = get("encoder/conv1/weight")?.shape.iter().map(|&d| d as usize).collect();
    anyhow::ensure!(c1.len() == 3 && c1[1] == N_MELS && c1[2] == 3, "encoder/conv1/weight is {c1:?}");
    let d = c1[0];
    anyhow::ensure!(d.is_multiple_of(heads), "d_model {d} is not divisible by {heads} heads");
    let mut g = GraphBuilder::default();
    let mel = g.input("mel", DType::F32, vec![Dim::Batch, Dim::Fixed(N_MELS as u32), Dim::Fixed(N_FRAMES as u32)]);
    let mask = g.input("mask", DType::F32, vec![Dim::Batch, Dim::Fixed(N_AUDIO_CTX as u32)]);
    let x = g.op(Op::Reshape { shape: vec![-1, N_MELS as i32, 1, N_FRAMES as i32] }, &[mel]);
    let stem = |g: &mut GraphBuilder, x: V, name: &str, c: usize, stride: u32| -> anyhow::Result<V> {
        let (_, w) = values(get, &format!("{name}/weight"))?;
        let (_, b) = values(get, &format!("{name}/bias"))?;
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
        x = ffn(&mut g, get, x, &p)?;
        layers += 1;
    }
    anyhow::ensure!(layers > 0, "no encoder/layer_0 in the model");
    let out = layer_norm(&mut g, get, x, "encoder/layer_norm")?;
    // The decoder's cross-attention keys and values are a function of this output alone: they
    // are computed here, once per window, and travel to the decoder's tab as its session memory.
    // The hidden state itself is an output only when asked (tests): decoding needs only the
    // keys and values, and it would add 2.3 MB per window to what crosses the socket.
    let mut outputs = if hidden { vec![out] } else { vec![] };
    let mut cross = 0;
    while get(&format!("decoder/layer_{cross}/attention/linear_1/weight")).is_ok() {
        for (w, b) in split(&mut g, get, &format!("decoder/layer_{cross}/attention/linear_1"), 2)? {
            outputs.push(g.linear(out, w, Some(b)));
        }
        cross += 1;
    }
    let (graph, weights) = g.finish(&outputs);
    Ok((graph, weights, EncoderDims { d_model: d, heads, layers, cross_layers: cross }))
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
