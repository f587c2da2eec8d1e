//! `tabpool bench pool`: pool throughput with 1, 2, 4… tabs (ratio to one tab, beside the core
//! count), two models at once vs one after the other, and a mixed-kind pool showing where
//! routing sent the work. Every figure is measured in this run with real tabs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use serde_json::json;

use super::pool_args::parse_kind;
use crate::HostConfig;
use crate::browser::KindSpec;
use crate::models::generated;
use crate::pool::{ModelSpec, Pool, PoolConfig, Served};

pub struct Args {
    pub tabs: Vec<usize>,
    /// The kind every tab of the scaling rows is.
    pub kind: String,
    /// Requests (one sentence each) per timed pass.
    pub requests: usize,
    pub sentences: Option<PathBuf>,
    /// Kinds of the mixed row (empty: skip it).
    pub mixed: Vec<String>,
    /// Kinds measured alone, one tab each (empty: skip).
    pub per_kind: Vec<String>,
    pub per_kind_requests: usize,
    pub json: bool,
}

/// One browser kind alone: the backend its calibration chose, the calibration figures, and the
/// throughput of one tab.
struct KindRow {
    kind: String,
    backend: String,
    calibration: Vec<crate::policy::backend_choice::Measured>,
    pass: Pass,
}

pub(crate) struct Pass {
    pub per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub mean_batch: f64,
    pub by_kind: BTreeMap<String, usize>,
    /// Requests served per tab id.
    pub by_tab: BTreeMap<u64, usize>,
}

pub(crate) async fn pass(pool: &Pool, requests: &[(&str, Vec<&str>)]) -> anyhow::Result<Pass> {
    let t = Instant::now();
    let results = pool.execute_concurrent(requests).await;
    let secs = t.elapsed().as_secs_f64();
    let served: Vec<Served> = results.into_iter().collect::<Result<_, _>>()?;
    let lat: Vec<f64> = served.iter().map(|s| s.queue_ms + s.run_ms).collect();
    let (mut by_kind, mut by_tab) = (BTreeMap::new(), BTreeMap::new());
    for s in &served {
        *by_kind.entry(s.kind.clone()).or_insert(0) += 1;
        *by_tab.entry(s.tab).or_insert(0) += 1;
    }
    Ok(Pass {
        per_s: requests.len() as f64 / secs,
        p50_ms: crate::stats::quantile(&lat, 0.5),
        p99_ms: crate::stats::quantile(&lat, 0.99),
        mean_batch: served.iter().map(|s| s.batch_rows as f64).sum::<f64>() / served.len().max(1) as f64,
        by_kind,
        by_tab,
    })
}

pub(crate) fn fixed_pool(kinds: Vec<KindSpec>, tabs: usize, queue: usize) -> PoolConfig {
    let mut cfg = PoolConfig { min_tabs: tabs, max_tabs: tabs, max_queue: queue, kinds, ..PoolConfig::default() };
    cfg.scaling.enabled = false;
    cfg
}

/// A second model the same size as MiniLM (6 × 384, random weights, same loader), generated once.
fn second_model() -> anyhow::Result<PathBuf> {
    let dir = crate::models::cache_dir().join("generated/bert-random-L6-H384");
    if !dir.join("model.safetensors").is_file() {
        let shape =
            generated::Shape { layers: 6, hidden: 384, heads: 12, intermediate: 1536, ..generated::Shape::TINY };
        generated::write_bert(&dir, shape, 7, &crate::models::minilm::default_dir())?;
    }
    Ok(dir)
}

