//! A GGUF file read into what the loader needs: its metadata and every tensor as a
//! [`Tensor`] holding the file's raw bytes (quantized blocks stay quantized: kernels dequantize).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, bail};
use gguf_rs_lib::format::metadata::MetadataValue;
use gguf_rs_lib::prelude::{GGUFFileReader, GGUFTensorType, Metadata};
use shared_proto::{DType, Tensor};

pub struct Gguf {
    pub metadata: Metadata,
    pub tensors: HashMap<String, Tensor>,
}

/// ggml tensor types the executors take; anything else (K-quants, F16, ...) is refused at load.
fn dtype(t: GGUFTensorType) -> Option<DType> {
    match t {
        GGUFTensorType::F32 => Some(DType::F32),
        GGUFTensorType::Q4_1 => Some(DType::Q4_1),
        GGUFTensorType::Q8_0 => Some(DType::Q8_0),
        _ => None,
    }
}

impl Gguf {
    /// The GGUF file at `path` (the host's model cache).
    pub fn read(path: &Path) -> anyhow::Result<Gguf> {
        let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        Self::parse(std::io::BufReader::new(file), &path.display().to_string())
    }

    /// A GGUF file's bytes (a page's download).
    pub fn from_bytes(bytes: &[u8]) -> anyhow::Result<Gguf> {
        Self::parse(std::io::Cursor::new(bytes), "the GGUF bytes")
    }

    fn parse<R: std::io::Read + std::io::Seek>(reader: R, what: &str) -> anyhow::Result<Gguf> {
        let mut r = GGUFFileReader::new(reader).map_err(|e| anyhow::anyhow!("parsing {what}: {e}"))?;
        let infos: Vec<(String, GGUFTensorType, Vec<u64>)> = r
            .tensor_infos()
            .iter()
            .map(|t| (t.name().to_string(), t.tensor_type(), t.shape().dims().to_vec()))
            .collect();
        let mut tensors = HashMap::with_capacity(infos.len());
        for (name, ty, dims) in infos {
            let Some(dtype) = dtype(ty) else {
                bail!("{what}: tensor {name} is {ty:?}; only F32, Q4_1 and Q8_0 are supported")
            };
            // ggml lists dims innermost first (ne[0] is contiguous); ours are outermost first, so
            // a ggml [K in, N out] matrix is our `Linear` weight [N, K].
            let shape: Vec<u32> = dims.iter().rev().map(|&d| u32::try_from(d)).collect::<Result<_, _>>()?;
            let data = r
                .load_tensor_data(&name)
                .map_err(|e| anyhow::anyhow!("reading tensor {name}: {e}"))?
                .with_context(|| format!("tensor {name} has no data"))?
                .into_owned();
            anyhow::ensure!(
                dtype.byte_len(&shape) == Some(data.len() as u64),
                "tensor {name}: {} bytes for {dtype:?} {shape:?}",
                data.len()
            );
            tensors.insert(name, Tensor { dtype, shape, data: data.into() });
        }
        Ok(Gguf { metadata: r.metadata().clone(), tensors })
    }

    pub fn string(&self, key: &str) -> anyhow::Result<&str> {
        self.metadata.get_string(key).with_context(|| format!("GGUF metadata {key} missing or not a string"))
    }

    pub fn uint(&self, key: &str) -> anyhow::Result<u64> {
        self.metadata.get_u64(key).with_context(|| format!("GGUF metadata {key} missing or not an integer"))
    }

    pub fn float(&self, key: &str) -> anyhow::Result<f64> {
        self.metadata.get_f64(key).with_context(|| format!("GGUF metadata {key} missing or not a number"))
    }

    fn array(&self, key: &str) -> anyhow::Result<&[MetadataValue]> {
        match self.metadata.get(key) {
            Some(MetadataValue::Array(a)) => Ok(&a.values),
            _ => bail!("GGUF metadata {key} missing or not an array"),
        }
    }

    pub fn strings(&self, key: &str) -> anyhow::Result<Vec<&str>> {
        self.array(key)?
            .iter()
            .map(|v| v.as_str().with_context(|| format!("GGUF metadata {key}: not a string")))
            .collect()
    }

    pub fn ints(&self, key: &str) -> anyhow::Result<Vec<i64>> {
        self.array(key)?
            .iter()
            .map(|v| v.as_i64().with_context(|| format!("GGUF metadata {key}: not an integer")))
            .collect()
    }
}
