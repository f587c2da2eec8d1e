//! A model resident on the device: its graph, weights uploaded once, pipelines compiled at load;
//! each run uploads only the inputs and records the whole graph into one submission.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use shared_proto::{DType, ErrorKind, Graph, Op, RemoteError, Tensor, ValueRef};

use super::{Buf, GpuValue, KernelRun, Recorder, WebGpuExecutor};
use crate::executors::cpu::last_uses;
use crate::executors::{inputs, shapes};

/// Interior mutability so a shared `Rc<GpuModel>` can take weights while another task runs it
/// (no borrow is held across an `.await`).
pub struct GpuModel {
    graph: Graph,
    weights: RefCell<Vec<Option<Rc<wgpu::Buffer>>>>,
    last_use: Vec<usize>,
    weight_bytes: Cell<u64>,
}

fn bad(msg: String) -> RemoteError {
    RemoteError::new(ErrorKind::BadInput, msg)
}

impl GpuModel {
    pub fn new(graph: Graph) -> Result<GpuModel, RemoteError> {
        graph.validate().map_err(|e| bad(e.to_string()))?;
        let last_use = last_uses(&graph);
        Ok(GpuModel {
            weights: RefCell::new(vec![None; graph.weights.len()]),
            graph,
            last_use,
            weight_bytes: Cell::new(0),
        })
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Store weights `first..first + tensors.len()`, each checked against its declared dtype,
    /// shape and content hash. Returns the bytes stored.
    pub fn put_weights(&self, ex: &WebGpuExecutor, first: usize, tensors: &[Tensor]) -> Result<u64, RemoteError> {
        let mut bytes = 0;
        for (i, t) in tensors.iter().enumerate() {
            let idx = first + i;
            inputs::check_weight(&self.graph, idx, t)?;
            let mut weights = self.weights.borrow_mut();
            if weights[idx].is_none() {
                self.weight_bytes.set(self.weight_bytes.get() + t.data.len() as u64);
            }
            weights[idx] = Some(ex.weight_buffer(t));
            bytes += t.data.len() as u64;
        }
        Ok(bytes)
    }

    pub fn missing_weights(&self) -> usize {
        self.weights.borrow().iter().filter(|w| w.is_none()).count()
    }

    pub fn weight_bytes(&self) -> u64 {
        self.weight_bytes.get()
    }

    /// Compile every pipeline the graph needs by running it once on the smallest input
    /// (batch 1, sequence 1, zeros). Returns the time taken in ms.
    pub async fn prepare(&self, ex: &WebGpuExecutor) -> Result<f64, RemoteError> {
        let t0 = super::now_ms();
        let inputs = inputs::minimal(&self.graph);
        self.run(ex, &inputs).await?;
        Ok(super::now_ms() - t0)
    }

    pub async fn run(&self, ex: &WebGpuExecutor, inputs: &[Tensor]) -> Result<KernelRun, RemoteError> {
        let g = &self.graph;
        if self.missing_weights() > 0 {
            return Err(RemoteError::new(
                ErrorKind::Unsupported,
                format!("{} weights not uploaded yet", self.missing_weights()),
            ));
        }
        inputs::check(g, inputs)?;
        self.check_ids(inputs)?;
        let mut values: Vec<Option<GpuValue>> = vec![None; g.value_count()];
        for (i, t) in inputs.iter().enumerate() {
            values[i] = Some(ex.upload_value(t));
        }
        let weights = self.weights.borrow().clone();
        for (i, decl) in g.weights.iter().enumerate() {
            let buf = weights[i].clone().expect("checked complete");
            values[g.inputs.len() + i] =
                Some(GpuValue { shape: decl.shape.clone(), dtype: decl.dtype, buf: Rc::new(Buf::Weight(buf)) });
        }
        let mut rec = Recorder::default();
        for (ni, node) in g.nodes.iter().enumerate() {
            let out = {
                let args: Vec<&GpuValue> =
                    node.args.iter().map(|&a| values[a as usize].as_ref().expect("defined")).collect();
                let arg_shapes: Vec<&[u32]> = args.iter().map(|v| v.shape.as_slice()).collect();
                let dtypes: Vec<DType> = args.iter().map(|v| v.dtype).collect();
                let (shape, dtype) = shapes::infer(&node.op, &arg_shapes, &dtypes)
                    .map_err(|e| RemoteError::new(e.kind, format!("node {ni}: {}", e.message)))?;
                let mut v = ex.encode_op(&mut rec, &node.op, &args, &shape)?;
                v.dtype = dtype;
                v
            };
            values[g.node_value(ni) as usize] = Some(out);
            // Buffers past their last use go back to the pool; later dispatches in the same
            // submission may reuse them (WebGPU orders dispatches within a pass).
            for &a in &node.args {
                if self.last_use[a as usize] == ni && !matches!(g.value(a), ValueRef::Weight(_)) {
                    values[a as usize] = None;
                }
            }
        }
        let outs: Vec<GpuValue> =
            g.outputs.iter().map(|&o| values[o as usize].clone().expect("outputs kept")).collect();
        let refs: Vec<&GpuValue> = outs.iter().collect();
        let (bytes, device_ms) = ex.submit(rec, &refs, 1).await?;
        let outputs =
            outs.iter().zip(bytes).map(|(v, data)| Tensor { dtype: v.dtype, shape: v.shape.clone(), data }).collect();
        Ok(KernelRun { outputs, device_ms })
    }

    /// Ids feeding a Gather straight from a graph input are range-checked here, on the CPU:
    /// the kernel cannot report a bad id, only clamp it.
    fn check_ids(&self, inputs: &[Tensor]) -> Result<(), RemoteError> {
        let g = &self.graph;
        for node in g.nodes.iter().filter(|n| n.op == Op::Gather) {
            if let (ValueRef::Weight(w), ValueRef::Input(i)) = (g.value(node.args[0]), g.value(node.args[1])) {
                let vocab = g.weights[w].shape[0] as i64;
                let t = &inputs[i];
                if let Some(bad_id) = t
                    .data
                    .chunks_exact(4)
                    .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                    .find(|&id| id < 0 || id >= vocab)
                {
                    return Err(bad(format!("gather: id {bad_id} outside 0..{vocab} in input {}", g.inputs[i].name)));
                }
            }
        }
        Ok(())
    }
}

impl WebGpuExecutor {
    /// Convenience for tests and single-op graphs: create, upload all weights, prepare.
    pub async fn load_model(&self, graph: Graph, weights: &[Tensor]) -> Result<GpuModel, RemoteError> {
        let m = GpuModel::new(graph)?;
        m.put_weights(self, 0, weights)?;
        if m.missing_weights() > 0 {
            return Err(bad(format!("{} weights missing", m.missing_weights())));
        }
        m.prepare(self).await?;
        Ok(m)
    }
}
