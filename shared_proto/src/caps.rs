//! What a tab reports about itself in `Hello`: measured by probing, never assumed.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Capabilities {
    pub user_agent: String,
    pub hardware_concurrency: u32,
    /// `navigator.deviceMemory` in GiB where the browser exposes it.
    pub device_memory_gib: Option<f64>,
    pub webgpu: WebGpuCaps,
    pub webnn: WebNnCaps,
    /// Threads the tab's CPU executor spreads kernels over: 1, or the main thread and its
    /// workers in the threaded build (a cross-origin isolated page asked for `threads=N`).
    pub threads: u32,
    /// What the CPU executor's block-quantized Linear multiplies the weights with: "f32",
    /// "int16" (activations rounded to 16-bit blocks, integer dots) or "int8-batched" (8-bit
    /// blocks for several rows at once) — what the host asked with `&activations=`.
    pub activations: String,
    /// The page's relaxed-SIMD build runs (the browser validated `f32x4.relaxed_madd`): the
    /// CPU executor's f32 multiply-adds are fused.
    pub relaxed_simd: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WebGpuCaps {
    /// `navigator.gpu` exists.
    pub api_present: bool,
    /// Set when an adapter and device were obtained.
    pub adapter: Option<AdapterInfo>,
    /// Why no adapter/device, in the browser's words.
    pub error: Option<String>,
    /// Selected adapter limits, by their WebGPU names.
    pub limits: Vec<(String, u64)>,
    pub features: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdapterInfo {
    pub name: String,
    /// `GPUAdapterInfo.architecture` / `.description` as the browser reports them.
    pub architecture: String,
    pub description: String,
    pub is_fallback: bool,
    pub vendor: String,
    pub device_type: String,
    pub backend: String,
    pub driver: String,
    pub driver_info: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebNnCaps {
    /// `navigator.ml` exists.
    pub api_present: bool,
    /// One probe per device type tried with `createContext`.
    pub contexts: Vec<WebNnContextProbe>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebNnContextProbe {
    pub device_type: String,
    pub ok: bool,
    pub error: Option<String>,
}
