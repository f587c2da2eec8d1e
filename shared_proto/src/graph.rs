//! The operator graph: what a model is, as the host describes it to a tab.
//!
//! Values are numbered in one space: first the graph inputs, then the weights, then one value per
//! node, in order. A node may only use values numbered before it, so the node list is already a
//! topological order. Batch and sequence dims are symbolic; executors infer concrete shapes from
//! the inputs of each run.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::limits::Limits;
use crate::tensor::{DType, element_count};

/// A dimension of a graph input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Dim {
    Batch,
    Seq,
    Fixed(u32),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputDecl {
    pub name: String,
    pub dtype: DType,
    pub dims: Vec<Dim>,
}

/// A weight by name, shape and content hash (blake3 of its little-endian bytes, hex): the bytes
/// travel separately and are checked against the hash on arrival.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeightDecl {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<u32>,
    pub hash: String,
}

/// Operators, grouped in families. All float maths is f32.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Op {
    // --- matmul family ---
    /// `a[.., M, K] · b[K, N]`.
    MatMul,
    /// `x[.., K] · w[N, K]ᵀ (+ bias[N])`: weights stored as PyTorch does. `w` may be F32 or a
    /// block dtype (Q4_1, Q8_0), dequantized inside the kernel.
    Linear {
        bias: bool,
    },
    // --- binary family: `b`'s shape must be a suffix of `a`'s (broadcast over leading dims) ---
    Add,
    Mul,
    /// `silu(gate) · up` (SwiGLU's gating), same shapes: `gate, up`.
    SiluMul,
    // --- unary family ---
    /// Exact GELU: `x · Φ(x)` with the error function.
    Gelu,
    // --- reduce family (over the last axis unless said otherwise) ---
    /// `x`, `gamma[H]`, `beta[H]`.
    LayerNorm {
        eps: f32,
    },
    Softmax,
    /// `x / sqrt(mean(x²) + eps) · gamma`: `x[.., H]`, `gamma[H]`.
    RmsNorm {
        eps: f32,
    },
    /// `x[B, S, H]`, `mask[B, S]` (1 keep / 0 pad) → `[B, H]`: mean over kept positions.
    MeanPool,
    /// `x / max(‖x‖₂, eps)` per row.
    L2Normalize {
        eps: f32,
    },
    // --- reindex family ---
    /// `table[V, H]`, `ids[..]` (i32) → `[.., H]`. The table may be a block dtype (rows
    /// dequantized as they are gathered).
    Gather,
    /// New shape; one entry may be -1 (inferred).
    Reshape {
        shape: Vec<i32>,
    },
    /// Permutation of the axes.
    Transpose {
        perm: Vec<u8>,
    },
    /// Rotary position embedding on interleaved pairs (GGUF's layout, ggml "normal" mode):
    /// `x[T, heads·d]`, `pos[T]` (i32) → same shape; pair `(2i, 2i+1)` of each head rotated by
    /// `pos · base^(-2i/d)`.
    Rope {
        heads: u32,
        base: f32,
    },
    // --- sampling: logits in, token ids out (so only ids cross the socket) ---
    /// `logits[R, V]` → `[R]` i32: index of the largest (the first among equals).
    Argmax,
    /// `logits[R, V]`, `params[R, 4]` = (temperature, top_k, top_p, u) → `[R]` i32. Temperature
    /// ≤ 0 is argmax; otherwise softmax(logits / temperature) restricted to the `top_k` most
    /// likely (0: all), then to the smallest prefix whose mass reaches `top_p`, renormalised, and
    /// the token where the cumulative mass first exceeds `u · mass` (`u` in [0, 1): drawn by the
    /// caller from its seed, so a replay draws the same token).
    Sample,
    // --- stateful: reads and writes the model's KV cache (`Graph::kv`) ---
    /// Causal grouped-query attention over the KV cache of layer `layer`:
    /// `q[T, heads·d]`, `k, v[T, kv_heads·d]`, `pos[T]`, `kv_start[T]` (i32) → `[T, heads·d]`.
    /// First every row `t` writes its `k, v` at cache row `kv_start[t] + pos[t]`; then row `t`
    /// attends (scale `1/√d`) over cache rows `kv_start[t] ..= kv_start[t] + pos[t]`, query head
    /// `h` reading kv head `h / (heads / kv_heads)`. Rows of different sessions (different
    /// `kv_start`) run in one dispatch: that is continuous batching.
    CachedAttention {
        layer: u32,
        heads: u32,
        kv_heads: u32,
    },
    /// Attention of every row over a fixed memory written into the KV cache by `PutMemory`
    /// (an encoder–decoder model's cross-attention): `q[T, heads·d]`, `kv_start[T]` (i32) →
    /// `[T, heads·d]`; row `t` attends (scale `1/√d`, no mask: every memory row) over cache rows
    /// `kv_start[t] .. kv_start[t] + rows` of layer `layer`; heads equal the cache's kv heads.
    CrossAttention {
        layer: u32,
        heads: u32,
        rows: u32,
    },
    // --- fused ---
    /// Multi-head self-attention core: `q, k, v [B, S, H]`, `mask [B, S]` →
    /// `softmax(q·kᵀ/√(H/heads) + mask_bias) · v`, heads split along H.
    Attention {
        heads: u32,
    },
    // --- convolution family (images, NCHW) ---
    /// 2-D convolution: `x[N, C, H, W]`, `w[O, C/groups, kh, kw]` (+ `bias[O]`) →
    /// `[N, O, Ho, Wo]` with `Ho = (H + pad_top + pad_bottom - kh) / stride_h + 1` (floor), the
    /// same for W. `pad` = [top, left, bottom, right] (TF "SAME" is asymmetric: the loader
    /// computes it for the fixed input size). `groups == C == O` is a depthwise convolution.
    Conv2d {
        stride: [u32; 2],
        pad: [u32; 4],
        groups: u32,
        bias: bool,
    },
    /// `min(max(x, min), max)` elementwise (ReLU6 is `min: 0, max: 6`).
    Clamp {
        min: f32,
        max: f32,
    },
    /// `x[N, C, H, W]` → `[N, C]`: the mean over H·W.
    GlobalAvgPool,
}

