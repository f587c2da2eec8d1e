//! `tabpool bench memory`: what a model costs in memory on each backend. A tab's memory is its
//! browser's process tree (renderer, GPU / ML service, browser, utilities), summed as PSS from
//! /proc/PID/smaps_rollup — proportional set size splits pages shared between processes, so a
//! sum over a tree counts each page once. Measured with no model, with MiniLM loaded, and after
//! serving every shape the backend distinguishes, beside the model's weight bytes.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use page_runtime::executors::buckets::{batch_bucket, seq_bucket};
use serde_json::json;
use shared_proto::Tensor;

use crate::browser::{BrowserKind, procs};
use crate::exec::{Backend, cpu_model, load_in_tab};
use crate::models::minilm::{self, MAX_TOKENS, MiniLm};
use crate::{Host, Tab};

pub struct Args {
    pub backends: Vec<Backend>,
    pub json: bool,
}

/// The target: memory above an empty tab after serving, as a multiple of the weight bytes.
const TARGET_RATIO: f64 = 2.0;
/// Largest batch measured (the pool's default `max_batch`, `bench embed`'s bs 32).
const MAX_BATCH: u32 = 32;

/// Chromium's process role from its command line: `--type=…` (utilities with their sub-type),
/// none for the browser process itself.
fn role(pid: i32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    // Chromium rewrites its children's argv into one space-separated string.
    let args: Vec<String> = raw
        .split(|b| *b == 0 || *b == b' ')
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let flag = |name: &str| args.iter().find_map(|a| a.strip_prefix(name).map(str::to_string));
    match (flag("--type="), flag("--utility-sub-type=")) {
        (Some(t), Some(sub)) => format!("{t}:{}", sub.split('.').next().unwrap_or(&sub)),
        (Some(t), None) => t,
        (None, _) => "browser".into(),
    }
}

/// PSS summed over processes (see [`procs::Memory`]), with the split by role.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub(crate) struct Sample {
    pub(crate) bytes: u64,
    pub(crate) anon: u64,
    by_role: BTreeMap<String, u64>,
}

fn sample(pids: &[i32]) -> Sample {
    let mut s = Sample::default();
    for &pid in pids {
        if let Some(m) = procs::memory(pid) {
            s.bytes += m.pss;
            s.anon += m.anon;
            *s.by_role.entry(role(pid)).or_default() += m.pss;
        }
    }
    s
}

