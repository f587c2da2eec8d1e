//! Which backend runs a model on a tab: the fastest one measured by a short calibration run at
//! load — not a fixed table. A backend that failed to load or run is never chosen.

use shared_proto::{Capabilities, ExecBackend};

use super::Named;

/// Where a model runs — the one enum every family, command and pool setting uses. The tab's
/// own executors are `Webnn`, `Webgpu` and `WasmCpu`; `Cpu` is always the host's CPU executor
/// (this process); `Auto` lets each family choose (calibration, or the generation rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Auto,
    Webnn,
    Webgpu,
    /// The CPU executor inside a tab's wasm.
    #[serde(rename = "wasm-cpu")]
    WasmCpu,
    /// The CPU executor in this process.
    Cpu,
}

impl Named for Backend {
    const ALL: &'static [Backend] = &[Backend::Auto, Backend::Webnn, Backend::Webgpu, Backend::WasmCpu, Backend::Cpu];
    fn name(self) -> &'static str {
        match self {
            Backend::Auto => "auto",
            Backend::Webnn => "webnn",
            Backend::Webgpu => "webgpu",
            Backend::WasmCpu => "wasm-cpu",
            Backend::Cpu => "cpu",
        }
    }
    fn help(self) -> &'static str {
        match self {
            Backend::Auto => {
                "choose per model: batch models calibrate every backend a tab offers and keep the fastest; \
                 generation takes WebGPU on a real GPU, else the tab's wasm CPU executor"
            }
            Backend::Webnn => "WebNN (cpu device) in a chromium-webnn tab; fails if unavailable",
            Backend::Webgpu => "WebGPU in a Chromium tab; fails if there is no adapter",
            Backend::WasmCpu => "the CPU executor inside a tab's wasm",
            Backend::Cpu => "the CPU executor in this process, no browser",
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Backend {
    /// The forced backend that loads a model on `exec` again without calibrating (the inverse
    /// of `load_in_tab`'s choice).
    pub fn forcing(exec: &ExecBackend) -> Backend {
        match exec {
            ExecBackend::WebGpu => Backend::Webgpu,
            ExecBackend::WebNn { .. } => Backend::Webnn,
            ExecBackend::Cpu => Backend::WasmCpu,
        }
    }

    /// What a tab runs for this backend; `None` for `Auto` (a family's choice) and `Cpu` (the
    /// host, not a tab).
    pub fn in_tab(self) -> Option<ExecBackend> {
        match self {
            Backend::Webgpu => Some(ExecBackend::WebGpu),
            Backend::Webnn => Some(ExecBackend::WebNn { device: "cpu".into() }),
            Backend::WasmCpu => Some(ExecBackend::Cpu),
            Backend::Auto | Backend::Cpu => None,
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

/// The tab backends a calibration times, in preference order: WebNN's cpu context, WebGPU, and
/// the tab's wasm CPU executor unless WebNN or a hardware GPU is there. On a tab whose only GPU is
/// software (SwiftShader, lavapipe) the wasm executor is timed beside it: MiniLM on SwiftShader
/// served 5.7 sent/s against the wasm executor's 41.9 on the same 1-core Grid node (`bench grid`,
/// 2026-12-07). A model that says a software WebGPU adapter is not worth timing
/// (`time_software_gpu` false: Whisper's encoder ran one window for over two minutes on
/// SwiftShader here) skips such an adapter, and always times the wasm CPU executor.
pub fn calibration_candidates(caps: &Capabilities, time_software_gpu: bool) -> Vec<ExecBackend> {
    let mut out: Vec<ExecBackend> = caps
        .webnn
        .contexts
        .iter()
        .filter(|c| c.ok && c.device_type == "cpu")
        .map(|c| ExecBackend::WebNn { device: c.device_type.clone() })
        .collect();
    if let Some(a) = &caps.webgpu.adapter
        && (time_software_gpu || super::gen_backend::software(a).is_none())
    {
        out.push(ExecBackend::WebGpu);
    }
    let hardware_gpu = caps.webgpu.adapter.as_ref().is_some_and(|a| super::gen_backend::software(a).is_none());
    let webnn = out.iter().any(|b| matches!(b, ExecBackend::WebNn { .. }));
    if !time_software_gpu || !(webnn || hardware_gpu) {
        // Nothing here that could beat it (or a model that always wants it timed): the tab's own
        // wasm CPU executor is real compute too.
        out.push(ExecBackend::Cpu);
    }
    out
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
/// `gen_backend::choose` says (WebGPU on a real GPU adapter, else the wasm CPU executor). `Cpu`
/// (the host's executor) is not a tab backend. `Webnn` needs the tab's WebNN cpu context (auto
/// never picks it: on the CPU it decodes slower than the wasm CPU executor).
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
        Backend::WasmCpu => Ok(ExecBackend::Cpu),
        Backend::Cpu => {
            anyhow::bail!("backend cpu runs on the host, not in a tab (the tab's own CPU executor is wasm-cpu)")
        }
        Backend::Auto => for_generation(super::gen_backend::choose(caps).target, caps),
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
        assert_eq!(for_generation(Backend::WasmCpu, &caps_with(None)).unwrap(), ExecBackend::Cpu);
        assert!(for_generation(Backend::Cpu, &caps_with(None)).is_err(), "the host is not a tab");
    }

    #[test]
    fn calibration_times_what_the_tab_has_and_skips_a_software_gpu_when_asked() {
        let swiftshader =
            shared_proto::AdapterInfo { architecture: "swiftshader".into(), ..shared_proto::AdapterInfo::default() };
        let gpu =
            shared_proto::AdapterInfo { device_type: "DiscreteGpu".into(), ..shared_proto::AdapterInfo::default() };
        let nn = shared_proto::WebNnContextProbe { device_type: "cpu".into(), ok: true, error: None };
        let webnn = ExecBackend::WebNn { device: "cpu".into() };
        let mut c = caps_with(Some(swiftshader));
        c.webnn.contexts.push(nn.clone());
        assert_eq!(calibration_candidates(&c, true), [webnn.clone(), ExecBackend::WebGpu]);
        assert_eq!(calibration_candidates(&c, false), [webnn.clone(), ExecBackend::Cpu]);
        let mut c = caps_with(Some(gpu));
        c.webnn.contexts.push(nn);
        assert_eq!(calibration_candidates(&c, false), [webnn, ExecBackend::WebGpu, ExecBackend::Cpu]);
        assert_eq!(calibration_candidates(&caps_with(None), true), [ExecBackend::Cpu], "nothing else: wasm");
        // A software adapter alone (Debian Chromium, a Grid node): wasm is timed beside it.
        let soft = caps_with(Some(shared_proto::AdapterInfo {
            architecture: "swiftshader".into(),
            ..shared_proto::AdapterInfo::default()
        }));
        assert_eq!(calibration_candidates(&soft, true), [ExecBackend::WebGpu, ExecBackend::Cpu]);
        let mut hw = caps_with(Some(shared_proto::AdapterInfo {
            device_type: "DiscreteGpu".into(),
            ..shared_proto::AdapterInfo::default()
        }));
        assert_eq!(calibration_candidates(&hw, true), [ExecBackend::WebGpu], "a hardware GPU alone");
        hw.webgpu.adapter = None;
        assert_eq!(calibration_candidates(&hw, true), [ExecBackend::Cpu]);
    }
}
