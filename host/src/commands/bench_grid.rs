//! `tabpool bench grid`: the pool on a Selenium Grid against the same pool on this machine, in
//! one run. Pools of 1, 2, … tabs asked of the Grid (as many as it has free slots offering the
//! kind's capabilities): MiniLM sent/s, the ratio to one Grid tab, which nodes the tabs landed
//! on and what each node served — a second tab on a node shares that node's cores, and the
//! per-node rows show what it was worth. Then the same tab counts launched locally (`--local`),
//! so the cost of the Grid (a hub between host and browsers, tabs across an interface) is a
//! same-run ratio. Every figure is measured in this run with real tabs.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::Context;
use serde_json::{Value, json};

use super::bench_pool::{Pass, fixed_pool, pass};
use super::pool_args::parse_kind;
use crate::HostConfig;
use crate::browser::grid::GridClient;
use crate::browser::{BrowserKind, KindSpec};
use crate::pool::{ModelSpec, Pool};

pub struct Args {
    /// A Grid hub; `None`: start one here with `nodes` nodes (`browser::grid_local`).
    pub grid: Option<String>,
    pub nodes: usize,
    pub capabilities: serde_json::Map<String, Value>,
    /// The browser binary on the nodes, if their stereotype does not name one.
    pub binary: Option<std::path::PathBuf>,
    pub tabs: Vec<usize>,
    pub requests: usize,
    /// A local kind measured with the same tab counts ("" skips).
    pub local: String,
    /// The backend of every tab, Grid and local alike (auto: each tab calibrates). Forcing one
    /// compares like with like: a local tab served from a non-loopback `--bind` address is no
    /// secure context (no WebGPU, no WebNN), a Grid tab is told to treat the page as secure.
    pub backend: crate::policy::backend_choice::Backend,
    pub json: bool,
}

/// One pool measured: where its tabs were, and what each served.
struct Row {
    place: String,
    tabs: usize,
    pass: Pass,
    /// node (or "this machine") → (tabs, requests served, cores the tabs report)
    nodes: BTreeMap<String, (usize, usize, u32)>,
    start_s: f64,
    /// The backends calibration chose on the tabs, and batches hedged to a second tab.
    backends: Vec<String>,
    hedged: u64,
}

async fn measure(host_cfg: &HostConfig, kind: &KindSpec, n: usize, texts: &[&str], place: &str) -> anyhow::Result<Row> {
    let t = Instant::now();
    let pool =
        Pool::with_host(crate::Host::start(host_cfg.clone()).await?, fixed_pool(vec![kind.clone()], n, texts.len()))
            .await
            .with_context(|| format!("starting {n} {place} tab(s)"))?;
    let start_s = t.elapsed().as_secs_f64();
    let r = async {
        let name = pool.load(ModelSpec::minilm()).await?;
        let reqs: Vec<(&str, Vec<&str>)> = texts.iter().map(|t| (name.as_str(), vec![*t])).collect();
        pass(&pool, &reqs).await?; // warm-up: every shape bucket compiled on every tab
        let p = pass(&pool, &reqs).await?;
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
        anyhow::Ok(Row { place: place.into(), tabs: n, pass: p, nodes, start_s, backends, hedged: m.hedged })
    }
    .await;
    pool.shutdown().await;
    r
}

pub async fn run(host_cfg: HostConfig, args: Args) -> anyhow::Result<()> {
    let (url, host_cfg, local_grid) = match &args.grid {
        Some(url) => (url.clone(), host_cfg, None),
        None => {
            // A hub and nodes here, each node in its own network namespace pinned to its own
            // core; the host binds the bridge the nodes reach it over.
            let n = args.nodes;
            let g =
                tokio::task::spawn_blocking(move || crate::browser::grid_local::LocalGrid::start(n)).await?.context(
                    "starting a local Selenium Grid (needs root, ip, taskset, java and the jar: scripts/setup.sh)",
                )?;
            let cfg = HostConfig { bind: g.host_ip.parse()?, ..host_cfg };
            (g.hub_url.clone(), cfg, Some(g))
        }
    };
    let result = measure_all(&host_cfg, &url, &args).await;
    if let Some(g) = local_grid {
        tokio::task::spawn_blocking(move || drop(g)).await?;
    }
    result
}

