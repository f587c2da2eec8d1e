//! Where a generation model runs for the CLI (`generate`, `chat`, the generation and shard
//! benches): a tab of the right kind, the host's CPU executor, or a pipeline of stage tabs with
//! spares — and the loop that streams one prompt's tokens from a decoder. `serve` places its
//! replicas through the pool (`pool::generation`, `pool::pipelines`); both load through
//! `Stepper` and `Pipeline` here in `exec`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, bail};
use futures_util::future::BoxFuture;
use shared_proto::{ExecBackend, Sampling};

use crate::Host;
use crate::browser::BrowserKind;
use crate::exec::{Decoder, Finish, GenEvent, GenParams, Pipeline, Replacer, Replanner, StepLimits, Stepper};
use crate::models::smollm2::{KvLimits, Outputs, SmolLm2, TextStream};
use crate::policy::backend_choice::Backend;
use crate::policy::gen_backend;
use crate::policy::sharding::{self, Part, Strategy};

/// What `generate` and `chat` share: where to run and how to sample.
pub struct GenOptions {
    pub backend: Backend,
    /// A system prompt instead of the model's default one.
    pub system: Option<String>,
    pub max_tokens: u32,
    pub temperature: f32,
    pub top_k: u32,
    pub top_p: f32,
    pub seed: u64,
    /// Stages the model is split into, each in its own tab (1: not sharded).
    pub shards: u32,
    /// How a sharded model is split.
    pub strategy: Strategy,
}

/// Tokens one session may hold (prompt + generated): the KV rows reserved per session.
pub const CONTEXT_LIMIT: u32 = 2048;

/// What a finished generation measured.
pub struct Run {
    pub prompt_ids: Vec<u32>,
    pub ids: Vec<u32>,
    /// `None` when the caller cancelled it.
    pub finish: Option<Finish>,
    /// Request → first token (prefill + first sample).
    pub ttft_ms: f64,
    /// Tokens after the first, per second of the time after the first.
    pub decode_tok_s: f64,
    /// Prompt tokens the prefix cache gave (0 when cancelled: the count comes with the end).
    pub cached_tokens: usize,
}

impl GenOptions {
    pub fn sampling(&self) -> anyhow::Result<Sampling> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            bail!("--temperature must be ≥ 0, got {}", self.temperature);
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            bail!("--top-p must be in (0, 1], got {}", self.top_p);
        }
        Ok(if self.temperature == 0.0 {
            Sampling::Greedy
        } else {
            Sampling::TopKP { temperature: self.temperature, top_k: self.top_k, top_p: self.top_p, seed: self.seed }
        })
    }

    /// Checked before anything is loaded, so a bad option fails at once.
    pub fn check(&self) -> anyhow::Result<Sampling> {
        if self.max_tokens == 0 {
            bail!("--max-tokens must be at least 1");
        }
        self.sampling()
    }
}

/// The model loaded on a backend, with its decode loop running.
pub struct Loaded {
    pub model: SmolLm2,
    pub decoder: Decoder,
    pub backend: String,
    /// Why `--backend auto` chose `backend`.
    pub reason: Option<String>,
    pub tab: Option<u64>,
    pub load_ms: f64,
    pub params: GenParams,
    /// A sharded model's stages in order: (tab, its parts, weight bytes); empty when whole.
    pub stages: Vec<(Option<u64>, String, u64)>,
}

/// Put `model` (read from disk since `started`) on `opts.backend` for one session at a time (a
/// progress bar on stderr unless `quiet`).
pub async fn load(
    host: &mut Host,
    model: SmolLm2,
    started: Instant,
    opts: &GenOptions,
    quiet: bool,
) -> anyhow::Result<Loaded> {
    let sampling = opts.check()?;
    // Its tabs (one, or one per shard) share this machine's cores, unless `--tab-threads` said.
    if host.tab_threads_asked().is_none() {
        let cores = crate::policy::threads::local_cores();
        host.set_tab_threads(crate::policy::threads::per_tab(cores, opts.shards as usize));
    }
    let pb = if quiet { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new(0) };
    pb.set_style(
        indicatif::ProgressStyle::with_template("uploading weights {bar:30} {bytes}/{total_bytes} {bytes_per_sec}")
            .expect("valid template"),
    );
    let (stepper, reason) = place(host, &model, opts.backend, 1, (opts.shards, opts.strategy), &pb).await?;
    pb.finish_and_clear();
    let (backend, tab) = (stepper.backend(), stepper.tab_id());
    let mut stages = Vec::new();
    if opts.shards > 1 {
        // The layout `place` ran (it is a pure function of the same arguments).
        let costs = model.part_costs()?;
        let (layout, _) = sharding::layout(opts.strategy, &costs, None, opts.shards as usize)?;
        let tabs = stepper.tab_ids();
        for (i, (_, parts)) in layout.iter().enumerate() {
            let described = sharding::describe(parts);
            stages.push((tabs.get(i).copied(), described, costs.stage_weight_bytes(parts)));
        }
    }
    let load_ms = started.elapsed().as_secs_f64() * 1e3;
    let decoder = Decoder::start(std::sync::Arc::new(stepper), StepLimits::default(), None);
    let params = GenParams { max_tokens: opts.max_tokens, sampling, stop_ids: model.eos_ids.clone() };
    Ok(Loaded { model, decoder, backend, reason, tab, load_ms, params, stages })
}

