//! `tabpool bench vision`: EfficientNet-Lite0 images/s and per-call latency at batch 1 and 8 on
//! the host's CPU executor, one WebNN tab, one WebGPU tab and a pool of WebNN tabs (requests
//! submitted concurrently); the tab's memory above an empty tab beside the weight bytes; top-1 of
//! both reference images checked on every timed call; and, with `--peers`, the peer harness
//! (`vision/run.sh`: onnxruntime native, onnxruntime-web) run in the same process with ratios.
//!
//! Protocol as the peers' (`anchors/vision/README.md`): the two reference images are
//! preprocessed once and sent as a prepared `[N, 3, 224, 224]` tensor, so a timing is the forward
//! plus transport; one pass = 8 images (chelsea, coffee, ×4): batch 1 → 8 calls, batch 8 → 1 call;
//! warm-up passes until two consecutive passes agree within 5 % (at least 3, at most 60 s), then
//! `--reps` timed passes; images/s = 8 / median pass; latency per call.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;
use shared_proto::Tensor;

use super::bench_memory::{Memory, settled};
use crate::HostConfig;
use crate::browser::{BrowserKind, KindSpec};
use crate::exec::Backend;
use crate::family::{self, BatchModel, Input};
use crate::models::efficientnet::{self, EfficientNet, preprocess};
use crate::policy::routing::ModelType;
use crate::pool::{ModelSpec, Pool, PoolConfig};
use crate::stats::quantile;

pub struct Args {
    pub backends: Vec<Backend>,
    /// Timed passes per batch size (WebGPU: see [`webgpu_plan`]).
    pub reps: usize,
    /// WebNN tabs in the pool row (below 2: no pool row).
    pub pool_tabs: usize,
    pub peers: bool,
    pub json: bool,
}

const IMAGES: [&str; 2] = ["chelsea.png", "coffee.png"];
/// Images per pass (the peers' pass).
const PASS: usize = 8;
/// Memory above an empty tab after serving, as a multiple of the weight bytes.
const MEMORY_TARGET: f64 = 2.0;

/// The reference images and their float64 answers (tests/data/efficientnet), built into the
/// binary: a bench run must not depend on the source tree it was compiled from still being there.
pub(crate) const IMAGE_BYTES: [&[u8]; 2] = [
    include_bytes!("../../../tests/data/efficientnet/chelsea.png"),
    include_bytes!("../../../tests/data/efficientnet/coffee.png"),
];
const REFERENCE_JSON: &str = include_str!("../../../tests/data/efficientnet/reference.json");

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").map(|s| s.trim().to_string()).unwrap_or_else(|_| "?".into())
}

fn load1() -> f64 {
    loadavg().split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN)
}

/// The reference's answer per image: top-1 class and the float64 logits.
struct Reference {
    top1: usize,
    label: String,
    logits: Vec<f32>,
}

fn references() -> anyhow::Result<Vec<Reference>> {
    let v: serde_json::Value = serde_json::from_str(REFERENCE_JSON)?;
    let cases = v["cases"].as_array().context("reference.json: no cases")?;
    IMAGES
        .iter()
        .map(|name| {
            let c = cases.iter().find(|c| c["file"] == *name).with_context(|| format!("reference.json: no {name}"))?;
            let top = &c["top5"][0];
            Ok(Reference {
                top1: top[0].as_u64().context("top5[0][0]")? as usize,
                label: top[1].as_str().unwrap_or("?").to_string(),
                logits: c["logits"]
                    .as_array()
                    .context("logits")?
                    .iter()
                    .map(|x| x.as_f64().unwrap_or(f64::NAN) as f32)
                    .collect(),
            })
        })
        .collect()
}

/// One call: a `[n, 3, 224, 224]` tensor and which reference image each row is.
#[derive(Clone)]
struct Call {
    input: Tensor,
    images: Vec<usize>,
}

fn call(prepared: &[Vec<f32>], images: Vec<usize>) -> Call {
    let rows: Vec<&[f32]> = images.iter().map(|&i| prepared[i].as_slice()).collect();
    Call { input: efficientnet::inputs(&rows).remove(0), images }
}

/// The peers' pass: chelsea, coffee, ×4, in calls of `batch`.
fn pass_calls(prepared: &[Vec<f32>], batch: usize) -> Vec<Call> {
    let order: Vec<usize> = (0..PASS).map(|i| i % IMAGES.len()).collect();
    order.chunks(batch).map(|c| call(prepared, c.to_vec())).collect()
}

