//! Which backend runs a model on a tab: the fastest one measured by a short calibration run at
//! load — not a fixed table. A backend that failed to load or run is never chosen.

use shared_proto::{Capabilities, ExecBackend};

use super::gen_backend::GenTarget;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Calibrate at load: WebNN and WebGPU in a real tab and the host CPU executor, keep the
    /// fastest. If no tab can start, the CPU executor, with a warning saying why.
    Auto,
    /// WebNN (cpu device) in a `chromium-webnn` tab; fails if unavailable.
    Webnn,
    /// WebGPU in a Debian Chromium tab; fails if there is no adapter.
    Webgpu,
    /// The CPU executor in this process.
    Cpu,
}

impl Backend {
    /// The forced backend that loads a model on `exec` again without calibrating (the inverse
    /// of `load_in_tab`'s choice; the host CPU is not a tab backend).
    pub fn forcing(exec: &ExecBackend) -> Option<Backend> {
        match exec {
            ExecBackend::WebGpu => Some(Backend::Webgpu),
            ExecBackend::WebNn { .. } => Some(Backend::Webnn),
            ExecBackend::Cpu => None,
        }
    }
}

/// One calibration measurement: median ms of the calibration input, or why it failed.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Measured {
    pub backend: String,
    pub median_ms: Option<f64>,
    pub error: Option<String>,
}

impl Measured {
    pub fn ok(backend: impl Into<String>, ms: f64) -> Self {
        Measured { backend: backend.into(), median_ms: Some(ms), error: None }
    }
    pub fn failed(backend: impl Into<String>, error: impl Into<String>) -> Self {
        Measured { backend: backend.into(), median_ms: None, error: Some(error.into()) }
    }
}

/// Index of the backend to use: the lowest finite median; on a tie the earlier candidate (the
/// caller lists candidates in preference order). `None` when everything failed.
pub fn choose(measured: &[Measured]) -> Option<usize> {
    measured
        .iter()
        .enumerate()
        .filter_map(|(i, m)| m.median_ms.filter(|v| v.is_finite() && *v >= 0.0).map(|v| (i, v)))
        .fold(None, |best: Option<(usize, f64)>, (i, v)| match best {
            Some((_, b)) if b <= v => best,
            _ => Some((i, v)),
        })
        .map(|(i, _)| i)
}

/// Where a generation replica runs in a tab: the asked backend, or for `Auto` what
/// `gen_backend::choose` says (WebGPU on a real GPU adapter, else the wasm CPU executor). `Cpu` means the CPU executor inside the tab
/// (the host's own is not a replica). `Webnn` needs the tab's WebNN cpu context (auto never picks
/// it: on the CPU it decodes slower than the wasm CPU executor).
pub fn for_generation(wanted: Backend, caps: &Capabilities) -> anyhow::Result<ExecBackend> {
    match wanted {
        Backend::Webgpu => {
            anyhow::ensure!(
                caps.webgpu.adapter.is_some(),
                "this tab has no WebGPU adapter: {}",
                caps.webgpu.error.as_deref().unwrap_or("none reported")
            );
            Ok(ExecBackend::WebGpu)
        }
        Backend::Webnn => {
            let cpu = caps.webnn.contexts.iter().find(|c| c.device_type == "cpu");
            anyhow::ensure!(
                cpu.is_some_and(|c| c.ok),
                "this tab has no WebNN cpu context: {}",
                cpu.and_then(|c| c.error.as_deref()).unwrap_or("none probed")
            );
            Ok(ExecBackend::WebNn { device: "cpu".into() })
        }
        Backend::Cpu => Ok(ExecBackend::Cpu),
        Backend::Auto => Ok(match super::gen_backend::choose(caps).target {
            GenTarget::WebGpu => ExecBackend::WebGpu,
            GenTarget::WasmCpu => ExecBackend::Cpu,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fastest_wins() {
        let m = [Measured::ok("webnn-cpu", 6.0), Measured::ok("webgpu", 200.0), Measured::ok("cpu", 15.0)];
        assert_eq!(choose(&m), Some(0));
        let m = [Measured::ok("webnn-cpu", 30.0), Measured::ok("webgpu", 2.0), Measured::ok("cpu", 15.0)];
        assert_eq!(choose(&m), Some(1), "on a GPU machine WebGPU leads");
    }

    #[test]
    fn failures_and_nonsense_are_never_chosen() {
        let m = [
            Measured::failed("webnn-cpu", "op gelu unsupported"),
            Measured::ok("webgpu", f64::NAN),
            Measured::ok("cpu", 15.0),
        ];
        assert_eq!(choose(&m), Some(2));
        assert_eq!(choose(&[Measured::failed("webgpu", "no adapter")]), None);
        assert_eq!(choose(&[]), None);
    }

    #[test]
    fn ties_keep_preference_order() {
        let m = [Measured::ok("webnn-cpu", 5.0), Measured::ok("cpu", 5.0)];
        assert_eq!(choose(&m), Some(0));
    }

    fn caps_with(adapter: Option<shared_proto::AdapterInfo>) -> Capabilities {
        let mut c = Capabilities::default();
        c.webgpu.adapter = adapter;
        c
    }

    #[test]
    fn generation_takes_the_asked_backend_and_auto_follows_gen_backend() {
        let swiftshader =
            shared_proto::AdapterInfo { architecture: "swiftshader".into(), ..shared_proto::AdapterInfo::default() };
        let auto = for_generation(Backend::Auto, &caps_with(Some(swiftshader.clone()))).unwrap();
        assert_eq!(auto, ExecBackend::Cpu, "a software adapter: the tab's CPU executor");
        assert_eq!(for_generation(Backend::Webgpu, &caps_with(Some(swiftshader))).unwrap(), ExecBackend::WebGpu);
        assert!(for_generation(Backend::Webgpu, &caps_with(None)).is_err(), "no adapter, no WebGPU");
        let e = for_generation(Backend::Webnn, &caps_with(None)).unwrap_err().to_string();
        assert!(e.contains("WebNN cpu context"), "{e}");
        let mut nn = caps_with(None);
        let probe = |ok| shared_proto::WebNnContextProbe { device_type: "cpu".into(), ok, error: None };
        nn.webnn.contexts.push(probe(false));
        assert!(for_generation(Backend::Webnn, &nn).is_err(), "a failed context probe");
        nn.webnn.contexts[0] = probe(true);
        assert_eq!(for_generation(Backend::Webnn, &nn).unwrap(), ExecBackend::WebNn { device: "cpu".into() });
        assert_eq!(for_generation(Backend::Cpu, &caps_with(None)).unwrap(), ExecBackend::Cpu);
    }
}
