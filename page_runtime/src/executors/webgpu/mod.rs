//! The WebGPU executor (wgpu's `webgpu` backend, i.e. the browser's `navigator.gpu`).
//!
//! Pipelines are compiled once per kernel and cached; buffers come from a [`pool::BufferPool`]
//! because buffer creation is expensive in WebGPU. Each kernel family lives in its own file with
//! its WGSL beside it.

mod binary;
mod matmul;
mod pool;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use bytes::Bytes;
use shared_proto::{AdapterInfo, ErrorKind, Kernel, RemoteError, Tensor, WebGpuCaps};

use super::check;
use pool::{BufferPool, Pooled};

/// An adapter and device, plus what the probe learnt about them.
pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub caps: WebGpuCaps,
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
    Ok(Gpu { device, queue, caps })
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
    pipelines: RefCell<HashMap<&'static str, Rc<wgpu::ComputePipeline>>>,
    pool: BufferPool,
}

/// Output of one kernel run.
pub struct KernelRun {
    pub outputs: Vec<Tensor>,
    /// Submit → results mapped, per repeat.
    pub device_ms: f64,
}

impl WebGpuExecutor {
    pub fn new(gpu: Gpu) -> Self {
        WebGpuExecutor { gpu, pipelines: RefCell::default(), pool: BufferPool::new(512 << 20) }
    }

    pub fn caps(&self) -> &WebGpuCaps {
        &self.gpu.caps
    }

    /// Buffers parked in the pool, ready for reuse.
    pub fn pooled_buffers(&self) -> usize {
        self.pool.idle_buffers()
    }

    pub async fn run_kernel(&self, kernel: &Kernel, inputs: &[Tensor]) -> Result<KernelRun, RemoteError> {
        check::kernel(kernel, inputs)?;
        match kernel {
            Kernel::MatMul { variant, repeats } => matmul::run(self, *variant, *repeats, inputs).await,
            Kernel::Add => binary::run(self, binary::BinaryOp::Add, inputs).await,
        }
    }

    /// The pipeline for `key`, compiled from `wgsl` on first use.
    fn pipeline(&self, key: &'static str, wgsl: impl FnOnce() -> String) -> Rc<wgpu::ComputePipeline> {
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
        self.pipelines.borrow_mut().insert(key, p.clone());
        p
    }

    /// A pooled storage buffer holding `data`.
    fn upload(&self, data: &[u8]) -> Pooled {
        let buf = self.pool.acquire(&self.gpu.device, data.len() as u64, pool::Kind::StorageIn);
        self.gpu.queue.write_buffer(&buf, 0, data);
        buf
    }

    fn uniform(&self, words: &[u32]) -> Pooled {
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        let buf = self.pool.acquire(&self.gpu.device, bytes.len() as u64, pool::Kind::Uniform);
        self.gpu.queue.write_buffer(&buf, 0, &bytes);
        buf
    }

    fn output(&self, bytes: u64) -> Pooled {
        self.pool.acquire(&self.gpu.device, bytes, pool::Kind::StorageOut)
    }

    fn bind(&self, pipeline: &wgpu::ComputePipeline, buffers: &[&wgpu::Buffer]) -> wgpu::BindGroup {
        let entries: Vec<wgpu::BindGroupEntry> = buffers
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupEntry { binding: i as u32, resource: b.as_entire_binding() })
            .collect();
        self.gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        })
    }

    /// Record `dispatches` of `pipeline` (each `repeats` times), copy `out` back, submit, and
    /// wait for the bytes. Errors raised by WebGPU validation or allocation come back as values.
    async fn submit_and_read(
        &self,
        pipeline: &wgpu::ComputePipeline,
        bind_group: &wgpu::BindGroup,
        workgroups: (u32, u32, u32),
        repeats: u32,
        out: &wgpu::Buffer,
        out_bytes: u64,
    ) -> Result<(Bytes, f64), RemoteError> {
        let device = &self.gpu.device;
        let oom = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let staging = self.pool.acquire(device, out_bytes, pool::Kind::Readback);
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
            pass.set_pipeline(pipeline);
            pass.set_bind_group(0, bind_group, &[]);
            for _ in 0..repeats {
                pass.dispatch_workgroups(workgroups.0, workgroups.1, workgroups.2);
            }
        }
        encoder.copy_buffer_to_buffer(out, 0, &staging, 0, out_bytes);
        let t0 = now_ms();
        self.gpu.queue.submit([encoder.finish()]);
        let (tx, rx) = futures_channel::oneshot::channel();
        staging.slice(..out_bytes).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        let validation = validation.pop();
        let oom = oom.pop();
        let scoped = match (validation.await, oom.await) {
            (Some(e), _) => Some(RemoteError::new(ErrorKind::Internal, format!("WebGPU validation: {e}"))),
            (None, Some(e)) => Some(RemoteError::new(ErrorKind::OutOfMemory, format!("WebGPU: {e}"))),
            (None, None) => None,
        };
        let mapped = match rx.await {
            Ok(Ok(())) => scoped.map_or(Ok(()), Err),
            Ok(Err(e)) => Err(scoped.unwrap_or(RemoteError::new(ErrorKind::DeviceLost, format!("mapAsync: {e}")))),
            Err(_) => Err(RemoteError::new(ErrorKind::DeviceLost, "mapAsync callback dropped")),
        };
        if let Err(e) = mapped {
            staging.discard();
            return Err(e);
        }
        let elapsed = now_ms() - t0;
        let bytes = {
            let view = staging
                .slice(..out_bytes)
                .get_mapped_range()
                .map_err(|e| RemoteError::new(ErrorKind::Internal, format!("getMappedRange: {e}")))?;
            Bytes::copy_from_slice(&view)
        };
        staging.unmap();
        Ok((bytes, elapsed / repeats as f64))
    }
}

fn now_ms() -> f64 {
    js_sys::Reflect::get(&js_sys::global(), &"performance".into())
        .ok()
        .and_then(|p| p.dyn_into::<web_sys::Performance>().ok())
        .map(|p| p.now())
        .unwrap_or_else(js_sys::Date::now)
}

use wasm_bindgen::JsCast;

/// Workgroups needed to cover `n` items with groups of `size`.
fn groups(n: u32, size: u32) -> u32 {
    n.div_ceil(size)
}
