//! `tabpool bench proto|matmul`: measured in a real tab, printed as tables with ratios from the
//! same run.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use page_runtime::executors::cpu;
use serde_json::json;
use shared_proto::{DType, Kernel, MatMulVariant, Reply, Request, Tensor};

use super::{KERNEL_TIMEOUT, adapter_line, random_values};
use crate::exec::{Backend, Embedder};
use crate::stats::{median, quantile};
use crate::{Host, Tab};
use anyhow::Context as _;

const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Host↔tab no-op round trips, then host→tab tensor throughput.
pub async fn proto(host: &mut Host, pings: usize, json_out: bool) -> anyhow::Result<()> {
    let t = Instant::now();
    let tab = host.launch_tab().await?;
    let tab_start_ms = t.elapsed().as_secs_f64() * 1e3;
    for _ in 0..50 {
        tab.ping(CALL_TIMEOUT).await?;
    }
    let mut rtt_ms = Vec::with_capacity(pings);
    for _ in 0..pings {
        let t = Instant::now();
        tab.ping(CALL_TIMEOUT).await?;
        rtt_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let mut rows = Vec::new();
    for size in [64usize << 10, 1 << 20, 16 << 20] {
        rows.push((size, sink_throughput(&tab, size, 256 << 20).await?));
    }
    let (p50, p99) = (quantile(&rtt_ms, 0.5), quantile(&rtt_ms, 0.99));
    if json_out {
        let tp: Vec<_> = rows.iter().map(|(s, mbs)| json!({ "bytes": s, "mb_per_s": mbs })).collect();
        println!(
            "{}",
            json!({ "tab_start_ms": tab_start_ms, "pings": pings, "rtt_p50_ms": p50, "rtt_p99_ms": p99, "throughput": tp })
        );
        return Ok(());
    }
    println!("bench proto — tab {} ({})", tab.id(), tab.caps().user_agent);
    println!("tab start (launch → authenticated Hello): {tab_start_ms:.0} ms");
    println!("no-op round trip over {pings} pings: p50 {:.3} ms, p99 {:.3} ms", p50, p99);
    println!("{:>14} | {:>10}", "tensor bytes", "MB/s");
    for (size, mbs) in rows {
        println!("{:>14} | {:>10.1}", size, mbs);
    }
    Ok(())
}

/// Send `total` bytes in tensors of `size` bytes, 4 in flight; MB/s (10^6) acknowledged by the tab.
async fn sink_throughput(tab: &Tab, size: usize, total: usize) -> anyhow::Result<f64> {
    let tensor = Tensor { dtype: DType::U8, shape: vec![size as u32], data: vec![0xA5u8; size].into() };
    let count = total.div_ceil(size);
    let t = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    let mut acked = 0u64;
    for i in 0..count {
        in_flight.push(tab.call(Request::Sink, vec![tensor.clone()], CALL_TIMEOUT));
        if in_flight.len() >= 4 || i + 1 == count {
            while in_flight.len() > if i + 1 == count { 0 } else { 3 } {
                match in_flight.next().await.expect("non-empty")? {
                    (Reply::Sunk { bytes }, _) => acked += bytes,
                    (other, _) => anyhow::bail!("unexpected reply to Sink: {other:?}"),
                }
            }
        }
    }
    anyhow::ensure!(acked == (count * size) as u64, "tab acknowledged {acked} of {} bytes", count * size);
    Ok(acked as f64 / t.elapsed().as_secs_f64() / 1e6)
}

/// GFLOP/s of the tiled and naive kernels on the tab's adapter, beside the host CPU executor.
pub async fn matmul(host: &mut Host, sizes: &[u32], json_out: bool) -> anyhow::Result<()> {
    let tab = host.launch_tab().await?;
    let mut rows = Vec::new();
    for &s in sizes {
        let n = s as usize;
        let a = Tensor::from_f32(vec![s, s], &random_values(n * n, 1));
        let b = Tensor::from_f32(vec![s, s], &random_values(n * n, 2));
        let flop = 2.0 * (n * n * n) as f64;
        // Enough repeats per submission that dispatch, not readback, dominates small sizes.
        let repeats = (2e7 / flop).clamp(1.0, 50.0) as u32;
        let gflops = |ms: f64| flop / (ms * 1e6);
        let reg = median_device_ms(&tab, MatMulVariant::Register, repeats, &a, &b).await?;
        let tiled = median_device_ms(&tab, MatMulVariant::Tiled, repeats, &a, &b).await?;
        let naive = median_device_ms(&tab, MatMulVariant::Naive, repeats, &a, &b).await?;
        let (av, bv) = (a.to_f32().expect("f32"), b.to_f32().expect("f32"));
        let t = Instant::now();
        std::hint::black_box(cpu::matmul(&av, &bv, n, n, n));
        let cpu_ms = t.elapsed().as_secs_f64() * 1e3;
        rows.push((s, gflops(reg), gflops(tiled), gflops(naive), gflops(cpu_ms)));
    }
    let adapter = adapter_line(tab.caps());
    if json_out {
        let r: Vec<_> = rows
            .iter()
            .map(|(s, r, t, n, c)| {
                json!({ "size": s, "register_gflops": r, "tiled_gflops": t, "naive_gflops": n, "cpu_gflops": c,
                        "register_over_naive": r / n, "tiled_over_naive": t / n })
            })
            .collect();
        println!("{}", json!({ "adapter": adapter, "rows": r }));
        return Ok(());
    }
    println!("bench matmul — tab {} on {adapter}", tab.id());
    println!(
        "{:>6} | {:>13} | {:>10} | {:>10} | {:>14} | {:>11} | {:>13}",
        "n", "register GF/s", "tiled GF/s", "naive GF/s", "register/naive", "tiled/naive", "host CPU GF/s"
    );
    for (s, r, t, n, c) in rows {
        println!("{s:>6} | {r:>13.3} | {t:>10.3} | {n:>10.3} | {:>13.2}x | {:>10.2}x | {c:>13.3}", r / n, t / n);
    }
    Ok(())
}

async fn median_device_ms(
    tab: &Tab,
    variant: MatMulVariant,
    repeats: u32,
    a: &Tensor,
    b: &Tensor,
) -> anyhow::Result<f64> {
    let kernel = Kernel::MatMul { variant, repeats };
    tab.kernel(kernel.clone(), vec![a.clone(), b.clone()], KERNEL_TIMEOUT).await?; // compile + warm
    let mut ms = Vec::new();
    for _ in 0..3 {
        ms.push(tab.kernel(kernel.clone(), vec![a.clone(), b.clone()], KERNEL_TIMEOUT).await?.1);
    }
    Ok(median(&ms))
}

/// The default benchmark sentences: the 64 sentences (14–18 tokens) of the peer harness's
/// `sentences.txt`, copied into the repository (`host/data/`) so a plain clone measures the same
/// workload as the figures in the README.
const BENCH_SENTENCES: &str = include_str!("../../data/bench_sentences.txt");

/// The peer harness (`run.sh`, `sentences.txt`): `$TABPOOL_ANCHORS`, else `../shared/anchors`
/// beside the checkout. It exists on the developers' machines only; nothing but `--peers` uses it.
pub fn anchors_dir() -> std::path::PathBuf {
    match std::env::var_os("TABPOOL_ANCHORS") {
        Some(p) => p.into(),
        None => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/anchors"),
    }
}

/// Run the peer harness `anchors/<sub>/run.sh` (`sub` "" for the MiniLM one at the root) with
/// `env` added, and return the results file it wrote (`$ANCHORS_CACHE/<sub>/results/*.jsonl`,
/// the newest that is new).
pub fn run_peer_harness(sub: &str, env: &[(&str, String)]) -> anyhow::Result<std::path::PathBuf> {
    use anyhow::Context;
    let script = anchors_dir().join(sub).join("run.sh");
    anyhow::ensure!(script.exists(), "the {sub} peer harness is not at {} (set TABPOOL_ANCHORS)", script.display());
    let cache = std::env::var_os("ANCHORS_CACHE").map(std::path::PathBuf::from).unwrap_or_else(|| {
        std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/tabpool-anchors")
    });
    let results = cache.join(sub).join("results");
    let before: Vec<_> =
        std::fs::read_dir(&results).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    eprintln!("running the {sub} peers: bash {}", script.display());
    let status = std::process::Command::new("bash")
        .arg(&script)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(std::process::Stdio::null())
        .status()
        .with_context(|| format!("running the {sub} peers"))?;
    anyhow::ensure!(status.success(), "{sub} peers run.sh failed: {status}");
    std::fs::read_dir(&results)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl") && !before.contains(p))
        .max()
        .with_context(|| format!("the {sub} peers wrote no results file"))
}

/// `--peers` needs the peer harness; say so before anything is measured.
pub fn check_peers() -> anyhow::Result<std::path::PathBuf> {
    let script = anchors_dir().join("run.sh");
    anyhow::ensure!(
        script.is_file(),
        "--peers needs the peer harness, which is not part of this repository: {} is absent \
         (set TABPOOL_ANCHORS to its folder, or run without --peers)",
        script.display()
    );
    Ok(script)
}

/// `file`, else the built-in 64 sentences (with `peers`, the harness's own `sentences.txt`, so
/// ours and the peers run the same list even if it changed there).
pub fn bench_sentences(file: Option<&std::path::Path>, peers: bool) -> anyhow::Result<(Vec<String>, String)> {
    let anchors = anchors_dir().join("sentences.txt");
    let path = file.map(std::path::Path::to_path_buf).or_else(|| (peers && anchors.is_file()).then_some(anchors));
    match path {
        Some(p) => {
            let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
            let lines: Vec<String> = text.lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect();
            anyhow::ensure!(!lines.is_empty(), "{} has no sentences", p.display());
            Ok((lines, p.display().to_string()))
        }
        None => Ok((
            BENCH_SENTENCES.lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect(),
            "the built-in 64 sentences (host/data/bench_sentences.txt)".into(),
        )),
    }
}

/// Throughput and latency at one batch size: sentences/s over the run, per-call p50/p99 ms.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Rate {
    pub batch: usize,
    pub sentences: usize,
    pub per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// One full untimed pass first: every shape bucket the timed pass will meet gets compiled (WebNN
/// builds a graph per bucket), like the peers' warm-up passes.
async fn measure(e: &Embedder, sentences: &[&str], batch: usize) -> anyhow::Result<Rate> {
    for chunk in sentences.chunks(batch) {
        e.embed(chunk).await?;
    }
    let mut lat = Vec::new();
    let t = Instant::now();
    for chunk in sentences.chunks(batch) {
        let c = Instant::now();
        e.embed(chunk).await?;
        lat.push(c.elapsed().as_secs_f64() * 1e3);
    }
    let per_s = sentences.len() as f64 / t.elapsed().as_secs_f64();
    Ok(Rate { batch, sentences: sentences.len(), per_s, p50_ms: quantile(&lat, 0.5), p99_ms: quantile(&lat, 0.99) })
}

pub struct EmbedArgs {
    pub sentences: Option<std::path::PathBuf>,
    pub backends: Vec<Backend>,
    /// Sentences per batch size for the WebGPU tab (SwiftShader runs a few sentences/s).
    pub webgpu_sentences: usize,
    /// WebNN tabs in the pool row (0 or 1: no pool row).
    pub pool_tabs: usize,
    /// Also run the peer harness (`anchors_dir()/run.sh`: native onnxruntime, onnxruntime-web,
    /// transformers.js); it is not part of the repository.
    pub peers: bool,
    /// Include the peers' WebGPU run (about 11 minutes on SwiftShader).
    pub peers_webgpu: bool,
    pub json: bool,
}

struct Row {
    label: String,
    load: Option<crate::exec::LoadReport>,
    tokens: (usize, usize),
    bs1: Rate,
    bs32: Rate,
}

/// Spread `sentences` over `embedders` in calls of `batch`, all tabs busy at once.
async fn measure_pool(es: &[Embedder], sentences: &[&str], batch: usize) -> anyhow::Result<Rate> {
    for e in es {
        for chunk in sentences.chunks(batch) {
            e.embed(chunk).await?;
        }
    }
    let chunks: Vec<&[&str]> = sentences.chunks(batch).collect();
    let t = Instant::now();
    let per_tab = futures_util::future::try_join_all(es.iter().enumerate().map(|(i, e)| {
        let mine: Vec<&[&str]> = chunks.iter().skip(i).step_by(es.len()).copied().collect();
        async move {
            let mut lat = Vec::new();
            for c in mine {
                let t = Instant::now();
                e.embed(c).await?;
                lat.push(t.elapsed().as_secs_f64() * 1e3);
            }
            anyhow::Ok(lat)
        }
    }))
    .await?;
    let per_s = sentences.len() as f64 / t.elapsed().as_secs_f64();
    let lat: Vec<f64> = per_tab.into_iter().flatten().collect();
    Ok(Rate { batch, sentences: sentences.len(), per_s, p50_ms: quantile(&lat, 0.5), p99_ms: quantile(&lat, 0.99) })
}

/// Peers measured by the peer harness's run.sh in this run: (method, batch) → sentences/s.
fn run_peers(webgpu: bool) -> anyhow::Result<Vec<(String, usize, f64)>> {
    check_peers()?;
    let newest = run_peer_harness("", &[("TJS", "1".into()), ("WEBGPU", if webgpu { "1" } else { "0" }.into())])?;
    let mut out = Vec::new();
    for line in std::fs::read_to_string(&newest)?.lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        if let (Some(m), Some(bs), Some(r)) = (v["method"].as_str(), v["bs"].as_u64(), v["sent_per_s"].as_f64()) {
            out.push((m.to_string(), bs as usize, r));
        }
    }
    Ok(out)
}

