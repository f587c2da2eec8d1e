//! What the pool needs from a model family that runs in stateless batches (text embeddings,
//! image classification, …). The pool, scheduler, routing, breakers, hedging, recovery, history
//! and the API's plumbing hold a family as `Arc<dyn BatchModel>` and never name a model: a new
//! family is its folder under `models/`, its ops, an entry in `models::registry` and its routes.
//!
//! A request is prepared on a blocking thread (decode, validate, tokenise) into rows, each one
//! tensor plus a cost ("length": padded tokens for text, 1 for a fixed-size image) that the batch
//! limits count; the scheduler gathers rows of many requests into one batch, the family turns
//! them into the graph's inputs, and every graph output `[rows, width]` is split back per row.

use shared_proto::{DType, Graph, Tensor};

use crate::policy::routing::ModelType;

/// A request's payload, by modality (never by model).
#[derive(Debug, Clone)]
pub enum Input {
    Texts(Vec<String>),
    /// Token ids of the model's own vocabulary, without special tokens.
    TokenIds(Vec<Vec<u32>>),
    /// Encoded images (PNG, JPEG, WebP, GIF), one per row.
    Images(Vec<bytes::Bytes>),
    /// The graph's first input already prepared, rows along axis 0 (the Open Inference
    /// Protocol's tensor form).
    Tensor(Tensor),
}

impl Input {
    pub fn len(&self) -> usize {
        match self {
            Input::Texts(t) => t.len(),
            Input::TokenIds(t) => t.len(),
            Input::Images(t) => t.len(),
            Input::Tensor(t) => t.shape.first().copied().unwrap_or(0) as usize,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Rows ready to queue.
#[derive(Debug, Clone, Default)]
pub struct Prepared {
    /// One tensor per row.
    pub rows: Vec<Tensor>,
    /// Each row's cost for the batch limits (tokens for text; 1 for an image).
    pub lens: Vec<usize>,
    /// Which rows were cut to fit (text over the model's length).
    pub truncated: Vec<bool>,
}

/// Why a request could not be prepared; the API answers 400 / 413 with the message.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error("{0}")]
    BadInput(String),
    #[error("{0}")]
    TooLarge(String),
}

/// One named tensor of a model's signature (Open Inference Protocol metadata). `-1` is a
/// dimension the request chooses (the batch).
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct TensorSpec {
    pub name: String,
    /// Open Inference Protocol datatype: FP32, INT32, INT64, BYTES, …
    pub datatype: String,
    pub shape: Vec<i64>,
}

impl TensorSpec {
    pub fn new(name: &str, datatype: &str, shape: &[i64]) -> TensorSpec {
        TensorSpec { name: name.into(), datatype: datatype.into(), shape: shape.to_vec() }
    }
}

/// Inputs and outputs as a client sees them.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Signature {
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}

/// A model served in stateless batches.
pub trait BatchModel: Send + Sync + 'static {
    /// The model's own name (requests may use another, given at load).
    fn name(&self) -> &str;
    fn model_type(&self) -> ModelType;
    fn graph(&self) -> &Graph;
    fn weights(&self) -> &[Tensor];
    /// The CPU executor takes the weights (it keeps them as f32; the loader's bytes go).
    fn take_weights(&mut self) -> Vec<Tensor>;
    /// Turn a request into rows: decode, validate, tokenise. Runs on a blocking thread.
    fn prepare(&self, input: Input) -> Result<Prepared, PrepareError>;
    /// The graph's inputs for rows of one batch (padding them to one shape if needed).
    fn inputs(&self, rows: &[&Tensor]) -> anyhow::Result<Vec<Tensor>>;
    /// One representative row, timed on each backend when a replica calibrates.
    fn calibration_row(&self) -> anyhow::Result<Tensor>;
    /// Width of each graph output per row, checked on every run.
    fn output_widths(&self) -> Vec<usize>;
    /// Inputs and outputs as the Open Inference Protocol describes them.
    fn signature(&self) -> Signature;
    /// Whether calibration also times a software WebGPU adapter (SwiftShader and the like); a
    /// model whose one run there takes minutes says no, and the tab's wasm CPU executor is timed
    /// instead (`policy::backend_choice::calibration_candidates`).
    fn time_software_gpu(&self) -> bool {
        true
    }
    /// Names of the output classes (a classifier), in index order.
    fn class_names(&self) -> Option<&[String]> {
        None
    }
}

pub use model_graphs::{KvLimits, Message};

