//! Where `--backend auto` runs generation in a tab, from what the tab probed about itself.
//!
//! Decode is one token per step, so it is bound by per-dispatch latency and weight bandwidth: a
//! real GPU wins, but a software WebGPU adapter loses badly to the wasm CPU executor (measured
//! on this machine with SwiftShader: WebGPU decode 1.9 tok/s, wasm CPU 16.8 tok/s). WebNN
//! (cpu device) generates only when asked: it decodes slower than the wasm CPU executor here
//! (3.1 vs 11.3 tok/s, both in chromium-webnn), so it is never chosen.

use shared_proto::{AdapterInfo, Capabilities};

use super::backend_choice::Backend;

/// The choice and why, in words for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenChoice {
    /// `Webgpu` or `WasmCpu`.
    pub target: Backend,
    pub reason: String,
}

/// Names of software rasterizers that expose a WebGPU adapter without a GPU behind it.
const SOFTWARE_ADAPTERS: [&str; 5] = ["swiftshader", "llvmpipe", "lavapipe", "softpipe", "microsoft basic render"];

/// Why `adapter` is a software adapter, or `None` when it is a real GPU.
pub fn software(adapter: &AdapterInfo) -> Option<String> {
    if adapter.is_fallback {
        return Some("the browser marks it as a fallback adapter".into());
    }
    if adapter.device_type.eq_ignore_ascii_case("cpu") {
        return Some("its device type is Cpu".into());
    }
    let fields = [&adapter.name, &adapter.description, &adapter.vendor, &adapter.architecture, &adapter.driver];
    fields.iter().find_map(|f| {
        let lower = f.to_ascii_lowercase();
        SOFTWARE_ADAPTERS.iter().find(|s| lower.contains(*s)).map(|s| format!("{s} is a software rasterizer"))
    })
}

fn describe(a: &AdapterInfo) -> String {
    let mut parts: Vec<&str> = [&a.vendor, &a.architecture, &a.description]
        .into_iter()
        .map(String::as_str)
        .filter(|s| !s.is_empty())
        .collect();
    if parts.is_empty() {
        parts.push(if a.name.is_empty() { "(unnamed)" } else { &a.name });
    }
    format!("{} [{}]", parts.join(" "), a.device_type)
}

pub fn choose(caps: &Capabilities) -> GenChoice {
    let Some(adapter) = &caps.webgpu.adapter else {
        let why = match (&caps.webgpu.error, caps.webgpu.api_present) {
            (Some(e), _) => format!("no WebGPU adapter ({e})"),
            (None, false) => "no WebGPU in this browser".into(),
            (None, true) => "no WebGPU adapter".into(),
        };
        return GenChoice { target: Backend::WasmCpu, reason: format!("{why}, so the wasm CPU executor") };
    };
    match software(adapter) {
        Some(why) => GenChoice {
            target: Backend::WasmCpu,
            reason: format!(
                "WebGPU adapter {} is not a GPU ({why}), so the wasm CPU executor, faster there",
                describe(adapter)
            ),
        },
        None => GenChoice {
            target: Backend::Webgpu,
            reason: format!("WebGPU adapter {} is a GPU, so WebGPU", describe(adapter)),
        },
    }
}

#[cfg(test)]
mod tests {
    use shared_proto::WebGpuCaps;

    use super::*;

    fn with_adapter(a: AdapterInfo) -> Capabilities {
        Capabilities {
            webgpu: WebGpuCaps { api_present: true, adapter: Some(a), ..Default::default() },
            ..Default::default()
        }
    }

    #[test]
    fn real_gpus_get_webgpu() {
        for (vendor, device_type) in [("nvidia", "DiscreteGpu"), ("intel", "IntegratedGpu"), ("apple", "Other")] {
            let a = AdapterInfo {
                vendor: vendor.into(),
                description: format!("{vendor} GPU"),
                device_type: device_type.into(),
                ..Default::default()
            };
            let c = choose(&with_adapter(a));
            assert_eq!(c.target, Backend::Webgpu, "{vendor} {device_type}: {}", c.reason);
        }
    }

    #[test]
    fn software_adapters_get_the_wasm_cpu_executor() {
        // As Debian Chromium reports SwiftShader here (see commands::adapter_line).
        let swiftshader = AdapterInfo {
            vendor: "google".into(),
            architecture: "swiftshader".into(),
            description: "SwiftShader Device (Subzero)".into(),
            device_type: "Cpu".into(),
            ..Default::default()
        };
        let c = choose(&with_adapter(swiftshader.clone()));
        assert_eq!(c.target, Backend::WasmCpu);
        assert!(c.reason.contains("SwiftShader"), "{}", c.reason);
        // Each sign alone is enough.
        let named_only = AdapterInfo { device_type: "Other".into(), ..swiftshader };
        assert_eq!(choose(&with_adapter(named_only)).target, Backend::WasmCpu);
        let fallback_only = AdapterInfo { is_fallback: true, device_type: "DiscreteGpu".into(), ..Default::default() };
        assert_eq!(choose(&with_adapter(fallback_only)).target, Backend::WasmCpu);
        let cpu_only = AdapterInfo { vendor: "mesa".into(), device_type: "Cpu".into(), ..Default::default() };
        assert_eq!(choose(&with_adapter(cpu_only)).target, Backend::WasmCpu);
        let llvmpipe = AdapterInfo { description: "llvmpipe (LLVM 19.1)".into(), ..Default::default() };
        assert_eq!(choose(&with_adapter(llvmpipe)).target, Backend::WasmCpu);
    }

    #[test]
    fn no_webgpu_gets_the_wasm_cpu_executor_and_says_why() {
        let c = choose(&Capabilities::default());
        assert_eq!(c.target, Backend::WasmCpu);
        assert!(c.reason.contains("no WebGPU in this browser"), "{}", c.reason);
        let mut caps = Capabilities::default();
        caps.webgpu.api_present = true;
        caps.webgpu.error = Some("requestAdapter returned null".into());
        let c = choose(&caps);
        assert_eq!(c.target, Backend::WasmCpu);
        assert!(c.reason.contains("requestAdapter returned null"), "{}", c.reason);
    }
}