/// Model load, then sentences/s and p50/p99 at batch 1 and 32, per backend, a pool of WebNN
/// tabs, and (with --peers) the peers — all in one run, with ratios.
pub async fn embed(host: &mut Host, args: EmbedArgs) -> anyhow::Result<()> {
    if args.peers {
        check_peers()?;
    }
    let (all, source) = bench_sentences(args.sentences.as_deref(), args.peers)?;
    let mut rows: Vec<Row> = Vec::new();
    for &backend in &args.backends {
        let e = Embedder::load(host, backend, &()).await?;
        let n = if e.load.backend == "webgpu" { args.webgpu_sentences.min(all.len()).max(1) } else { all.len() };
        let texts: Vec<&str> = all.iter().take(n).map(String::as_str).collect();
        let tokens: Vec<usize> = e.model().tokenize(&texts)?.0.iter().map(Vec::len).collect();
        let bs1 = measure(&e, &texts, 1).await?;
        let bs32 = measure(&e, &texts, 32).await?;
        let label = match e.load.browser {
            Some(k) => format!("{} ({} tab)", e.load.backend, k.name()),
            None => format!("cpu (host, {} threads)", page_runtime::executors::cpu::threads()),
        };
        let tokens = (tokens.iter().copied().min().unwrap_or(0), tokens.iter().copied().max().unwrap_or(0));
        rows.push(Row { label, load: Some(e.load.clone()), tokens, bs1, bs32 });
    }
    if args.pool_tabs >= 2 {
        let mut es = Vec::new();
        for _ in 0..args.pool_tabs {
            es.push(Embedder::load(host, Backend::Webnn, &()).await?);
        }
        // The sentence list four times over: enough batches of 32 that every tab gets several.
        let texts: Vec<&str> = all.iter().map(String::as_str).cycle().take(all.len() * 4).collect();
        let tokens: Vec<usize> = es[0].model().tokenize(&texts)?.0.iter().map(Vec::len).collect();
        let bs1 = measure_pool(&es, &texts, 1).await?;
        let bs32 = measure_pool(&es, &texts, 32).await?;
        let tokens = (tokens.iter().copied().min().unwrap_or(0), tokens.iter().copied().max().unwrap_or(0));
        rows.push(Row { label: format!("webnn-cpu pool of {} tabs", es.len()), load: None, tokens, bs1, bs32 });
    }
    let peers = if args.peers { run_peers(args.peers_webgpu)? } else { vec![] };
    let peer = |needle: &str, bs: usize| peers.iter().find(|(m, b, _)| m.contains(needle) && *b == bs).map(|p| p.2);
    let ours = |prefix: &str, bs: usize| {
        rows.iter().find(|r| r.label.starts_with(prefix)).map(|r| if bs == 1 { r.bs1.per_s } else { r.bs32.per_s })
    };
    // (our row, peer method, batch, target, ours/s, peer/s)
    type Comparison = (String, String, usize, f64, Option<f64>, Option<f64>);
    let comparisons: Vec<Comparison> = [
        ("webnn-cpu (", "ort-web 1.30 webnn cpu", 1, 1.0),
        ("webnn-cpu (", "ort-web 1.30 webnn cpu", 32, 1.0),
        ("webnn-cpu pool", "onnxruntime native CPU EP", 32, 0.5),
        ("webgpu (", "ort-web 1.30 webgpu", 1, 10.0),
        ("webgpu (", "ort-web 1.30 webgpu", 32, 10.0),
        ("cpu (host", "onnxruntime native CPU EP", 32, 0.0),
    ]
    .iter()
    .map(|(o, p, b, t)| (o.to_string(), p.to_string(), *b, *t, ours(o, *b), peer(p, *b)))
    .collect();
    if args.json {
        let r: Vec<_> = rows
            .iter()
            .map(|r| json!({ "row": r.label, "load": r.load, "tokens": [r.tokens.0, r.tokens.1], "bs1": r.bs1, "bs32": r.bs32 }))
            .collect();
        let c: Vec<_> = comparisons
            .iter()
            .map(|(o, p, b, t, a, q)| {
                json!({ "ours": o, "peer": p, "batch": b, "target": t, "ours_per_s": a, "peer_per_s": q,
                                              "ratio": a.zip(*q).map(|(a, q)| a / q) })
            })
            .collect();
        let peers: Vec<_> = peers.iter().map(|(m, b, r)| json!({ "method": m, "batch": b, "per_s": r })).collect();
        println!(
            "{}",
            json!({ "model": "all-MiniLM-L6-v2", "source": source, "rows": r, "peers": peers, "comparisons": c })
        );
        return Ok(());
    }
    println!("bench embed — all-MiniLM-L6-v2, sentences from {source}");
    println!(
        "{:<34} | {:>5} | {:>6} | {:>12} | {:>9} | {:>15} | {:>10} | {:>17}",
        "row", "texts", "tokens", "load ms", "bs1 sent/s", "bs1 p50/p99 ms", "bs32 sent/s", "bs32 p50/p99 ms"
    );
    for r in &rows {
        let load =
            r.load.as_ref().map(|l| format!("{:.0} ({:.0})", l.load_ms, l.prepare_ms)).unwrap_or_else(|| "-".into());
        println!(
            "{:<34} | {:>5} | {:>6} | {:>12} | {:>10.2} | {:>15} | {:>11.2} | {:>17}",
            r.label,
            r.bs1.sentences,
            format!("{}-{}", r.tokens.0, r.tokens.1),
            load,
            r.bs1.per_s,
            format!("{:.1}/{:.1}", r.bs1.p50_ms, r.bs1.p99_ms),
            r.bs32.per_s,
            format!("{:.0}/{:.0}", r.bs32.p50_ms, r.bs32.p99_ms)
        );
    }
    println!("load ms = graph declare + weight upload + compile (warm-up run in parentheses); latency per call");
    if !peers.is_empty() {
        println!("\npeers measured in this run ({}), sentences/s:", anchors_dir().join("run.sh").display());
        for (m, b, r) in &peers {
            println!("  {m:<60} bs{b:<3} {r:>8.1}");
        }
        println!("\nratios (ours / peer, same run):");
        for (o, p, b, t, a, q) in &comparisons {
            if let (Some(a), Some(q)) = (a, q) {
                let target = if *t > 0.0 {
                    format!("target ≥ {t}×: {}", if a / q >= *t { "met" } else { "NOT met" })
                } else {
                    String::new()
                };
                println!("  {:<28} vs {:<34} bs{b:<3} {:>7.3}×  {target}", o.trim_end_matches(" ("), p, a / q);
            }
        }
    }
    for r in &rows {
        if let Some(cal) = r.load.as_ref().filter(|l| !l.calibration.is_empty()) {
            println!("calibration for {}: {:?}", r.label, cal.calibration);
        }
    }
    Ok(())
}
