//! Models a tab holds, each on the backend the host chose: WebGPU, WebNN or the CPU executor.

use std::cell::RefCell;
use std::rc::Rc;

use shared_proto::{ContentHasher, ErrorKind, ExecBackend, Graph, RemoteError, Tensor};

use crate::executors::cpu::CpuModel;
use crate::executors::inputs::Check;
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

fn bad(msg: String) -> RemoteError {
    RemoteError::new(ErrorKind::BadInput, msg)
}

/// A weight arriving in parts (`PutWeightPart`), hashed as it comes, so it never sits whole in
/// wasm memory: WebNN gathers the bytes in a JS buffer its tensor is written from, WebGPU
/// writes each part into the weight's buffer; the CPU executor takes it whole from wasm.
pub struct PartialWeight {
    index: usize,
    total: usize,
    received: usize,
    /// `None` for bytes already verified (`Check::Known`).
    hasher: Option<ContentHasher>,
    buf: PartBuf,
}

enum PartBuf {
    Js(js_sys::Uint8Array),
    Gpu(Rc<wgpu::Buffer>),
    Wasm(Vec<u8>),
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
                TabModel::Gpu(Rc::new(GpuModel::new(&ex, graph)?), ex)
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
    pub async fn put_weights(&self, first: usize, t: &[Tensor], check: Check) -> Result<(u64, usize), RemoteError> {
        match self {
            TabModel::Gpu(m, ex) => {
                let b = m.put_weights(ex, first, t, check)?;
                Ok((b, m.missing_weights()))
            }
            TabModel::Nn(m) => {
                let b = m.put_weights(first, t, check).await?;
                Ok((b, m.missing_weights()))
            }
            TabModel::Cpu(c) => {
                let mut bytes = 0;
                for (i, w) in t.iter().enumerate() {
                    inputs::check_weight(&c.graph, first + i, w, check)?;
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

    pub fn graph(&self) -> &Graph {
        match self {
            TabModel::Gpu(m, _) => m.graph(),
            TabModel::Nn(m) => m.graph(),
            TabModel::Cpu(c) => &c.graph,
        }
    }

    /// Add bytes `offset..` of weight `index` (`total` bytes in all) to `pending`; once the
    /// weight is whole, check it and store it. Returns (bytes taken, weights still missing).
    pub async fn put_weight_part(
        &self,
        pending: &mut Option<PartialWeight>,
        index: usize,
        offset: usize,
        total: usize,
        bytes: &[u8],
        check: Check,
    ) -> Result<(u64, usize), RemoteError> {
        let decl = self.graph().weights.get(index).ok_or_else(|| bad(format!("weight index {index} out of range")))?;
        let expected = decl.dtype.byte_len(&decl.shape).unwrap_or(u64::MAX) as usize;
        if total != expected {
            return Err(bad(format!("weight {}: {total} bytes announced, its shape holds {expected}", decl.name)));
        }
        if offset == 0 {
            let buf = match self {
                TabModel::Nn(_) => PartBuf::Js(js_sys::Uint8Array::new_with_length(total as u32)),
                TabModel::Gpu(_, ex) => PartBuf::Gpu(ex.empty_weight_buffer(total as u64)),
                TabModel::Cpu(_) => PartBuf::Wasm(Vec::with_capacity(total)),
            };
            *pending = Some(PartialWeight {
                index,
                total,
                received: 0,
                hasher: (check == Check::Hash).then(ContentHasher::default),
                buf,
            });
        }
        let p = pending
            .as_mut()
            .filter(|p| p.index == index && p.total == total && p.received == offset)
            .ok_or_else(|| bad(format!("weight {}: part at byte {offset} out of order", decl.name)))?;
        if offset + bytes.len() > total {
            return Err(bad(format!("weight {}: part past its {total} bytes", decl.name)));
        }
        match (&mut p.buf, self) {
            // SAFETY: `set` copies from the view at once; nothing allocates in between.
            (PartBuf::Js(js), _) => js.set(&unsafe { js_sys::Uint8Array::view(bytes) }.into(), offset as u32),
            (PartBuf::Gpu(buf), TabModel::Gpu(_, ex)) => {
                // Buffer writes go in multiples of 4 bytes at 4-aligned offsets.
                if !offset.is_multiple_of(4) || (!bytes.len().is_multiple_of(4) && offset + bytes.len() != total) {
                    return Err(bad(format!("weight {}: parts must be 4-byte aligned", decl.name)));
                }
                let mut padded;
                let data = if bytes.len().is_multiple_of(4) {
                    bytes
                } else {
                    padded = bytes.to_vec();
                    padded.resize(bytes.len().next_multiple_of(4), 0);
                    &padded
                };
                ex.write_weight(buf, offset as u64, data);
            }
            (PartBuf::Wasm(v), _) => v.extend_from_slice(bytes),
            (PartBuf::Gpu(_), _) => unreachable!("GPU buffers are made for WebGPU models only"),
        }
        if let Some(h) = &mut p.hasher {
            h.update(bytes);
        }
        p.received += bytes.len();
        if p.received < total {
            return Ok((bytes.len() as u64, self.missing_weights()));
        }
        let p = pending.take().expect("present");
        if p.hasher.as_ref().is_some_and(|h| h.finish() != decl.hash) {
            return Err(bad(format!("weight {}: content hash mismatch", decl.name)));
        }
        match (self, p.buf) {
            (TabModel::Nn(m), PartBuf::Js(js)) => {
                let stored = m.put_whole_weight(index, &js).await;
                // Written (copied) into the tensor: detaching frees the buffer now, not at GC.
                let _ = js.buffer().transfer_with_length(0);
                stored?
            }
            (_, PartBuf::Wasm(v)) => {
                let t = Tensor { dtype: decl.dtype, shape: decl.shape.clone(), data: v.into() };
                self.put_weights(index, &[t], Check::Known).await?;
            }
            (TabModel::Gpu(m, ex), PartBuf::Gpu(buf)) => m.set_weight(ex, index, buf, total as u64)?,
            (_, PartBuf::Js(_) | PartBuf::Gpu(_)) => unreachable!("made for WebNN and WebGPU models only"),
        }
        Ok((bytes.len() as u64, self.missing_weights()))
    }

    /// Prepare to take weights: a WebNN model creates its shared tensors at once
    /// (`NnModel::reserve_shared`); other executors need nothing.
    pub async fn reserve(&self) -> Result<(), RemoteError> {
        match self {
            TabModel::Nn(m) => m.reserve_shared().await,
            _ => Ok(()),
        }
    }

    pub fn missing_weights(&self) -> usize {
        match self {
            TabModel::Gpu(m, _) => m.missing_weights(),
            TabModel::Nn(m) => m.missing_weights(),
            // Once complete, the weights moved into the built model.
            TabModel::Cpu(c) if c.model.borrow().is_some() => 0,
            TabModel::Cpu(c) => c.weights.borrow().iter().filter(|w| w.is_none()).count(),
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

    /// Write a session's fixed memory into the KV cache (`Request::PutMemory`); bytes written.
    pub async fn put_memory(&self, first_layer: usize, start: usize, memory: &Tensor) -> Result<u64, RemoteError> {
        match self {
            TabModel::Cpu(c) => {
                let m = c.model.borrow().clone().ok_or_else(|| unsupported("weights incomplete".into()))?;
                m.put_memory(first_layer, start, memory)
            }
            TabModel::Gpu(m, ex) => m.put_memory(ex, first_layer, start, memory),
            TabModel::Nn(m) => m.put_memory(first_layer, start, memory).await,
        }
    }

    /// Whether its executor copies KV rows between sessions (a prefix cache). WebNN does not:
    /// its KV tensors are read and written whole (`readTensor`/`writeTensor`), so a copy would
    /// cost more than the prefill it saves.
    pub fn copies_kv_rows(&self) -> bool {
        !matches!(self, TabModel::Nn(_))
    }

    /// Copy KV rows `from..from + rows` to `to..` in every layer (a cached prefix).
    pub fn copy_kv_rows(&self, from: u32, to: u32, rows: u32) -> Result<(), RemoteError> {
        match self {
            TabModel::Cpu(c) => {
                let m = c.model.borrow().clone().ok_or_else(|| unsupported("weights incomplete".into()))?;
                m.copy_kv_rows(from, to, rows)
            }
            TabModel::Gpu(m, ex) => m.copy_kv_rows(ex, from, to, rows),
            TabModel::Nn(_) => Err(unsupported("WebNN models keep no prefix cache".into())),
        }
    }

    /// Write an encoder's outputs (keys, values per layer, `[1, rows, width]` each) as a
    /// session's memory (`Request::EncodeIntoMemory`). The CPU executor takes them as they
    /// are; the others get them assembled into one memory, as `PutMemory` carries it.
    pub async fn put_memory_outputs(
        &self,
        first_layer: usize,
        start: usize,
        outputs: &[Tensor],
    ) -> Result<u64, RemoteError> {
        match self {
            TabModel::Cpu(c) => {
                let m = c.model.borrow().clone().ok_or_else(|| unsupported("weights incomplete".into()))?;
                m.put_memory_outputs(first_layer, start, outputs)
            }
            _ => {
                let rows = outputs.first().and_then(|t| t.shape.get(1).copied()).unwrap_or(0);
                let width = outputs.first().and_then(|t| t.shape.get(2).copied()).unwrap_or(0);
                let mut data = Vec::with_capacity(outputs.iter().map(|t| t.data.len()).sum());
                for t in outputs {
                    data.extend_from_slice(&t.data);
                }
                let shape = vec![outputs.len() as u32 / 2, 2, rows, width];
                let memory = Tensor { dtype: shared_proto::DType::F32, shape, data: data.into() };
                self.put_memory(first_layer, start, &memory).await
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
