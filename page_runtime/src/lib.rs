//! The in-tab runtime. In a browser (wasm32) it connects back to the host, probes what the tab
//! can do, and serves kernel requests on WebGPU. The CPU executor also compiles natively: the
//! host uses it as its fallback and as the reference in tests.

// The threaded build (nightly, -Z build-std: `scripts/build-page.sh`) sleeps its workers with
// `memory.atomic.wait32`, whose intrinsic is still unstable.
#![cfg_attr(all(target_arch = "wasm32", target_feature = "atomics"), feature(stdarch_wasm_atomic_wait))]

pub mod executors;
pub mod prefix_cache;
pub mod sessions;

#[cfg(all(target_arch = "wasm32", feature = "api"))]
pub mod api;
#[cfg(all(target_arch = "wasm32", feature = "api"))]
pub mod api_generate;
#[cfg(target_arch = "wasm32")]
mod caps;
#[cfg(target_arch = "wasm32")]
mod models;
#[cfg(target_arch = "wasm32")]
mod serve;
#[cfg(target_arch = "wasm32")]
mod socket;
#[cfg(target_arch = "wasm32")]
mod weight_cache;

#[cfg(target_arch = "wasm32")]
pub use executors::webgpu;

/// Entry point called by `www/main.js` once the wasm module is instantiated.
#[cfg(target_arch = "wasm32")]
#[wasm_bindgen::prelude::wasm_bindgen]
pub async fn run() -> Result<(), wasm_bindgen::JsValue> {
    serve::run().await.map_err(|e| wasm_bindgen::JsValue::from_str(&e))
}