/// A model served in sessions: a request is a stream whose state (a KV cache, an encoder's
/// output) stays in the tab between steps. The pool's generation path (`pool::generation`,
/// `pool::pipelines`) holds it as `Box<dyn SessionModel>` inside its `Generator`.
pub trait SessionModel: Send + Sync + 'static {
    fn name(&self) -> &str;
    fn model_type(&self) -> ModelType;
    /// Token ids run from 0 to this (exclusive): prompts with others are refused.
    fn vocab(&self) -> usize;
    /// Most tokens a session may hold (prompt and generated).
    fn context_length(&self) -> u32;
    /// Width of the hidden state a sharded replica's stages hand on.
    fn hidden(&self) -> usize;
    /// Ids that end a stream.
    fn stop_ids(&self) -> &[u32];
    /// A raw prompt's ids (control tokens written in it allowed: the writer owns all of it).
    fn encode(&self, text: &str) -> anyhow::Result<Vec<u32>>;
    /// A conversation's ids in the model's own template (control tokens in a message are text).
    fn chat_ids(&self, messages: &[Message]) -> anyhow::Result<Vec<u32>>;
    fn decode(&self, ids: &[u32]) -> anyhow::Result<String>;
    /// The model's parts (embed, attention l, FFN l, head) and their costs, for the sharding
    /// planner: the model knows its anatomy, the planner only splits what it is given.
    fn part_costs(&self) -> anyhow::Result<crate::policy::sharding::ModelCosts>;
    /// The step graph of one stage holding `parts`, with a KV cache of `limits`.
    fn stage_graph(
        &self,
        limits: KvLimits,
        parts: &[crate::policy::sharding::Part],
    ) -> anyhow::Result<(Graph, Vec<Tensor>)>;
    /// The whole step graph, giving up the loader's weights to it (no second copy is kept).
    fn take_graph(&mut self, limits: KvLimits) -> anyhow::Result<(Graph, Vec<Tensor>)>;
}

/// Split each graph output `[rows, width]` into rows: per row, one vector per output.
pub fn split_rows(outputs: &[Tensor], rows: usize, widths: &[usize]) -> anyhow::Result<Vec<Vec<Vec<f32>>>> {
    anyhow::ensure!(
        outputs.len() >= widths.len(),
        "model returned {} outputs, expected {}",
        outputs.len(),
        widths.len()
    );
    let mut per_row = vec![Vec::with_capacity(widths.len()); rows];
    for (t, &w) in outputs.iter().zip(widths) {
        anyhow::ensure!(t.dtype == DType::F32, "output is {:?}, expected f32", t.dtype);
        let flat = t.to_f32().ok_or_else(|| anyhow::anyhow!("output is not f32"))?;
        anyhow::ensure!(flat.len() == rows * w, "model returned {} values for {rows} rows of {w}", flat.len());
        for (row, chunk) in per_row.iter_mut().zip(flat.chunks_exact(w.max(1))) {
            row.push(chunk.to_vec());
        }
    }
    Ok(per_row)
}

/// Stack same-shaped row tensors into one `[rows, ..]` f32 tensor (fixed-size inputs: images).
pub fn stack_f32(rows: &[&Tensor]) -> anyhow::Result<Tensor> {
    let first = rows.first().ok_or_else(|| anyhow::anyhow!("an empty batch"))?;
    let mut data = Vec::with_capacity(first.data.len() * rows.len());
    for r in rows {
        anyhow::ensure!(r.shape == first.shape && r.dtype == DType::F32, "rows of one batch differ in shape or type");
        data.extend_from_slice(&r.data);
    }
    let mut shape = vec![rows.len() as u32];
    shape.extend(&first.shape);
    Ok(Tensor { dtype: DType::F32, shape, data: data.into() })
}

/// Rows of a `[N, ..]` tensor as `N` tensors of shape `[..]`.
pub fn unstack(t: &Tensor) -> Vec<Tensor> {
    let n = t.shape.first().copied().unwrap_or(0) as usize;
    if n == 0 {
        return vec![];
    }
    let per = t.data.len() / n;
    (0..n)
        .map(|i| Tensor { dtype: t.dtype, shape: t.shape[1..].to_vec(), data: t.data.slice(i * per..(i + 1) * per) })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_split_per_row_and_wrong_sizes_are_refused() {
        let a = Tensor::from_f32(vec![2, 3], &[1., 2., 3., 4., 5., 6.]);
        let b = Tensor::from_f32(vec![2, 1], &[7., 8.]);
        let rows = split_rows(&[a.clone(), b.clone()], 2, &[3, 1]).unwrap();
        assert_eq!(rows, vec![vec![vec![1., 2., 3.], vec![7.]], vec![vec![4., 5., 6.], vec![8.]]]);
        assert!(split_rows(std::slice::from_ref(&a), 3, &[3]).is_err());
        assert!(split_rows(&[a], 2, &[3, 1]).is_err());
    }

    #[test]
    fn stack_and_unstack_are_inverse() {
        let rows = [Tensor::from_f32(vec![2], &[1., 2.]), Tensor::from_f32(vec![2], &[3., 4.])];
        let stacked = stack_f32(&rows.iter().collect::<Vec<_>>()).unwrap();
        assert_eq!(stacked.shape, vec![2, 2]);
        assert_eq!(unstack(&stacked), rows.to_vec());
        assert!(stack_f32(&[&rows[0], &Tensor::from_f32(vec![1], &[0.])]).is_err());
    }
}
