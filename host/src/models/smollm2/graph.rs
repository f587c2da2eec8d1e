//! The llama decoder as one stateful step graph: the tokens of every session in the step go
//! through the layers together (their KV rows kept in the tab's cache), and each session's last
//! row is turned into logits and sampled, so only token ids leave the tab.

use std::collections::HashMap;

use anyhow::{Context, bail};
use shared_proto::{DType, Dim, Graph, KvDecl, Op, STAGE_INPUT, STEP_INPUTS, Tensor};

use crate::policy::sharding::Part;
use model_graphs::builder::{GraphBuilder, V};

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

pub use crate::family::KvLimits;

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

#[cfg(test)]
mod tests {
    use shared_proto::quant::{quantize_row_q4_1, quantize_row_q8_0};
    use shared_proto::{Node, ValueRef};

    use super::*;

    const TINY: Config =
        Config { layers: 2, hidden: 64, heads: 4, kv_heads: 2, ffn: 96, vocab: 50, rms_eps: 1e-5, rope_base: 1e4 };

    fn tiny_weights(cfg: &Config) -> HashMap<String, Tensor> {
        let q = |dtype: DType, shape: Vec<u32>| {
            let n = shape.iter().product::<u32>() as usize;
            let vals: Vec<f32> = (0..n).map(|i| ((i * 7919 % 101) as f32 - 50.0) / 500.0).collect();
            let data = match dtype {
                DType::Q4_1 => quantize_row_q4_1(&vals),
                DType::Q8_0 => quantize_row_q8_0(&vals),
                _ => return Tensor::from_f32(shape, &vals),
            };
            Tensor { dtype, shape, data: data.into() }
        };
        let (h, kvw) = (cfg.hidden, cfg.kv_heads * cfg.head_dim());
        let mut m = HashMap::new();
        m.insert("token_embd.weight".into(), q(DType::Q8_0, vec![cfg.vocab, h]));
        m.insert("output_norm.weight".into(), q(DType::F32, vec![h]));
        for l in 0..cfg.layers {
            for (name, dtype, shape) in [
                ("attn_norm", DType::F32, vec![h]),
                ("ffn_norm", DType::F32, vec![h]),
                ("attn_q", DType::Q4_1, vec![h, h]),
                ("attn_k", DType::Q4_1, vec![kvw, h]),
                ("attn_v", DType::Q4_1, vec![kvw, h]),
                ("attn_output", DType::Q4_1, vec![h, h]),
                ("ffn_gate", DType::Q4_1, vec![cfg.ffn, h]),
                ("ffn_up", DType::Q4_1, vec![cfg.ffn, h]),
                ("ffn_down", DType::Q4_1, vec![h, cfg.ffn]),
            ] {
                m.insert(format!("blk.{l}.{name}.weight"), q(dtype, shape));
            }
        }
        m
    }

    const LIMITS: KvLimits = KvLimits { max_tokens: 256, max_sessions: 4 };

    fn op_of(g: &Graph, value: u32) -> &Op {
        match g.value(value) {
            ValueRef::Node(n) => &g.nodes[n].op,
            other => panic!("value {value} is {other:?}, not a node"),
        }
    }

    fn weight_name(g: &Graph, value: u32) -> &str {
        match g.value(value) {
            ValueRef::Weight(w) => &g.weights[w].name,
            other => panic!("value {value} is {other:?}, not a weight"),
        }
    }

