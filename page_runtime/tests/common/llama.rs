//! A llama-like stateful graph (SmolLM2's structure) with random weights, built in test code:
//! Q4_1 projections, a Q8_0 token embedding tied to the LM head, f32 norms.

use shared_proto::quant::{quantize_row_q4_1, quantize_row_q8_0};
use shared_proto::{DType, Dim, Graph, InputDecl, KvDecl, Node, Op, STEP_INPUTS, Tensor, WeightDecl, content_hash};

#[derive(Clone, Copy, Debug)]
pub struct Config {
    pub layers: u32,
    pub hidden: u32,
    pub heads: u32,
    pub kv_heads: u32,
    pub ffn: u32,
    pub vocab: u32,
    pub max_tokens: u32,
    pub max_sessions: u32,
}

impl Config {
    pub fn kv(&self) -> KvDecl {
        KvDecl {
            layers: self.layers,
            kv_heads: self.kv_heads,
            head_dim: self.hidden / self.heads,
            max_tokens: self.max_tokens,
            max_sessions: self.max_sessions,
        }
    }
}

/// xorshift64 in [-1, 1).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

struct Builder {
    graph: Graph,
    weights: Vec<Tensor>,
    rng: Rng,
}

impl Builder {
    fn weight(&mut self, name: String, dtype: DType, shape: Vec<u32>, scale: f32, offset: f32) -> u32 {
        let (rows, cols) = (shape[0] as usize, *shape.last().unwrap() as usize);
        let rows = if shape.len() == 1 { 1 } else { rows };
        // Row by row, so a large model never holds an f32 copy of a quantized weight.
        let mut data = Vec::with_capacity(dtype.byte_len(&shape).unwrap() as usize);
        let mut row = vec![0f32; cols];
        for _ in 0..rows {
            for v in row.iter_mut() {
                *v = offset + scale * self.rng.next();
            }
            match dtype {
                DType::Q4_1 => data.extend(quantize_row_q4_1(&row)),
                DType::Q8_0 => data.extend(quantize_row_q8_0(&row)),
                _ => data.extend(row.iter().flat_map(|x| x.to_le_bytes())),
            }
        }
        self.graph.weights.push(WeightDecl { name, dtype, shape: shape.clone(), hash: content_hash(&data) });
        self.weights.push(Tensor { dtype, shape, data: data.into() });
        (self.graph.inputs.len() + self.graph.weights.len() - 1) as u32
    }

    fn node(&mut self, op: Op, args: &[u32]) -> u32 {
        self.graph.nodes.push(Node { op, args: args.to_vec() });
        self.graph.node_value(self.graph.nodes.len() - 1)
    }
}

/// The graph and its weights; outputs `[tokens]`, plus `logits` when `with_logits`.
pub fn build(c: &Config, seed: u64, with_logits: bool) -> (Graph, Vec<Tensor>) {
    let inputs = STEP_INPUTS
        .iter()
        .map(|&(name, dtype)| InputDecl {
            name: name.into(),
            dtype,
            // Tokens along the sequence, sampling rows along the batch.
            dims: match name {
                "sampling" => vec![Dim::Batch, Dim::Fixed(4)],
                "rows" => vec![Dim::Batch],
                _ => vec![Dim::Seq],
            },
        })
        .collect();
    let graph = Graph { inputs, weights: vec![], nodes: vec![], outputs: vec![], kv: Some(c.kv()) };
    let mut b = Builder { graph, weights: vec![], rng: Rng(seed | 1) };
    let (ids, pos, kv_start, rows, sampling) = (0, 1, 2, 3, 4);
    let (h, f, kvw) = (c.hidden, c.ffn, c.kv_heads * (c.hidden / c.heads));
    let (sh, sf) = (1.0 / (h as f32).sqrt(), 1.0 / (f as f32).sqrt());
    let embd = b.weight("token_embd".into(), DType::Q8_0, vec![c.vocab, h], 1.0, 0.0);
    let mut weights = vec![];
    for l in 0..c.layers {
        let w = [
            b.weight(format!("blk.{l}.attn_norm"), DType::F32, vec![h], 0.2, 1.0),
            b.weight(format!("blk.{l}.attn_q"), DType::Q4_1, vec![h, h], sh, 0.0),
            b.weight(format!("blk.{l}.attn_k"), DType::Q4_1, vec![kvw, h], sh, 0.0),
            b.weight(format!("blk.{l}.attn_v"), DType::Q4_1, vec![kvw, h], sh, 0.0),
            b.weight(format!("blk.{l}.attn_output"), DType::Q4_1, vec![h, h], sh, 0.0),
            b.weight(format!("blk.{l}.ffn_norm"), DType::F32, vec![h], 0.2, 1.0),
            b.weight(format!("blk.{l}.ffn_gate"), DType::Q4_1, vec![f, h], sh, 0.0),
            b.weight(format!("blk.{l}.ffn_up"), DType::Q4_1, vec![f, h], sh, 0.0),
            b.weight(format!("blk.{l}.ffn_down"), DType::Q4_1, vec![h, f], sf, 0.0),
        ];
        weights.push(w);
    }
    let out_norm = b.weight("output_norm".into(), DType::F32, vec![h], 0.2, 1.0);
    let (eps, base) = (1e-5, 10000.0);
    let mut x = b.node(Op::Gather, &[embd, ids]);
    for (l, [an, wq, wk, wv, wo, fnorm, wg, wu, wd]) in weights.into_iter().enumerate() {
        let n = b.node(Op::RmsNorm { eps }, &[x, an]);
        let q = b.node(Op::Linear { bias: false }, &[n, wq]);
        let k = b.node(Op::Linear { bias: false }, &[n, wk]);
        let v = b.node(Op::Linear { bias: false }, &[n, wv]);
        let q = b.node(Op::Rope { heads: c.heads, base }, &[q, pos]);
        let k = b.node(Op::Rope { heads: c.kv_heads, base }, &[k, pos]);
        let a = b.node(
            Op::CachedAttention { layer: l as u32, heads: c.heads, kv_heads: c.kv_heads },
            &[q, k, v, pos, kv_start],
        );
        let o = b.node(Op::Linear { bias: false }, &[a, wo]);
        x = b.node(Op::Add, &[x, o]);
        let n = b.node(Op::RmsNorm { eps }, &[x, fnorm]);
        let g = b.node(Op::Linear { bias: false }, &[n, wg]);
        let u = b.node(Op::Linear { bias: false }, &[n, wu]);
        let s = b.node(Op::SiluMul, &[g, u]);
        let d = b.node(Op::Linear { bias: false }, &[s, wd]);
        x = b.node(Op::Add, &[x, d]);
    }
    // Only the rows that sample go through the final norm and the LM head.
    let last = b.node(Op::Gather, &[x, rows]);
    let last = b.node(Op::RmsNorm { eps }, &[last, out_norm]);
    let logits = b.node(Op::Linear { bias: false }, &[last, embd]);
    let tokens = b.node(Op::Sample, &[logits, sampling]);
    b.graph.outputs = if with_logits { vec![tokens, logits] } else { vec![tokens] };
    b.graph.validate().expect("a valid graph");
    (b.graph, b.weights)
}
