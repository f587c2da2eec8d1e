//! SmolLM2-135M-Instruct read from its GGUF against the independent reference
//! (`tests/data/smollm2_greedy.json`): hyper-parameters, weight dtypes and sizes, the chat prompt
//! and its token ids, decoding, and the step graph built from the real file.

use crate::support;

use shared_proto::{DType, Op};
use tabpool::models::smollm2::{KvLimits, Message, Outputs, SmolLm2};

fn model() -> SmolLm2 {
    SmolLm2::load(None).unwrap_or_else(|e| panic!("{e:#}"))
}

#[test]
fn chat_prompts_tokenize_and_greedy_ids_decode_as_the_reference() {
    let m = model();
    let cases = support::smollm2_reference();
    assert_eq!(cases.len(), 2);
    for c in &cases {
        let messages = [Message::new("user", &c.user)];
        assert_eq!(m.chat.render(&messages), c.prompt, "chat prompt of {:?}", c.user);
        assert_eq!(m.chat_ids(&messages).unwrap(), c.prompt_ids, "prompt ids of {:?}", c.user);
        assert_eq!(m.decode(&c.greedy_ids).unwrap(), c.text, "text of {:?}", c.user);
    }
    // Digits are split one by one (the "smollm" pre-tokenizer); the round trip is exact.
    let ids = m.encode("In 2024, 1234 cats").unwrap();
    let digits: Vec<String> =
        ids.iter().map(|&i| m.tokenizer.id_to_token(i).unwrap()).filter(|t| t.contains(char::is_numeric)).collect();
    assert_eq!(digits, ["2", "0", "2", "4", "1", "2", "3", "4"], "ids {ids:?}");
    assert_eq!(m.decode(&ids).unwrap(), "In 2024, 1234 cats");
    assert_eq!(m.tokenizer.token_to_id("<|im_start|>"), Some(1));
    assert_eq!(m.tokenizer.token_to_id("<|im_end|>"), Some(2));
    assert!(m.eos_ids.contains(&2), "{:?}", m.eos_ids);
}

#[test]
fn the_gguf_gives_the_135m_config_and_a_valid_step_graph() {
    let m = model();
    let c = m.config;
    assert_eq!((c.layers, c.hidden, c.heads, c.kv_heads, c.ffn, c.vocab), (30, 576, 9, 3, 1536, 49152));
    assert_eq!(c.head_dim(), 64);
    assert_eq!(c.rope_base, 1e5);
    assert!((c.rms_eps - 1e-5).abs() < 1e-9, "{}", c.rms_eps);
    assert_eq!(m.context_length, 8192);

    let limits = KvLimits { max_tokens: 2048, max_sessions: 8 };
    let (g, weights) = m.graph(limits, Outputs { logits: true }).unwrap();
    g.validate().unwrap();
    let kv = g.kv.unwrap();
    assert_eq!((kv.layers, kv.kv_heads, kv.head_dim, kv.max_tokens, kv.max_sessions), (30, 3, 64, 2048, 8));
    assert_eq!(weights.len(), 272, "every tensor of the file once (token_embd tied)");
    let count = |d: DType| g.weights.iter().filter(|w| w.dtype == d).count();
    assert_eq!((count(DType::Q4_1), count(DType::F32), count(DType::Q8_0)), (210, 61, 1));
    let embd = g.weights.iter().position(|w| w.name == "token_embd.weight").unwrap();
    assert_eq!(g.weights[embd].shape, [49152, 576]);
    assert_eq!(weights[embd].data.len(), 49152 * 576 / 32 * 34, "Q8_0 bytes as stored, not dequantized");
    let q = g.weights.iter().position(|w| w.name == "blk.0.attn_k.weight").unwrap();
    assert_eq!((g.weights[q].dtype, &g.weights[q].shape[..]), (DType::Q4_1, &[192, 576][..]));
    assert_eq!(weights[q].data.len(), 192 * 576 / 32 * 20);
    let down = g.weights.iter().position(|w| w.name == "blk.29.ffn_down.weight").unwrap();
    assert_eq!(g.weights[down].shape, [576, 1536], "ggml [1536 in, 576 out] is Linear [N=576, K=1536]");
    let bytes: usize = weights.iter().map(|w| w.data.len()).sum();
    eprintln!("{} weights, {:.1} MB, {} nodes", weights.len(), bytes as f64 / 1e6, g.nodes.len());
    assert_eq!(g.nodes.len(), 30 * 15 + 5);
    assert_eq!(g.nodes.iter().filter(|n| matches!(n.op, Op::CachedAttention { .. })).count(), 30);
    assert_eq!(page_runtime::sessions::vocab(&g), 49152);
}
