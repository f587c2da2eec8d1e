//! Capability probe: what this tab can do, measured by asking the browser.

use js_sys::{Promise, Reflect};
use shared_proto::{Capabilities, WebNnCaps, WebNnContextProbe};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;

use crate::executors::webgpu::{self, WebGpuExecutor};

/// Device types WebNN's `createContext` is asked for.
const WEBNN_DEVICES: [&str; 3] = ["cpu", "gpu", "npu"];

/// Probe everything; the executor is `None` when WebGPU gave no device (the reason is in caps).
pub async fn probe() -> (Capabilities, Option<WebGpuExecutor>) {
    let nav = Reflect::get(&js_sys::global(), &"navigator".into()).unwrap_or(JsValue::UNDEFINED);
    let user_agent = Reflect::get(&nav, &"userAgent".into()).ok().and_then(|v| v.as_string()).unwrap_or_default();
    let hardware_concurrency =
        Reflect::get(&nav, &"hardwareConcurrency".into()).ok().and_then(|v| v.as_f64()).unwrap_or(0.0) as u32;
    let device_memory_gib = Reflect::get(&nav, &"deviceMemory".into()).ok().and_then(|v| v.as_f64());
    let (webgpu, executor) = match webgpu::init().await {
        Ok(gpu) => (gpu.caps.clone(), Some(WebGpuExecutor::new(gpu))),
        Err(caps) => (caps, None),
    };
    let webnn = probe_webnn(&nav).await;
    let threads = crate::executors::cpu::threads() as u32;
    let activations = crate::executors::cpu::quantized_int::activations().name().to_string();
    #[cfg(target_feature = "simd128")]
    let relaxed_simd = crate::executors::cpu::simd::RELAXED;
    #[cfg(not(target_feature = "simd128"))]
    let relaxed_simd = false;
    let caps = Capabilities {
        user_agent,
        hardware_concurrency,
        device_memory_gib,
        webgpu,
        webnn,
        threads,
        activations,
        relaxed_simd,
    };
    (caps, executor)
}

async fn probe_webnn(nav: &JsValue) -> WebNnCaps {
    let ml = Reflect::get(nav, &"ml".into()).unwrap_or(JsValue::UNDEFINED);
    if ml.is_undefined() || ml.is_null() {
        return WebNnCaps { api_present: false, contexts: Vec::new() };
    }
    let mut contexts = Vec::new();
    for device_type in WEBNN_DEVICES {
        let result = create_context(&ml, device_type).await;
        contexts.push(WebNnContextProbe {
            device_type: device_type.to_string(),
            ok: result.is_ok(),
            error: result.err(),
        });
    }
    WebNnCaps { api_present: true, contexts }
}

async fn create_context(ml: &JsValue, device_type: &str) -> Result<(), String> {
    let f: js_sys::Function = Reflect::get(ml, &"createContext".into())
        .map_err(js_text)?
        .dyn_into()
        .map_err(|_| "navigator.ml.createContext is not a function".to_string())?;
    let opts = js_sys::Object::new();
    Reflect::set(&opts, &"deviceType".into(), &device_type.into()).map_err(js_text)?;
    let promise: Promise = f.call1(ml, &opts).map_err(js_text)?.dyn_into().map_err(js_text)?;
    JsFuture::from(promise).await.map(|_| ()).map_err(js_text)
}

/// A JS exception as text: `Error.message` when it has one.
pub fn js_text(v: JsValue) -> String {
    if let Some(e) = v.dyn_ref::<js_sys::Error>() {
        return format!("{}: {}", e.name(), e.message());
    }
    v.as_string().unwrap_or_else(|| format!("{v:?}"))
}