/// Put `model` on `backend` for up to `max_sessions` sessions (a tab is launched for in-tab backends).
pub async fn stepper(
    host: &mut Host,
    model: &SmolLm2,
    backend: Backend,
    max_sessions: u32,
    progress: &dyn crate::exec::WeightUpload,
) -> anyhow::Result<Stepper> {
    Ok(place(host, model, backend, max_sessions, (1, Strategy::Layer), progress).await?.0)
}

/// [`stepper`], and for `Auto` why it chose the backend it did.
pub async fn place(
    host: &mut Host,
    model: &SmolLm2,
    backend: Backend,
    max_sessions: u32,
    (shards, strategy): (u32, Strategy),
    progress: &dyn crate::exec::WeightUpload,
) -> anyhow::Result<(Stepper, Option<String>)> {
    let limits = kv_limits(model, max_sessions);
    if shards > 1 {
        let (stages, micro) = sharding::layout(strategy, &model.part_costs()?, None, shards as usize)?;
        let p = pipeline_of(host, model, backend, &stages, micro, max_sessions, 0, progress).await?;
        return Ok((p, None));
    }
    match backend {
        Backend::Cpu => {
            let (graph, weights) = model.graph(limits, Outputs::default())?;
            Ok((Stepper::on_host(graph, weights)?, None))
        }
        Backend::Auto => {
            // Debian Chromium: it probes WebGPU and also runs the wasm CPU executor, so the tab
            // that was probed is the one used.
            let tab = host.launch(BrowserKind::Chromium).await?;
            let choice = gen_backend::choose(tab.caps());
            Ok((load_in(&tab, model, choice.target, limits, progress).await?, Some(choice.reason)))
        }
        Backend::Webgpu | Backend::WasmCpu | Backend::Webnn => {
            let tab = launch_for(host, backend).await?;
            Ok((load_in(&tab, model, backend, limits, progress).await?, None))
        }
    }
}

/// `model` split into `shards` stages of contiguous layers, each loaded in its own tab (or, on
/// `cpu`, its own host executor) with only its own weights, for up to `max_sessions` sessions.
/// `spares` more tabs are started empty: a stage whose tab is lost is loaded into one of them
/// and its sessions' KV caches rebuilt there (see [`Pipeline`]).
pub async fn pipeline(
    host: &mut Host,
    model: &SmolLm2,
    backend: Backend,
    shards: u32,
    max_sessions: u32,
    spares: u32,
    progress: &dyn crate::exec::WeightUpload,
) -> anyhow::Result<Stepper> {
    let layers = model.config.layers;
    if shards > layers {
        bail!("--shards {shards}: the model has only {layers} layers");
    }
    let (stages, _) = sharding::layout(Strategy::Layer, &model.part_costs()?, None, shards as usize)?;
    pipeline_of(host, model, backend, &stages, 1, max_sessions, spares, progress).await
}

