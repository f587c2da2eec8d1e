//! Sentence embeddings with MiniLM on a chosen backend — or, by default, on the backend a short
//! calibration run measured fastest.

use std::time::Instant;

use anyhow::{Context, bail};
use page_runtime::executors::cpu::CpuModel;
use shared_proto::ExecBackend;

use super::remembered::{self, CalibrationCache, Remembered};
use super::tab_model::{TabModel, WeightUpload};
use crate::browser::BrowserKind;
use crate::family::BatchModel;
use crate::models::minilm::{self, CALIBRATION_TEXT, MiniLm};
use crate::policy::backend_choice::{self, Measured};
use crate::{Host, Tab};

pub use crate::policy::backend_choice::Backend;

enum Exec {
    Cpu(CpuModel),
    Tab(TabModel),
}

pub struct Embedder {
    model: MiniLm,
    exec: Exec,
    pub load: LoadReport,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadReport {
    /// What runs the model: "webnn-cpu", "webgpu", "wasm-cpu" (in a tab) or "cpu" (host).
    pub backend: String,
    pub browser: Option<BrowserKind>,
    /// Reading safetensors + tokenizer and building the graph.
    pub read_ms: f64,
    /// Tab start (launch → authenticated Hello); 0 on the host CPU.
    pub tab_start_ms: f64,
    /// Declaring the graph, uploading weights and compiling (a warm-up run), for the chosen backend.
    pub load_ms: f64,
    pub prepare_ms: f64,
    pub weight_bytes: u64,
    pub adapter: Option<String>,
    /// Calibration medians per candidate (empty when a backend was forced).
    pub calibration: Vec<Measured>,
    /// The user agent of the tab that runs the model or was calibrated.
    pub user_agent: Option<String>,
    /// Set when `calibration` was remembered from an earlier run (Unix seconds it was measured)
    /// rather than measured now (`Embedder::load_remembered`).
    pub remembered_at: Option<u64>,
}

pub struct Embeddings {
    /// One L2-normalised vector per text.
    pub vectors: Vec<Vec<f32>>,
    pub lengths: Vec<usize>,
    pub truncated: Vec<bool>,
    /// Executor time for the batch: the tab's device time, or the CPU run.
    pub compute_ms: f64,
}

impl Embedder {
    /// Load MiniLM (default cache) onto `backend`; a tab is launched through `host` if needed.
    pub async fn load(host: &mut Host, backend: Backend, progress: &dyn WeightUpload) -> anyhow::Result<Embedder> {
        let t = Instant::now();
        let model = MiniLm::load(None)?;
        let read_ms = t.elapsed().as_secs_f64() * 1e3;
        let mut e = match backend {
            Backend::Cpu => Self::on_cpu(model)?,
            Backend::Webgpu => {
                Self::in_new_tab(host, model, BrowserKind::Chromium, ExecBackend::WebGpu, progress).await?
            }
            Backend::Webnn | Backend::WasmCpu => {
                let exec = backend.in_tab().expect("a tab backend");
                Self::in_new_tab(host, model, BrowserKind::ChromiumWebnn, exec, progress).await?
            }
            Backend::Auto => Self::calibrated(host, model, progress).await?,
        };
        e.load.read_ms = read_ms;
        Ok(e)
    }

