//! BERT sentence encoders in the sentence-transformers layout (config.json, model.safetensors,
//! tokenizer.json; mean pooling, L2 normalisation), e.g. all-MiniLM-L6-v2 (6 layers, 384 wide,
//! 12 heads): the graph, the tokenizer as the model takes texts, and a batch's inputs.

use anyhow::{Context, bail};
use safetensors::SafeTensors;
use shared_proto::{DType, Dim, Graph, Op, Tensor};
use tokenizers::{Tokenizer, TruncationParams};

use crate::builder::{GraphBuilder, V};

/// Tokens per text after truncation ([CLS] and [SEP] included).
pub const MAX_TOKENS: usize = 256;
/// all-MiniLM-L6-v2's width (other encoders report theirs in their config).
pub const HIDDEN: usize = 384;

/// The fields of config.json the graph needs (defaults: all-MiniLM-L6-v2).
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
pub struct BertConfig {
    #[serde(default = "d_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "d_heads")]
    pub num_attention_heads: u32,
    #[serde(default = "d_hidden")]
    pub hidden_size: usize,
    #[serde(default = "d_eps")]
    pub layer_norm_eps: f32,
}
fn d_layers() -> usize {
    6
}
fn d_heads() -> u32 {
    12
}
fn d_hidden() -> usize {
    HIDDEN
}
fn d_eps() -> f32 {
    1e-12
}

/// A sentence encoder built from its files' bytes: the graph, its weights and the tokenizer set
/// up as the model takes texts.
pub struct Encoder {
    pub config: BertConfig,
    pub graph: Graph,
    pub weights: Vec<Tensor>,
    pub tokenizer: Tokenizer,
}

impl Encoder {
    /// `model.safetensors`, `config.json` (absent: all-MiniLM-L6-v2's values) and
    /// `tokenizer.json`, as bytes. A model whose tables do not fit its tokenizer is refused.
    pub fn from_bytes(safetensors: &[u8], config_json: Option<&str>, tokenizer_json: &[u8]) -> anyhow::Result<Encoder> {
        let st = SafeTensors::deserialize(safetensors).context("parsing model.safetensors")?;
        let config: BertConfig = serde_json::from_str(config_json.unwrap_or("{}")).context("parsing config.json")?;
        anyhow::ensure!(
            config.num_attention_heads > 0 && config.hidden_size.is_multiple_of(config.num_attention_heads as usize),
            "config.json: hidden_size {} is not a multiple of num_attention_heads {}",
            config.hidden_size,
            config.num_attention_heads
        );
        let (graph, weights) = build(&st, &config)?;
        let mut tokenizer =
            Tokenizer::from_bytes(tokenizer_json).map_err(|e| anyhow::anyhow!("loading tokenizer.json: {e}"))?;
        // The shipped tokenizer pads every text to 128; batches are padded per batch instead,
        // and the attention mask says which positions are real.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams { max_length: MAX_TOKENS, ..Default::default() }))
            .map_err(|e| anyhow::anyhow!("setting truncation: {e}"))?;
        check_tables(&st, &tokenizer)?;
        Ok(Encoder { config, graph, weights, tokenizer })
    }
}

/// Token ids of each text (and whether it was cut at [`MAX_TOKENS`]); empty (or
/// whitespace-only) text is refused.
pub fn tokenize(tokenizer: &Tokenizer, texts: &[&str]) -> anyhow::Result<(Vec<Vec<u32>>, Vec<bool>)> {
    let mut ids = Vec::with_capacity(texts.len());
    let mut truncated = Vec::with_capacity(texts.len());
    for (i, t) in texts.iter().enumerate() {
        if t.trim().is_empty() {
            bail!("text {} is empty: nothing to embed", i + 1);
        }
        let enc = tokenizer.encode(*t, true).map_err(|e| anyhow::anyhow!("tokenizing text {}: {e}", i + 1))?;
        truncated.push(!enc.get_overflowing().is_empty());
        ids.push(enc.get_ids().to_vec());
    }
    Ok((ids, truncated))
}

