//! Builds a [`Graph`] while loading a model: inputs, weights and nodes may be added in any order;
//! value ids are resolved at [`GraphBuilder::finish`].

use shared_proto::{DType, Dim, Graph, InputDecl, KvDecl, Node, Op, Tensor, WeightDecl, content_hash};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum V {
    Input(u32),
    Weight(u32),
    Node(u32),
}

/// The settings of [`GraphBuilder::conv`]: stride `[h, w]`, padding `[top, left, bottom, right]`,
/// groups, and the clamp applied after it, if any.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Conv {
    pub stride: [u32; 2],
    pub pad: [u32; 4],
    pub groups: u32,
    pub clamp: Option<(f32, f32)>,
}

#[derive(Default)]
pub struct GraphBuilder {
    inputs: Vec<InputDecl>,
    weights: Vec<(WeightDecl, Tensor)>,
    nodes: Vec<(Op, Vec<V>)>,
    kv: Option<KvDecl>,
}

impl GraphBuilder {
    pub fn input(&mut self, name: &str, dtype: DType, dims: Vec<Dim>) -> V {
        self.inputs.push(InputDecl { name: name.into(), dtype, dims });
        V::Input(self.inputs.len() as u32 - 1)
    }

    pub fn weight(&mut self, name: &str, t: Tensor) -> V {
        let decl =
            WeightDecl { name: name.into(), dtype: t.dtype, shape: t.shape.clone(), hash: content_hash(&t.data) };
        self.weights.push((decl, t));
        V::Weight(self.weights.len() as u32 - 1)
    }

    pub fn op(&mut self, op: Op, args: &[V]) -> V {
        self.nodes.push((op, args.to_vec()));
        V::Node(self.nodes.len() as u32 - 1)
    }

    /// One convolution block: `Conv2d` over `x` with `w` (`[O, C/groups, kh, kw]`) and an optional
    /// `bias` (`[O]`), declared as weights `{name}.weight` / `{name}.bias`, then `Clamp` if
    /// `conv.clamp` is set (ReLU6: `Some((0.0, 6.0))`).
    pub fn conv(&mut self, x: V, name: &str, w: Tensor, bias: Option<Tensor>, conv: Conv) -> V {
        let wv = self.weight(&format!("{name}.weight"), w);
        let mut args = vec![x, wv];
        if let Some(b) = bias {
            args.push(self.weight(&format!("{name}.bias"), b));
        }
        let op = Op::Conv2d { stride: conv.stride, pad: conv.pad, groups: conv.groups, bias: args.len() == 3 };
        let y = self.op(op, &args);
        match conv.clamp {
            Some((min, max)) => self.op(Op::Clamp { min, max }, &[y]),
            None => y,
        }
    }

    /// `x · wᵀ (+ bias)`.
    pub fn linear(&mut self, x: V, w: V, bias: Option<V>) -> V {
        match bias {
            Some(b) => self.op(Op::Linear { bias: true }, &[x, w, b]),
            None => self.op(Op::Linear { bias: false }, &[x, w]),
        }
    }

    /// The three attention projections of `x`: `[q, k, v]`, each `(weight, bias)`.
    pub fn qkv(&mut self, x: V, proj: [(V, Option<V>); 3]) -> [V; 3] {
        proj.map(|(w, b)| self.linear(x, w, b))
    }

    /// A post-norm residual (BERT): `LayerNorm(y + x)`.
    pub fn add_layer_norm(&mut self, y: V, x: V, gamma: V, beta: V, eps: f32) -> V {
        let sum = self.op(Op::Add, &[y, x]);
        self.op(Op::LayerNorm { eps }, &[sum, gamma, beta])
    }

    /// A GELU MLP (BERT): `(gelu(x · w1ᵀ + b1)) · w2ᵀ + b2`.
    pub fn gelu_mlp(&mut self, x: V, up: (V, V), down: (V, V)) -> V {
        let h = self.linear(x, up.0, Some(up.1));
        let h = self.op(Op::Gelu, &[h]);
        self.linear(h, down.0, Some(down.1))
    }

    /// A SwiGLU MLP (llama): `(silu(x · gateᵀ) ⊙ (x · upᵀ)) · downᵀ`.
    pub fn swiglu_mlp(&mut self, x: V, gate: V, up: V, down: V) -> V {
        let g = self.linear(x, gate, None);
        let u = self.linear(x, up, None);
        let act = self.op(Op::SiluMul, &[g, u]);
        self.linear(act, down, None)
    }

    /// Makes the graph stateful: the KV cache its `CachedAttention` nodes read and write.
    pub fn kv(&mut self, kv: KvDecl) {
        self.kv = Some(kv);
    }

    /// A step graph's inputs (`STEP_INPUTS`, a model that embeds its ids): ids, positions and
    /// cache starts per token, rows per session, sampling parameters per session.
    pub fn step_inputs(&mut self) -> [V; 5] {
        shared_proto::STEP_INPUTS.map(|(name, dtype)| {
            let dims = match name {
                "rows" => vec![Dim::Batch],
                "sampling" => vec![Dim::Batch, Dim::Fixed(4)],
                _ => vec![Dim::Seq],
            };
            self.input(name, dtype, dims)
        })
    }

    /// The graph and its weights in declared order.
    pub fn finish(self, outputs: &[V]) -> (Graph, Vec<Tensor>) {
        let (ni, nw) = (self.inputs.len() as u32, self.weights.len() as u32);
        let id = |v: &V| match *v {
            V::Input(i) => i,
            V::Weight(w) => ni + w,
            V::Node(n) => ni + nw + n,
        };
        let nodes =
            self.nodes.iter().map(|(op, args)| Node { op: op.clone(), args: args.iter().map(id).collect() }).collect();
        let (decls, tensors) = self.weights.into_iter().unzip();
        let graph = Graph {
            inputs: self.inputs,
            weights: decls,
            nodes,
            outputs: outputs.iter().map(id).collect(),
            kv: self.kv,
        };
        (graph, tensors)
    }
}
