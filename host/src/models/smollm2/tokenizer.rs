//! The tokenizer and chat template shipped inside the GGUF: byte-level BPE over the file's own
//! vocabulary and merges, with its control tokens (`<|im_start|>`, ...) as special tokens.

use anyhow::{Context, bail};
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, Tokenizer};

use super::gguf::Gguf;

/// llama.cpp's token type for control tokens (`LLAMA_TOKEN_TYPE_CONTROL`).
const CONTROL: i64 = 3;

pub fn from_gguf(g: &Gguf) -> anyhow::Result<Tokenizer> {
    let model = g.string("tokenizer.ggml.model")?;
    let pre = g.string("tokenizer.ggml.pre")?;
    // "smollm" is the pre-tokenizer of HF's SmolLM2 tokenizer.json: every digit on its own, then
    // GPT-2's byte-level split. Other models need other rules, so they are refused here rather
    // than tokenized subtly wrong.
    if model != "gpt2" || pre != "smollm" {
        bail!("tokenizer {model:?} with pre-tokenizer {pre:?}: only byte-level BPE with \"smollm\" is supported");
    }
    let tokens = g.strings("tokenizer.ggml.tokens")?;
    let types = g.ints("tokenizer.ggml.token_type")?;
    anyhow::ensure!(types.len() == tokens.len(), "{} token types for {} tokens", types.len(), tokens.len());
    let vocab: Vocab = tokens.iter().enumerate().map(|(i, t)| (t.to_string(), i as u32)).collect();
    anyhow::ensure!(vocab.len() == tokens.len(), "the GGUF vocabulary has duplicate tokens");
    let merges = g
        .strings("tokenizer.ggml.merges")?
        .iter()
        .map(|m| m.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())))
        .collect::<Option<Vec<_>>>()
        .context("a GGUF merge is not two tokens separated by a space")?;
    let bpe = BPE::builder().vocab_and_merges(vocab, merges).build().map_err(|e| anyhow::anyhow!("BPE: {e}"))?;
    let mut tok = Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(Sequence::new(vec![
        Digits::new(true).into(),
        ByteLevel::new(false, true, true).into(),
    ])));
    tok.with_decoder(Some(ByteLevel::default()));
    let specials: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|&(_, &ty)| ty == CONTROL)
        .map(|(t, _)| AddedToken::from(t.to_string(), true))
        .collect();
    tok.add_special_tokens(&specials);
    Ok(tok)
}

/// A chat message: `role` is "system", "user" or "assistant".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Message {
        Message { role: role.into(), content: content.into() }
    }
}

/// The GGUF's ChatML template, rendered natively: no Jinja engine for one fixed template; its
/// default system prompt is read from the template itself.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    /// `tokenizer.chat_template` as shipped.
    pub source: String,
    /// Used when the conversation does not start with a system message.
    pub default_system: Option<String>,
}

impl ChatTemplate {
    pub fn from_source(source: &str) -> anyhow::Result<ChatTemplate> {
        if !source.contains("'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>'") {
            bail!("the GGUF's chat template is not ChatML: {source:?}");
        }
        let marker = "'<|im_start|>system\n";
        let default_system = source
            .find(marker)
            .map(|i| &source[i + marker.len()..])
            .and_then(|rest| rest.split_once("<|im_end|>"))
            .map(|(system, _)| system.to_string());
        Ok(ChatTemplate { source: source.into(), default_system })
    }

    /// The prompt for `messages`, ending with the assistant's turn opened (the template's
    /// `add_generation_prompt`).
    pub fn render(&self, messages: &[Message]) -> String {
        let mut out = String::new();
        let turn = |out: &mut String, role: &str, content: &str| {
            out.push_str(&format!("<|im_start|>{role}\n{content}<|im_end|>\n"));
        };
        if let Some(system) = &self.default_system
            && messages.first().is_none_or(|m| m.role != "system")
        {
            turn(&mut out, "system", system);
        }
        for m in messages {
            turn(&mut out, &m.role, &m.content);
        }
        out.push_str("<|im_start|>assistant\n");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn chatml_adds_the_default_system_prompt_unless_one_is_given() {
        let t = ChatTemplate::from_source(SMOLLM2).unwrap();
        assert_eq!(
            t.default_system.as_deref(),
            Some("You are a helpful AI assistant named SmolLM, trained by Hugging Face")
        );
        assert_eq!(
            t.render(&[Message::new("user", "Hi")]),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
             <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(
            t.render(&[Message::new("system", "Be brief."), Message::new("user", "Hi")]),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        assert!(ChatTemplate::from_source("{{ bos_token }}[INST] {{ content }} [/INST]").is_err());
    }
}