/// `model` as the pipeline `stages` describe — `(tab, parts)` in model order, tabs numbered
/// from 0 (two stages may share a tab) — with a step's rows going through in up to
/// `micro_batches` groups; see [`pipeline`].
#[allow(clippy::too_many_arguments)]
pub async fn pipeline_of(
    host: &mut Host,
    model: &SmolLm2,
    backend: Backend,
    stages: &[(usize, Vec<Part>)],
    micro_batches: usize,
    max_sessions: u32,
    spares: u32,
    progress: &dyn crate::exec::WeightUpload,
) -> anyhow::Result<Stepper> {
    let limits = kv_limits(model, max_sessions);
    let backend = match backend {
        // Auto's choice needs a probed tab; a sharded run takes the CPU executor in tabs, which
        // every tab has, unless a backend is named.
        Backend::Auto => Backend::WasmCpu,
        b => b,
    };
    let graphs = stages
        .iter()
        .map(|(_, parts)| model.stage_graph(limits, parts, Outputs::default()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut tabs: Vec<crate::Tab> = Vec::new();
    let mut steppers = Vec::new();
    for (i, ((tab, _), (graph, weights))) in stages.iter().zip(&graphs).enumerate() {
        steppers.push(if backend == Backend::Cpu {
            Stepper::on_host(graph.clone(), weights.clone())?
        } else {
            while tabs.len() <= *tab {
                tabs.push(launch_for(host, backend).await?);
            }
            load_stage(&tabs[*tab], &format!("{}/stage {i}", model.name), graph, weights, backend, progress).await?
        });
    }
    // A stage no spare can take: contiguous layer ranges over the stage tabs still connected.
    let replanner: Replanner = {
        let (tabs, model, plans) = (tabs.clone(), model.clone(), Arc::new(AtomicU64::new(0)));
        Arc::new(move |_lost: usize| {
            let (tabs, model, plans) = (tabs.clone(), model.clone(), plans.clone());
            Box::pin(async move {
                let live: Vec<&crate::Tab> = tabs.iter().filter(|t| t.is_connected()).collect();
                anyhow::ensure!(!live.is_empty(), "no stage tab is left to re-plan {} on", model.name);
                let k = plans.fetch_add(1, Ordering::Relaxed) + 1;
                let shards = live.len().min(model.config.layers as usize);
                let (layout, _) = sharding::layout(Strategy::Layer, &model.part_costs()?, None, shards)?;
                let mut stages = Vec::new();
                for (j, (_, parts)) in layout.iter().enumerate() {
                    let (graph, weights) = model.stage_graph(limits, parts, Outputs::default())?;
                    let name = format!("{}/plan {k}/stage {j}", model.name);
                    stages.push(load_stage(live[j], &name, &graph, &weights, backend, &()).await?);
                }
                Ok(stages)
            }) as BoxFuture<'static, anyhow::Result<Vec<Stepper>>>
        })
    };
    let replacer: Option<Replacer> = if spares > 0 && backend != Backend::Cpu {
        let mut tabs = Vec::new();
        for _ in 0..spares {
            tabs.push(launch_for(host, backend).await?);
        }
        let (spares, graphs, name) = (Arc::new(Mutex::new(tabs)), Arc::new(graphs), model.name.clone());
        Some(Arc::new(move |i: usize| {
            let (spares, graphs, name) = (spares.clone(), graphs.clone(), name.clone());
            Box::pin(async move {
                let tab = spares.lock().expect("spares").pop().context("no spare tab left to replace a lost stage")?;
                let (graph, weights) = &graphs[i];
                load_stage(&tab, &format!("{name}/stage {i}"), graph, weights, backend, &()).await
            }) as BoxFuture<'static, anyhow::Result<Stepper>>
        }))
    } else {
        None
    };
    let pipeline = Pipeline::new(steppers, model.config.hidden, micro_batches, replacer)?;
    Ok(Stepper::Pipeline(if backend == Backend::Cpu { pipeline } else { pipeline.with_replanner(replanner) }))
}

/// A stage loaded into `tab` as its own model `name` (`model/stage i`: two stages may share a tab).
async fn load_stage(
    tab: &crate::Tab,
    name: &str,
    graph: &shared_proto::Graph,
    weights: &[shared_proto::Tensor],
    backend: Backend,
    progress: &dyn crate::exec::WeightUpload,
) -> anyhow::Result<Stepper> {
    let exec = exec_backend(backend)?;
    Stepper::in_tab(tab, name, graph, weights, exec.clone(), progress)
        .await
        .with_context(|| format!("loading {name} on {exec} in tab {}", tab.id()))
}

/// The KV cache for `max_sessions` sessions of up to [`CONTEXT_LIMIT`] tokens.
pub fn kv_limits(model: &SmolLm2, max_sessions: u32) -> KvLimits {
    KvLimits { max_tokens: CONTEXT_LIMIT.min(model.context_length) * max_sessions.clamp(1, 8), max_sessions }
}

/// A tab for an in-tab backend: WebGPU in Debian Chromium, WebNN in the WebNN shell, the wasm
/// CPU executor in the WebNN shell when installed (either has it).
pub async fn launch_for(host: &mut Host, backend: Backend) -> anyhow::Result<crate::Tab> {
    let kind = match backend {
        Backend::Webgpu => BrowserKind::Chromium,
        Backend::Webnn => BrowserKind::ChromiumWebnn,
        _ if host.browser_binary(BrowserKind::ChromiumWebnn).is_ok() => BrowserKind::ChromiumWebnn,
        _ => BrowserKind::Chromium,
    };
    host.launch(kind).await
}

/// Load `model` into `tab` on `backend` (not `Cpu`: that runs on the host).
pub async fn load_in(
    tab: &crate::Tab,
    model: &SmolLm2,
    backend: Backend,
    limits: KvLimits,
    progress: &dyn crate::exec::WeightUpload,
) -> anyhow::Result<Stepper> {
    let exec = exec_backend(backend)?;
    let (graph, weights) = model.graph(limits, Outputs::default())?;
    Stepper::in_tab(tab, &model.name, &graph, &weights, exec.clone(), progress)
        .await
        .with_context(|| format!("loading {} on {exec} in tab {}", model.name, tab.id()))
}

/// Where an in-tab backend runs in the tab.
fn exec_backend(backend: Backend) -> anyhow::Result<ExecBackend> {
    match backend {
        Backend::Cpu => bail!("backend cpu runs on the host, not in a tab"),
        Backend::Auto => bail!("backend auto is resolved to a backend before loading"),
        b => Ok(b.in_tab().expect("a tab backend")),
    }
}

/// Generate after `prompt_ids` on `decoder`, calling `on_text` with each new piece of text.
pub async fn generate(
    model: &SmolLm2,
    decoder: &Decoder,
    prompt_ids: Vec<u32>,
    params: GenParams,
    on_text: impl FnMut(&str),
) -> anyhow::Result<Run> {
    generate_until(model, decoder, prompt_ids, params, std::future::pending(), on_text).await
}

/// [`generate`], ended early when `cancel` completes: the event stream is dropped, which closes
/// the session in the decoder (its KV rows are freed); the text so far is kept.
pub async fn generate_until(
    model: &SmolLm2,
    decoder: &Decoder,
    prompt_ids: Vec<u32>,
    params: GenParams,
    cancel: impl std::future::Future<Output = ()>,
    mut on_text: impl FnMut(&str),
) -> anyhow::Result<Run> {
    let t0 = Instant::now();
    let mut events = decoder.generate(prompt_ids.clone(), params);
    let (mut text, mut first, mut last) = (TextStream::default(), None, t0);
    let (mut finish, mut cached_tokens) = (None, 0);
    tokio::pin!(cancel);
    loop {
        let ev = tokio::select! {
            ev = events.recv() => match ev {
                Some(ev) => ev,
                None => break,
            },
            _ = &mut cancel => break,
        };
        match ev {
            GenEvent::Token(id) => {
                let now = Instant::now();
                first.get_or_insert(now);
                last = now;
                let piece = text.push_with(id, |ids| model.decode(ids))?;
                if !piece.is_empty() {
                    on_text(&piece);
                }
            }
            GenEvent::Done { finish: f, cached, .. } => {
                (finish, cached_tokens) = (Some(f), cached);
                break;
            }
            GenEvent::Failed(e) => bail!("{e}"),
        }
    }
    drop(events);
    let tail = text.finish_with(|ids| model.decode(ids))?;
    if !tail.is_empty() {
        on_text(&tail);
    }
    let ids = text.ids().to_vec();
    let ttft_ms = first.map(|f| (f - t0).as_secs_f64() * 1e3).unwrap_or(0.0);
    let decode_s = first.map(|f| (last - f).as_secs_f64()).unwrap_or(0.0);
    let decode_tok_s = if ids.len() > 1 && decode_s > 0.0 { (ids.len() - 1) as f64 / decode_s } else { 0.0 };
    Ok(Run { prompt_ids, ids, finish, ttft_ms, decode_tok_s, cached_tokens })
}

/// Tokens a session may hold: prompt + generated.
pub fn context_limit(model: &SmolLm2) -> usize {
    CONTEXT_LIMIT.min(model.context_length) as usize
}

pub fn finish_name(finish: Option<Finish>) -> &'static str {
    match finish {
        Some(Finish::Stop) => "stop",
        Some(Finish::Length) => "length",
        None => "cancelled",
    }
}