    #[test]
    fn step_graph_has_the_llama_structure_and_validates() {
        let weights = tiny_weights(&TINY);
        let (g, tensors) = build(&TINY, &weights, LIMITS, Outputs::default()).unwrap();
        g.validate().unwrap();
        let names: Vec<(&str, DType)> = g.inputs.iter().map(|d| (d.name.as_str(), d.dtype)).collect();
        assert_eq!(names, STEP_INPUTS);
        assert_eq!(g.kv, Some(KvDecl { layers: 2, kv_heads: 2, head_dim: 16, max_tokens: 256, max_sessions: 4 }));
        // Every GGUF tensor once, token_embd shared by the gather and the LM head.
        assert_eq!(g.weights.len(), weights.len());
        assert_eq!(tensors.len(), g.weights.len());
        for (d, t) in g.weights.iter().zip(&tensors) {
            assert_eq!((d.dtype, &d.shape), (t.dtype, &t.shape), "{}", d.name);
            assert_eq!(d.hash, shared_proto::content_hash(&weights[&d.name].data), "{}", d.name);
        }
        // 15 nodes per layer plus embedding gather, final norm, row gather, LM head, sample.
        assert_eq!(g.nodes.len(), 15 * 2 + 5);
        let count = |f: &dyn Fn(&Op) -> bool| g.nodes.iter().filter(|n| f(&n.op)).count();
        assert_eq!(count(&|o| matches!(o, Op::Linear { bias: false })), 7 * 2 + 1);
        assert_eq!(count(&|o| matches!(o, Op::RmsNorm { eps } if *eps == 1e-5)), 2 * 2 + 1);
        assert_eq!(count(&|o| matches!(o, Op::Rope { heads: 4, base } if *base == 1e4)), 2);
        assert_eq!(count(&|o| matches!(o, Op::Rope { heads: 2, .. })), 2);
        assert_eq!(count(&|o| matches!(o, Op::SiluMul)), 2);
        for l in 0..2 {
            let n = count(&|o| *o == Op::CachedAttention { layer: l, heads: 4, kv_heads: 2 });
            assert_eq!(n, 1, "layer {l}");
        }

        // The tail: sample(linear(gather(rmsnorm(x), rows), token_embd), sampling).
        assert_eq!(g.outputs.len(), 1);
        let sample = &g.nodes[g.nodes.len() - 1];
        assert_eq!(sample.op, Op::Sample);
        assert_eq!(sample.args[1], 4, "sampling input");
        let Node { op, args } = &g.nodes[g.nodes.len() - 2];
        assert_eq!(*op, Op::Linear { bias: false });
        assert_eq!(weight_name(&g, args[1]), "token_embd.weight");
        assert_eq!(*op_of(&g, args[0]), Op::Gather);
        let gather = &g.nodes[g.nodes.len() - 3];
        assert_eq!(gather.args[1], 3, "rows input");
        assert!(matches!(op_of(&g, gather.args[0]), Op::RmsNorm { .. }));
        // The first node gathers ids from token_embd (the tab finds the vocabulary this way).
        assert_eq!(g.nodes[0].op, Op::Gather);
        assert_eq!(g.nodes[0].args[1], 0);
        assert_eq!(page_runtime::sessions::vocab(&g), TINY.vocab);
        // Cached attention reads q, k, v, pos, kv_start with q and k rotated.
        let att = g.nodes.iter().find(|n| matches!(n.op, Op::CachedAttention { .. })).unwrap();
        assert!(matches!(op_of(&g, att.args[0]), Op::Rope { heads: 4, .. }));
        assert!(matches!(op_of(&g, att.args[1]), Op::Rope { heads: 2, .. }));
        assert_eq!(*op_of(&g, att.args[2]), Op::Linear { bias: false });
        assert_eq!(&att.args[3..], [1, 2]);
    }

    #[test]
    fn logits_flag_adds_output_one() {
        let (g, _) = build(&TINY, &tiny_weights(&TINY), LIMITS, Outputs { logits: true }).unwrap();
        assert_eq!(g.outputs.len(), 2);
        assert_eq!(*op_of(&g, g.outputs[0]), Op::Sample);
        assert_eq!(*op_of(&g, g.outputs[1]), Op::Linear { bias: false });
    }

    #[test]
    fn wrong_shapes_and_dtypes_are_refused_naming_the_weight() {
        let mut w = tiny_weights(&TINY);
        w.get_mut("blk.1.attn_k.weight").unwrap().shape = vec![64, 64];
        let e = build(&TINY, &w, LIMITS, Outputs::default()).unwrap_err().to_string();
        assert!(e.contains("blk.1.attn_k.weight"), "{e}");
        let mut w = tiny_weights(&TINY);
        w.insert("output_norm.weight".into(), Tensor { dtype: DType::I32, shape: vec![64], data: vec![0; 256].into() });
        let e = build(&TINY, &w, LIMITS, Outputs::default()).unwrap_err().to_string();
        assert!(e.contains("output_norm.weight"), "{e}");
        let mut w = tiny_weights(&TINY);
        w.remove("blk.0.ffn_down.weight");
        let e = build(&TINY, &w, LIMITS, Outputs::default()).unwrap_err().to_string();
        assert!(e.contains("blk.0.ffn_down.weight missing"), "{e}");
        let e = build(&TINY, &tiny_weights(&TINY), KvLimits { max_tokens: 0, max_sessions: 1 }, Outputs::default());
        assert!(e.is_err(), "an empty KV cache is refused by validate()");
    }

