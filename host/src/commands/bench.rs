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
use anyhow::Context;

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

/// Sentences used when the peers' list (`../shared/anchors/sentences.txt`) is not beside the
/// checkout: short English sentences of roughly 12–18 tokens.
const SAMPLE_SENTENCES: &[&str] = &[
    "The quick brown fox jumps over the lazy dog near the quiet river bank.",
    "A small cat sleeps in the warm afternoon sun on the wooden porch.",
    "Researchers measured the speed of the new model on ordinary laptops.",
    "Browsers can run compute shaders through the WebGPU interface today.",
    "The committee postponed its decision until the next quarterly meeting.",
    "Fresh bread from the corner bakery sells out before nine every morning.",
    "Heavy rain flooded several streets in the old part of the city.",
    "She learned to play the violin during the long winter holidays.",
    "Engineers replaced the failing pump before the summer heat arrived.",
    "The museum opened a new exhibition about ancient navigation tools.",
    "Our team shipped the release after fixing the last memory leak.",
    "A gentle breeze carried the smell of pine trees across the valley.",
    "The train to the coast leaves every hour from the central station.",
    "Students compared three sorting algorithms on randomly shuffled lists.",
    "The chef added a pinch of salt and stirred the soup slowly.",
    "Satellite images show the glacier retreating faster than predicted.",
];

fn bench_sentences(file: Option<&std::path::Path>) -> anyhow::Result<(Vec<String>, String)> {
    let default = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/anchors/sentences.txt");
    let path = file.map(std::path::Path::to_path_buf).or_else(|| default.is_file().then_some(default));
    match path {
        Some(p) => {
            let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
            let lines: Vec<String> = text.lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect();
            anyhow::ensure!(!lines.is_empty(), "{} has no sentences", p.display());
            Ok((lines, p.display().to_string()))
        }
        None => Ok((SAMPLE_SENTENCES.iter().map(|s| s.to_string()).collect(), "built-in sample".into())),
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

async fn measure(e: &Embedder, sentences: &[&str], batch: usize) -> anyhow::Result<Rate> {
    e.embed(&sentences[..batch.min(sentences.len())]).await?; // warm: shapes, caches, tiering
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
    /// Sentences per batch size for the WebGPU tab (SwiftShader runs ~1 sentence/s).
    pub webgpu_sentences: usize,
    pub json: bool,
}

/// Model load, then sentences/s and p50/p99 at batch 1 and 32, per backend, in one run.
pub async fn embed(host: &mut Host, args: EmbedArgs) -> anyhow::Result<()> {
    let (all, source) = bench_sentences(args.sentences.as_deref())?;
    let mut rows = Vec::new();
    for &backend in &args.backends {
        let e = Embedder::load(host, backend, &()).await?;
        let backend = e.load.backend;
        let n = if backend == Backend::Webgpu { args.webgpu_sentences.min(all.len()).max(1) } else { all.len() };
        let texts: Vec<&str> = all.iter().take(n).map(String::as_str).collect();
        let tokens: Vec<usize> = e.model().tokenize(&texts)?.0.iter().map(Vec::len).collect();
        let bs1 = measure(&e, &texts, 1).await?;
        let bs32 = measure(&e, &texts, 32).await?;
        rows.push((backend, e.load.clone(), bs1, bs32, tokens));
    }
    let ratio = |b: usize| -> Option<f64> {
        let get = |k| rows.iter().find(|r| r.0 == k).map(|r| if b == 1 { r.2.per_s } else { r.3.per_s });
        Some(get(Backend::Webgpu)? / get(Backend::Cpu)?)
    };
    if args.json {
        let r: Vec<_> = rows
            .iter()
            .map(|(b, load, bs1, bs32, _)| json!({ "backend": b, "load": load, "bs1": bs1, "bs32": bs32 }))
            .collect();
        println!(
            "{}",
            json!({ "model": "all-MiniLM-L6-v2", "source": source, "rows": r, "webgpu_over_cpu_bs1": ratio(1), "webgpu_over_cpu_bs32": ratio(32) })
        );
        return Ok(());
    }
    println!("bench embed — all-MiniLM-L6-v2, sentences from {source}");
    println!(
        "{:<7} | {:>6} | {:>7} | {:>13} | {:>10} | {:>9} | {:>9} | {:>11} | {:>10} | {:>10}",
        "backend",
        "texts",
        "tokens",
        "load ms",
        "bs1 sent/s",
        "bs1 p50",
        "bs1 p99",
        "bs32 sent/s",
        "bs32 p50",
        "bs32 p99"
    );
    for (b, load, bs1, bs32, tokens) in &rows {
        let (lo, hi) = (tokens.iter().min().unwrap_or(&0), tokens.iter().max().unwrap_or(&0));
        println!(
            "{:<7} | {:>6} | {:>7} | {:>13} | {:>10.2} | {:>9.1} | {:>9.1} | {:>11.2} | {:>10.1} | {:>10.1}",
            format!("{b:?}").to_lowercase(),
            bs1.sentences,
            format!("{lo}-{hi}"),
            format!("{:.0} ({:.0})", load.load_ms, load.prepare_ms),
            bs1.per_s,
            bs1.p50_ms,
            bs1.p99_ms,
            bs32.per_s,
            bs32.p50_ms,
            bs32.p99_ms
        );
    }
    println!(
        "load ms = graph declare + weight upload + pipeline compile (the compile/warm-up run in parentheses); latency per call in ms"
    );
    if let (Some(r1), Some(r32)) = (ratio(1), ratio(32)) {
        println!("webgpu / cpu throughput: bs1 {r1:.3}x, bs32 {r32:.3}x");
    }
    for (b, load, ..) in &rows {
        if let Some(a) = &load.adapter {
            println!("{b:?} adapter: {a}");
        }
    }
    Ok(())
}
