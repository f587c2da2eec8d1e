//! Whisper's text decoder as a stateful step graph: sessions advance together (continuous
//! batching) and each one's caches stay in the tab. Cache layers `0..L` hold the decoder's
//! self-attention keys and values (written by `CachedAttention` as tokens come); layers
//! `L..2L` hold the cross-attention memory, written once per session by `PutMemory` from the
//! encoder's outputs and read by `CrossAttention` at every step. A session reserves
//! `n_audio_ctx` (1500) rows of every layer, since one row range serves both kinds.
//!
//! Suppression is in the graph, so only ids cross the socket: a constant bias adds −1e9 to the
//! ids suppressed at every step, and the ids suppressed at the first generated step (Whisper's
//! `suppress_blank`) get −1e9 where the token being read is the prompt's last one,
//! `<|notimestamps|>` (a one-hot flag gathered per token, times the bias row).

use shared_proto::{DType, Graph, KvDecl, Op, Tensor};

use super::blocks::{Fetch, ffn, layer_norm, linear, matrix, split, tensor};
use super::ct2::WhisperConfig;
use model_graphs::builder::GraphBuilder;

/// Added to a suppressed id's logit: finite, so `0 × bias` stays 0 in the flag product.
pub const SUPPRESSED: f32 = -1e9;

/// What the decoder graph is built for.
#[derive(Debug, Clone, Copy)]
pub struct DecoderLimits {
    /// Sessions open at once on one copy (each reserves `n_audio_ctx` rows of every layer).
    pub max_sessions: u32,
    /// Also output the suppressed logits `[R, V]`, after the ids, the chosen ids' probabilities
    /// and the no-speech probabilities (tests compare them with the reference).
    pub logits: bool,
}

impl Default for DecoderLimits {
    fn default() -> Self {
        DecoderLimits { max_sessions: 4, logits: false }
    }
}