/// Memory settles after work (garbage collection, freed graphs, the allocator returning pages):
/// wait, then take the median of a few samples so one transient spike does not decide a row.
pub(crate) async fn settled(pids: impl Fn() -> Vec<i32>) -> Sample {
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut samples = Vec::new();
    for _ in 0..5 {
        samples.push(sample(&pids()));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    samples.sort_by_key(|s| s.bytes);
    samples.swap_remove(samples.len() / 2)
}

/// Every (batch, seq) bucket the WebNN executor compiles a graph for (`buckets.rs`), for
/// batches up to `MAX_BATCH` texts of 3 (`[CLS] word [SEP]`) to `MAX_TOKENS` tokens.
pub fn webnn_buckets() -> Vec<(u32, u32)> {
    let batches: BTreeSet<u32> = (1..=MAX_BATCH).map(batch_bucket).collect();
    let seqs: BTreeSet<u32> = (3..=MAX_TOKENS as u32).map(seq_bucket).collect();
    batches.iter().flat_map(|&b| seqs.iter().map(move |&s| (b, s))).collect()
}

/// WebGPU and the CPU executor keep nothing per shape: the CPU allocates per run, WebGPU pools
/// buffers by power-of-two size (capped) with shape-independent pipelines. Their size classes
/// are covered by doubling the tokens per run from the smallest bucket to the largest (1×4 …
/// 1×256, 2×256 … 32×256), a sixth of the tokens of every bucket (SwiftShader runs ~150 tokens/s).
pub fn size_ladder() -> Vec<(u32, u32)> {
    let (smallest, largest) = (seq_bucket(3), MAX_BATCH * MAX_TOKENS as u32);
    std::iter::successors(Some(smallest), |t| (*t < largest).then_some(t * 2))
        .map(|t| {
            let s = t.min(MAX_TOKENS as u32);
            (t / s, s)
        })
        .collect()
}

/// Token ids of a `batch` × `seq` run: real tokens of a long text cut to `seq` (ending in [SEP]).
fn inputs(text_ids: &[u32], batch: u32, seq: u32) -> Vec<Tensor> {
    let s = seq as usize;
    let mut row: Vec<u32> = text_ids[..s - 1].to_vec();
    row.push(*text_ids.last().expect("non-empty"));
    minilm::inputs_from_ids(&vec![row; batch as usize])
}

/// A long text's ids, truncated to `MAX_TOKENS` by the tokenizer.
fn long_text_ids(model: &MiniLm) -> anyhow::Result<Vec<u32>> {
    let (sentences, _) = super::bench::bench_sentences(None, false)?;
    let text: String = sentences.iter().cycle().take(64).cloned().collect::<Vec<_>>().join(" ");
    let ids = model.tokenize(&[&text])?.0.remove(0);
    anyhow::ensure!(ids.len() == MAX_TOKENS, "the long text has {} tokens, not {MAX_TOKENS}", ids.len());
    Ok(ids)
}

struct Row {
    backend: String,
    what: String,
    weight_bytes: u64,
    shapes: usize,
    empty: Sample,
    loaded: Sample,
    served: Sample,
    serve_s: f64,
}

impl Row {
    fn above(&self, s: &Sample) -> i64 {
        s.bytes as i64 - self.empty.bytes as i64
    }
    fn anon_above(&self, s: &Sample) -> i64 {
        s.anon as i64 - self.empty.anon as i64
    }
    fn ratio(&self) -> f64 {
        self.above(&self.served) as f64 / self.weight_bytes as f64
    }
    fn anon_ratio(&self) -> f64 {
        self.anon_above(&self.served) as f64 / self.weight_bytes as f64
    }
}

/// The host's own memory around loading MiniLM on the CPU executor and serving the ladder.
/// Runs before any other row: once the host has loaded (and freed) a model, its allocator reuses
/// those pages and a later measurement would understate the growth.
async fn host_cpu_row() -> anyhow::Result<Row> {
    let me = || async {
        let mut s = settled(|| vec![std::process::id() as i32]).await;
        s.by_role = BTreeMap::from([("tabpool (this process)".to_string(), s.bytes)]);
        s
    };
    let empty = me().await;
    let mut model = MiniLm::load(None)?;
    let weight_bytes = model.weights.iter().map(|w| w.data.len() as u64).sum();
    // As `embed --backend cpu` holds it: the executor takes the loader's weights.
    let cpu = cpu_model(&mut model)?;
    let ids = long_text_ids(&model)?;
    let run = |b, s| tokio::task::block_in_place(|| cpu.run(&inputs(&ids, b, s))).map_err(|e| anyhow::anyhow!("{e}"));
    run(1, seq_bucket(3))?;
    let loaded = me().await;
    let shapes = size_ladder();
    let t = Instant::now();
    for &(b, s) in &shapes {
        run(b, s)?;
    }
    let serve_s = t.elapsed().as_secs_f64();
    let served = me().await;
    Ok(Row {
        backend: "cpu".into(),
        what: "the host process itself (PSS of /proc/self): MiniLM read, CPU executor built, ladder served".into(),
        weight_bytes,
        shapes: shapes.len(),
        empty,
        loaded,
        served,
        serve_s,
    })
}

async fn tab_row(host: &mut Host, model: &MiniLm, backend: Backend) -> anyhow::Result<Row> {
    let kind = if backend == Backend::Webnn { BrowserKind::ChromiumWebnn } else { BrowserKind::Chromium };
    let tab: Tab = host.launch(kind).await?;
    let id = tab.id();
    let result = async {
        let empty = settled(|| pids(host, id)).await;
        let (tm, _) = load_in_tab(&tab, model, backend, &()).await?;
        let loaded = settled(|| pids(host, id)).await;
        let ids = long_text_ids(model)?;
        let shapes = if backend == Backend::Webnn { webnn_buckets() } else { size_ladder() };
        let t = Instant::now();
        for &(b, s) in &shapes {
            tm.run(inputs(&ids, b, s)).await.map_err(|e| e.context(format!("serving {b}×{s}")))?;
        }
        let serve_s = t.elapsed().as_secs_f64();
        let served = settled(|| pids(host, id)).await;
        let what = if backend == Backend::Webnn {
            format!("{} tab's process tree: every (batch, seq) bucket served", kind.name())
        } else {
            format!("{} tab's process tree: the size ladder served", kind.name())
        };
        anyhow::Ok(Row {
            backend: tm.backend.to_string(),
            what,
            weight_bytes: tm.weight_bytes,
            shapes: shapes.len(),
            empty,
            loaded,
            served,
            serve_s,
        })
    }
    .await;
    host.close_tab(id).await;
    result
}

pub(crate) fn pids(host: &Host, id: u64) -> Vec<i32> {
    host.tab_processes(id).into_iter().map(|(p, _)| p).collect()
}

fn mib(b: i64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

pub async fn run(host: &mut Host, args: Args) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    if args.backends.contains(&Backend::Cpu) {
        rows.push(host_cpu_row().await?);
    }
    let model = MiniLm::load(None)?;
    for b in [Backend::Webnn, Backend::Webgpu] {
        if args.backends.contains(&b) {
            eprintln!("bench memory: {b:?} tab…");
            rows.push(tab_row(host, &model, b).await?);
        }
    }
    if args.json {
        let r: Vec<_> = rows
            .iter()
            .map(|r| {
                json!({
                    "backend": r.backend, "weight_bytes": r.weight_bytes, "empty_tab_bytes": r.empty.bytes,
                    "loaded_above_empty_bytes": r.above(&r.loaded), "served_above_empty_bytes": r.above(&r.served),
                    "ratio": r.ratio(), "target_met": r.ratio() <= TARGET_RATIO, "measured": r.what,
                    "empty_tab_anon_bytes": r.empty.anon, "loaded_above_empty_anon_bytes": r.anon_above(&r.loaded),
                    "served_above_empty_anon_bytes": r.anon_above(&r.served), "anon_ratio": r.anon_ratio(),
                    "shapes_served": r.shapes, "serve_s": r.serve_s,
                    "by_process": { "empty": r.empty.by_role, "loaded": r.loaded.by_role, "served": r.served.by_role },
                })
            })
            .collect();
        println!(
            "{}",
            json!({ "model": "all-MiniLM-L6-v2", "unit": "bytes (PSS)", "target_ratio": TARGET_RATIO, "rows": r })
        );
        return Ok(());
    }
    println!("bench memory — all-MiniLM-L6-v2, PSS in MiB (smaps_rollup, summed over the process tree)");
    println!(
        "{:<10} | {:>8} | {:>9} | {:>12} | {:>12} | {:>6} | {:>9} | {:>8} | {:>16}",
        "backend", "weights", "empty", "loaded above", "served above", "shapes", "served/w", "≤ 2×", "anon served/w"
    );
    for r in &rows {
        println!(
            "{:<10} | {:>8.1} | {:>9.1} | {:>12.1} | {:>12.1} | {:>6} | {:>8.2}× | {:>8} | {:>6.1} = {:>5.2}×",
            r.backend,
            mib(r.weight_bytes as i64),
            mib(r.empty.bytes as i64),
            mib(r.above(&r.loaded)),
            mib(r.above(&r.served)),
            r.shapes,
            r.ratio(),
            if r.ratio() <= TARGET_RATIO { "met" } else { "NOT met" },
            mib(r.anon_above(&r.served)),
            r.anon_ratio()
        );
    }
    println!(
        "above = above the empty tab (cpu: the host before loading); anon = without file-backed pages (the browser \
         binary and libraries, shared with other browsers of the same build)"
    );
    for r in &rows {
        println!("\n{}: {} ({:.1} s serving)", r.backend, r.what, r.serve_s);
        let roles: BTreeSet<&String> =
            r.empty.by_role.keys().chain(r.loaded.by_role.keys()).chain(r.served.by_role.keys()).collect();
        for role in roles {
            let at = |s: &Sample| mib(s.by_role.get(role).copied().unwrap_or(0) as i64);
            println!(
                "  {role:<28} empty {:>8.1}  loaded {:>8.1}  served {:>8.1}",
                at(&r.empty),
                at(&r.loaded),
                at(&r.served)
            );
        }
    }
    Ok(())
}

/// Memory of the tab above the same tab before the model was loaded.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Memory {
    pub(crate) empty_tab_bytes: u64,
    pub(crate) served_above_empty_bytes: i64,
    pub(crate) anon_above_empty_bytes: i64,
    pub(crate) weight_bytes: u64,
    pub(crate) ratio: f64,
    /// Per process role (renderer, gpu-process, utility:…), served minus empty: where it went.
    pub(crate) above_by_role: BTreeMap<String, i64>,
}

