//! The WebGPU executor (wgpu's `webgpu` backend, i.e. the browser's `navigator.gpu`).
//!
//! Pipelines are compiled once per kernel and cached; buffers come from a [`pool::BufferPool`]
//! because buffer creation is expensive in WebGPU. Each kernel family lives in its own file with
//! its WGSL beside it.

pub(crate) mod attention;
mod binary;
mod cached_attention;
mod conv;
pub mod graph;
mod linear_quant;
mod matmul;
mod pool;
mod reduce;
mod reindex;
mod rope;
mod sampling;
mod unary;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use shared_proto::{AdapterInfo, DType, ErrorKind, Kernel, MatMulVariant, Op, RemoteError, Tensor, WebGpuCaps};
use wasm_bindgen::JsCast;

use super::check;
pub use graph::GpuModel;
use pool::{BufferPool, Pooled};

/// An adapter and device, plus what the probe learnt about them.
pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub caps: WebGpuCaps,
    /// Why the device was lost (`GPUDevice.lost` resolved), once it was. A lost device never
    /// comes back: the tab requests a new one (`serve.rs`).
    lost: Arc<Mutex<Option<String>>>,
}

/// Request an adapter and a device with the adapter's own limits. On failure the error text is
/// the browser's, so `doctor` can show why a tab has no WebGPU.
pub async fn init() -> Result<Gpu, WebGpuCaps> {
    let api_present = js_sys::Reflect::get(&js_sys::global(), &"navigator".into())
        .and_then(|nav| js_sys::Reflect::get(&nav, &"gpu".into()))
        .map(|gpu| !gpu.is_undefined())
        .unwrap_or(false);
    let fail = |error: String| WebGpuCaps { api_present, error: Some(error), ..Default::default() };
    if !api_present {
        return Err(fail("navigator.gpu is undefined (WebGPU disabled or unsupported)".into()));
    }
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = wgpu::Backends::BROWSER_WEBGPU;
    let instance = wgpu::Instance::new(desc);
    let adapter = instance
        .request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            ..Default::default()
        })
        .await
        .map_err(|e| fail(format!("requestAdapter: {e}")))?;
    let info = adapter.get_info();
    let js_info = js_adapter_info().await;
    let limits = adapter.limits();
    let (device, queue) = adapter
        .request_device(&wgpu::DeviceDescriptor {
            label: Some("tabpool"),
            required_limits: limits.clone(),
            ..Default::default()
        })
        .await
        .map_err(|e| fail(format!("requestDevice: {e}")))?;
    let lost = Arc::new(Mutex::new(None));
    let seen = lost.clone();
    device.set_device_lost_callback(move |reason, message| {
        if let Ok(mut l) = seen.lock() {
            l.get_or_insert(format!("{reason:?}: {message}"));
        }
    });
    let caps = WebGpuCaps {
        api_present,
        adapter: Some(AdapterInfo {
            name: if info.name.is_empty() { js_info.vendor.clone() } else { info.name },
            architecture: js_info.architecture,
            description: js_info.description,
            is_fallback: js_info.is_fallback,
            vendor: if js_info.vendor.is_empty() { format!("{:#06x}", info.vendor) } else { js_info.vendor },
            device_type: format!("{:?}", info.device_type),
            backend: format!("{:?}", info.backend),
            driver: info.driver,
            driver_info: info.driver_info,
        }),
        error: None,
        limits: vec![
            ("maxBufferSize".into(), limits.max_buffer_size),
            ("maxStorageBufferBindingSize".into(), limits.max_storage_buffer_binding_size as u64),
            ("maxComputeWorkgroupStorageSize".into(), limits.max_compute_workgroup_storage_size as u64),
            ("maxComputeInvocationsPerWorkgroup".into(), limits.max_compute_invocations_per_workgroup as u64),
            ("maxComputeWorkgroupsPerDimension".into(), limits.max_compute_workgroups_per_dimension as u64),
            ("maxStorageBuffersPerShaderStage".into(), limits.max_storage_buffers_per_shader_stage as u64),
        ],
        features: adapter.features().iter_names().map(|(name, _)| name.to_ascii_lowercase()).collect(),
    };
    Ok(Gpu { device, queue, caps, lost })
}