/// The decoder's step graph over the model's weights.
pub fn build(get: &Fetch, cfg: &WhisperConfig, limits: DecoderLimits) -> anyhow::Result<(Graph, Vec<Tensor>)> {
    let (d, heads, layers, vocab) = (cfg.d_model, cfg.n_text_head, cfg.n_text_layer, cfg.n_vocab);
    anyhow::ensure!(d % heads == 0, "d_model {d} is not divisible by {heads} heads");
    anyhow::ensure!(limits.max_sessions > 0, "a decoder needs room for a session");
    let mut g = GraphBuilder::default();
    g.kv(KvDecl {
        layers: 2 * layers as u32,
        kv_heads: heads as u32,
        head_dim: (d / heads) as u32,
        max_tokens: cfg.n_audio_ctx as u32 * limits.max_sessions,
        max_sessions: limits.max_sessions,
    });
    let [ids, pos, kv_start, rows, sampling] = g.step_inputs();
    let emb = matrix(&mut g, get, "decoder/embeddings/weight", None)?;
    let positions = matrix(&mut g, get, "decoder/position_encodings/encodings", Some(&[cfg.n_text_ctx, d]))?;
    let tok = g.op(Op::Gather, &[emb, ids]);
    let at = g.op(Op::Gather, &[positions, pos]);
    let mut x = g.op(Op::Add, &[tok, at]);
    for l in 0..layers {
        let p = format!("decoder/layer_{l}");
        let h = layer_norm(&mut g, get, x, &format!("{p}/self_attention/layer_norm"))?;
        let qkv = split(&mut g, get, &format!("{p}/self_attention/linear_0"), 3)?;
        let [q, k, v] = g.qkv(h, [0, 1, 2].map(|i| (qkv[i].0, Some(qkv[i].1))));
        let attn = Op::CachedAttention { layer: l as u32, heads: heads as u32, kv_heads: heads as u32 };
        let a = g.op(attn, &[q, k, v, pos, kv_start]);
        let a = linear(&mut g, get, a, &format!("{p}/self_attention/linear_1"))?;
        x = g.op(Op::Add, &[x, a]);
        let h = layer_norm(&mut g, get, x, &format!("{p}/attention/layer_norm"))?;
        let q = linear(&mut g, get, h, &format!("{p}/attention/linear_0"))?;
        let cross =
            Op::CrossAttention { layer: (layers + l) as u32, heads: heads as u32, rows: cfg.n_audio_ctx as u32 };
        let c = g.op(cross, &[q, kv_start]);
        let c = linear(&mut g, get, c, &format!("{p}/attention/linear_2"))?;
        x = g.op(Op::Add, &[x, c]);
        x = ffn(&mut g, get, x, &p)?;
    }
    let x = layer_norm(&mut g, get, x, "decoder/layer_norm")?;
    // Only each session's last token is sampled: its row is gathered before the (tied) head.
    let last = g.op(Op::Gather, &[x, rows]);
    let logits = g.linear(last, emb, None);
    // faster-whisper's no-speech probability: the no-speech token's share of the softmax of the
    // unsuppressed logits (read where the row's token is `<|startoftranscript|>`), as a
    // product with its one-hot column: [R, 1].
    let mut one_hot = vec![0.0f32; vocab];
    one_hot[cfg.no_speech as usize] = 1.0;
    let one_hot = g.weight("no_speech", tensor(&[vocab, 1], &one_hot));
    let probs = g.op(Op::Softmax, &[logits]);
    let no_speech = g.op(Op::MatMul, &[probs, one_hot]);
    let (always, begin, flag) = suppression(cfg);
    let always = g.weight("suppress", tensor(&[vocab], &always));
    let logits = g.op(Op::Add, &[logits, always]);
    let begin = g.weight("suppress_begin", tensor(&[1, vocab], &begin));
    let flag = g.weight("begins_after", tensor(&[vocab, 1], &flag));
    let flags = g.op(Op::Gather, &[flag, ids]);
    let flags = g.op(Op::Gather, &[flags, rows]);
    let first = g.op(Op::MatMul, &[flags, begin]);
    let logits = g.op(Op::Add, &[logits, first]);
    let next = g.op(Op::Sample, &[logits, sampling]);
    // Each chosen id's probability after suppression (faster-whisper's average log-probability
    // is of these): the suppressed softmax transposed to [V, R], its rows of the chosen ids
    // gathered — [R, R], row r's own at (r, r).
    let probs = g.op(Op::Softmax, &[logits]);
    let by_token = g.op(Op::Transpose { perm: vec![1, 0] }, &[probs]);
    let chosen = g.op(Op::Gather, &[by_token, next]);
    let mut outputs = vec![next, chosen, no_speech];
    if limits.logits {
        outputs.push(logits);
    }
    let (graph, weights) = g.finish(&outputs);
    graph.validate()?;
    Ok((graph, weights))
}

/// The three constant tables of the suppression rule: the bias at every step `[V]`, the bias
/// of the first generated step `[V]` and the one-hot `[V]` of the token after which a step is
/// the first (`<|notimestamps|>`, the prompt's last token).
fn suppression(cfg: &WhisperConfig) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let v = cfg.n_vocab;
    let mut always = vec![0.0; v];
    for &id in &cfg.suppress_ids {
        always[id as usize] = SUPPRESSED;
    }
    let mut begin = vec![0.0; v];
    for &id in &cfg.suppress_ids_begin {
        begin[id as usize] = SUPPRESSED;
    }
    let mut flag = vec![0.0; v];
    flag[cfg.no_timestamps as usize] = 1.0;
    (always, begin, flag)
}

/// The memory a session's decoder reads, from one window's encoder outputs `k0, v0, k1, v1, …`
/// (each `[1, rows, d]`): `[layers, 2, rows, d]` for `PutMemory` at layer `layers`.
pub fn memory(cross: &[Tensor]) -> anyhow::Result<Tensor> {
    anyhow::ensure!(!cross.is_empty() && cross.len().is_multiple_of(2), "cross keys and values come in pairs");
    let shape = &cross[0].shape;
    anyhow::ensure!(shape.len() == 3 && shape[0] == 1, "one window's keys are [1, rows, d], got {shape:?}");
    let mut data = Vec::with_capacity(cross.iter().map(|t| t.data.len()).sum());
    for t in cross {
        anyhow::ensure!(t.dtype == DType::F32 && t.shape == *shape, "cross tensors differ: {:?}", t.shape);
        data.extend_from_slice(&t.data);
    }
    Ok(Tensor { dtype: DType::F32, shape: vec![cross.len() as u32 / 2, 2, shape[1], shape[2]], data: data.into() })
}
