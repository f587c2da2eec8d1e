//! The llama decoder as one stateful step graph: the tokens of every session in the step go
//! through the layers together (their KV rows kept in the tab's cache), and each session's last
//! row is turned into logits and sampled, so only token ids leave the tab.

use std::collections::HashMap;

use anyhow::{Context, bail};
use shared_proto::{DType, Dim, Graph, KvDecl, Op, STAGE_INPUT, STEP_INPUTS, Tensor};

use crate::Part;
use crate::builder::{GraphBuilder, V};

/// The hyper-parameters the graph needs (from the GGUF's `llama.*` metadata).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Config {
    pub layers: u32,
    pub hidden: u32,
    pub heads: u32,
    pub kv_heads: u32,
    pub ffn: u32,
    pub vocab: u32,
    pub rms_eps: f32,
    pub rope_base: f32,
}

impl Config {
    pub fn head_dim(&self) -> u32 {
        self.hidden / self.heads
    }
}

pub use crate::KvLimits;

/// Which outputs the graph has besides the sampled ids (output 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Outputs {
    /// Output 1: the logits `[R, vocab]` the ids were sampled from (tests compare them).
    pub logits: bool,
}

/// Build the step graph from `weights` (GGUF names, our shapes). Weights are declared in first
/// use order; `token_embd` is declared once and serves as the LM head too (tied embeddings).
pub fn build(
    cfg: &Config,
    weights: &HashMap<String, Tensor>,
    limits: KvLimits,
    outputs: Outputs,
) -> anyhow::Result<(Graph, Vec<Tensor>)> {
    build_stage(cfg, weights, limits, &Part::whole_model(cfg.layers), outputs)
}