    /// Load MiniLM in a new tab of `kind` on `backend` (webnn, webgpu; `auto` calibrates that
    /// tab; `cpu` stays on the host).
    pub async fn load_in(
        host: &mut Host,
        kind: BrowserKind,
        backend: Backend,
        progress: &dyn WeightUpload,
    ) -> anyhow::Result<Embedder> {
        let model = MiniLm::load(None)?;
        match backend {
            Backend::Cpu => Self::on_cpu(model),
            Backend::Webgpu => Self::in_new_tab(host, model, kind, ExecBackend::WebGpu, progress).await,
            Backend::Webnn | Backend::WasmCpu => {
                Self::in_new_tab(host, model, kind, backend.in_tab().expect("a tab backend"), progress).await
            }
            Backend::Auto => {
                let t = Instant::now();
                let tab = host.launch(kind).await?;
                let tab_start_ms = t.elapsed().as_secs_f64() * 1e3;
                let (measured, loaded) = calibrate_tab(&tab, &model, progress).await?;
                let best = backend_choice::choose(&measured).context("no backend of this tab could run the model")?;
                let keep = keep_only(loaded, best).await?.expect("the chosen backend loaded");
                Ok(Self::with_tab(model, keep, kind, tab_start_ms, measured))
            }
        }
    }

    fn on_cpu(mut model: MiniLm) -> anyhow::Result<Embedder> {
        let t = Instant::now();
        let weight_bytes = model.weights.iter().map(|w| w.data.len() as u64).sum();
        let cpu = cpu_model(&mut model)?;
        let load = LoadReport {
            backend: "cpu".into(),
            browser: None,
            read_ms: 0.0,
            tab_start_ms: 0.0,
            load_ms: t.elapsed().as_secs_f64() * 1e3,
            prepare_ms: 0.0,
            weight_bytes,
            adapter: None,
            calibration: vec![],
            user_agent: None,
            remembered_at: None,
        };
        Ok(Embedder { model, exec: Exec::Cpu(cpu), load })
    }

    async fn in_new_tab(
        host: &mut Host,
        model: MiniLm,
        kind: BrowserKind,
        exec: ExecBackend,
        progress: &dyn WeightUpload,
    ) -> anyhow::Result<Embedder> {
        let t = Instant::now();
        let tab = host.launch(kind).await?;
        let tab_start_ms = t.elapsed().as_secs_f64() * 1e3;
        if exec == ExecBackend::WebGpu && tab.caps().webgpu.adapter.is_none() {
            bail!("tab {} has no WebGPU device: {}", tab.id(), crate::tab::adapter_line(tab.caps()));
        }
        let tm = load_on(&tab, &model, exec, progress).await?;
        Ok(Self::with_tab(model, tm, kind, tab_start_ms, vec![]))
    }

    fn with_tab(
        model: MiniLm,
        tm: TabModel,
        kind: BrowserKind,
        tab_start_ms: f64,
        calibration: Vec<Measured>,
    ) -> Embedder {
        let adapter = (tm.backend == ExecBackend::WebGpu).then(|| crate::tab::adapter_line(tm.tab.caps()));
        let load = LoadReport {
            backend: tm.backend.to_string(),
            browser: Some(kind),
            read_ms: 0.0,
            tab_start_ms,
            load_ms: tm.load_ms,
            prepare_ms: tm.prepare_ms,
            weight_bytes: tm.weight_bytes,
            adapter,
            calibration,
            user_agent: Some(tm.tab.caps().user_agent.clone()),
            remembered_at: None,
        };
        Embedder { model, exec: Exec::Tab(tm), load }
    }