    /// Runs a step graph (or a chain of stage graphs) for one session's tokens on the CPU
    /// executor: the sampled id and the logits.
    fn forward(stages: &[(Graph, Vec<Tensor>)], tokens: &[u32]) -> (u32, Vec<f32>) {
        use page_runtime::executors::cpu::CpuModel;
        use page_runtime::sessions::Sessions;
        use shared_proto::StepRow;
        let rows = [StepRow { session: 1, tokens: tokens.to_vec(), sampling: shared_proto::Sampling::Greedy }];
        let mut hidden = vec![];
        for (i, (g, w)) in stages.iter().enumerate() {
            let mut sessions = Sessions::new(g.kv.unwrap());
            sessions.open(1, 64).unwrap();
            let plan = sessions.plan_stage(g, &rows, page_runtime::sessions::vocab(g), hidden).unwrap();
            let out = CpuModel::new(g.clone(), w.clone()).unwrap().run(&plan.inputs).unwrap();
            if i + 1 == stages.len() {
                let id = i32::from_le_bytes(out[0].data[..4].try_into().unwrap()) as u32;
                return (id, out[1].to_f32().unwrap());
            }
            assert_eq!((out[0].dtype, out[0].shape.clone()), (DType::F32, vec![tokens.len() as u32, 64]));
            hidden = vec![out[0].clone()];
        }
        unreachable!("no stages")
    }

    #[test]
    fn stages_hold_only_their_weights_and_chain_to_the_whole_model() {
        let weights = tiny_weights(&TINY);
        let logits = Outputs { logits: true };
        let whole = build(&TINY, &weights, LIMITS, logits).unwrap();
        let tokens = [3, 17, 42, 8, 1];
        let (id, expect) = forward(std::slice::from_ref(&whole), &tokens);
        let layered =
            [vec![Part::Embed, Part::Attention(0), Part::Ffn(0)], vec![Part::Attention(1), Part::Ffn(1), Part::Head]];
        let components = [
            vec![Part::Embed],
            vec![Part::Attention(0), Part::Ffn(0), Part::Attention(1), Part::Ffn(1)],
            vec![Part::Head],
        ];
        let attn_ffn = [
            vec![Part::Embed, Part::Attention(0)],
            vec![Part::Ffn(0)],
            vec![Part::Attention(1)],
            vec![Part::Ffn(1), Part::Head],
        ];
        let split: Vec<Vec<_>> = [&layered[..], &components[..], &attn_ffn[..]]
            .iter()
            .map(|layout| layout.iter().map(|p| build_stage(&TINY, &weights, LIMITS, p, logits).unwrap()).collect())
            .collect();
        for stages in &split {
            // The same ops in the same order on the same executor: the same bits.
            assert_eq!(forward(stages, &tokens), (id, expect.clone()));
            // Every weight is somewhere, each stage holds only its own; the tied embedding is
            // held by both ends when they are apart.
            let mut names: Vec<&str> =
                stages.iter().flat_map(|(g, _)| g.weights.iter().map(|w| w.name.as_str())).collect();
            let embd = names.iter().filter(|n| **n == "token_embd.weight").count();
            names.sort();
            names.dedup();
            assert_eq!(names.len(), weights.len());
            assert_eq!(embd, 2, "embedding and head apart: both hold the tied table");
            let attention: u32 = stages.iter().map(|(g, _)| g.kv.unwrap().layers).sum();
            assert_eq!(attention, TINY.layers, "each layer's KV cache lives on the stage of its attention");
        }
        // The first stage takes ids, the others the hidden state; only the last samples.
        let (first, last) = (&split[0][0].0, &split[0][1].0);
        assert_eq!((first.inputs[0].name.as_str(), last.inputs[0].name.as_str()), ("ids", "hidden"));
        assert_eq!(first.outputs.len(), 1);
        assert!(matches!(op_of(last, last.outputs[0]), Op::Sample));
    }

    #[test]
    fn stage_parts_out_of_model_order_are_refused() {
        let w = tiny_weights(&TINY);
        for parts in [
            vec![],
            vec![Part::Attention(0), Part::Embed],
            vec![Part::Ffn(0), Part::Attention(0)],
            vec![Part::Head, Part::Ffn(1)],
            vec![Part::Attention(0), Part::Attention(0)],
            vec![Part::Attention(2)],
        ] {
            let e = build_stage(&TINY, &w, LIMITS, &parts, Outputs::default());
            assert!(e.is_err(), "{parts:?} was accepted");
        }
    }
}
