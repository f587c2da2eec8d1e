//! Small BERT encoders with seeded random weights, written in the same on-disk layout as a real
//! sentence-transformers folder (config.json, model.safetensors, tokenizer.json) and read back by
//! the same loader. Tests use them where a second, different model must be in the pool; they are
//! real models computed by real kernels, just untrained.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rand::{Rng, SeedableRng};

/// Shape of a generated encoder.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    pub intermediate: usize,
    /// Rows of the position table (BERT's 512; tests shorten it to see it refused).
    pub positions: usize,
    /// Rows of the word table (the tokenizer's 30 522).
    pub vocab: usize,
}

impl Shape {
    /// 2 layers, 128 wide, 4 heads: loads in well under a second.
    pub const TINY: Shape = Shape { layers: 2, hidden: 128, heads: 4, intermediate: 512, positions: 512, vocab: 30522 };
}

/// Write an encoder of `shape` with weights from `seed` into `dir` (created), reusing the
/// tokenizer of the model folder `tokenizer_from`. Returns `dir`.
pub fn write_bert(dir: &Path, shape: Shape, seed: u64, tokenizer_from: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tok = tokenizer_from.join("tokenizer.json");
    std::fs::copy(&tok, dir.join("tokenizer.json")).with_context(|| format!("copying {}", tok.display()))?;
    let vocab = shape.vocab;
    let config = serde_json::json!({
        "architectures": ["BertModel"], "model_type": "bert", "hidden_size": shape.hidden,
        "num_hidden_layers": shape.layers, "num_attention_heads": shape.heads,
        "intermediate_size": shape.intermediate, "layer_norm_eps": 1e-12, "vocab_size": vocab,
        "max_position_embeddings": shape.positions, "type_vocab_size": 2,
        "_generated": format!("seeded random weights, seed {seed}")
    });
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&config)?)?;

    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (h, i) = (shape.hidden, shape.intermediate);
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    // Scaled like a trained model's (std ~0.05) so activations stay in a realistic range.
    let mut random = |name: String, dims: Vec<usize>, scale: f32| {
        let n = dims.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.random_range(-scale..scale)).collect();
        tensors.push((name, dims, v));
    };
    random("embeddings.word_embeddings.weight".into(), vec![vocab, h], 0.1);
    random("embeddings.position_embeddings.weight".into(), vec![shape.positions, h], 0.1);
    random("embeddings.token_type_embeddings.weight".into(), vec![2, h], 0.1);
    let fixed = |name: String, n: usize, value: f32| (name, vec![n], vec![value; n]);
    let mut rest =
        vec![fixed("embeddings.LayerNorm.weight".into(), h, 1.0), fixed("embeddings.LayerNorm.bias".into(), h, 0.0)];
    for l in 0..shape.layers {
        let p = format!("encoder.layer.{l}");
        for (name, out, inp) in [
            ("attention.self.query", h, h),
            ("attention.self.key", h, h),
            ("attention.self.value", h, h),
            ("attention.output.dense", h, h),
            ("intermediate.dense", i, h),
            ("output.dense", h, i),
        ] {
            random(format!("{p}.{name}.weight"), vec![out, inp], (1.0 / inp as f32).sqrt());
            random(format!("{p}.{name}.bias"), vec![out], 0.02);
        }
        for ln in ["attention.output.LayerNorm", "output.LayerNorm"] {
            rest.push(fixed(format!("{p}.{ln}.weight"), h, 1.0));
            rest.push(fixed(format!("{p}.{ln}.bias"), h, 0.0));
        }
    }
    tensors.extend(rest);
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> =
        tensors.into_iter().map(|(n, d, v)| (n, d, v.iter().flat_map(|x| x.to_le_bytes()).collect())).collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
        .iter()
        .map(|(n, d, b)| Ok((n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, d.clone(), b)?)))
        .collect::<Result<_, safetensors::SafeTensorError>>()?;
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors"))?;
    Ok(dir.to_path_buf())
}