impl Memory {
    pub(crate) fn of(empty: &Sample, served: &Sample, weight_bytes: u64) -> Memory {
        let above = served.bytes as i64 - empty.bytes as i64;
        Memory {
            empty_tab_bytes: empty.bytes,
            served_above_empty_bytes: above,
            anon_above_empty_bytes: served.anon as i64 - empty.anon as i64,
            weight_bytes,
            ratio: above as f64 / weight_bytes as f64,
            above_by_role: served
                .by_role
                .keys()
                .chain(empty.by_role.keys())
                .map(|r| {
                    let at = |s: &Sample| s.by_role.get(r).copied().unwrap_or(0) as i64;
                    (r.clone(), at(served) - at(empty))
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_cover_every_bucket_and_the_ladder_doubles() {
        let all = webnn_buckets();
        // 6 batch buckets (1 … 32) × 20 sequence buckets (4 … 256).
        assert_eq!(all.len(), 6 * 20);
        assert!(all.contains(&(1, 4)) && all.contains(&(32, 256)) && all.contains(&(4, 40)));
        let ladder = size_ladder();
        assert_eq!(ladder.first(), Some(&(1, 4)));
        assert_eq!(ladder.last(), Some(&(32, 256)));
        assert!(ladder.windows(2).all(|w| w[1].0 * w[1].1 == 2 * w[0].0 * w[0].1));
    }
}