/// Token id lists of the tokenizer's vocabulary as the model takes them: [CLS] … [SEP],
/// truncated to [`MAX_TOKENS`] (and whether each was).
pub fn wrap_ids(tokenizer: &Tokenizer, lists: &[Vec<u32>]) -> anyhow::Result<(Vec<Vec<u32>>, Vec<bool>)> {
    let special = |t: &str| tokenizer.token_to_id(t).ok_or_else(|| anyhow::anyhow!("the tokenizer has no {t}"));
    let (cls, sep) = (special("[CLS]")?, special("[SEP]")?);
    let vocab = tokenizer.get_vocab_size(true) as u32;
    let mut out = Vec::with_capacity(lists.len());
    let mut truncated = Vec::with_capacity(lists.len());
    for (i, ids) in lists.iter().enumerate() {
        if ids.is_empty() {
            bail!("token list {} is empty: nothing to embed", i + 1);
        }
        if let Some(bad) = ids.iter().find(|&&t| t >= vocab) {
            bail!("token id {bad} in list {} is outside the vocabulary of {vocab}", i + 1);
        }
        let keep = ids.len().min(MAX_TOKENS - 2);
        truncated.push(keep < ids.len());
        let mut v = Vec::with_capacity(keep + 2);
        v.push(cls);
        v.extend_from_slice(&ids[..keep]);
        v.push(sep);
        out.push(v);
    }
    Ok((out, truncated))
}

fn tensor_f32(st: &SafeTensors, name: &str) -> anyhow::Result<Tensor> {
    let view = st.tensor(name).with_context(|| format!("weight {name} missing from model.safetensors"))?;
    if view.dtype() != safetensors::Dtype::F32 {
        bail!("weight {name} is {:?}, expected F32", view.dtype());
    }
    let shape = view.shape().iter().map(|&d| d as u32).collect();
    Ok(Tensor { dtype: DType::F32, shape, data: bytes::Bytes::copy_from_slice(view.data()) })
}

/// Graph inputs for token id lists: ids, token types (all 0), positions, mask; padded to the
/// longest list with id 0 and mask 0.
pub fn inputs_from_ids(ids: &[Vec<u32>]) -> Vec<Tensor> {
    let b = ids.len();
    let s = ids.iter().map(Vec::len).max().unwrap_or(0);
    let mut input_ids = Vec::with_capacity(b * s);
    let mut positions = Vec::with_capacity(b * s);
    let mut mask = Vec::with_capacity(b * s);
    for row in ids {
        for j in 0..s {
            input_ids.push(row.get(j).copied().unwrap_or(0) as i32);
            positions.push(j as i32);
            mask.push(if j < row.len() { 1.0f32 } else { 0.0 });
        }
    }
    let i32s = |v: Vec<i32>| Tensor {
        dtype: DType::I32,
        shape: vec![b as u32, s as u32],
        data: v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>().into(),
    };
    vec![i32s(input_ids), i32s(vec![0; b * s]), i32s(positions), Tensor::from_f32(vec![b as u32, s as u32], &mask)]
}

/// Every id the tokenizer can produce, every position up to [`MAX_TOKENS`] and both token types
/// must have a row: a short table would make kernels read past it (WebGPU clamps silently), so
/// such a model is refused at load, naming the table.
fn check_tables(st: &SafeTensors, tokenizer: &Tokenizer) -> anyhow::Result<()> {
    let rows = |name: &str| -> anyhow::Result<usize> {
        let t = st.tensor(name).with_context(|| format!("weight {name} missing from model.safetensors"))?;
        Ok(t.shape().first().copied().unwrap_or(0))
    };
    let positions = rows("embeddings.position_embeddings.weight")?;
    anyhow::ensure!(
        positions >= MAX_TOKENS,
        "embeddings.position_embeddings has {positions} rows, fewer than the {MAX_TOKENS} tokens texts are truncated to: \
         this model cannot embed long texts"
    );
    let vocab = rows("embeddings.word_embeddings.weight")?;
    let ids = tokenizer.get_vocab_size(true);
    anyhow::ensure!(
        vocab >= ids,
        "embeddings.word_embeddings has {vocab} rows but tokenizer.json can produce {ids} token ids: they do not belong together"
    );
    let types = rows("embeddings.token_type_embeddings.weight")?;
    anyhow::ensure!(types >= 1, "embeddings.token_type_embeddings has no rows");
    Ok(())
}