#[derive(Default)]
struct JsAdapterInfo {
    vendor: String,
    architecture: String,
    description: String,
    is_fallback: bool,
}

/// `GPUAdapterInfo` straight from the browser: wgpu's web backend leaves most of it empty, and
/// the architecture ("swiftshader", "lavapipe"…) is what tells a software adapter apart.
async fn js_adapter_info() -> JsAdapterInfo {
    use js_sys::Reflect;
    let get = |o: &wasm_bindgen::JsValue, k: &str| Reflect::get(o, &k.into()).unwrap_or_default();
    let gpu = get(&get(&js_sys::global(), "navigator"), "gpu");
    let Ok(f) = get(&gpu, "requestAdapter").dyn_into::<js_sys::Function>() else { return Default::default() };
    let Ok(promise) = f.call0(&gpu).and_then(|p| p.dyn_into::<js_sys::Promise>()) else { return Default::default() };
    let Ok(adapter) = wasm_bindgen_futures::JsFuture::from(promise).await else { return Default::default() };
    let info = get(&adapter, "info");
    let text = |k: &str| get(&info, k).as_string().unwrap_or_default();
    JsAdapterInfo {
        vendor: text("vendor"),
        architecture: text("architecture"),
        description: text("description"),
        is_fallback: get(&info, "isFallbackAdapter")
            .as_bool()
            .or(get(&adapter, "isFallbackAdapter").as_bool())
            .unwrap_or(false),
    }
}

/// Runs kernels on one device. Single-threaded (wasm), hence `RefCell`; no borrow is held across
/// an `.await`.
pub struct WebGpuExecutor {
    gpu: Gpu,
    pipelines: RefCell<HashMap<String, Rc<wgpu::ComputePipeline>>>,
    pool: BufferPool,
    /// Rope's θ tables by (base bits, head width), written once: a table uploaded into a pooled
    /// buffer while recording could overwrite an input that an earlier dispatch of the same
    /// submission has yet to read (released buffers are reused within a submission).
    rope_tables: RefCell<HashMap<(u32, u32), Rc<wgpu::Buffer>>>,
}

/// Output of one kernel or graph run (device time: submit → results mapped, per repeat).
pub type KernelRun = super::RunOutput;

/// WGSL erf approximation shared by the kernels that compute GELU.
const ERF: &str = include_str!("erf.wgsl");

/// A device buffer holding a value: pooled (activations, inputs) or owned by a model (weights).
pub(crate) enum Buf {
    Pooled(Pooled),
    Weight(Rc<wgpu::Buffer>),
}

impl std::ops::Deref for Buf {
    type Target = wgpu::Buffer;
    fn deref(&self) -> &wgpu::Buffer {
        match self {
            Buf::Pooled(p) => p,
            Buf::Weight(w) => w,
        }
    }
}

/// A tensor on the device. Cloning shares the buffer (reshape costs nothing).
#[derive(Clone)]
pub(crate) struct GpuValue {
    pub shape: Vec<u32>,
    pub dtype: DType,
    pub buf: Rc<Buf>,
}

impl GpuValue {
    pub fn elements(&self) -> u32 {
        self.shape.iter().product()
    }
    pub fn last_dim(&self) -> u32 {
        *self.shape.last().unwrap_or(&1)
    }
}

struct Dispatch {
    pipeline: Rc<wgpu::ComputePipeline>,
    bind_group: wgpu::BindGroup,
    groups: (u32, u32, u32),
}

/// Dispatches recorded for one submission, plus the uniforms they read: uniforms are written
/// with `queue.write_buffer` before the submit, so none may be reused until it completes.
#[derive(Default)]
pub(crate) struct Recorder {
    dispatches: Vec<Dispatch>,
    uniforms: Vec<Pooled>,
}

