//! Builds a [`Graph`] while loading a model: inputs, weights and nodes may be added in any order;
//! value ids are resolved at [`GraphBuilder::finish`].

use shared_proto::{DType, Dim, Graph, InputDecl, KvDecl, Node, Op, Tensor, WeightDecl, content_hash};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum V {
    Input(u32),
    Weight(u32),
    Node(u32),
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

    /// Makes the graph stateful: the KV cache its `CachedAttention` nodes read and write.
    pub fn kv(&mut self, kv: KvDecl) {
        self.kv = Some(kv);
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