/// The BERT encoder as an operator graph, ending in masked mean pooling and L2 normalisation.
pub fn build(st: &SafeTensors, cfg: &BertConfig) -> anyhow::Result<(Graph, Vec<Tensor>)> {
    let ln_eps = cfg.layer_norm_eps;
    let mut g = GraphBuilder::default();
    let bs = vec![Dim::Batch, Dim::Seq];
    let ids = g.input("input_ids", DType::I32, bs.clone());
    let types = g.input("token_type_ids", DType::I32, bs.clone());
    let pos = g.input("position_ids", DType::I32, bs.clone());
    let mask = g.input("attention_mask", DType::F32, bs);
    let w = |g: &mut GraphBuilder, name: &str| -> anyhow::Result<V> { Ok(g.weight(name, tensor_f32(st, name)?)) };

    let word = w(&mut g, "embeddings.word_embeddings.weight")?;
    let posw = w(&mut g, "embeddings.position_embeddings.weight")?;
    let typew = w(&mut g, "embeddings.token_type_embeddings.weight")?;
    let e_word = g.op(Op::Gather, &[word, ids]);
    let e_pos = g.op(Op::Gather, &[posw, pos]);
    let e_type = g.op(Op::Gather, &[typew, types]);
    let sum = g.op(Op::Add, &[e_word, e_pos]);
    let sum = g.op(Op::Add, &[sum, e_type]);
    let (gamma, beta) = (w(&mut g, "embeddings.LayerNorm.weight")?, w(&mut g, "embeddings.LayerNorm.bias")?);
    let mut x = g.op(Op::LayerNorm { eps: ln_eps }, &[sum, gamma, beta]);

    for l in 0..cfg.num_hidden_layers {
        let p = format!("encoder.layer.{l}");
        let pair = |g: &mut GraphBuilder, name: &str| -> anyhow::Result<(V, V)> {
            Ok((w(g, &format!("{p}.{name}.weight"))?, w(g, &format!("{p}.{name}.bias"))?))
        };
        let proj = |g: &mut GraphBuilder, name: &str| -> anyhow::Result<(V, Option<V>)> {
            let (wt, b) = pair(g, name)?;
            Ok((wt, Some(b)))
        };
        let qkv = [
            proj(&mut g, "attention.self.query")?,
            proj(&mut g, "attention.self.key")?,
            proj(&mut g, "attention.self.value")?,
        ];
        let [q, k, v] = g.qkv(x, qkv);
        let ctx = g.op(Op::Attention { heads: cfg.num_attention_heads }, &[q, k, v, mask]);
        let (wo, bo) = pair(&mut g, "attention.output.dense")?;
        let o = g.linear(ctx, wo, Some(bo));
        let (gm, bt) = pair(&mut g, "attention.output.LayerNorm")?;
        x = g.add_layer_norm(o, x, gm, bt, ln_eps);
        let (up, down) = (pair(&mut g, "intermediate.dense")?, pair(&mut g, "output.dense")?);
        let f = g.gelu_mlp(x, up, down);
        let (gm, bt) = pair(&mut g, "output.LayerNorm")?;
        x = g.add_layer_norm(f, x, gm, bt, ln_eps);
    }
    let pooled = g.op(Op::MeanPool, &[x, mask]);
    let out = g.op(Op::L2Normalize { eps: 1e-12 }, &[pooled]);
    let (graph, weights) = g.finish(&[out]);
    graph.validate()?;
    Ok((graph, weights))
}