impl Op {
    /// Number of arguments the op takes.
    pub fn arity(&self) -> usize {
        match self {
            Op::MatMul | Op::Add | Op::Mul | Op::MeanPool | Op::Gather | Op::SiluMul | Op::RmsNorm { .. } => 2,
            Op::Rope { .. } | Op::Sample => 2,
            Op::Argmax => 1,
            Op::CachedAttention { .. } => 5,
            Op::CrossAttention { .. } => 2,
            Op::Linear { bias } => 2 + *bias as usize,
            Op::Gelu | Op::Softmax | Op::L2Normalize { .. } | Op::Reshape { .. } | Op::Transpose { .. } => 1,
            Op::LayerNorm { .. } => 3,
            Op::Attention { .. } => 4,
            Op::Conv2d { bias, .. } => 2 + *bias as usize,
            Op::Clamp { .. } | Op::GlobalAvgPool => 1,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Op::MatMul => "matmul",
            Op::Linear { .. } => "linear",
            Op::Add => "add",
            Op::Mul => "mul",
            Op::Gelu => "gelu",
            Op::LayerNorm { .. } => "layer_norm",
            Op::Softmax => "softmax",
            Op::MeanPool => "mean_pool",
            Op::L2Normalize { .. } => "l2_normalize",
            Op::Gather => "gather",
            Op::Reshape { .. } => "reshape",
            Op::Transpose { .. } => "transpose",
            Op::Attention { .. } => "attention",
            Op::SiluMul => "silu_mul",
            Op::RmsNorm { .. } => "rms_norm",
            Op::Rope { .. } => "rope",
            Op::Argmax => "argmax",
            Op::Sample => "sample",
            Op::CachedAttention { .. } => "cached_attention",
            Op::CrossAttention { .. } => "cross_attention",
            Op::Conv2d { .. } => "conv2d",
            Op::Clamp { .. } => "clamp",
            Op::GlobalAvgPool => "global_avg_pool",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub op: Op,
    pub args: Vec<u32>,
}

/// The KV cache a stateful graph keeps in the tab between runs: per layer, `max_tokens` rows of
/// `kv_heads · head_dim` keys and as many values (f32). Sessions own contiguous row ranges of it
/// (the tab allocates them at `OpenSession`), so its size is the tab's KV memory limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvDecl {
    pub layers: u32,
    pub kv_heads: u32,
    pub head_dim: u32,
    pub max_tokens: u32,
    /// Most sessions open at once on one copy of the model.
    pub max_sessions: u32,
}

/// The inputs of a stateful graph, in this order; the tab builds them from its sessions for each
/// `Step` (T tokens over R sessions): `ids[T]`, `pos[T]`, `kv_start[T]`, `rows[R]` (the token row
/// each session samples after) and `sampling[R, 4]` (see `Op::Sample`).
pub const STEP_INPUTS: [(&str, DType); 5] = [
    ("ids", DType::I32),
    ("pos", DType::I32),
    ("kv_start", DType::I32),
    ("rows", DType::I32),
    ("sampling", DType::F32),
];

/// Input 0 of a stage of a sharded stateful graph that does not start with the token
/// embedding, in place of `ids`: the previous stage's hidden state `[T, width]`.
pub const STAGE_INPUT: (&str, DType) = ("hidden", DType::F32);

impl KvDecl {
    /// Bytes of the whole cache (keys and values of every layer).
    pub fn bytes(&self) -> u64 {
        2 * 4 * self.layers as u64 * self.kv_heads as u64 * self.head_dim as u64 * self.max_tokens as u64
    }
}

/// Largest KV cache a graph may declare (bytes).
pub const MAX_KV_BYTES: u64 = 4 << 30;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Graph {
    pub inputs: Vec<InputDecl>,
    pub weights: Vec<WeightDecl>,
    pub nodes: Vec<Node>,
    pub outputs: Vec<u32>,
    /// The KV cache of a stateful (generation) graph; `None` for stateless ones.
    pub kv: Option<KvDecl>,
}

/// Largest graph accepted (MiniLM-L6 has ~120 nodes; SmolLM2 ~600).
pub const MAX_NODES: usize = 8192;
pub const MAX_WEIGHTS: usize = 4096;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum GraphError {
    #[error("graph has {got} {what}, limit {limit}")]
    TooLarge { what: &'static str, got: usize, limit: usize },
    #[error("node {node} ({op}) takes {want} arguments, got {got}")]
    Arity { node: usize, op: &'static str, want: usize, got: usize },
    #[error("node {node} uses value {value}, which is not defined before it")]
    Forward { node: usize, value: u32 },
    #[error("output {0} is not a value of the graph")]
    BadOutput(u32),
    #[error("weight {0:?}: {1}")]
    BadWeight(String, String),
    #[error("input {0:?}: {1}")]
    BadInput(String, String),
    #[error("KV cache {0}")]
    BadKv(String),
    #[error("node {node}: {message}")]
    BadAttr { node: usize, message: String },
}

/// What a value id refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueRef {
    Input(usize),
    Weight(usize),
    Node(usize),
}

impl Graph {
    pub fn value(&self, id: u32) -> ValueRef {
        let id = id as usize;
        let (ni, nw) = (self.inputs.len(), self.weights.len());
        if id < ni {
            ValueRef::Input(id)
        } else if id < ni + nw {
            ValueRef::Weight(id - ni)
        } else {
            ValueRef::Node(id - ni - nw)
        }
    }

    /// The value id of node `i`'s output.
    pub fn node_value(&self, i: usize) -> u32 {
        (self.inputs.len() + self.weights.len() + i) as u32
    }

    pub fn value_count(&self) -> usize {
        self.inputs.len() + self.weights.len() + self.nodes.len()
    }

    /// Structural checks (sizes, arity, references, attributes). Shapes are checked per run,
    /// when concrete.
    pub fn validate(&self) -> Result<(), GraphError> {
        let too_large = |what, got, limit| GraphError::TooLarge { what, got, limit };
        if self.nodes.len() > MAX_NODES {
            return Err(too_large("nodes", self.nodes.len(), MAX_NODES));
        }
        if self.weights.len() > MAX_WEIGHTS {
            return Err(too_large("weights", self.weights.len(), MAX_WEIGHTS));
        }
        if self.inputs.len() > 64 {
            return Err(too_large("inputs", self.inputs.len(), 64));
        }
        // Inputs and weights reach a tab as frame tensors, so a declaration no frame can carry is
        // refused here: a tab builds minimal inputs (batch and sequence 1) from the declarations
        // to compile a model, and all of them travel in one `Run` frame. Found by fuzzing: an
        // input declared [2^29] made a tab allocate 2 GiB at load, and fixed dims whose product
        // overflows u32 before reaching a 0 dim ([2^31, 2^31, 0]) made it panic. A 0 dim is
        // refused as it is for weights: an empty input feeds no op.
        let frame = Limits::DEFAULT;
        let mut minimal_bytes = 0u64;
        for d in &self.inputs {
            let fixed: Vec<u32> = d.dims.iter().map(|x| if let Dim::Fixed(n) = x { *n } else { 1 }).collect();
            let elements = element_count(&fixed);
            minimal_bytes = minimal_bytes.saturating_add(elements.saturating_mul(d.dtype.size() as u64));
            if d.dims.len() > frame.max_rank
                || fixed.contains(&0)
                || elements > frame.max_elements
                || minimal_bytes > frame.max_frame_bytes as u64
            {
                return Err(GraphError::BadInput(d.name.clone(), format!("dims {:?} exceed a frame", d.dims)));
            }
        }
        for w in &self.weights {
            if w.shape.is_empty()
                || w.shape.len() > frame.max_rank
                || w.shape.contains(&0)
                || element_count(&w.shape) > frame.max_elements
                || w.dtype.byte_len(&w.shape).is_none()
            {
                return Err(GraphError::BadWeight(w.name.clone(), format!("shape {:?}", w.shape)));
            }
        }
        for (i, n) in self.nodes.iter().enumerate() {
            if n.args.len() != n.op.arity() {
                return Err(GraphError::Arity { node: i, op: n.op.name(), want: n.op.arity(), got: n.args.len() });
            }
            let own = self.node_value(i);
            if let Some(&v) = n.args.iter().find(|&&v| v >= own) {
                return Err(GraphError::Forward { node: i, value: v });
            }
            let bad = |message: String| GraphError::BadAttr { node: i, message };
            match &n.op {
                Op::Attention { heads } if *heads == 0 => return Err(bad("attention needs heads ≥ 1".into())),
                Op::Reshape { shape } if !valid_reshape(shape) => return Err(bad(format!("reshape to {shape:?}"))),
                Op::Transpose { perm } if !is_permutation(perm) => {
                    return Err(bad(format!("transpose perm {perm:?} is not a permutation")));
                }
                Op::LayerNorm { eps } | Op::L2Normalize { eps } | Op::RmsNorm { eps }
                    if !(eps.is_finite() && *eps >= 0.0) =>
                {
                    return Err(bad(format!("eps {eps}")));
                }
                Op::Clamp { min, max } if !(min.is_finite() && max.is_finite() && min <= max) => {
                    return Err(bad(format!("clamp to [{min}, {max}]")));
                }
                Op::Conv2d { stride, groups, pad, .. }
                    if *groups == 0 || stride.contains(&0) || stride.iter().chain(pad).any(|&v| v > 1 << 16) =>
                {
                    return Err(bad(format!("conv2d stride {stride:?}, pad {pad:?}, groups {groups}")));
                }
                Op::Rope { heads, base } if *heads == 0 || !(base.is_finite() && *base > 1.0) => {
                    return Err(bad(format!("rope heads {heads}, base {base}")));
                }
                Op::CachedAttention { layer, heads, kv_heads } => {
                    let Some(kv) = &self.kv else {
                        return Err(bad("cached attention in a graph without a KV cache".into()));
                    };
                    if *layer >= kv.layers || *kv_heads != kv.kv_heads || *heads == 0 || heads % kv_heads != 0 {
                        return Err(bad(format!(
                            "cached attention layer {layer}, heads {heads}/{kv_heads}: cache has {} layers of {} kv heads",
                            kv.layers, kv.kv_heads
                        )));
                    }
                }
                Op::CrossAttention { layer, heads, rows } => {
                    let Some(kv) = &self.kv else {
                        return Err(bad("cross attention in a graph without a KV cache".into()));
                    };
                    if *layer >= kv.layers || *heads != kv.kv_heads || *rows == 0 || *rows > kv.max_tokens {
                        return Err(bad(format!(
                            "cross attention layer {layer}, {heads} heads over {rows} rows: cache has {} layers of {} kv heads, {} rows",
                            kv.layers, kv.kv_heads, kv.max_tokens
                        )));
                    }
                }
                _ => {}
            }
        }
        // `layers` may be 0: a stage of a sharded model with no attention (the embedding or
        // the head alone) keeps sessions — positions, lengths — but no cache.
        if let Some(kv) = &self.kv
            && (kv.kv_heads == 0
                || kv.head_dim == 0
                || kv.max_tokens == 0
                || kv.max_sessions == 0
                || kv.bytes() > MAX_KV_BYTES)
        {
            return Err(GraphError::BadKv(format!("{kv:?} (limit {MAX_KV_BYTES} bytes)")));
        }
        if self.kv.is_some() {
            let mut names: Vec<(&str, DType)> = self.inputs.iter().map(|d| (d.name.as_str(), d.dtype)).collect();
            if names.first() == Some(&STAGE_INPUT) {
                names[0] = STEP_INPUTS[0];
            }
            if names != STEP_INPUTS {
                return Err(GraphError::BadKv(format!(
                    "a stateful graph takes inputs {STEP_INPUTS:?} (or {STAGE_INPUT:?} first), got {names:?}"
                )));
            }
        }
        let total = self.value_count() as u32;
        if let Some(&o) = self.outputs.iter().find(|&&o| o >= total) {
            return Err(GraphError::BadOutput(o));
        }
        Ok(())
    }
}

fn valid_reshape(shape: &[i32]) -> bool {
    shape.len() <= 8 && shape.iter().filter(|&&d| d == -1).count() <= 1 && shape.iter().all(|&d| d == -1 || d > 0)
}

fn is_permutation(perm: &[u8]) -> bool {
    let mut seen = [false; 8];
    perm.len() <= 8
        && perm.iter().all(|&p| (p as usize) < perm.len() && !std::mem::replace(&mut seen[p as usize], true))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Graph {
        Graph {
            inputs: vec![InputDecl { name: "x".into(), dtype: DType::F32, dims: vec![Dim::Batch, Dim::Fixed(4)] }],
            weights: vec![WeightDecl { name: "w".into(), dtype: DType::F32, shape: vec![3, 4], hash: String::new() }],
            nodes: vec![
                Node { op: Op::Linear { bias: false }, args: vec![0, 1] },
                Node { op: Op::Gelu, args: vec![2] },
            ],
            outputs: vec![3],
            kv: None,
        }
    }

    #[test]
    fn valid_graph_passes() {
        tiny().validate().unwrap();
    }

    #[test]
    fn forward_reference_arity_and_outputs_are_rejected() {
        let mut g = tiny();
        g.nodes[0].args[1] = 3;
        assert_eq!(g.validate(), Err(GraphError::Forward { node: 0, value: 3 }));
        let mut g = tiny();
        g.nodes[1].args.push(0);
        assert!(matches!(g.validate(), Err(GraphError::Arity { node: 1, want: 1, got: 2, .. })));
        let mut g = tiny();
        g.outputs = vec![4];
        assert_eq!(g.validate(), Err(GraphError::BadOutput(4)));
        let mut g = tiny();
        g.nodes[1].op = Op::Transpose { perm: vec![0, 0] };
        assert!(matches!(g.validate(), Err(GraphError::BadAttr { node: 1, .. })));
    }

    #[test]
    fn declarations_no_frame_can_carry_are_rejected() {
        // The fuzzer's find (shared_proto/fuzz/corpus/graph/bug_*): one input of 2^29 elements.
        let mut g = tiny();
        g.inputs[0].dims = vec![Dim::Batch, Dim::Fixed(1 << 29)];
        assert!(matches!(g.validate(), Err(GraphError::BadInput(..))));
        // Fixed dims whose product overflows u32 (and u64 saturates), also before a 0.
        g.inputs[0].dims = vec![Dim::Fixed(u32::MAX); 3];
        assert!(matches!(g.validate(), Err(GraphError::BadInput(..))));
        g.inputs[0].dims = vec![Dim::Fixed(1 << 31), Dim::Fixed(1 << 31), Dim::Fixed(0)];
        assert!(matches!(g.validate(), Err(GraphError::BadInput(..))));
        // Each input fits alone, but not all in one Run frame (4 × 2^26 f32 = 1 GiB > 256 MiB).
        let x = g.inputs[0].clone();
        g.inputs = vec![InputDecl { dims: vec![Dim::Fixed(1 << 26)], ..x }; 4];
        assert!(matches!(g.validate(), Err(GraphError::BadInput(..))));
        g.inputs.truncate(1);
        g.inputs[0].dims = vec![Dim::Fixed(4)];
        g.inputs[0].dims.push(Dim::Batch);
        g.inputs[0].dims.extend([Dim::Seq; 7]);
        assert!(matches!(g.validate(), Err(GraphError::BadInput(..))), "rank 9");
        let mut g = tiny();
        g.weights[0].shape = vec![1 << 14, 1 << 13];
        assert!(matches!(g.validate(), Err(GraphError::BadWeight(..))), "2^27 elements");
    }
}