/// Workgroups for a flat element-wise kernel of `len` items (256 per group), wrapping into y
/// past the 65535 limit; returns the groups and the row stride the shader folds back with.
pub(crate) fn flat_groups(len: u32) -> ((u32, u32, u32), u32) {
    let total = len.div_ceil(256).max(1);
    if total <= 65535 { ((total, 1, 1), total * 256) } else { ((65535, total.div_ceil(65535), 1), 65535 * 256) }
}

fn unsupported(msg: String) -> RemoteError {
    RemoteError::new(ErrorKind::Unsupported, msg)
}

/// Idle pooled buffers kept between runs. A batch of 32 typical sentences (~600 tokens) works
/// in buffers of at most 4 MB; the largest (32 × 256 tokens) in hundreds of MB that are cheaper
/// to allocate again than to keep (on software adapters buffers are host memory of the GPU
/// process, and a run of that size takes minutes there).
const POOL_BYTES: u64 = 32 << 20;

impl WebGpuExecutor {
    pub fn new(gpu: Gpu) -> Self {
        WebGpuExecutor {
            gpu,
            pipelines: RefCell::default(),
            pool: BufferPool::new(POOL_BYTES),
            rope_tables: RefCell::default(),
        }
    }

    pub fn caps(&self) -> &WebGpuCaps {
        &self.gpu.caps
    }

    /// Why the device was lost, if it was.
    pub fn lost(&self) -> Option<String> {
        self.gpu.lost.lock().ok().and_then(|l| l.clone())
    }

    /// Destroy the device (`GPUDevice.destroy()`), as a driver reset would lose it.
    pub fn lose_device(&self) {
        if let Ok(mut l) = self.gpu.lost.lock() {
            l.get_or_insert_with(|| "Destroyed: LoseDevice requested by the host".into());
        }
        self.gpu.device.destroy();
    }

    /// `DeviceLost` once the device is gone: nothing is submitted to a dead device.
    pub(crate) fn alive(&self) -> Result<(), RemoteError> {
        match self.lost() {
            Some(why) => Err(RemoteError::new(
                ErrorKind::DeviceLost,
                format!("the WebGPU device was lost ({why}); loading a model again requests a new one"),
            )),
            None => Ok(()),
        }
    }

    /// Buffers parked in the pool, ready for reuse.
    pub fn pooled_buffers(&self) -> usize {
        self.pool.idle_buffers()
    }

    /// Pipelines compiled so far (each op variant once per executor).
    pub fn compiled_pipelines(&self) -> usize {
        self.pipelines.borrow().len()
    }

    /// One standalone kernel: upload, run, read back.
    pub async fn run_kernel(&self, kernel: &Kernel, inputs: &[Tensor]) -> Result<KernelRun, RemoteError> {
        check::kernel(kernel, inputs)?;
        self.alive()?;
        let args: Vec<GpuValue> = inputs.iter().map(|t| self.upload_value(t)).collect();
        let mut rec = Recorder::default();
        let (out, repeats) = match kernel {
            Kernel::MatMul { variant, repeats } => {
                (matmul::encode_matmul(self, &mut rec, &args[0], &args[1], *variant)?, *repeats)
            }
            Kernel::Add => (self.encode_op(&mut rec, &Op::Add, &[&args[0], &args[1]], &args[0].shape)?, 1),
        };
        let (mut bytes, device_ms) = self.submit(rec, &[&out], repeats).await?;
        let data = bytes.pop().expect("one output");
        Ok(KernelRun { outputs: vec![Tensor { dtype: DType::F32, shape: out.shape, data }], device_ms })
    }