async fn measure_all(host_cfg: &HostConfig, url: &str, args: &Args) -> anyhow::Result<()> {
    let mut kind = KindSpec::remote("grid", url, BrowserKind::Chromium);
    kind.capabilities = args.capabilities.clone();
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

    let mut rows = Vec::new();
    let mut skipped = Vec::new();
    for &n in &args.tabs {
        if n > free {
            skipped.push(format!("{n} grid tabs: only {free} free slot(s)"));
            continue;
        }
        rows.push(measure(host_cfg, &kind.clone().with_max_tabs(n), n, &texts, "grid").await?);
    }
    if !args.local.is_empty() {
        let mut local = parse_kind(&args.local)?;
        local.backend = Some(args.backend);
        for &n in &args.tabs {
            rows.push(measure(host_cfg, &local.clone().with_max_tabs(n), n, &texts, &local.name).await?);
        }
    }
    let grid_one = rows.iter().find(|r| r.place == "grid" && r.tabs == 1).map(|r| r.pass.per_s);
    let local_at = |n: usize| rows.iter().find(|r| r.place != "grid" && r.tabs == n).map(|r| r.pass.per_s);

    if args.json {
        let out: Vec<Value> = rows
            .iter()
            .map(|r| {
                json!({ "place": r.place, "tabs": r.tabs, "sent_per_s": r.pass.per_s, "p50_ms": r.pass.p50_ms,
                        "p99_ms": r.pass.p99_ms, "mean_batch": r.pass.mean_batch, "start_s": r.start_s,
                        "backends": r.backends, "hedged": r.hedged,
                        "ratio_to_1_grid_tab": grid_one.map(|o| r.pass.per_s / o),
                        "ratio_to_local": (r.place == "grid").then(|| local_at(r.tabs).map(|l| r.pass.per_s / l)).flatten(),
                        "nodes": r.nodes.iter().map(|(n, (t, s, c))| json!({ "node": n, "tabs": t, "served": s, "cores": c })).collect::<Vec<_>>() })
            })
            .collect();
        println!(
            "{}",
            json!({ "grid": view, "free_slots": free, "requests": args.requests, "source": source, "rows": out, "skipped": skipped })
        );
        return Ok(());
    }
    print!("{}", view.describe());
    println!(
        "\nbench grid — all-MiniLM-L6-v2, {} one-sentence requests at once per pass (sentences from {source})",
        args.requests
    );
    println!(
        "{:<16} | {:>4} | {:<10} | {:>8} | {:>11} | {:>9} | {:>13} | {:>6} | {:>7} | per node: tabs, served, cores",
        "tabs on", "tabs", "backend", "sent/s", "vs 1 grid", "vs local", "p50/p99 ms", "hedged", "start s"
    );
    for r in &rows {
        let vs_local = if r.place == "grid" { local_at(r.tabs).map(|l| r.pass.per_s / l) } else { None };
        let nodes: Vec<String> =
            r.nodes.iter().map(|(n, (t, s, c))| format!("{n}: {t} tab(s), {s} served, {c} cores")).collect();
        println!(
            "{:<16} | {:>4} | {:<10} | {:>8.1} | {:>11} | {:>9} | {:>13} | {:>6} | {:>7.1} | {}",
            r.place,
            r.tabs,
            r.backends.join(","),
            r.pass.per_s,
            grid_one.map(|o| format!("{:.2}x", r.pass.per_s / o)).unwrap_or_default(),
            vs_local.map(|v| format!("{v:.2}x")).unwrap_or_default(),
            format!("{:.0}/{:.0}", r.pass.p50_ms, r.pass.p99_ms),
            r.hedged,
            r.start_s,
            nodes.join("; ")
        );
    }
    for s in &skipped {
        println!("skipped: {s}");
    }
    Ok(())
}