    /// `--backend auto` as `tabpool embed` runs it: the backend calibration chose on an earlier
    /// run for this model, browser, page and binary (`cache`, see `remembered.rs`) is loaded
    /// directly, without starting every backend and timing it. A full calibration, remembered for
    /// next time, when nothing is remembered, when `recalibrate`, or when the remembered backend
    /// does not load or the browser reports another version than it did (never pinned to a
    /// backend that stopped working).
    pub async fn load_remembered(
        host: &mut Host,
        cache: &CalibrationCache,
        recalibrate: bool,
        progress: &dyn WeightUpload,
    ) -> anyhow::Result<Embedder> {
        let t = Instant::now();
        let model = MiniLm::load(None)?;
        let read_ms = t.elapsed().as_secs_f64() * 1e3;
        let kind = auto_kind(host);
        // No key (the browser binary is missing, say): calibrate, and remember nothing.
        let key = host.browser_binary(kind).and_then(|bin| {
            let www = crate::paths::www_dir(host.config().www.as_deref())?;
            remembered::key(&model, kind, &bin, &host.config().extra_flags, &www)
        });
        let hit = match (&key, recalibrate) {
            (Ok(k), false) => cache.get(k),
            _ => None,
        };
        if let Some(r) = hit {
            match load_as_remembered(host, &model, kind, &r, progress).await {
                Ok(Some((tm, tab_start_ms))) => {
                    let mut e = Self::with_tab(model, tm, kind, tab_start_ms, r.measured);
                    e.load.read_ms = read_ms;
                    e.load.remembered_at = Some(r.at);
                    return Ok(e);
                }
                Ok(None) => {
                    let mut e = Self::on_cpu(model)?;
                    e.load.read_ms = read_ms;
                    e.load.calibration = r.measured;
                    e.load.user_agent = r.user_agent;
                    e.load.remembered_at = Some(r.at);
                    return Ok(e);
                }
                Err(why) => eprintln!(
                    "note: the remembered backend {} no longer loads ({why:#}); calibrating every backend again",
                    r.backend
                ),
            }
        }
        let mut e = Self::calibrated(host, model, progress).await?;
        e.load.read_ms = read_ms;
        // Nothing measured (no tab could start: the CPU fallback) is not a choice to remember.
        if let (Ok(k), false) = (&key, e.load.calibration.is_empty()) {
            let r = Remembered {
                backend: e.load.backend.clone(),
                user_agent: e.load.user_agent.clone(),
                measured: e.load.calibration.clone(),
                at: remembered::now_s(),
            };
            if let Err(why) = cache.put(k, r) {
                eprintln!("note: could not remember the calibration ({why:#}); the next run calibrates again");
            }
        }
        Ok(e)
    }

    /// Measure every backend this machine offers on the calibration input; keep the fastest.
    async fn calibrated(host: &mut Host, model: MiniLm, progress: &dyn WeightUpload) -> anyhow::Result<Embedder> {
        let kind = auto_kind(host);
        let t = Instant::now();
        let tab = match host.launch(kind).await {
            Ok(tab) => tab,
            Err(e) => {
                eprintln!("warning: no browser tab ({e:#}); falling back to the CPU executor");
                return Self::on_cpu(model);
            }
        };
        let tab_start_ms = t.elapsed().as_secs_f64() * 1e3;
        let user_agent = Some(tab.caps().user_agent.clone());
        let (mut measured, loaded) = calibrate_tab(&tab, &model, progress).await?;
        let cpu = Self::on_cpu(model)?;
        let Exec::Cpu(cpu_model) = &cpu.exec else { unreachable!("on_cpu") };
        let input = minilm::inputs_from_ids(&cpu.model.tokenize(&[CALIBRATION_TEXT])?.0);
        let cpu_ms = {
            let mut ms = Vec::new();
            for _ in 0..4 {
                let t = Instant::now();
                tokio::task::block_in_place(|| cpu_model.run(&input)).map_err(|e| anyhow::anyhow!("{e}"))?;
                ms.push(t.elapsed().as_secs_f64() * 1e3);
            }
            crate::stats::median(&ms[1..])
        };
        measured.push(Measured::ok("cpu", cpu_ms));
        let chosen = backend_choice::choose(&measured).context("no backend could run the model")?;
        Ok(match keep_only(loaded, chosen).await? {
            Some(tm) => Self::with_tab(cpu.model, tm, kind, tab_start_ms, measured),
            None => Embedder { load: LoadReport { calibration: measured, user_agent, ..cpu.load }, ..cpu },
        })
    }

    pub fn model(&self) -> &MiniLm {
        &self.model
    }

    /// The tab running the model, if any.
    pub fn tab(&self) -> Option<&Tab> {
        match &self.exec {
            Exec::Tab(tm) => Some(&tm.tab),
            Exec::Cpu(_) => None,
        }
    }