    /// Record one graph op producing a value of `out_shape`.
    pub(crate) fn encode_op(
        &self,
        rec: &mut Recorder,
        op: &Op,
        args: &[&GpuValue],
        out_shape: &[u32],
    ) -> Result<GpuValue, RemoteError> {
        match op {
            Op::MatMul => matmul::encode_matmul(self, rec, args[0], args[1], MatMulVariant::Tiled),
            Op::Linear { .. } => matmul::encode_linear(self, rec, args, out_shape),
            Op::Add | Op::Mul | Op::SiluMul => binary::encode(self, rec, op, args[0], args[1]),
            Op::Gelu | Op::Clamp { .. } => unary::encode(self, rec, op, args[0]),
            Op::Conv2d { .. } => conv::encode(self, rec, op, args, out_shape, None),
            Op::LayerNorm { .. }
            | Op::RmsNorm { .. }
            | Op::Softmax
            | Op::L2Normalize { .. }
            | Op::MeanPool
            | Op::GlobalAvgPool => reduce::encode(self, rec, op, args, out_shape),
            Op::Gather | Op::Transpose { .. } => reindex::encode(self, rec, op, args, out_shape),
            Op::Reshape { .. } => Ok(GpuValue { shape: out_shape.to_vec(), ..args[0].clone() }),
            Op::Attention { heads } => attention::encode(self, rec, *heads, args),
            Op::Rope { heads, base } => rope::encode(self, rec, *heads, *base, args[0], args[1]),
            Op::Argmax => sampling::encode_argmax(self, rec, args[0]),
            Op::Sample => sampling::encode_sample(self, rec, args[0], args[1]),
            // Needs the model's cache: encoded by `GpuModel::run`.
            Op::CachedAttention { .. } | Op::CrossAttention { .. } => {
                Err(RemoteError::new(ErrorKind::Unsupported, "cached attention runs only inside a stateful model"))
            }
        }
    }

