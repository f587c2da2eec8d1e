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
    /// `x[.., K] · w[N, K]ᵀ (+ bias[N])`: weights stored as PyTorch does.
    Linear {
        bias: bool,
    },
    // --- binary family: `b`'s shape must be a suffix of `a`'s (broadcast over leading dims) ---
    Add,
    Mul,
    // --- unary family ---
    /// Exact GELU: `x · Φ(x)` with the error function.
    Gelu,
    // --- reduce family (over the last axis unless said otherwise) ---
    /// `x`, `gamma[H]`, `beta[H]`.
    LayerNorm {
        eps: f32,
    },
    Softmax,
    /// `x[B, S, H]`, `mask[B, S]` (1 keep / 0 pad) → `[B, H]`: mean over kept positions.
    MeanPool,
    /// `x / max(‖x‖₂, eps)` per row.
    L2Normalize {
        eps: f32,
    },
    // --- reindex family ---
    /// `table[V, H]`, `ids[..]` (i32) → `[.., H]`.
    Gather,
    /// New shape; one entry may be -1 (inferred).
    Reshape {
        shape: Vec<i32>,
    },
    /// Permutation of the axes.
    Transpose {
        perm: Vec<u8>,
    },
    // --- fused ---
    /// Multi-head self-attention core: `q, k, v [B, S, H]`, `mask [B, S]` →
    /// `softmax(q·kᵀ/√(H/heads) + mask_bias) · v`, heads split along H.
    Attention {
        heads: u32,
    },
}

impl Op {
    /// Number of arguments the op takes.
    pub fn arity(&self) -> usize {
        match self {
            Op::MatMul | Op::Add | Op::Mul | Op::MeanPool | Op::Gather => 2,
            Op::Linear { bias } => 2 + *bias as usize,
            Op::Gelu | Op::Softmax | Op::L2Normalize { .. } | Op::Reshape { .. } | Op::Transpose { .. } => 1,
            Op::LayerNorm { .. } => 3,
            Op::Attention { .. } => 4,
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
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub op: Op,
    pub args: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Graph {
    pub inputs: Vec<InputDecl>,
    pub weights: Vec<WeightDecl>,
    pub nodes: Vec<Node>,
    pub outputs: Vec<u32>,
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
                Op::LayerNorm { eps } | Op::L2Normalize { eps } if !(eps.is_finite() && *eps >= 0.0) => {
                    return Err(bad(format!("eps {eps}")));
                }
                _ => {}
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
