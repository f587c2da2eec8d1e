//! `tabpool bench grid`: the pool on a Selenium Grid, every figure measured in one run with real
//! tabs. Without `--grid` it starts its own hub and `--nodes` nodes here (`browser::grid_local`:
//! each node in its own network namespace, pinned to its own core, so two nodes are two
//! machines' worth of CPU on one box).
//!
//! 1. Throughput: pools of 1, 2, … Grid tabs (spread one per node first) — MiniLM sent/s and
//!    SmolLM2 aggregate tok/s over concurrent greedy streams — and the same tab counts launched
//!    on this machine (`--local`), so the Grid's cost is a same-run ratio.
//! 2. New tab: `--cycles` launch/retire cycles through the Grid and locally (launch → a tab
//!    ready to serve), then the slots the Grid still holds for the pool (must be 0).
//! 3. Node loss (own Grid only): streams and embeddings running on two nodes, the node carrying
//!    most streams killed (JVM, driver and browsers) or its link cut; every stream must finish
//!    token-identical to the same prompts run before, and the time from the loss to each
//!    affected stream's next token is the figure. Then the node comes back, the pool regains its
//!    tab there, stops, and the Grid must hold no slot for it.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};
use shared_proto::Sampling;

use super::bench_pool::{Pass, fixed_pool, pass};
use super::pool_args::parse_kind;
use crate::HostConfig;
use crate::browser::grid::GridClient;
use crate::browser::grid_local::LocalGrid;
use crate::browser::{BrowserKind, KindSpec};
use crate::exec::GenParams;
use crate::pool::{GenRequest, ModelSpec, Pool, StreamEvent};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The Grid hub's URL; without it, a hub and --nodes nodes are started here (root: network
    /// namespaces, each node pinned to its own core).
    #[arg(long, value_name = "URL")]
    pub grid: Option<String>,
    /// Nodes of the Grid started here when no --grid is given.
    #[arg(long, default_value_t = 2)]
    pub nodes: usize,
    /// A capability to ask the Grid for, KEY=JSON (e.g. tabpool:lane=a); repeatable.
    #[arg(long = "capability", value_name = "KEY=JSON")]
    pub capabilities: Vec<String>,
    /// The browser binary on the nodes, when their stereotype names none.
    #[arg(long)]
    pub binary: Option<std::path::PathBuf>,
    #[arg(long, value_delimiter = ',', default_values_t = vec![1, 2])]
    pub tabs: Vec<usize>,
    /// One-sentence requests per timed pass.
    #[arg(long, default_value_t = 256)]
    pub requests: usize,
    /// Concurrent greedy SmolLM2 streams per generation pass (and in the node loss).
    #[arg(long, default_value_t = 8)]
    pub streams: usize,
    /// Tokens each stream generates.
    #[arg(long, default_value_t = 32)]
    pub tokens: usize,
    /// Launch/retire cycles timing a new tab, Grid and local, then the slots left (0 skips).
    #[arg(long, default_value_t = 20)]
    pub cycles: usize,
    /// How the node-loss phase loses a node of the bench's own Grid: kill (JVM, driver and
    /// browsers at once), cut (its network link down), none.
    #[arg(long, value_enum, default_value = "kill")]
    pub loss: Loss,
    /// A local kind measured with the same tab counts ("" skips).
    #[arg(long, default_value = "chromium")]
    pub local: String,
    /// Backend of every tab, Grid and local: auto (calibrate), webnn, webgpu, wasm-cpu. Forcing
    /// one compares like with like: a local tab served from a non-loopback `--bind` address is no
    /// secure context (no WebGPU, no WebNN), a Grid tab is told to treat the page as secure.
    #[arg(long, default_value = "auto", value_parser = super::cli::named::<crate::policy::backend_choice::Backend>())]
    pub backend: crate::policy::backend_choice::Backend,
    #[arg(long)]
    pub json: bool,
}

/// How a node is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Loss {
    /// The node's JVM, driver and browsers killed at once: sockets reset.
    Kill,
    /// The node's network link cut: nothing answers, nothing resets; only heartbeats notice.
    Cut,
    /// No node-loss phase.
    None,
}