    /// The pipeline for `key`, compiled from `wgsl` on first use.
    pub(crate) fn pipeline(&self, key: &str, wgsl: impl FnOnce() -> String) -> Rc<wgpu::ComputePipeline> {
        if let Some(p) = self.pipelines.borrow().get(key) {
            return p.clone();
        }
        let device = &self.gpu.device;
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(key),
            source: wgpu::ShaderSource::Wgsl(wgsl().into()),
        });
        let p = Rc::new(device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(key),
            layout: None,
            module: &module,
            entry_point: Some("main"),
            compilation_options: Default::default(),
            cache: None,
        }));
        self.pipelines.borrow_mut().insert(key.to_string(), p.clone());
        p
    }

    /// A pooled storage buffer holding `t`'s bytes.
    pub(crate) fn upload_value(&self, t: &Tensor) -> GpuValue {
        let buf = self.pool.acquire(&self.gpu.device, t.data.len() as u64, pool::Kind::StorageIn);
        self.gpu.queue.write_buffer(&buf, 0, &t.data);
        GpuValue { shape: t.shape.clone(), dtype: t.dtype, buf: Rc::new(Buf::Pooled(buf)) }
    }

    /// A model-owned buffer for a weight (outlives any run; not pooled).
    pub(crate) fn weight_buffer(&self, t: &Tensor) -> Rc<wgpu::Buffer> {
        let buf = self.empty_weight_buffer(t.data.len() as u64);
        self.write_weight(&buf, 0, &t.data);
        buf
    }

    /// A model-owned buffer of `bytes` for a weight, written later (`write_weight`).
    pub(crate) fn empty_weight_buffer(&self, bytes: u64) -> Rc<wgpu::Buffer> {
        Rc::new(self.gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            // Multiple of 16 so kernels may view it as array<vec4<f32>>.
            size: bytes.max(16).next_multiple_of(16),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        }))
    }

    /// Write `data` at `offset` of a weight buffer, at most `WRITE_CHUNK` bytes per call: the
    /// browser's WebGPU command channel grows to its largest command and keeps that size (a
    /// whole 47 MB embedding table written at once held 47 MB of shared memory for good).
    pub(crate) fn write_weight(&self, buf: &wgpu::Buffer, offset: u64, data: &[u8]) {
        const WRITE_CHUNK: usize = 1 << 20;
        for (i, chunk) in data.chunks(WRITE_CHUNK).enumerate() {
            let at = offset + (i * WRITE_CHUNK) as u64;
            if chunk.len() % 4 == 0 {
                self.gpu.queue.write_buffer(buf, at, chunk);
            } else {
                // Block dtypes (Q8_0: 34-byte blocks) may end mid-word; WebGPU writes whole words.
                let mut padded = chunk.to_vec();
                padded.resize(chunk.len().next_multiple_of(4), 0);
                self.gpu.queue.write_buffer(buf, at, &padded);
            }
        }
    }

    /// A model-owned buffer holding `parts` back to back (copied on the device, submitted now so
    /// every later submission sees it).
    pub(crate) fn concat_buffers(&self, parts: &[GpuValue]) -> Rc<wgpu::Buffer> {
        let sizes: Vec<u64> = parts.iter().map(|p| p.dtype.byte_len(&p.shape).unwrap_or(0)).collect();
        let total: u64 = sizes.iter().sum();
        let buf = self.gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("concat"),
            size: total.max(16).next_multiple_of(16),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let mut encoder = self.gpu.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        let mut offset = 0;
        for (p, size) in parts.iter().zip(&sizes) {
            encoder.copy_buffer_to_buffer(&p.buf, 0, &buf, offset, *size);
            offset += size;
        }
        self.gpu.queue.submit([encoder.finish()]);
        Rc::new(buf)
    }

    /// A fresh f32 output value of `shape`.
    pub(crate) fn output(&self, shape: &[u32]) -> GpuValue {
        let bytes = shape.iter().map(|&d| d as u64).product::<u64>() * 4;
        let buf = self.pool.acquire(&self.gpu.device, bytes, pool::Kind::StorageOut);
        GpuValue { shape: shape.to_vec(), dtype: DType::F32, buf: Rc::new(Buf::Pooled(buf)) }
    }

    /// Record `pipeline` over `buffers` (bound in order), with a uniform of `words` bound last.
    pub(crate) fn dispatch(
        &self,
        rec: &mut Recorder,
        pipeline: Rc<wgpu::ComputePipeline>,
        buffers: &[&wgpu::Buffer],
        words: &[u32],
        groups: (u32, u32, u32),
    ) -> Result<(), RemoteError> {
        self.dispatch_with_tail(rec, pipeline, buffers, words, &[], groups)
    }

    /// As [`Self::dispatch`], with `tail` buffers bound after the uniform (optional operands
    /// such as a bias keep the common bindings at fixed slots).
    pub(crate) fn dispatch_with_tail(
        &self,
        rec: &mut Recorder,
        pipeline: Rc<wgpu::ComputePipeline>,
        buffers: &[&wgpu::Buffer],
        words: &[u32],
        tail: &[&wgpu::Buffer],
        groups: (u32, u32, u32),
    ) -> Result<(), RemoteError> {
        let max = self.gpu.device.limits().max_compute_workgroups_per_dimension;
        if groups.0 > max || groups.1 > max || groups.2 > max {
            return Err(unsupported(format!("dispatch {groups:?} exceeds {max} workgroups per dimension")));
        }
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        let uniform = self.pool.acquire(&self.gpu.device, bytes.len() as u64, pool::Kind::Uniform);
        self.gpu.queue.write_buffer(&uniform, 0, &bytes);
        let mut all: Vec<&wgpu::Buffer> = buffers.to_vec();
        all.push(&uniform);
        all.extend_from_slice(tail);
        let entries: Vec<wgpu::BindGroupEntry> = all
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupEntry { binding: i as u32, resource: b.as_entire_binding() })
            .collect();
        let bind_group = self.gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        rec.uniforms.push(uniform);
        rec.dispatches.push(Dispatch { pipeline, bind_group, groups });
        Ok(())
    }

    /// Submit everything recorded (`repeats` times), read `outputs` back. Errors raised by WebGPU
    /// validation or allocation come back as values.
    pub(crate) async fn submit(
        &self,
        rec: Recorder,
        outputs: &[&GpuValue],
        repeats: u32,
    ) -> Result<(Vec<Bytes>, f64), RemoteError> {
        self.alive()?;
        let device = &self.gpu.device;
        let oom = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
            for _ in 0..repeats {
                for d in &rec.dispatches {
                    pass.set_pipeline(&d.pipeline);
                    pass.set_bind_group(0, &d.bind_group, &[]);
                    pass.dispatch_workgroups(d.groups.0, d.groups.1, d.groups.2);
                }
            }
        }
        let mut staged = Vec::with_capacity(outputs.len());
        for out in outputs {
            let bytes = out.elements() as u64 * 4;
            let staging = self.pool.acquire(device, bytes, pool::Kind::Readback);
            encoder.copy_buffer_to_buffer(&out.buf, 0, &staging, 0, bytes);
            staged.push((staging, bytes));
        }
        let t0 = now_ms();
        self.gpu.queue.submit([encoder.finish()]);
        // Recording and submitting have no await between them, so every dispatch that could
        // bind an idle buffer is in this submission (or an earlier one).
        let destroyed = self.pool.trim();
        let mut waits = Vec::with_capacity(staged.len());
        for (staging, bytes) in &staged {
            let (tx, rx) = futures_channel::oneshot::channel();
            staging.slice(..*bytes).map_async(wgpu::MapMode::Read, move |r| {
                let _ = tx.send(r);
            });
            waits.push(rx);
        }
        let validation = validation.pop();
        let oom = oom.pop();
        let mut failure = match (validation.await, oom.await) {
            (Some(e), _) => Some(RemoteError::new(ErrorKind::Internal, format!("WebGPU validation: {e}"))),
            (None, Some(e)) => Some(RemoteError::new(ErrorKind::OutOfMemory, format!("WebGPU: {e}"))),
            (None, None) => None,
        };
        for rx in waits {
            let r = match rx.await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(RemoteError::new(ErrorKind::DeviceLost, format!("mapAsync: {e}"))),
                Err(_) => Some(RemoteError::new(ErrorKind::DeviceLost, "mapAsync callback dropped")),
            };
            failure = failure.or(r);
        }
        if let Some(e) = failure {
            for (staging, _) in staged {
                staging.discard();
            }
            return Err(e);
        }
        let elapsed = now_ms() - t0;
        let mut results = Vec::with_capacity(staged.len());
        for (staging, bytes) in staged {
            let data = {
                let view = staging
                    .slice(..bytes)
                    .get_mapped_range()
                    .map_err(|e| RemoteError::new(ErrorKind::Internal, format!("getMappedRange: {e}")))?;
                Bytes::copy_from_slice(&view)
            };
            staging.unmap();
            results.push(data);
        }
        drop(rec);
        if destroyed > 0 {
            self.release_destroyed().await;
        }
        Ok((results, elapsed / repeats.max(1) as f64))
    }

    /// Make the browser free the memory of buffers destroyed during the last submission. As
    /// measured (Chromium 156, SwiftShader), their memory was freed only after a *later*
    /// submission completed: the largest run's buffers (~156 MiB after 32 × 256 tokens) stayed
    /// in the GPU process until the next run. A one-command submission (an empty one may not
    /// advance Dawn's serial) and its completion free them; only runs that trimmed pay it.
    async fn release_destroyed(&self) {
        let scratch = self.pool.acquire(&self.gpu.device, 256, pool::Kind::Uniform);
        let mut encoder = self.gpu.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        encoder.clear_buffer(&scratch, 0, None);
        let (tx, rx) = futures_channel::oneshot::channel();
        self.gpu.queue.submit([encoder.finish()]);
        self.gpu.queue.on_submitted_work_done(move || {
            let _ = tx.send(());
        });
        let _ = rx.await;
    }
}

fn now_ms() -> f64 {
    js_sys::Reflect::get(&js_sys::global(), &"performance".into())
        .ok()
        .and_then(|p| p.dyn_into::<web_sys::Performance>().ok())
        .map(|p| p.now())
        .unwrap_or_else(js_sys::Date::now)
}
