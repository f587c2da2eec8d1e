//! SmolLM2 (llama architecture, GGUF): hyper-parameters, weights as raw quantized blocks,
//! tokenizer, chat template and end-of-generation ids from the one file, and the step graph built
//! from them — for the host (from its model cache) and for a page (from the file's bytes).

pub mod gguf;
pub mod graph;
pub mod tokenizer;

use std::collections::HashMap;

use anyhow::{Context, bail};
use shared_proto::Tensor;
use tokenizers::Tokenizer;

pub use graph::{Config, KvLimits, Outputs};
pub use tokenizer::{ChatTemplate, Message, Piece};

/// Token ids of the chat prompt for `messages` (the assistant's turn opened): the template's
/// markers are its only control tokens; what each message says (and its role) is encoded as text
/// by `text_tokenizer` (`tokenizer::as_text_only`), so a message containing `<|im_start|>system …`
/// cannot open a turn of its own.
pub fn chat_ids(
    chat: &ChatTemplate,
    tokenizer: &Tokenizer,
    text_tokenizer: &Tokenizer,
    messages: &[Message],
) -> anyhow::Result<Vec<u32>> {
    let mut ids = Vec::new();
    for p in chat.pieces(messages) {
        match p {
            Piece::Control(t) => {
                ids.push(tokenizer.token_to_id(t).with_context(|| format!("the vocabulary has no {t} token"))?)
            }
            Piece::Text(t) => {
                let enc = text_tokenizer.encode(t.as_str(), false).map_err(|e| anyhow::anyhow!("tokenizing: {e}"))?;
                ids.extend(enc.get_ids());
            }
        }
    }
    Ok(ids)
}

/// The text of a growing token stream, piece by piece: `push` returns only what is new, holding
/// back a character still incomplete (byte-level BPE splits a UTF-8 sequence across tokens), and
/// `finish` returns what was held back.
///
/// Incremental: each token decodes only a short window (the tokens since the last piece that
/// ended cleanly, plus the ones before it as context), never the whole stream again — so a
/// reply of n tokens costs O(n), not O(n²) (text-generation-inference's `decode_token`).
#[derive(Debug, Default)]
pub struct TextStream {
    ids: Vec<u32>,
    /// Start of the window decoded as context (its text was already sent).
    prefix: usize,
    /// End of what was sent: ids[prefix..read] decode to text already sent.
    read: usize,
}

/// Tokens a window may hold back (a UTF-8 character never spans more than 4 byte tokens): past
/// this, whatever decodes is sent, so a run of undecodable ids cannot grow the window for ever.
const MAX_HELD: usize = 8;

impl TextStream {
    /// The new text after `id`, decoding with `decode` (the model's tokenizer; tests use a byte
    /// decoder).
    pub fn push_with(&mut self, id: u32, decode: impl Fn(&[u32]) -> anyhow::Result<String>) -> anyhow::Result<String> {
        self.ids.push(id);
        let sent = decode(&self.ids[self.prefix..self.read])?;
        let text = decode(&self.ids[self.prefix..])?;
        let held = self.ids.len() - self.read;
        let clean = !text.ends_with('\u{fffd}') || held >= MAX_HELD;
        if text.len() > sent.len() && text.is_char_boundary(sent.len()) && clean {
            let piece = text[sent.len()..].to_string();
            // The new window starts where this piece's tokens start: merges across the boundary
            // still decode with their left context.
            self.prefix = self.read;
            self.read = self.ids.len();
            return Ok(piece);
        }
        Ok(String::new())
    }

    /// Whatever is held back, as text (the generation ended).
    pub fn finish_with(&mut self, decode: impl Fn(&[u32]) -> anyhow::Result<String>) -> anyhow::Result<String> {
        let sent = decode(&self.ids[self.prefix..self.read])?;
        let text = decode(&self.ids[self.prefix..])?;
        self.prefix = self.read;
        self.read = self.ids.len();
        Ok(text.get(sent.len()..).unwrap_or_default().to_string())
    }

    /// Every id so far.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }
}

/// What a llama GGUF holds, read and checked.
pub struct Parsed {
    pub config: Config,
    /// Tokens the model was trained to attend over (`llama.context_length`).
    pub context_length: u32,
    pub tokenizer: Tokenizer,
    pub chat: ChatTemplate,
    /// Ids that end a generation (the GGUF's eos and the ChatML/end-of-text control tokens).
    pub eos_ids: Vec<u32>,
    /// Every tensor of the file by GGUF name, in our shape order (see [`gguf::Gguf`]).
    pub weights: HashMap<String, Tensor>,
}

impl Parsed {
    /// Read `g` (named `what` in errors): a llama model with its tokenizer and chat template;
    /// its graph is built once so a missing tensor or a wrong shape is refused here.
    pub fn from_gguf(g: gguf::Gguf, what: &str) -> anyhow::Result<Parsed> {
        let arch = g.string("general.architecture")?;
        if arch != "llama" {
            bail!("{what}: architecture {arch:?}, only llama is supported");
        }
        let u32_of = |key: &str| -> anyhow::Result<u32> {
            u32::try_from(g.uint(key)?).with_context(|| format!("GGUF metadata {key} is too large"))
        };
        let tokenizer = tokenizer::from_gguf(&g)?;
        let vocab = tokenizer.get_vocab_size(true) as u32;
        let config = Config {
            layers: u32_of("llama.block_count")?,
            hidden: u32_of("llama.embedding_length")?,
            heads: u32_of("llama.attention.head_count")?,
            kv_heads: u32_of("llama.attention.head_count_kv")?,
            ffn: u32_of("llama.feed_forward_length")?,
            vocab,
            rms_eps: g.float("llama.attention.layer_norm_rms_epsilon")? as f32,
            rope_base: g.float("llama.rope.freq_base")? as f32,
        };
        if let Ok(n) = g.uint("llama.vocab_size") {
            anyhow::ensure!(n == vocab as u64, "llama.vocab_size {n} but the tokenizer has {vocab} tokens");
        }
        if let Ok(d) = g.uint("llama.rope.dimension_count") {
            // Partial rotary embeddings would need a Rope over part of each head.
            anyhow::ensure!(
                config.heads > 0 && d == (config.hidden / config.heads) as u64,
                "rope over {d} of each head's dims is not supported"
            );
        }
        let chat = ChatTemplate::from_source(g.string("tokenizer.chat_template")?)?;
        let mut eos_ids = vec![u32_of("tokenizer.ggml.eos_token_id")?];
        for t in ["<|im_end|>", "<|endoftext|>"] {
            if let Some(id) = tokenizer.token_to_id(t)
                && !eos_ids.contains(&id)
            {
                eos_ids.push(id);
            }
        }
        let context_length = u32_of("llama.context_length")?;
        let p = Parsed { config, context_length, tokenizer, chat, eos_ids, weights: g.tensors };
        p.graph(KvLimits { max_tokens: 1, max_sessions: 1 }, Outputs::default())?;
        Ok(p)
    }

    /// The step graph with a KV cache of `limits`, and its weights in declared order.
    pub fn graph(&self, limits: KvLimits, outputs: Outputs) -> anyhow::Result<(shared_proto::Graph, Vec<Tensor>)> {
        graph::build(&self.config, &self.weights, limits, outputs)
    }
}