/// Prompts of the generation streams, all different, so a replay that resumed the wrong stream
/// would show as wrong tokens.
const PROMPTS: [&str; 8] = [
    "Write one sentence about the sea.",
    "Name three colours and say why you like them.",
    "Explain what a browser tab is to a child.",
    "Give a short recipe for tea.",
    "What is the capital of France? Answer in a sentence.",
    "Describe a cat in two sentences.",
    "Why do leaves turn red in autumn?",
    "Count from one to ten in words.",
];

/// One pool measured: where its tabs were, and what each served.
struct Row {
    place: String,
    tabs: usize,
    pass: Pass,
    tok_per_s: f64,
    /// node (or "this machine") → (tabs, requests served, cores the tabs report)
    nodes: BTreeMap<String, (usize, usize, u32)>,
    start_s: f64,
    /// The backends calibration chose on the tabs, and batches hedged to a second tab.
    backends: Vec<String>,
    hedged: u64,
}

fn gen_params(tokens: usize) -> GenParams {
    // No stop ids: every stream generates exactly `tokens`, so pools are compared on equal work.
    GenParams { max_tokens: tokens as u32, sampling: Sampling::Greedy, stop_ids: vec![] }
}

/// The chat prompts' token ids, `n` of them (cycling through [`PROMPTS`]).
fn prompts(pool: &Pool, n: usize) -> anyhow::Result<Vec<Vec<u32>>> {
    let (_, g) = pool.generation_model(None)?;
    PROMPTS
        .iter()
        .cycle()
        .take(n)
        .map(|p| g.model.chat_ids(&[crate::family::Message { role: "user".into(), content: (*p).into() }]))
        .collect()
}

/// Every prompt streamed at once: each stream's ids, and the wall time (s).
async fn streams(pool: &Pool, prompts: &[Vec<u32>], tokens: usize) -> anyhow::Result<(Vec<Vec<u32>>, f64)> {
    let t = Instant::now();
    let runs = prompts.iter().map(|p| async move {
        let mut rx = pool.generate(None, GenRequest { prompt: p.clone(), params: gen_params(tokens) })?;
        let mut ids = Vec::new();
        loop {
            match rx.recv().await.context("the stream ended without an answer")? {
                StreamEvent::Token(id) => ids.push(id),
                StreamEvent::Placed { .. } => {}
                StreamEvent::Done(_) => return anyhow::Ok(ids),
                StreamEvent::Failed(e) => return Err(e.into()),
            }
        }
    });
    let ids = futures_util::future::join_all(runs).await.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    Ok((ids, t.elapsed().as_secs_f64()))
}

fn pool_config(kind: &KindSpec, n: usize, queue: usize) -> crate::pool::PoolConfig {
    let mut cfg = fixed_pool(vec![kind.clone().with_max_tabs(n)], n, queue);
    cfg.generation.context_limit = 256;
    cfg
}

async fn measure(host_cfg: &HostConfig, kind: &KindSpec, n: usize, texts: &[&str], args: &Args) -> anyhow::Result<Row> {
    let place = if kind.url.is_some() { "grid".to_string() } else { kind.name.clone() };
    let t = Instant::now();
    let pool = Pool::with_host(crate::Host::start(host_cfg.clone()).await?, pool_config(kind, n, texts.len()))
        .await
        .with_context(|| format!("starting {n} {place} tab(s)"))?;
    let start_s = t.elapsed().as_secs_f64();
    let r = async {
        let name = pool.load(ModelSpec::minilm()).await?;
        pool.load(ModelSpec::smollm2()).await?;
        let reqs: Vec<(&str, Vec<&str>)> = texts.iter().map(|t| (name.as_str(), vec![*t])).collect();
        pass(&pool, &reqs).await?; // warm-up: every shape bucket compiled on every tab
        let p = pass(&pool, &reqs).await?;
        let prompts = prompts(&pool, args.streams)?;
        streams(&pool, &prompts, 2).await?; // warm-up: prefill and decode compiled on every tab
        let (ids, secs) = streams(&pool, &prompts, args.tokens).await?;
        let tok_per_s = ids.iter().map(Vec::len).sum::<usize>() as f64 / secs;
        let mut nodes: BTreeMap<String, (usize, usize, u32)> = BTreeMap::new();
        let m = pool.metrics();
        let mut backends: Vec<String> = m.tabs.iter().filter_map(|t| t.models.get(&name).cloned()).collect();
        backends.sort();
        backends.dedup();
        for tab in m.tabs {
            let node = tab.node.map(|n| n.uri).unwrap_or_else(|| "this machine".into());
            let e = nodes.entry(node).or_default();
            e.0 += 1;
            e.1 += p.by_tab.get(&tab.id).copied().unwrap_or(0);
            e.2 = tab.hardware_concurrency;
        }
        anyhow::Ok(Row {
            place: place.clone(),
            tabs: n,
            pass: p,
            tok_per_s,
            nodes,
            start_s,
            backends,
            hedged: m.hedged,
        })
    }
    .await;
    pool.shutdown().await;
    r
}