pub async fn run(host_cfg: HostConfig, mut args: Args) -> anyhow::Result<()> {
    // `--mixed ""` / `--per-kind ""` skip those sections.
    args.mixed.retain(|k| !k.is_empty());
    args.per_kind.retain(|k| !k.is_empty());
    let (sentences, source) = super::bench::bench_sentences(args.sentences.as_deref(), false)?;
    let texts: Vec<&str> = sentences.iter().map(String::as_str).cycle().take(args.requests).collect();
    let kind = parse_kind(&args.kind)?;
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let minilm = crate::models::minilm::NAME;

    // 1. Throughput against the number of tabs.
    let mut scaling_rows = Vec::new();
    for &n in &args.tabs {
        let pool = Pool::with_host(
            crate::Host::start(host_cfg.clone()).await?,
            fixed_pool(vec![kind.clone()], n, args.requests),
        )
        .await
        .with_context(|| format!("starting {n} {} tabs", kind.name))?;
        let result = async {
            pool.load(ModelSpec::minilm()).await?;
            let reqs: Vec<(&str, Vec<&str>)> = texts.iter().map(|t| (minilm, vec![*t])).collect();
            pass(&pool, &reqs).await?; // warm-up: every shape bucket compiled on every tab
            pass(&pool, &reqs).await
        }
        .await;
        pool.shutdown().await;
        scaling_rows.push((n, result?));
    }

    // 2. Two models at once vs one after the other, on two tabs.
    let second = second_model()?;
    let pool = Pool::with_host(
        crate::Host::start(host_cfg.clone()).await?,
        fixed_pool(vec![kind.clone()], 2, 2 * args.requests),
    )
    .await?;
    let two = async {
        pool.load(ModelSpec::minilm()).await?;
        let other = pool.load(ModelSpec::from_dir(&second)).await?;
        let a: Vec<(&str, Vec<&str>)> = texts.iter().map(|t| (minilm, vec![*t])).collect();
        let b: Vec<(&str, Vec<&str>)> = texts.iter().map(|t| (other.as_str(), vec![*t])).collect();
        let both: Vec<(&str, Vec<&str>)> = a.iter().zip(&b).flat_map(|(x, y)| [x.clone(), y.clone()]).collect();
        // Warm-up of every pattern timed below: WebNN builds a graph per shape bucket.
        pass(&pool, &a).await?;
        pass(&pool, &b).await?;
        pass(&pool, &both).await?;
        let t = Instant::now();
        pass(&pool, &a).await?;
        pass(&pool, &b).await?;
        let sequential = both.len() as f64 / t.elapsed().as_secs_f64();
        let concurrent = pass(&pool, &both).await?;
        anyhow::Ok((other.clone(), sequential, concurrent))
    }
    .await;
    pool.shutdown().await;
    let (other, sequential, concurrent) = two?;

    // 3. A mixed-kind pool: where routing sends the work, from measured history.
    let mut mixed = None;
    if !args.mixed.is_empty() {
        // One tab of each kind unless a cap says otherwise (`chromium-webnn=2`).
        let kinds: Vec<KindSpec> = args
            .mixed
            .iter()
            .map(|k| parse_kind(k).map(|k| if k.max_tabs.is_none() { k.with_max_tabs(1) } else { k }))
            .collect::<anyhow::Result<_>>()?;
        let n: usize = kinds.iter().map(|k| k.max_tabs.unwrap_or(1)).sum();
        let mut cfg = fixed_pool(kinds, n, args.requests);
        cfg.min_samples = 5;
        let pool = Pool::with_host(crate::Host::start(host_cfg.clone()).await?, cfg).await?;
        let r = async {
            pool.load(ModelSpec::minilm()).await?;
            let reqs: Vec<(&str, Vec<&str>)> = texts.iter().map(|t| (minilm, vec![*t])).collect();
            pass(&pool, &reqs).await?;
            let p = pass(&pool, &reqs).await?;
            anyhow::Ok((p, pool.metrics()))
        }
        .await;
        pool.shutdown().await;
        mixed = Some(r?);
    }

    // 4. Each kind alone: what one tab of it achieves with the backend calibration picked.
    let mut kind_rows = Vec::new();
    let few: Vec<(&str, Vec<&str>)> =
        sentences.iter().map(String::as_str).cycle().take(args.per_kind_requests).map(|t| (minilm, vec![t])).collect();
    for k in &args.per_kind {
        let spec = parse_kind(k)?;
        let pool = Pool::with_host(crate::Host::start(host_cfg.clone()).await?, fixed_pool(vec![spec], 1, few.len()))
            .await
            .with_context(|| format!("starting one {k} tab"))?;
        let r = async {
            pool.load(ModelSpec::minilm()).await?;
            pass(&pool, &few).await?;
            let p = pass(&pool, &few).await?;
            let m = pool.metrics();
            let tab = m.tabs.first().context("the tab is gone")?;
            anyhow::Ok(KindRow {
                kind: k.clone(),
                backend: tab.models.get(minilm).cloned().unwrap_or_default(),
                calibration: tab.calibration.get(minilm).cloned().unwrap_or_default(),
                pass: p,
            })
        }
        .await;
        pool.shutdown().await;
        kind_rows.push(r?);
    }

    let one = scaling_rows.first().map(|(_, p)| p.per_s).unwrap_or(f64::NAN);
    if args.json {
        let rows: Vec<_> = scaling_rows
            .iter()
            .map(|(n, p)| {
                json!({ "tabs": n, "sent_per_s": p.per_s, "ratio_to_1": p.per_s / one, "p50_ms": p.p50_ms,
                                   "p99_ms": p.p99_ms, "mean_batch": p.mean_batch })
            })
            .collect();
        let mixed_json =
            mixed.as_ref().map(|(p, m)| json!({ "sent_per_s": p.per_s, "by_kind": p.by_kind, "history": m.history }));
        let kinds_json: Vec<_> = kind_rows
            .iter()
            .map(|r| {
                json!({ "kind": r.kind, "backend": r.backend, "sent_per_s": r.pass.per_s, "p50_ms": r.pass.p50_ms,
                        "calibration": r.calibration })
            })
            .collect();
        println!(
            "{}",
            json!({ "per_kind": kinds_json, "kind": kind.name, "requests": args.requests, "cores": cores, "source": source, "scaling": rows,
                    "two_models": { "second": other, "sequential_per_s": sequential, "concurrent_per_s": concurrent.per_s,
                                    "ratio": concurrent.per_s / sequential },
                    "mixed": mixed_json })
        );
        return Ok(());
    }
    println!(
        "bench pool — all-MiniLM-L6-v2, {} one-sentence requests at once per pass (sentences from {source}); {cores} CPU cores",
        args.requests
    );
    println!("{:>5} | {:>10} | {:>10} | {:>13} | {:>10}", "tabs", "sent/s", "vs 1 tab", "p50/p99 ms", "mean batch");
    for (n, p) in &scaling_rows {
        println!(
            "{n:>5} | {:>10.1} | {:>9.2}x | {:>13} | {:>10.1}",
            p.per_s,
            p.per_s / one,
            format!("{:.0}/{:.0}", p.p50_ms, p.p99_ms),
            p.mean_batch
        );
    }
    println!("(tabs share {cores} cores: past {cores} tabs, more tabs cannot add compute on this machine)");
    println!(
        "\ntwo models on 2 {} tabs ({minilm} + {other}, {} requests each): sequential {:.1} req/s, concurrent {:.1} req/s, ratio {:.2}x",
        kind.name,
        args.requests,
        sequential,
        concurrent.per_s,
        concurrent.per_s / sequential
    );
    if let Some((p, m)) = mixed {
        println!(
            "\nmixed pool ({}): {:.1} sent/s; requests served per kind: {:?}",
            args.mixed.join(" + "),
            p.per_s,
            p.by_kind
        );
        println!("measured history routing read:");
        for h in &m.history {
            println!(
                "  {:<16} {:<10} ok {:>5} fail {:>3}  {:>7.2} ms/text",
                h.kind, h.backend, h.successes, h.failures, h.mean_ms_per_text
            );
        }
    }
    if !kind_rows.is_empty() {
        println!(
            "\none tab of each kind ({} one-sentence requests at once; backend chosen by calibration, one 16-token sentence):",
            args.per_kind_requests
        );
        println!("{:<16} | {:<10} | {:>8} | {:>13} | calibration ms", "kind", "backend", "sent/s", "p50/p99 ms");
        for r in &kind_rows {
            let cal: Vec<String> = r
                .calibration
                .iter()
                .map(|c| match (c.median_ms, &c.error) {
                    (Some(ms), _) => format!("{} {ms:.1}", c.backend),
                    (None, Some(e)) => format!("{} failed: {e}", c.backend),
                    (None, None) => c.backend.clone(),
                })
                .collect();
            println!(
                "{:<16} | {:<10} | {:>8.1} | {:>13} | {}",
                r.kind,
                r.backend,
                r.pass.per_s,
                format!("{:.0}/{:.0}", r.pass.p50_ms, r.pass.p99_ms),
                cal.join(", ")
            );
        }
    }
    Ok(())
}