    /// Run the model on graph inputs as they are (tests feed ids no tokenizer would produce).
    pub async fn run_inputs(&self, inputs: Vec<shared_proto::Tensor>) -> anyhow::Result<Vec<shared_proto::Tensor>> {
        match &self.exec {
            Exec::Cpu(cpu) => tokio::task::block_in_place(|| cpu.run(&inputs)).map_err(|e| anyhow::anyhow!("{e}")),
            Exec::Tab(tm) => Ok(tm.run(inputs).await?.0),
        }
    }

    /// Embed `texts` as one batch (padded to its longest text, masked).
    pub async fn embed(&self, texts: &[&str]) -> anyhow::Result<Embeddings> {
        let batch = self.model.batch(texts)?;
        let t = Instant::now();
        let (outputs, compute_ms) = match &self.exec {
            Exec::Cpu(cpu) => {
                let out = tokio::task::block_in_place(|| cpu.run(&batch.inputs)).map_err(|e| anyhow::anyhow!("{e}"))?;
                (out, t.elapsed().as_secs_f64() * 1e3)
            }
            Exec::Tab(tm) => tm.run(batch.inputs).await?,
        };
        let flat = outputs.first().and_then(|t| t.to_f32()).context("model returned no f32 output")?;
        let hidden = self.model.hidden;
        if flat.len() != texts.len() * hidden {
            bail!("model returned {} values for {} texts", flat.len(), texts.len());
        }
        Ok(Embeddings {
            vectors: flat.chunks_exact(hidden).map(<[f32]>::to_vec).collect(),
            lengths: batch.lengths,
            truncated: batch.truncated,
            compute_ms,
        })
    }
}

/// The browser `auto` calibrates in: the WebNN headless shell when it is installed.
fn auto_kind(host: &Host) -> BrowserKind {
    if host.browser_binary(BrowserKind::ChromiumWebnn).is_ok() {
        BrowserKind::ChromiumWebnn
    } else {
        BrowserKind::Chromium
    }
}

/// Load `model` as `r` remembers: `Some` (with the tab start in ms) in a new tab of `kind`, `None`
/// for the host CPU (nothing to start). Fails, closing the tab, if the browser reports another
/// version than when `r` was measured or the backend does not load.
async fn load_as_remembered(
    host: &mut Host,
    model: &MiniLm,
    kind: BrowserKind,
    r: &Remembered,
    progress: &dyn WeightUpload,
) -> anyhow::Result<Option<(TabModel, f64)>> {
    let exec = match r.backend.as_str() {
        "cpu" => return Ok(None),
        "webgpu" => ExecBackend::WebGpu,
        "wasm-cpu" => ExecBackend::Cpu,
        other => match other.strip_prefix("webnn-") {
            Some(device) => ExecBackend::WebNn { device: device.into() },
            None => bail!("unknown backend {other:?}"),
        },
    };
    let t = Instant::now();
    let tab = host.launch(kind).await?;
    let tab_start_ms = t.elapsed().as_secs_f64() * 1e3;
    let loaded = async {
        let ua = &tab.caps().user_agent;
        if let Some(then) = r.user_agent.as_ref().filter(|then| *then != ua) {
            bail!("the browser reports {ua:?}, not {then:?} as when it was measured");
        }
        load_on(&tab, model, exec, progress).await
    }
    .await;
    match loaded {
        Ok(tm) => Ok(Some((tm, tab_start_ms))),
        Err(e) => {
            host.close_tab(tab.id()).await;
            Err(e)
        }
    }
}

/// The CPU executor for `model`, taking its weights: the executor keeps them as f32 arrays, so
/// the loader's bytes are dropped and the host holds the model once, not twice.
pub fn cpu_model(model: &mut MiniLm) -> anyhow::Result<CpuModel> {
    CpuModel::new(model.graph.clone(), std::mem::take(&mut model.weights)).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Keep the calibrated model at `chosen` (if it is one of the tab's); unload every other one.
async fn keep_only(loaded: Vec<Option<TabModel>>, chosen: usize) -> anyhow::Result<Option<TabModel>> {
    let mut keep = None;
    for (i, tm) in loaded.into_iter().enumerate() {
        match tm {
            Some(tm) if i == chosen => keep = Some(tm),
            Some(tm) => tm.unload().await?,
            None => {}
        }
    }
    Ok(keep)
}

/// Load MiniLM on every backend `tab` offers (WebNN cpu context, WebGPU adapter) and time the
/// calibration input on each. Returns the measurements and the models that loaded, in order.
pub async fn calibrate_tab(
    tab: &Tab,
    model: &dyn BatchModel,
    progress: &dyn WeightUpload,
) -> anyhow::Result<(Vec<Measured>, Vec<Option<TabModel>>)> {
    let candidates = backend_choice::calibration_candidates(tab.caps(), model.time_software_gpu());
    let input = model.inputs(&[&model.calibration_row()?])?;
    let mut measured = Vec::new();
    let mut loaded = Vec::new();
    for exec in candidates {
        match load_on(tab, model, exec.clone(), progress).await {
            Ok(tm) => match median_run_ms(&tm, &input).await {
                Ok(ms) => {
                    measured.push(Measured::ok(exec.to_string(), ms));
                    loaded.push(Some(tm));
                }
                Err(e) => {
                    measured.push(Measured::failed(exec.to_string(), format!("{e:#}")));
                    let _ = tm.unload().await;
                    loaded.push(None);
                }
            },
            Err(e) => {
                measured.push(Measured::failed(exec.to_string(), format!("{e:#}")));
                loaded.push(None);
            }
        }
    }
    Ok((measured, loaded))
}

/// Load `model` in `tab` on `backend` (`auto`: calibrate every backend the tab offers and keep
/// the fastest). Returns the loaded model and the calibration figures (empty when forced).
pub async fn load_in_tab(
    tab: &Tab,
    model: &dyn BatchModel,
    backend: Backend,
    progress: &dyn WeightUpload,
) -> anyhow::Result<(TabModel, Vec<Measured>)> {
    match backend {
        Backend::Webgpu | Backend::Webnn | Backend::WasmCpu => {
            let exec = backend.in_tab().expect("a tab backend");
            Ok((load_on(tab, model, exec, progress).await?, vec![]))
        }
        Backend::Cpu => bail!("backend cpu runs on the host, not in a tab (the tab's own CPU executor is wasm-cpu)"),
        Backend::Auto => {
            let (measured, loaded) = calibrate_tab(tab, model, progress).await?;
            let best = backend_choice::choose(&measured)
                .with_context(|| format!("no backend of tab {} could run {}: {measured:?}", tab.id(), model.name()))?;
            Ok((keep_only(loaded, best).await?.expect("the chosen backend loaded"), measured))
        }
    }
}

async fn load_on(
    tab: &Tab,
    model: &dyn BatchModel,
    exec: ExecBackend,
    progress: &dyn WeightUpload,
) -> anyhow::Result<TabModel> {
    let name = format!("{}@{exec}", model.name());
    TabModel::load(tab, &name, model.graph(), model.weights(), exec.clone(), progress)
        .await
        .with_context(|| format!("loading {} on {exec} in tab {}", model.name(), tab.id()))
}

/// Median of 3 timed runs after one warm-up, host-measured round trip.
async fn median_run_ms(tm: &TabModel, input: &[shared_proto::Tensor]) -> anyhow::Result<f64> {
    tm.run(input.to_vec()).await?;
    let mut ms = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        tm.run(input.to_vec()).await?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(crate::stats::median(&ms))
}

/// Cosine similarity of two vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb).max(f32::MIN_POSITIVE)
}