/// Sessions the Grid holds in all.
async fn in_use(client: &GridClient) -> anyhow::Result<usize> {
    Ok(client.view().await?.nodes.iter().map(|n| n.sessions()).sum())
}

/// Sessions the Grid still holds beyond `baseline` once the pool is gone (waiting up to 60 s:
/// a lost node's session goes when the hub drops the node).
async fn leaked(client: &GridClient, baseline: usize) -> anyhow::Result<usize> {
    let t = Instant::now();
    loop {
        let n = in_use(client).await?.saturating_sub(baseline);
        if n == 0 || t.elapsed() > Duration::from_secs(60) {
            return Ok(n);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `cycles` launches and retirements of a second tab beside one that stays: each launch's time
/// to a tab ready to serve (ms), and on a Grid the slots it still holds after the pool stopped.
async fn new_tab_cycles(
    host_cfg: &HostConfig,
    kind: &KindSpec,
    cycles: usize,
    client: Option<&GridClient>,
) -> anyhow::Result<(Vec<f64>, Option<usize>)> {
    let baseline = match client {
        Some(c) => Some(in_use(c).await?),
        None => None,
    };
    let mut cfg = pool_config(kind, 2, 16);
    cfg.min_tabs = 1;
    let pool = Pool::with_host(crate::Host::start(host_cfg.clone()).await?, cfg).await?;
    let r = async {
        let mut ms = Vec::new();
        for i in 0..cycles {
            let asked = Instant::now();
            // A slot just freed may take the hub a moment to list as free: the pool refuses to
            // ask until it does, so a refused launch is retried (bounded); only the launch that
            // started counts.
            let id = loop {
                let t = Instant::now();
                match pool.add_tab("bench grid: new-tab cycle").await {
                    Ok(id) => {
                        ms.push(t.elapsed().as_secs_f64() * 1e3);
                        break id;
                    }
                    Err(e) if asked.elapsed() < Duration::from_secs(30) => {
                        tracing::debug!("cycle {i}: {e:#}; retrying");
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                    Err(e) => return Err(e.context(format!("launch {i} of {cycles}"))),
                }
            };
            pool.retire_tab(id, "bench grid: new-tab cycle").await?;
        }
        anyhow::Ok(ms)
    }
    .await;
    pool.shutdown().await;
    let ms = r?;
    let leaked = match (client, baseline) {
        (Some(c), Some(b)) => Some(leaked(c, b).await?),
        _ => None,
    };
    Ok((ms, leaked))
}

/// What one stream did across the loss.
#[derive(Default)]
struct Tracked {
    ids: Vec<u32>,
    at: Vec<Instant>,
    tab: Option<u64>,
    replays: u32,
    error: Option<String>,
    done: bool,
}

struct NodeLoss {
    loss: Loss,
    node: String,
    streams: usize,
    affected: usize,
    answered: usize,
    wrong_tokens: usize,
    next_token_ms: Vec<f64>,
    replays: u32,
    embeds: usize,
    embeds_failed: usize,
    embeds_wrong: usize,
    back_s: Option<f64>,
    leaked: usize,
}

/// Two tabs on two nodes serving streams and embeddings; the node with most streams lost.
async fn node_loss(
    host_cfg: &HostConfig,
    kind: &KindSpec,
    grid: &mut LocalGrid,
    texts: &[&str],
    args: &Args,
) -> anyhow::Result<NodeLoss> {
    let client = GridClient::new(kind.url.as_ref().expect("remote"));
    let baseline = in_use(&client).await?;
    let cfg = pool_config(kind, 2, texts.len() + args.streams);
    let pool = Pool::with_host(crate::Host::start(host_cfg.clone()).await?, cfg).await?;
    let r = async {
        let name = pool.load(ModelSpec::minilm()).await?;
        pool.load(ModelSpec::smollm2()).await?;
        let reqs: Vec<(&str, Vec<&str>)> = texts.iter().map(|t| (name.as_str(), vec![*t])).collect();
        let want_vectors: Vec<Vec<f32>> = pool
            .execute_concurrent(&reqs)
            .await
            .into_iter()
            .map(|r| r.map(|s| s.vectors[0].clone()))
            .collect::<Result<_, _>>()?;
        let prompts = prompts(&pool, args.streams)?;
        let (want, _) = streams(&pool, &prompts, args.tokens).await?;

        let tracked: Vec<Mutex<Tracked>> = prompts.iter().map(|_| Mutex::new(Tracked::default())).collect();
        let finished = std::sync::atomic::AtomicBool::new(false);
        let runs = prompts.iter().zip(&tracked).map(|(p, tr)| {
            let pool = &pool;
            async move {
                let mut rx =
                    match pool.generate(None, GenRequest { prompt: p.clone(), params: gen_params(args.tokens) }) {
                        Ok(rx) => rx,
                        Err(e) => {
                            tr.lock().expect("tracked").error = Some(e.to_string());
                            return;
                        }
                    };
                while let Some(ev) = rx.recv().await {
                    let mut t = tr.lock().expect("tracked");
                    match ev {
                        StreamEvent::Placed { tab, .. } => t.tab = Some(tab),
                        StreamEvent::Token(id) => {
                            t.ids.push(id);
                            t.at.push(Instant::now());
                        }
                        StreamEvent::Done(s) => {
                            t.replays = s.replays;
                            t.done = true;
                            return;
                        }
                        StreamEvent::Failed(e) => {
                            t.error = Some(e.to_string());
                            return;
                        }
                    }
                }
                tr.lock().expect("tracked").error.get_or_insert_with(|| "the stream ended without an answer".into());
            }
        });
        let all_streams = async {
            futures_util::future::join_all(runs).await;
            finished.store(true, std::sync::atomic::Ordering::SeqCst);
        };
        // Embeddings keep coming throughout: each must be answered, equal to before the loss.
        let embeddings = async {
            let (mut n, mut failed, mut wrong) = (0, 0, 0);
            while !finished.load(std::sync::atomic::Ordering::SeqCst) {
                for (r, want) in pool.execute_concurrent(&reqs).await.iter().zip(&want_vectors) {
                    n += 1;
                    match r {
                        Ok(s) if crate::exec::cosine(&s.vectors[0], want) >= 0.9999 => {}
                        Ok(_) => wrong += 1,
                        Err(_) => failed += 1,
                    }
                }
            }
            (n, failed, wrong)
        };
        // Once every stream is under way, the node carrying most of them goes.
        let lose = async {
            loop {
                let ready = tracked.iter().all(|t| {
                    let t = t.lock().expect("tracked");
                    t.ids.len() >= 3 || t.done || t.error.is_some()
                });
                if ready {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let m = pool.metrics();
            let node_of = |tab: u64| m.tabs.iter().find(|t| t.id == tab).and_then(|t| t.node.clone()).map(|n| n.uri);
            let on: Vec<Option<String>> =
                tracked.iter().map(|t| t.lock().expect("tracked").tab.and_then(node_of)).collect();
            let busiest = (0..grid.nodes.len())
                .max_by_key(|&i| on.iter().filter(|n| n.as_deref() == Some(grid.nodes[i].uri.as_str())).count())
                .context("no node")?;
            let uri = grid.nodes[busiest].uri.clone();
            let affected: Vec<usize> = (0..on.len()).filter(|&s| on[s].as_deref() == Some(uri.as_str())).collect();
            let at = Instant::now();
            let before: Vec<usize> = tracked.iter().map(|t| t.lock().expect("tracked").ids.len()).collect();
            tokio::task::block_in_place(|| match args.loss {
                Loss::Cut => grid.cut_link(busiest),
                _ => grid.kill_node(busiest),
            });
            anyhow::Ok((busiest, uri, affected, at, before))
        };
        let (_, (n, failed, wrong), lost) = tokio::join!(all_streams, embeddings, lose);
        let (busiest, uri, affected, at, before) = lost?;
        let tracked: Vec<Tracked> = tracked.into_iter().map(|t| t.into_inner().expect("tracked")).collect();
        let next_token_ms = affected
            .iter()
            .filter_map(|&s| tracked[s].at.get(before[s]).map(|t| t.duration_since(at).as_secs_f64() * 1e3))
            .collect();
        let wrong_tokens = tracked
            .iter()
            .zip(&want)
            .map(|(t, w)| t.ids.iter().zip(w).filter(|(a, b)| a != b).count() + t.ids.len().abs_diff(w.len()))
            .sum();
        for (i, t) in tracked.iter().enumerate() {
            if let Some(e) = &t.error {
                tracing::warn!("stream {i} failed across the node loss: {e}");
            }
        }

        // The node comes back: the pool gets its second tab there again.
        let t = Instant::now();
        tokio::task::block_in_place(|| match args.loss {
            Loss::Cut => grid.mend_link(busiest),
            _ => grid.restart_node(busiest),
        })?;
        let mut back_s = None;
        while t.elapsed() < Duration::from_secs(120) {
            let m = pool.metrics();
            let mut on: Vec<String> = m
                .tabs
                .iter()
                .filter(|t| t.connected && !t.recovering)
                .filter_map(|t| t.node.clone().map(|n| n.uri))
                .collect();
            on.sort();
            on.dedup();
            if on.len() == 2 {
                back_s = Some(t.elapsed().as_secs_f64());
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        anyhow::Ok(NodeLoss {
            loss: args.loss,
            node: uri,
            streams: tracked.len(),
            affected: affected.len(),
            answered: tracked.iter().filter(|t| t.done).count(),
            wrong_tokens,
            next_token_ms,
            replays: tracked.iter().map(|t| t.replays).sum(),
            embeds: n,
            embeds_failed: failed,
            embeds_wrong: wrong,
            back_s,
            leaked: 0,
        })
    }
    .await;
    pool.shutdown().await;
    let mut r = r?;
    r.leaked = leaked(&client, baseline).await?;
    Ok(r)
}

pub async fn run(host_cfg: HostConfig, args: Args) -> anyhow::Result<()> {
    let (url, host_cfg, mut local_grid) = match &args.grid {
        Some(url) => (url.clone(), host_cfg, None),
        None => {
            // A hub and nodes here, each node in its own network namespace pinned to its own
            // core; the host binds the bridge the nodes reach it over.
            let n = args.nodes;
            let g = tokio::task::spawn_blocking(move || LocalGrid::start(n)).await?.context(
                "starting a local Selenium Grid (needs root, ip, taskset, java and the jar: scripts/setup.sh)",
            )?;
            let cfg = HostConfig { bind: g.host_ip.parse()?, ..host_cfg };
            (g.hub_url.clone(), cfg, Some(g))
        }
    };
    let result = measure_all(&host_cfg, &url, local_grid.as_mut(), &args).await;
    if let Some(g) = local_grid {
        tokio::task::spawn_blocking(move || drop(g)).await?;
    }
    result
}

fn quantile_or_none(v: &[f64], q: f64) -> Option<f64> {
    (!v.is_empty()).then(|| crate::stats::quantile(v, q))
}

async fn measure_all(
    host_cfg: &HostConfig,
    url: &str,
    grid: Option<&mut LocalGrid>,
    args: &Args,
) -> anyhow::Result<()> {
    let mut kind = KindSpec::remote("grid", url, BrowserKind::Chromium);
    kind.capabilities = super::cli::capabilities(&args.capabilities)?;
    kind.binary = args.binary.clone();
    kind.backend = Some(args.backend);
    kind.validate()?;
    let client = GridClient::new(kind.url.as_ref().expect("remote"));
    let view = client.view().await?;
    let free = view.free_for(&kind.asked_capabilities());
    anyhow::ensure!(
        free > 0,
        "the grid has no free slot offering {}:\n{}",
        Value::Object(kind.asked_capabilities()),
        view.describe()
    );
    let (sentences, source) = super::bench::bench_sentences(None, false)?;
    let texts: Vec<&str> = sentences.iter().map(String::as_str).cycle().take(args.requests).collect();
    let local = if args.local.is_empty() {
        None
    } else {
        let mut local = parse_kind(&args.local)?;
        local.backend = Some(args.backend);
        Some(local)
    };

    let mut rows = Vec::new();
    let mut skipped = Vec::new();
    for &n in &args.tabs {
        if n > free {
            skipped.push(format!("{n} grid tabs: only {free} free slot(s)"));
            continue;
        }
        rows.push(measure(host_cfg, &kind, n, &texts, args).await?);
    }
    if let Some(local) = &local {
        for &n in &args.tabs {
            rows.push(measure(host_cfg, local, n, &texts, args).await?);
        }
    }

    let (mut grid_ms, mut local_ms, mut leaked_cycles) = (Vec::new(), Vec::new(), None);
    if args.cycles > 0 {
        if free >= 2 {
            let (ms, leaked) = new_tab_cycles(host_cfg, &kind, args.cycles, Some(&client)).await?;
            (grid_ms, leaked_cycles) = (ms, leaked);
        } else {
            skipped.push("new-tab cycles on the grid: they need 2 free slots".into());
        }
        if let Some(local) = &local {
            local_ms = new_tab_cycles(host_cfg, local, args.cycles, None).await?.0;
        }
    }

    let loss = match (grid, args.loss) {
        (_, Loss::None) => None,
        (None, _) => {
            skipped.push("node loss: only on the bench's own grid (no --grid)".into());
            None
        }
        (Some(_), _) if free < 2 => {
            skipped.push("node loss: it needs 2 free slots".into());
            None
        }
        (Some(g), _) => Some(node_loss(host_cfg, &kind, g, &texts[..texts.len().min(32)], args).await?),
    };

    let grid_row = |n: usize| rows.iter().find(|r| r.place == "grid" && r.tabs == n);
    let local_at = |n: usize| rows.iter().find(|r| r.place != "grid" && r.tabs == n);
    // Two nodes means two tabs that landed on two different nodes.
    let two_nodes = grid_row(2).filter(|r| r.nodes.len() == 2);
    let figures = |r: Option<&Row>| r.map(|r| json!({ "sent_per_s": r.pass.per_s, "tok_per_s": r.tok_per_s }));
    let leaked_total = leaked_cycles.unwrap_or(0) + loss.as_ref().map_or(0, |l| l.leaked);
    let loss_json = loss.as_ref().map(|l| {
        json!({ "loss": l.loss, "node": l.node, "streams": l.streams, "affected": l.affected,
                "answered": l.answered, "wrong_tokens": l.wrong_tokens, "replays": l.replays,
                "next_token_ms_p50": quantile_or_none(&l.next_token_ms, 0.5),
                "next_token_ms_p95": quantile_or_none(&l.next_token_ms, 0.95),
                "next_token_ms": l.next_token_ms,
                "embeddings": { "requests": l.embeds, "failed": l.embeds_failed, "wrong": l.embeds_wrong },
                "back_on_two_nodes_s": l.back_s, "leaked_slots": l.leaked })
    });

    if args.json {
        let out: Vec<Value> = rows
            .iter()
            .map(|r| {
                json!({ "place": r.place, "tabs": r.tabs, "sent_per_s": r.pass.per_s, "tok_per_s": r.tok_per_s,
                        "p50_ms": r.pass.p50_ms, "p99_ms": r.pass.p99_ms, "mean_batch": r.pass.mean_batch,
                        "start_s": r.start_s, "backends": r.backends, "hedged": r.hedged,
                        "nodes": r.nodes.iter().map(|(n, (t, s, c))| json!({ "node": n, "tabs": t, "served": s, "cores": c })).collect::<Vec<_>>() })
            })
            .collect();
        println!(
            "{}",
            json!({ "one_node": figures(grid_row(1)), "two_nodes": figures(two_nodes),
                    "new_tab_ms_p50": { "grid": quantile_or_none(&grid_ms, 0.5), "local": quantile_or_none(&local_ms, 0.5) },
                    "node_loss": loss_json, "leaked_slots": leaked_total,
                    "leaked_slots_after": { "cycles": leaked_cycles, "node_loss": loss.as_ref().map(|l| l.leaked) },
                    "grid": view, "free_slots": free, "requests": args.requests, "streams": args.streams,
                    "tokens": args.tokens, "cycles": args.cycles, "source": source, "rows": out, "skipped": skipped })
        );
        return Ok(());
    }
    print!("{}", view.describe());
    println!(
        "\nbench grid — all-MiniLM-L6-v2, {} one-sentence requests at once per pass (sentences from {source}); \
         SmolLM2-135M, {} greedy streams of {} tokens at once",
        args.requests, args.streams, args.tokens
    );
    println!(
        "{:<16} | {:>4} | {:<10} | {:>8} | {:>9} | {:>8} | {:>9} | {:>13} | {:>6} | {:>7} | per node: tabs, served, cores",
        "tabs on", "tabs", "backend", "sent/s", "vs 1 grid", "tok/s", "vs 1 grid", "p50/p99 ms", "hedged", "start s"
    );
    let one = grid_row(1);
    for r in &rows {
        let nodes: Vec<String> =
            r.nodes.iter().map(|(n, (t, s, c))| format!("{n}: {t} tab(s), {s} served, {c} cores")).collect();
        println!(
            "{:<16} | {:>4} | {:<10} | {:>8.1} | {:>9} | {:>8.1} | {:>9} | {:>13} | {:>6} | {:>7.1} | {}",
            r.place,
            r.tabs,
            r.backends.join(","),
            r.pass.per_s,
            one.map(|o| format!("{:.2}x", r.pass.per_s / o.pass.per_s)).unwrap_or_default(),
            r.tok_per_s,
            one.map(|o| format!("{:.2}x", r.tok_per_s / o.tok_per_s)).unwrap_or_default(),
            format!("{:.0}/{:.0}", r.pass.p50_ms, r.pass.p99_ms),
            r.hedged,
            r.start_s,
            nodes.join("; ")
        );
    }
    for n in &args.tabs {
        if let (Some(g), Some(l)) = (grid_row(*n), local_at(*n)) {
            println!(
                "{n} grid tab(s) vs {n} {} tab(s): sent/s {:.2}x, tok/s {:.2}x",
                l.place,
                g.pass.per_s / l.pass.per_s,
                g.tok_per_s / l.tok_per_s
            );
        }
    }
    if let (Some(two), Some(one)) = (two_nodes, one) {
        println!(
            "two nodes (one tab each) vs one node: sent/s {:.2}x, tok/s {:.2}x (target ≥ 1.7x)",
            two.pass.per_s / one.pass.per_s,
            two.tok_per_s / one.tok_per_s
        );
    }
    let p50 = |v: &[f64]| quantile_or_none(v, 0.5).map(|m| format!("{m:.0} ms")).unwrap_or_else(|| "-".into());
    if args.cycles > 0 {
        println!(
            "new tab (launch → ready), p50 of {} cycles: grid {}, local {}",
            args.cycles,
            p50(&grid_ms),
            p50(&local_ms)
        );
    }
    if let Some(l) = &loss {
        println!(
            "node loss ({:?} {}): {}/{} streams answered ({} on the lost node, {} replays), {} wrong tokens; \
             next token after the loss p50 {} / p95 {}; embeddings during it: {} answered, {} failed, {} wrong; \
             back on two nodes {} after the node returned",
            l.loss,
            l.node,
            l.answered,
            l.streams,
            l.affected,
            l.replays,
            l.wrong_tokens,
            p50(&l.next_token_ms),
            quantile_or_none(&l.next_token_ms, 0.95).map(|m| format!("{m:.0} ms")).unwrap_or_else(|| "-".into()),
            l.embeds - l.embeds_failed,
            l.embeds_failed,
            l.embeds_wrong,
            l.back_s.map(|s| format!("{s:.1} s")).unwrap_or_else(|| "never (120 s)".into())
        );
    }
    println!(
        "slots the grid still holds for the pool: {leaked_total} (after {} cycles: {}, after the node loss: {})",
        args.cycles,
        leaked_cycles.map(|n| n.to_string()).unwrap_or_else(|| "-".into()),
        loss.as_ref().map(|l| l.leaked.to_string()).unwrap_or_else(|| "-".into())
    );
    for s in &skipped {
        println!("skipped: {s}");
    }
    Ok(())
}
