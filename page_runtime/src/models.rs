//! Models a tab holds, each on the backend the host chose: WebGPU, WebNN or the CPU executor.

use std::cell::RefCell;
use std::rc::Rc;

use shared_proto::{ErrorKind, ExecBackend, Graph, RemoteError, Tensor};

use crate::executors::cpu::CpuModel;
use crate::executors::webgpu::{GpuModel, WebGpuExecutor};
use crate::executors::webnn::{NnModel, WebNn};
use crate::executors::{RunOutput, inputs};

/// The CPU executor needs every weight before it can build; they are collected here.
pub struct CpuLoading {
    graph: Graph,
    weights: RefCell<Vec<Option<Tensor>>>,
    model: RefCell<Option<Rc<CpuModel>>>,
}

pub enum TabModel {
    /// With the executor (device) it was built on: after a device loss the tab gets a new
    /// executor, and models of the old one fail with `DeviceLost` until loaded again.
    Gpu(Rc<GpuModel>, Rc<WebGpuExecutor>),
    Nn(Rc<NnModel>),
    Cpu(Rc<CpuLoading>),
}

fn unsupported(msg: String) -> RemoteError {
    RemoteError::new(ErrorKind::Unsupported, msg)
}

impl TabModel {
    pub fn new(
        graph: Graph,
        backend: &ExecBackend,
        gpu: Option<Rc<WebGpuExecutor>>,
        nn: Option<Rc<WebNn>>,
    ) -> Result<TabModel, RemoteError> {
        Ok(match backend {
            ExecBackend::WebGpu => {
                let ex =
                    gpu.ok_or_else(|| unsupported("this tab has no WebGPU device (see its capabilities)".into()))?;
                TabModel::Gpu(Rc::new(GpuModel::new(graph)?), ex)
            }
            ExecBackend::WebNn { device } => {
                let nn = nn.ok_or_else(|| unsupported(format!("this tab has no WebNN {device} context")))?;
                TabModel::Nn(Rc::new(NnModel::new(graph, nn)?))
            }
            ExecBackend::Cpu => {
                graph.validate().map_err(|e| RemoteError::new(ErrorKind::BadInput, e.to_string()))?;
                let n = graph.weights.len();
                TabModel::Cpu(Rc::new(CpuLoading {
                    graph,
                    weights: RefCell::new(vec![None; n]),
                    model: RefCell::default(),
                }))
            }
        })
    }

    pub fn clone_handle(&self) -> TabModel {
        match self {
            TabModel::Gpu(m, ex) => TabModel::Gpu(m.clone(), ex.clone()),
            TabModel::Nn(m) => TabModel::Nn(m.clone()),
            TabModel::Cpu(m) => TabModel::Cpu(m.clone()),
        }
    }

    /// Store weights; returns (bytes stored, weights still missing).
    pub fn put_weights(&self, first: usize, t: &[Tensor]) -> Result<(u64, usize), RemoteError> {
        match self {
            TabModel::Gpu(m, ex) => {
                let b = m.put_weights(ex, first, t)?;
                Ok((b, m.missing_weights()))
            }
            TabModel::Nn(m) => {
                let b = m.put_weights(first, t)?;
                Ok((b, m.missing_weights()))
            }
            TabModel::Cpu(c) => {
                let mut bytes = 0;
                for (i, w) in t.iter().enumerate() {
                    inputs::check_weight(&c.graph, first + i, w)?;
                    c.weights.borrow_mut()[first + i] = Some(w.clone());
                    bytes += w.data.len() as u64;
                }
                let missing = c.weights.borrow().iter().filter(|w| w.is_none()).count();
                if missing == 0 {
                    let ws: Vec<Tensor> =
                        c.weights.borrow_mut().iter_mut().map(|w| w.take().expect("complete")).collect();
                    *c.model.borrow_mut() = Some(Rc::new(CpuModel::new(c.graph.clone(), ws)?));
                }
                Ok((bytes, missing))
            }
        }
    }

    /// Compile (WebGPU pipelines, the smallest WebNN graph) with a warm-up run; ms taken.
    pub async fn prepare(&self) -> Result<f64, RemoteError> {
        match self {
            TabModel::Gpu(m, ex) => m.prepare(ex).await,
            TabModel::Nn(m) => m.prepare().await,
            TabModel::Cpu(c) => {
                let t0 = js_sys::Date::now();
                let m = c.model.borrow().clone().ok_or_else(|| unsupported("weights incomplete".into()))?;
                m.run(&inputs::minimal(m.graph()))?;
                Ok(js_sys::Date::now() - t0)
            }
        }
    }

    pub async fn run(&self, inputs: &[Tensor]) -> Result<RunOutput, RemoteError> {
        match self {
            TabModel::Gpu(m, ex) => m.run(ex, inputs).await,
            TabModel::Nn(m) => m.run(inputs).await,
            TabModel::Cpu(c) => {
                let t0 = js_sys::Date::now();
                let m = c.model.borrow().clone().ok_or_else(|| unsupported("weights incomplete".into()))?;
                let outputs = m.run(inputs)?;
                Ok(RunOutput { outputs, device_ms: js_sys::Date::now() - t0 })
            }
        }
    }
}