/// Build the step graph of one stage of a sharded model: its `parts` in order (see
/// [`Part`]). A stage that starts with the embedding takes token ids; any other takes the
/// previous stage's hidden state (`hidden [T, width]`, f32). A stage that ends with the head
/// samples ids; any other outputs the hidden state of every token it ran (the next stage needs
/// each token's row for its own KV cache). The KV cache holds the stage's attention parts only,
/// numbered from 0 in the stage.
pub fn build_stage(
    cfg: &Config,
    weights: &HashMap<String, Tensor>,
    limits: KvLimits,
    parts: &[Part],
    outputs: Outputs,
) -> anyhow::Result<(Graph, Vec<Tensor>)> {
    if cfg.heads == 0
        || cfg.kv_heads == 0
        || !cfg.hidden.is_multiple_of(cfg.heads)
        || !cfg.heads.is_multiple_of(cfg.kv_heads)
    {
        bail!("{} heads / {} kv heads do not divide a width of {}", cfg.heads, cfg.kv_heads, cfg.hidden);
    }
    check_parts(parts, cfg.layers)?;
    let (h, hd, kvw) = (cfg.hidden, cfg.head_dim(), cfg.kv_heads * cfg.head_dim());
    let mut g = GraphBuilder::default();
    let attention_parts = parts.iter().filter(|p| matches!(p, Part::Attention(_))).count() as u32;
    g.kv(KvDecl {
        layers: attention_parts,
        kv_heads: cfg.kv_heads,
        head_dim: hd,
        max_tokens: limits.max_tokens,
        max_sessions: limits.max_sessions,
    });
    let embeds = parts.first() == Some(&Part::Embed);
    let [first, pos, kv_start, rows, sampling] = STEP_INPUTS.map(|(name, dtype)| {
        let (name, dtype, dims) = match name {
            "ids" if !embeds => (STAGE_INPUT.0, STAGE_INPUT.1, vec![Dim::Seq, Dim::Fixed(h)]),
            "rows" => (name, dtype, vec![Dim::Batch]),
            "sampling" => (name, dtype, vec![Dim::Batch, Dim::Fixed(4)]),
            _ => (name, dtype, vec![Dim::Seq]),
        };
        g.input(name, dtype, dims)
    });
    // A weight with the shape the graph needs: norms f32, matrices f32 or block-quantized;
    // declared once however often it is used (the tied embedding serves as the LM head too).
    let mut declared: HashMap<String, V> = HashMap::new();
    let mut w = |g: &mut GraphBuilder, name: &str, shape: &[u32]| -> anyhow::Result<V> {
        if let Some(&v) = declared.get(name) {
            return Ok(v);
        }
        let t = weights.get(name).with_context(|| format!("weight {name} missing"))?;
        let ok_dtype =
            if shape.len() == 1 { t.dtype == DType::F32 } else { t.dtype == DType::F32 || t.dtype.block().is_some() };
        if t.shape != shape || !ok_dtype {
            bail!("weight {name} is {:?} {:?}, expected {shape:?}", t.dtype, t.shape);
        }
        let v = g.weight(name, t.clone());
        declared.insert(name.to_string(), v);
        Ok(v)
    };
    let norm = Op::RmsNorm { eps: cfg.rms_eps };

    let mut x = first;
    let mut kv_layer = 0;
    let mut out = None;
    for part in parts {
        match *part {
            Part::Embed => {
                let embd = w(&mut g, "token_embd.weight", &[cfg.vocab, h])?;
                x = g.op(Op::Gather, &[embd, first]);
            }
            Part::Attention(l) => {
                let p = format!("blk.{l}");
                let gamma = w(&mut g, &format!("{p}.attn_norm.weight"), &[h])?;
                let xn = g.op(norm.clone(), &[x, gamma]);
                let wq = w(&mut g, &format!("{p}.attn_q.weight"), &[h, h])?;
                let wk = w(&mut g, &format!("{p}.attn_k.weight"), &[kvw, h])?;
                let wv = w(&mut g, &format!("{p}.attn_v.weight"), &[kvw, h])?;
                let [q, k, v] = g.qkv(xn, [(wq, None), (wk, None), (wv, None)]);
                // GGUF's q/k rows are already permuted for interleaved pairs, which is what Rope rotates.
                let q = g.op(Op::Rope { heads: cfg.heads, base: cfg.rope_base }, &[q, pos]);
                let k = g.op(Op::Rope { heads: cfg.kv_heads, base: cfg.rope_base }, &[k, pos]);
                let attn = Op::CachedAttention { layer: kv_layer, heads: cfg.heads, kv_heads: cfg.kv_heads };
                kv_layer += 1;
                let a = g.op(attn, &[q, k, v, pos, kv_start]);
                let wo = w(&mut g, &format!("{p}.attn_output.weight"), &[h, h])?;
                let o = g.linear(a, wo, None);
                x = g.op(Op::Add, &[o, x]);
            }
            Part::Ffn(l) => {
                let p = format!("blk.{l}");
                let gamma = w(&mut g, &format!("{p}.ffn_norm.weight"), &[h])?;
                let xn = g.op(norm.clone(), &[x, gamma]);
                let wg = w(&mut g, &format!("{p}.ffn_gate.weight"), &[cfg.ffn, h])?;
                let wu = w(&mut g, &format!("{p}.ffn_up.weight"), &[cfg.ffn, h])?;
                let wd = w(&mut g, &format!("{p}.ffn_down.weight"), &[h, cfg.ffn])?;
                let down = g.swiglu_mlp(xn, wg, wu, wd);
                x = g.op(Op::Add, &[down, x]);
            }
            Part::Head => {
                let gamma = w(&mut g, "output_norm.weight", &[h])?;
                let xn = g.op(norm.clone(), &[x, gamma]);
                // Only each session's last token is sampled: its row is gathered before the LM head.
                let last = g.op(Op::Gather, &[xn, rows]);
                let embd = w(&mut g, "token_embd.weight", &[cfg.vocab, h])?;
                let logits = g.linear(last, embd, None);
                let next = g.op(Op::Sample, &[logits, sampling]);
                out = Some(if outputs.logits { vec![next, logits] } else { vec![next] });
            }
        }
    }
    let outs = out.unwrap_or_else(|| vec![x]);
    let (graph, tensors) = g.finish(&outs);
    graph.validate()?;
    Ok((graph, tensors))
}

/// A stage's parts must run in model order: the embedding only first, the head only last, and
/// the transformer parts in the order the model applies them (an attention part before the
/// FFN of its layer, layers ascending, none twice) — the hidden state a stage reads is the one
/// the previous part wrote.
fn check_parts(parts: &[Part], layers: u32) -> anyhow::Result<()> {
    let order = |p: &Part| match *p {
        Part::Embed => Some(0),
        Part::Attention(l) => Some(1 + 2 * l as u64),
        Part::Ffn(l) => Some(2 + 2 * l as u64),
        Part::Head => Some(2 + 2 * layers as u64),
    };
    if parts.is_empty() {
        bail!("a stage needs at least one part");
    }
    for p in parts {
        if let Part::Attention(l) | Part::Ffn(l) = *p
            && l as u64 >= layers as u64
        {
            bail!("{p:?}: the model has {layers} layers");
        }
    }
    for w in parts.windows(2) {
        if order(&w[0]) >= order(&w[1]) {
            bail!("stage parts out of model order: {:?} before {:?}", w[0], w[1]);
        }
    }
    Ok(())
}
