//! A tiny llama-shaped stateful graph (SmolLM2's layout at toy size) with seeded weights: block
//! dtypes for the projections (Q4_1) and the tied embedding / LM head (Q8_0), f32 norms.
#![allow(dead_code)]

use shared_proto::{DType, Dim, Graph, InputDecl, KvDecl, Node, Op, STEP_INPUTS, Tensor, WeightDecl};

use super::op_cases::{f32s, quantized};

pub const HIDDEN: u32 = 64;
pub const HEADS: u32 = 4;
pub const KV_HEADS: u32 = 2;
pub const FFN: u32 = 128;
pub const VOCAB: u32 = 96;

/// The graph of `n_layers` blocks (outputs: logits `[R, VOCAB]`, then their argmax `[R]`) and its weights.
pub fn tiny_llama(n_layers: u32, max_tokens: u32, max_sessions: u32) -> (Graph, Vec<Tensor>) {
    let d = HIDDEN / HEADS;
    let mut weights: Vec<(String, Tensor)> = Vec::new();
    let mut seed = 100;
    let mut add = |name: String, t: Tensor| {
        weights.push((name, t));
        weights.len() as u32 - 1
    };
    let mut next_seed = || {
        seed += 1;
        seed
    };
    let emb = add("emb".into(), quantized(DType::Q8_0, &[VOCAB, HIDDEN], next_seed(), 1.0));
    struct Layer {
        attn_norm: u32,
        wq: u32,
        wk: u32,
        wv: u32,
        wo: u32,
        ffn_norm: u32,
        gate: u32,
        up: u32,
        down: u32,
    }
    let norm = |s| {
        let mut t = f32s(&[HIDDEN], s, 0.2).to_f32().unwrap();
        t.iter_mut().for_each(|g| *g += 1.0);
        Tensor::from_f32(vec![HIDDEN], &t)
    };
    let layers: Vec<Layer> = (0..n_layers)
        .map(|l| Layer {
            attn_norm: add(format!("l{l}.attn_norm"), norm(next_seed())),
            wq: add(format!("l{l}.wq"), quantized(DType::Q4_1, &[HIDDEN, HIDDEN], next_seed(), 0.25)),
            wk: add(format!("l{l}.wk"), quantized(DType::Q4_1, &[KV_HEADS * d, HIDDEN], next_seed(), 0.25)),
            wv: add(format!("l{l}.wv"), quantized(DType::Q4_1, &[KV_HEADS * d, HIDDEN], next_seed(), 0.25)),
            wo: add(format!("l{l}.wo"), quantized(DType::Q4_1, &[HIDDEN, HIDDEN], next_seed(), 0.25)),
            ffn_norm: add(format!("l{l}.ffn_norm"), norm(next_seed())),
            gate: add(format!("l{l}.gate"), quantized(DType::Q4_1, &[FFN, HIDDEN], next_seed(), 0.25)),
            up: add(format!("l{l}.up"), quantized(DType::Q4_1, &[FFN, HIDDEN], next_seed(), 0.25)),
            down: add(format!("l{l}.down"), quantized(DType::Q4_1, &[HIDDEN, FFN], next_seed(), 0.2)),
        })
        .collect();
    let final_norm = add("norm".into(), norm(next_seed()));

    let n_in = STEP_INPUTS.len() as u32;
    let n_w = weights.len() as u32;
    let w = |i: u32| n_in + i;
    let mut nodes: Vec<Node> = Vec::new();
    let mut push = |op: Op, args: Vec<u32>| {
        nodes.push(Node { op, args });
        n_in + n_w + nodes.len() as u32 - 1
    };
    let (ids, pos, kv_start, rows) = (0, 1, 2, 3);
    let lin = Op::Linear { bias: false };
    let mut x = push(Op::Gather, vec![w(emb), ids]);
    for (l, ly) in layers.iter().enumerate() {
        let h = push(Op::RmsNorm { eps: 1e-5 }, vec![x, w(ly.attn_norm)]);
        let q = push(lin.clone(), vec![h, w(ly.wq)]);
        let k = push(lin.clone(), vec![h, w(ly.wk)]);
        let v = push(lin.clone(), vec![h, w(ly.wv)]);
        let q = push(Op::Rope { heads: HEADS, base: 10000.0 }, vec![q, pos]);
        let k = push(Op::Rope { heads: KV_HEADS, base: 10000.0 }, vec![k, pos]);
        let a = push(
            Op::CachedAttention { layer: l as u32, heads: HEADS, kv_heads: KV_HEADS },
            vec![q, k, v, pos, kv_start],
        );
        let o = push(lin.clone(), vec![a, w(ly.wo)]);
        x = push(Op::Add, vec![x, o]);
        let h = push(Op::RmsNorm { eps: 1e-5 }, vec![x, w(ly.ffn_norm)]);
        let g = push(lin.clone(), vec![h, w(ly.gate)]);
        let u = push(lin.clone(), vec![h, w(ly.up)]);
        let s = push(Op::SiluMul, vec![g, u]);
        let dn = push(lin.clone(), vec![s, w(ly.down)]);
        x = push(Op::Add, vec![x, dn]);
    }
    let x = push(Op::RmsNorm { eps: 1e-5 }, vec![x, w(final_norm)]);
    let last = push(Op::Gather, vec![x, rows]);
    let logits = push(lin, vec![last, w(emb)]); // tied embeddings, as SmolLM2
    let tok = push(Op::Argmax, vec![logits]);

    let dims = |name: &str| match name {
        "sampling" => vec![Dim::Batch, Dim::Fixed(4)],
        "rows" => vec![Dim::Batch],
        _ => vec![Dim::Seq],
    };
    let graph = Graph {
        inputs: STEP_INPUTS
            .iter()
            .map(|(n, dt)| InputDecl { name: n.to_string(), dtype: *dt, dims: dims(n) })
            .collect(),
        weights: weights
            .iter()
            .map(|(n, t)| WeightDecl {
                name: n.clone(),
                dtype: t.dtype,
                shape: t.shape.clone(),
                hash: shared_proto::content_hash(&t.data),
            })
            .collect(),
        nodes,
        outputs: vec![logits, tok],
        kv: Some(KvDecl { layers: n_layers, kv_heads: KV_HEADS, head_dim: d, max_tokens, max_sessions }),
    };
    (graph, weights.into_iter().map(|(_, t)| t).collect())
}