/// Where calls run.
enum Runner<'a> {
    Cpu { model: Arc<page_runtime::executors::cpu::CpuModel>, widths: Vec<usize> },
    Pool { pool: &'a Pool, name: String },
}

impl Runner<'_> {
    /// Per row its logits, and where it ran (pool rows).
    async fn run(&self, c: &Call) -> anyhow::Result<(Vec<Vec<f32>>, Option<Where>)> {
        match self {
            Runner::Cpu { model, widths } => {
                let (model, widths, input) = (model.clone(), widths.clone(), c.input.clone());
                let n = c.images.len();
                tokio::task::spawn_blocking(move || {
                    let out = model.run(&[input]).map_err(|e| anyhow::anyhow!("{e}"))?;
                    let rows = family::split_rows(&out, n, &widths)?;
                    Ok((rows.into_iter().map(|mut r| r.swap_remove(0)).collect(), None))
                })
                .await?
            }
            Runner::Pool { pool, name } => {
                let served = pool.submit(name, Input::Tensor(c.input.clone()), None).await?;
                let at = Where { tab: served.tab, batch_rows: served.batch_rows, device_ms: served.device_ms };
                Ok((served.vectors, Some(at)))
            }
        }
    }
}

/// Where a pool call ran: its tab, the rows of the batch it travelled in, and the tab's own time
/// for that batch (the rest of the call's latency is transport, framing, queueing and the host).
#[derive(Clone, Copy)]
struct Where {
    tab: u64,
    batch_rows: usize,
    device_ms: f64,
}

/// Warm-up and timed passes.
#[derive(Clone, Copy)]
struct Plan {
    warm_min: usize,
    warm_max: Duration,
    reps: usize,
}

/// Correctness of every timed row against the reference.
#[derive(Debug, Clone, Default, serde::Serialize)]
struct Check {
    rows: usize,
    top1_ok: bool,
    /// Top-1 seen per reference image (the last timed row of it).
    top1: Vec<Option<usize>>,
    max_abs_logit_diff: f64,
}

impl Check {
    fn new() -> Check {
        Check { rows: 0, top1_ok: true, top1: vec![None; IMAGES.len()], max_abs_logit_diff: 0.0 }
    }
    fn add(&mut self, image: usize, logits: &[f32], refs: &[Reference]) {
        let r = &refs[image];
        let top = logits.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i);
        self.top1_ok &= top == Some(r.top1) && logits.len() == r.logits.len();
        self.top1[image] = top;
        self.rows += 1;
        for (a, b) in logits.iter().zip(&r.logits) {
            self.max_abs_logit_diff = self.max_abs_logit_diff.max((a - b).abs() as f64);
        }
    }
    fn merge(&mut self, o: &Check) {
        self.rows += o.rows;
        self.top1_ok &= o.top1_ok;
        for (a, b) in self.top1.iter_mut().zip(&o.top1) {
            *a = b.or(*a);
        }
        self.max_abs_logit_diff = self.max_abs_logit_diff.max(o.max_abs_logit_diff);
    }
    /// Both images seen and every row right.
    fn ok(&self) -> bool {
        self.top1_ok && self.rows > 0 && self.top1.iter().all(Option::is_some)
    }
}

#[derive(Debug, Clone, serde::Serialize)]
struct Rate {
    batch: usize,
    /// Images per timed pass and calls per pass.
    images_per_pass: usize,
    calls_per_pass: usize,
    warm_passes: usize,
    reps: usize,
    images_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Mean rows of the batches the timed calls ran in (pool rows: concurrent requests may share
    /// a batch).
    #[serde(skip_serializing_if = "Option::is_none")]
    mean_batch_rows: Option<f64>,
    /// Calls per tab in the timed passes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    calls_by_tab: Vec<(u64, usize)>,
    /// Median of the tabs' own time per call (pool rows), to set beside `p50_ms`.
    #[serde(skip_serializing_if = "Option::is_none")]
    tab_p50_ms: Option<f64>,
    check: Check,
}

/// One call: its latency (ms), rows and where it ran.
type Timed = (f64, Vec<Vec<f32>>, Option<Where>);

async fn timed(runner: &Runner<'_>, c: &Call) -> anyhow::Result<Timed> {
    let s = Instant::now();
    let (rows, tab) = runner.run(c).await?;
    Ok((s.elapsed().as_secs_f64() * 1e3, rows, tab))
}

/// Sequential calls: each pass's calls one after the other (`concurrent`: all at once).
async fn measure(
    runner: &Runner<'_>,
    pass: &dyn Fn(usize) -> Vec<Call>,
    batch: usize,
    plan: Plan,
    concurrent: bool,
    refs: &[Reference],
) -> anyhow::Result<Rate> {
    // One pass: its wall time, per-call latencies, per-call (rows, tab), and the check.
    async fn one(
        runner: &Runner<'_>,
        calls: &[Call],
        concurrent: bool,
        refs: &[Reference],
    ) -> anyhow::Result<(f64, Vec<f64>, Vec<Option<Where>>, Check)> {
        let t = Instant::now();
        let results = if concurrent {
            futures_util::future::try_join_all(calls.iter().map(|c| timed(runner, c))).await?
        } else {
            let mut v = Vec::new();
            for c in calls {
                v.push(timed(runner, c).await?);
            }
            v
        };
        let secs = t.elapsed().as_secs_f64();
        let mut check = Check::new();
        let (mut lat, mut tabs) = (Vec::new(), Vec::new());
        for (c, (ms, rows, tab)) in calls.iter().zip(results) {
            anyhow::ensure!(rows.len() == c.images.len(), "{} rows back for {} images", rows.len(), c.images.len());
            for (&img, logits) in c.images.iter().zip(&rows) {
                check.add(img, logits, refs);
            }
            lat.push(ms);
            tabs.push(tab);
        }
        Ok((secs, lat, tabs, check))
    }

    let started = Instant::now();
    let mut warm: Vec<f64> = Vec::new();
    loop {
        let agree = warm.len() >= 2 && {
            let (a, b) = (warm[warm.len() - 2], warm[warm.len() - 1]);
            (a - b).abs() <= 0.05 * a.min(b)
        };
        if warm.len() >= plan.warm_min && (agree || started.elapsed() >= plan.warm_max) {
            break;
        }
        let (secs, ..) = one(runner, &pass(warm.len()), concurrent, refs).await?;
        warm.push(secs);
    }
    let (mut pass_s, mut lat, mut tabs, mut check) = (Vec::new(), Vec::new(), Vec::new(), Check::new());
    let mut images = 0;
    let mut calls = 0;
    for rep in 0..plan.reps {
        let p = pass(warm.len() + rep);
        images = p.iter().map(|c| c.images.len()).sum();
        calls = p.len();
        let (secs, l, t, c) = one(runner, &p, concurrent, refs).await?;
        pass_s.push(secs);
        lat.extend(l);
        tabs.extend(t);
        check.merge(&c);
    }
    let served: Vec<Where> = tabs.into_iter().flatten().collect();
    let mean_batch_rows =
        (!served.is_empty()).then(|| served.iter().map(|s| s.batch_rows as f64).sum::<f64>() / served.len() as f64);
    let device: Vec<f64> = served.iter().map(|s| s.device_ms).collect();
    let tab_p50_ms = (!device.is_empty()).then(|| quantile(&device, 0.5));
    let mut calls_by_tab: Vec<(u64, usize)> = Vec::new();
    for t in served.into_iter().map(|s| s.tab) {
        match calls_by_tab.iter_mut().find(|(id, _)| *id == t) {
            Some(e) => e.1 += 1,
            None => calls_by_tab.push((t, 1)),
        }
    }
    calls_by_tab.sort();
    Ok(Rate {
        batch,
        images_per_pass: images,
        calls_per_pass: calls,
        warm_passes: warm.len(),
        reps: plan.reps,
        images_per_s: images as f64 / quantile(&pass_s, 0.5),
        p50_ms: quantile(&lat, 0.5),
        p99_ms: quantile(&lat, 0.99),
        mean_batch_rows,
        calls_by_tab,
        tab_p50_ms,
        check,
    })
}

#[derive(Debug, Clone, serde::Serialize)]
struct Row {
    row: String,
    backend: String,
    load_ms: Option<f64>,
    bs1: Rate,
    bs8: Rate,
    memory: Option<Memory>,
    loadavg_before: f64,
    loadavg_after: f64,
    note: String,
}

impl Row {
    fn check(&self) -> Check {
        let mut c = self.bs1.check.clone();
        c.merge(&self.bs8.check);
        c
    }
}

/// The tab's median time per call, or "-" where no tab ran the calls.
fn tab_ms(r: &Rate) -> String {
    r.tab_p50_ms.map(|m| format!("{m:.1}")).unwrap_or_else(|| "-".into())
}

fn plan(reps: usize) -> Plan {
    Plan { warm_min: 3, warm_max: Duration::from_secs(60), reps }
}

/// SwiftShader runs EfficientNet-Lite0 in seconds per image: batch 1 gets one untimed call and
/// three timed calls of one image (chelsea, coffee, chelsea), batch 8 one timed call and no
/// warm-up of its own (the load compiled every pipeline; WebGPU keeps nothing per shape).
fn webgpu_plan(batch: usize) -> Plan {
    if batch == 1 {
        Plan { warm_min: 1, warm_max: Duration::ZERO, reps: 3 }
    } else {
        Plan { warm_min: 0, warm_max: Duration::ZERO, reps: 1 }
    }
}

/// Median ms per image of `preprocess::prepare` (decode, crop, bicubic resize, normalise) over
/// 5 runs of each image, and the prepared images.
fn preprocess_images(files: &[Vec<u8>]) -> anyhow::Result<(f64, Vec<f64>, Vec<Vec<f32>>)> {
    let mut per_image = Vec::new();
    let mut all = Vec::new();
    let mut prepared = Vec::new();
    for (f, name) in files.iter().zip(IMAGES) {
        let mut ms = Vec::new();
        let mut out = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            out = preprocess::prepare(f).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
            ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
        per_image.push(quantile(&ms, 0.5));
        all.extend(ms);
        prepared.push(out);
    }
    Ok((quantile(&all, 0.5), per_image, prepared))
}

async fn cpu_row(prepared: &[Vec<f32>], refs: &[Reference], reps: usize) -> anyhow::Result<Row> {
    let before = load1();
    let t = Instant::now();
    let (model, widths) = tokio::task::spawn_blocking(|| {
        let mut m = EfficientNet::load(None)?;
        let widths = m.output_widths();
        let cpu = page_runtime::executors::cpu::CpuModel::new(m.graph.clone(), m.take_weights())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        anyhow::Ok((Arc::new(cpu), widths))
    })
    .await??;
    let load_ms = t.elapsed().as_secs_f64() * 1e3;
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let runner = Runner::Cpu { model, widths };
    let pass = |b: usize| move |_: usize| pass_calls(prepared, b);
    let bs1 = measure(&runner, &pass(1), 1, plan(reps), false, refs).await?;
    let bs8 = measure(&runner, &pass(8), 8, plan(reps), false, refs).await?;
    Ok(Row {
        row: format!("cpu (host executor, rayon on {} cores)", cores),
        backend: "cpu".into(),
        load_ms: Some(load_ms),
        bs1,
        bs8,
        memory: None,
        loadavg_before: before,
        loadavg_after: load1(),
        note: "load = .pth read + graph + executor".into(),
    })
}

fn pool_config(kind: BrowserKind, backend: Backend, tabs: usize) -> PoolConfig {
    let mut k = KindSpec::local(kind);
    k.backend = Some(backend);
    let mut cfg = PoolConfig {
        min_tabs: tabs,
        max_tabs: tabs,
        max_batch: PASS,
        kinds: vec![k],
        // Throughput of the tabs, not of the hedging policy: no duplicate runs on a second tab.
        hedge: false,
        ..PoolConfig::default()
    };
    cfg.scaling.enabled = false;
    if backend == Backend::Webgpu {
        // A batch of 8 on SwiftShader takes minutes.
        cfg.call_timeout_s = 1800.0;
        cfg.health.breaker_slow_call_s = 3600.0;
    }
    cfg
}

/// One tab of `backend` in a pool of one: memory of the empty tab, load, both batch sizes,
/// memory after serving.
async fn tab_row(
    host_cfg: &HostConfig,
    backend: Backend,
    prepared: &[Vec<f32>],
    refs: &[Reference],
    reps: usize,
    weight_bytes: u64,
) -> anyhow::Result<Row> {
    let kind = if backend == Backend::Webgpu { BrowserKind::Chromium } else { BrowserKind::ChromiumWebnn };
    let before = load1();
    let pool = Pool::with_host(crate::Host::start(host_cfg.clone()).await?, pool_config(kind, backend, 1))
        .await
        .with_context(|| format!("starting a {} tab", kind.name()))?;
    let result = async {
        let id = pool.tabs().first().map(|t| t.0).context("the pool has no tab")?;
        let pids: Vec<i32> = pool.tab_processes(id).await.into_iter().map(|(p, _)| p).collect();
        let empty = settled(|| pids.clone()).await;
        let t = Instant::now();
        let name = pool.load(ModelSpec::of_type(ModelType::Vision)).await?;
        let load_ms = t.elapsed().as_secs_f64() * 1e3;
        let runner = Runner::Pool { pool: &pool, name };
        let (bs1, bs8) = if backend == Backend::Webgpu {
            // One image per call at batch 1, alternating images.
            let one = |i: usize| vec![call(prepared, vec![i % IMAGES.len()])];
            let bs1 = measure(&runner, &one, 1, webgpu_plan(1), false, refs).await?;
            let eight = |_: usize| pass_calls(prepared, 8);
            let bs8 = measure(&runner, &eight, 8, webgpu_plan(8), false, refs).await?;
            (bs1, bs8)
        } else {
            let pass = |b: usize| move |_: usize| pass_calls(prepared, b);
            let bs1 = measure(&runner, &pass(1), 1, plan(reps), false, refs).await?;
            let bs8 = measure(&runner, &pass(8), 8, plan(reps), false, refs).await?;
            (bs1, bs8)
        };
        // Processes may have come (a GPU or ML service started on first use): sample them all.
        let pids: Vec<i32> = pool.tab_processes(id).await.into_iter().map(|(p, _)| p).collect();
        let served = settled(|| pids.clone()).await;
        let backend_name = backend_label(backend);
        let note = if backend == Backend::Webgpu {
            "SwiftShader: bs1 = 1 warm-up + 3 timed calls of 1 image, bs8 = 1 timed call, no warm-up".to_string()
        } else {
            "load = graph + weight upload + compile".to_string()
        };
        anyhow::Ok(Row {
            row: format!("{backend_name} (1 {} tab)", kind.name()),
            backend: backend_name,
            load_ms: Some(load_ms),
            bs1,
            bs8,
            memory: Some(Memory::of(&empty, &served, weight_bytes)),
            loadavg_before: before,
            loadavg_after: load1(),
            note,
        })
    }
    .await;
    pool.shutdown().await;
    result
}

fn backend_label(b: Backend) -> String {
    match b {
        Backend::Webnn => "webnn-cpu",
        Backend::Webgpu => "webgpu",
        Backend::WasmCpu => "wasm-cpu",
        Backend::Cpu => "cpu",
        Backend::Auto => "auto",
    }
    .into()
}

/// `tabs` WebNN tabs; every pass submits `tabs` peer passes at once (batch 1: 8·tabs single-image
/// requests; batch 8: `tabs` requests of 8), so every tab has work.
async fn pool_row(
    host_cfg: &HostConfig,
    tabs: usize,
    prepared: &[Vec<f32>],
    refs: &[Reference],
    reps: usize,
) -> anyhow::Result<Row> {
    let kind = BrowserKind::ChromiumWebnn;
    let before = load1();
    let pool = Pool::with_host(crate::Host::start(host_cfg.clone()).await?, pool_config(kind, Backend::Webnn, tabs))
        .await
        .with_context(|| format!("starting {tabs} {} tabs", kind.name()))?;
    let result = async {
        let t = Instant::now();
        let name = pool.load(ModelSpec::of_type(ModelType::Vision)).await?;
        let load_ms = t.elapsed().as_secs_f64() * 1e3;
        let replicas = pool.replica_count(&name).unwrap_or(0);
        anyhow::ensure!(replicas == tabs, "the model is on {replicas} of {tabs} tabs");
        let runner = Runner::Pool { pool: &pool, name };
        let pass = |b: usize| move |_: usize| (0..tabs).flat_map(|_| pass_calls(prepared, b)).collect::<Vec<_>>();
        let bs1 = measure(&runner, &pass(1), 1, plan(reps), true, refs).await?;
        let bs8 = measure(&runner, &pass(8), 8, plan(reps), true, refs).await?;
        anyhow::Ok(Row {
            row: format!("webnn-cpu pool of {tabs} {} tabs", kind.name()),
            backend: "webnn-cpu".into(),
            load_ms: Some(load_ms),
            bs1,
            bs8,
            memory: None,
            loadavg_before: before,
            loadavg_after: load1(),
            note: format!(
                "a pass = {tabs}×8 images submitted at once (bs1: {} one-image requests, bs8: {tabs} requests of 8); \
                 the pool may batch concurrent requests (max_batch 8); latency includes queueing",
                tabs * PASS
            ),
        })
    }
    .await;
    pool.shutdown().await;
    result
}

/// A peer row of the harness's results.
#[derive(Debug, Clone, serde::Serialize)]
struct Peer {
    method: String,
    bs: usize,
    images_per_s: f64,
    lat_ms_median: f64,
    max_abs_logit_diff: Option<f64>,
    top5_identical: Option<bool>,
}

fn peers_script() -> PathBuf {
    super::bench::anchors_dir().join("vision/run.sh")
}

/// Runs the harness (same reps, normal priority like this process) and reads its new results
/// file: the rows, and the steps that failed.
fn run_peers(reps: usize) -> anyhow::Result<(Vec<Peer>, Vec<String>, PathBuf)> {
    eprintln!("bench vision: the peers take about 4 minutes");
    let env = [("REPS", reps.to_string()), ("NICE", "0".into()), ("WEBGPU", "0".to_string())];
    let newest = super::bench::run_peer_harness("vision", &env)?;
    let (mut rows, mut failed) = (Vec::new(), Vec::new());
    for line in std::fs::read_to_string(&newest)?.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)?;
        let Some(method) = v["method"].as_str() else { continue };
        if method == "onnx_export_check" {
            continue;
        }
        match (v["bs"].as_u64(), v["images_per_s"].as_f64()) {
            (Some(bs), Some(r)) => rows.push(Peer {
                method: method.into(),
                bs: bs as usize,
                images_per_s: r,
                lat_ms_median: v["lat_ms_median"].as_f64().unwrap_or(f64::NAN),
                max_abs_logit_diff: v["max_abs_logit_diff"].as_f64(),
                top5_identical: v["top5_identical"].as_bool(),
            }),
            _ => failed.push(format!("{method}: {}", v["error"].as_str().unwrap_or("no result"))),
        }
    }
    Ok((rows, failed, newest))
}

/// A target ratio computed from this run's figures.
#[derive(Debug, Clone, serde::Serialize)]
struct Comparison {
    what: String,
    ours: Option<f64>,
    peer_row: Option<String>,
    peer: Option<f64>,
    ratio: Option<f64>,
    target: String,
    met: Option<bool>,
}

fn compare(what: String, ours: Option<f64>, peer: Option<(String, f64)>, at_least: Option<f64>) -> Comparison {
    let ratio = ours.zip(peer.as_ref().map(|p| p.1)).map(|(a, b)| a / b);
    let (target, met) = match at_least {
        Some(t) => (format!("≥ {t}"), ratio.map(|r| r >= t)),
        None => (String::new(), None),
    };
    Comparison { what, ours, peer_row: peer.as_ref().map(|p| p.0.clone()), peer: peer.map(|p| p.1), ratio, target, met }
}

pub async fn run(host_cfg: HostConfig, args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.reps >= 1, "--reps must be at least 1");
    let load_start = loadavg();
    let refs = references()?;
    let files: Vec<Vec<u8>> = IMAGE_BYTES.iter().map(|b| b.to_vec()).collect();
    let (prep_ms, prep_per_image, prepared) = tokio::task::spawn_blocking(move || preprocess_images(&files)).await??;
    let weight_bytes: u64 = tokio::task::spawn_blocking(|| EfficientNet::load(None))
        .await??
        .weights
        .iter()
        .map(|w| w.data.len() as u64)
        .sum();

    let mut rows = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    for &b in &args.backends {
        eprintln!("bench vision: {b:?}…");
        let r = match b {
            Backend::Cpu => cpu_row(&prepared, &refs, args.reps).await,
            Backend::Webnn | Backend::Webgpu | Backend::WasmCpu => {
                tab_row(&host_cfg, b, &prepared, &refs, args.reps, weight_bytes).await
            }
            Backend::Auto => Err(anyhow::anyhow!("--backends takes cpu, webnn, webgpu, wasm-cpu")),
        };
        match r {
            Ok(r) => rows.push(r),
            // One backend failing (WebNN refusing an op as Unsupported) still reports the others.
            Err(e) => failures.push(format!("{}: {e:#}", backend_label(b))),
        }
    }
    if args.pool_tabs >= 2 {
        eprintln!("bench vision: pool of {} WebNN tabs…", args.pool_tabs);
        match pool_row(&host_cfg, args.pool_tabs, &prepared, &refs, args.reps).await {
            Ok(r) => rows.push(r),
            Err(e) => failures.push(format!("webnn pool of {}: {e:#}", args.pool_tabs)),
        }
    }
    let load_ours = loadavg();

    let script = peers_script();
    let (peers, peer_failures, peers_file, peers_note) = if !args.peers {
        (vec![], vec![], None, "peers not run (pass --peers)".to_string())
    } else if !script.is_file() {
        (vec![], vec![], None, format!("peers not run: {} is absent (not part of this repository)", script.display()))
    } else {
        match run_peers(args.reps) {
            Ok((p, f, file)) => (p, f, Some(file), format!("peers measured in this run by {}", script.display())),
            Err(e) => (vec![], vec![], None, format!("peers failed: {e:#}")),
        }
    };
    let load_end = loadavg();

    let ours = |prefix: &str, bs: usize| {
        rows.iter()
            .find(|r| r.row.starts_with(prefix))
            .map(|r| if bs == 1 { r.bs1.images_per_s } else { r.bs8.images_per_s })
    };
    let best_web = |bs: usize| {
        peers
            .iter()
            .filter(|p| p.bs == bs && p.method.starts_with("ort-web"))
            .max_by(|a, b| a.images_per_s.total_cmp(&b.images_per_s))
            .map(|p| (p.method.clone(), p.images_per_s))
    };
    let native2 = |bs: usize| {
        peers
            .iter()
            .find(|p| p.bs == bs && p.method.contains("native") && p.method.contains("2 thr"))
            .map(|p| (p.method.clone(), p.images_per_s))
    };
    let mut comparisons = Vec::new();
    if !peers.is_empty() {
        for bs in [1, 8] {
            comparisons.push(compare(
                format!("one WebNN tab ÷ best onnxruntime-web, bs{bs}"),
                ours("webnn-cpu (", bs),
                best_web(bs),
                Some(1.2),
            ));
        }
        for bs in [1, 8] {
            comparisons.push(compare(
                format!("pool of {} WebNN tabs ÷ onnxruntime native 2 thr, bs{bs}", args.pool_tabs),
                ours("webnn-cpu pool", bs),
                native2(bs),
                Some(1.0),
            ));
        }
    }
    for r in rows.iter().filter(|r| r.memory.is_some()) {
        let m = r.memory.as_ref().expect("filtered");
        comparisons.push(Comparison {
            what: format!("{} tab memory above empty ÷ weight bytes", r.backend),
            ours: Some(m.served_above_empty_bytes as f64),
            peer_row: None,
            peer: Some(m.weight_bytes as f64),
            ratio: Some(m.ratio),
            target: format!("≤ {MEMORY_TARGET}"),
            met: Some(m.ratio <= MEMORY_TARGET),
        });
    }

    let reference: Vec<_> = IMAGES.iter().zip(&refs).map(|(n, r)| format!("{n} → {} {}", r.top1, r.label)).collect();
    if args.json {
        let out = json!({
            "model": "EfficientNet-Lite0 (f32)",
            "weight_bytes": weight_bytes,
            "images": IMAGES,
            "reference_top1": reference,
            "reps": args.reps,
            "preprocess_ms_per_image": { "median": prep_ms, "per_image": prep_per_image },
            "rows": rows,
            "failures": failures,
            "peers": peers,
            "peer_failures": peer_failures,
            "peers_note": peers_note,
            "peers_file": peers_file,
            "comparisons": comparisons,
            "loadavg": { "start": load_start, "after_ours": load_ours, "end": load_end },
        });
        println!("{out}");
        return Ok(());
    }

    println!(
        "bench vision — EfficientNet-Lite0 f32, weights {:.2} MB; a pass = 8 images ({}), prepared once; {} timed passes",
        weight_bytes as f64 / 1e6,
        IMAGES.join(", "),
        args.reps
    );
    println!("reference top-1: {}", reference.join("; "));
    println!(
        "preprocessing (decode + crop + bicubic resize + normalise, host, median of 5): {prep_ms:.2} ms/image ({})",
        IMAGES.iter().zip(&prep_per_image).map(|(n, m)| format!("{n} {m:.2}")).collect::<Vec<_>>().join(", ")
    );
    println!();
    println!(
        "{:<40} | {:>8} | {:>9} | {:>15} | {:>9} | {:>9} | {:>15} | {:>9} | {:>5} | {:>9} | {:>14} | {:>9}",
        "row",
        "load ms",
        "bs1 img/s",
        "bs1 p50/p99 ms",
        "bs1 tab",
        "bs8 img/s",
        "bs8 p50/p99 ms",
        "bs8 tab",
        "top-1",
        "max |Δ|",
        "mem above MiB",
        "load1 b/a"
    );
    for r in &rows {
        let c = r.check();
        let mem = r
            .memory
            .as_ref()
            .map(|m| format!("{:.1} ({:.2}×)", m.served_above_empty_bytes as f64 / 1048576.0, m.ratio))
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<40} | {:>8} | {:>9.2} | {:>15} | {:>9} | {:>9.2} | {:>15} | {:>9} | {:>5} | {:>9.2e} | {:>14} | {:>9}",
            r.row,
            r.load_ms.map(|l| format!("{l:.0}")).unwrap_or_else(|| "-".into()),
            r.bs1.images_per_s,
            format!("{:.1}/{:.1}", r.bs1.p50_ms, r.bs1.p99_ms),
            tab_ms(&r.bs1),
            r.bs8.images_per_s,
            format!("{:.1}/{:.1}", r.bs8.p50_ms, r.bs8.p99_ms),
            tab_ms(&r.bs8),
            if c.ok() { "yes" } else { "NO" },
            c.max_abs_logit_diff,
            mem,
            format!("{:.2}/{:.2}", r.loadavg_before, r.loadavg_after)
        );
    }
    println!(
        "latency per call (bs8: per call of 8); top-1 = both images' top-1 equal the reference on every timed call; \
         tab = the tab's own median time per call (write inputs, dispatch, read outputs; the rest of p50 is \
         transport, framing and the host); \
         max |Δ| = largest logit difference from the float64 reference; mem = PSS of the tab's process tree after \
         serving above the same tab before loading (× weight bytes)"
    );
    for r in &rows {
        let tabs = if r.bs1.calls_by_tab.len() > 1 || r.bs8.calls_by_tab.len() > 1 {
            let rows = |x: &Rate| x.mean_batch_rows.map(|m| format!("{m:.1}")).unwrap_or_else(|| "-".into());
            format!(
                "; calls per tab bs1 {:?}, bs8 {:?}; mean rows per batch run bs1 {}, bs8 {}",
                r.bs1.calls_by_tab.iter().map(|t| t.1).collect::<Vec<_>>(),
                r.bs8.calls_by_tab.iter().map(|t| t.1).collect::<Vec<_>>(),
                rows(&r.bs1),
                rows(&r.bs8)
            )
        } else {
            String::new()
        };
        println!(
            "  {}: warm-up passes bs1 {} / bs8 {}, timed rows checked {}; {}{tabs}",
            r.row,
            r.bs1.warm_passes,
            r.bs8.warm_passes,
            r.check().rows,
            r.note
        );
    }
    for f in &failures {
        // Tabs' errors can carry long dumps; --json keeps them whole.
        let short: String = f.chars().take(400).collect();
        println!("FAILED {short}{}", if short.len() < f.len() { " …" } else { "" });
    }
    println!("\n{peers_note}");
    if !peers.is_empty() {
        println!(
            "{:<52} | {:>9} | {:>12} | {:>9} | {:>5}",
            "peer (same run)", "bs1 img/s", "bs8 img/s", "max |Δ|", "top-5"
        );
        let mut methods: Vec<&str> = Vec::new();
        for p in &peers {
            if !methods.contains(&p.method.as_str()) {
                methods.push(&p.method);
            }
        }
        for m in methods {
            let at = |bs: usize| peers.iter().find(|p| p.method == m && p.bs == bs);
            let rate = |bs: usize| at(bs).map(|p| format!("{:.2}", p.images_per_s)).unwrap_or_else(|| "n/a".into());
            let diff = [at(1), at(8)].iter().flatten().filter_map(|p| p.max_abs_logit_diff).fold(0.0f64, f64::max);
            let top5 = [at(1), at(8)].iter().flatten().all(|p| p.top5_identical == Some(true));
            println!(
                "{m:<52} | {:>9} | {:>12} | {diff:>9.2e} | {:>5}",
                rate(1),
                rate(8),
                if top5 { "yes" } else { "NO" }
            );
        }
        for f in &peer_failures {
            println!("peer FAILED {f}");
        }
    }
    if !comparisons.is_empty() {
        println!("\nratios (this run's figures):");
        for c in &comparisons {
            let ratio = c.ratio.map(|r| format!("{r:.3}×")).unwrap_or_else(|| "n/a".into());
            let met = match c.met {
                Some(true) => "met",
                Some(false) => "NOT met",
                None => "",
            };
            let detail = match (&c.peer_row, c.ours, c.peer) {
                (Some(p), Some(a), Some(b)) => format!("{a:.2} / {b:.2} img/s ({p})"),
                (None, Some(a), Some(b)) => format!("{:.1} / {:.1} MiB", a / 1048576.0, b / 1048576.0),
                _ => "a row is missing".into(),
            };
            println!("  {:<62} {ratio:>8}  target {} {met}  — {detail}", c.what, c.target);
        }
    }
    println!("\nload average: start {load_start}; after ours {load_ours}; end {load_end}");
    Ok(())
}
