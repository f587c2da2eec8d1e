//! `tabpool bench transcribe`: Whisper tiny.en speed where it runs — the host's CPU executor, a
//! tab's wasm CPU executor, a WebNN encoder with the decoder on the tab's wasm CPU, and the
//! component split over two tabs, and a pool of two whole replicas given a file each at once — on
//! the peers' protocol (`anchors/audio/README.md`): the two
//! reference clips and a 29.2-s input of five clips (robert, 1 s of zeros, quarterly, 1 s, robert,
//! 1 s, quarterly, 1 s, robert), timed from samples to text, one warm-up then `--reps` rounds, the
//! median per input; ids checked against the reference (clips) and the cpu row (long input).
//! The split's time per file is also predicted (`policy::speech_split`) from the one-tab row's
//! measured parts and the parallelism the pool row measured, and shown beside what it measured.
//! `--peers` runs `anchors/audio/run.sh` (faster-whisper, whisper.cpp native and in a tab) and
//! prints our rows' speed over each peer's, measured in the same run.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use serde_json::json;

use super::bench_memory::{Memory, Sample, settled};
use crate::Host;
use crate::exec::placement::launch_for;
use crate::exec::transcriber::{Transcriber, Transcript};
use crate::models::whisper::Whisper;
use crate::models::whisper::audio;
use crate::policy::backend_choice::Backend;
use crate::policy::speech_split::{self, PartTimes};
use crate::policy::weight_form::Preference;

pub struct Args {
    pub reps: usize,
    pub peers: bool,
    /// Also the peers' whisper.cpp-in-a-tab rows (≈10 min).
    pub peers_wasm: bool,
    pub json: bool,
}

pub(crate) const CLIPS: [(&str, &[u8]); 2] = [
    ("robert_boston", include_bytes!("../../../tests/data/whisper/robert_boston.wav")),
    ("quarterly_report", include_bytes!("../../../tests/data/whisper/quarterly_report.wav")),
];
pub(crate) const REFERENCE_JSON: &str = include_str!("../../../tests/data/whisper/whisper_tiny_en.json");

/// One placement of the model.
#[derive(Clone, Copy)]
struct Setup {
    name: &'static str,
    encoder: Backend,
    decoder: Backend,
    two_tabs: bool,
    weights: Preference,
    /// Threads each tab asks for (`policy::threads`; the row says what the tab got).
    threads: u32,
}

const FAST: Preference = Preference::Fastest;

const SETUPS: [Setup; 7] = [
    Setup {
        name: "host cpu executor",
        encoder: Backend::Cpu,
        decoder: Backend::Cpu,
        two_tabs: false,
        weights: FAST,
        threads: 1,
    },
    Setup {
        name: "tab wasm-cpu",
        encoder: Backend::WasmCpu,
        decoder: Backend::WasmCpu,
        two_tabs: false,
        weights: FAST,
        threads: 1,
    },
    Setup {
        name: "tab webnn encoder + wasm-cpu decoder",
        encoder: Backend::Webnn,
        decoder: Backend::WasmCpu,
        two_tabs: false,
        weights: FAST,
        threads: 1,
    },
    Setup {
        name: "2 tabs: webnn encoder, wasm-cpu decoder",
        encoder: Backend::Webnn,
        decoder: Backend::WasmCpu,
        two_tabs: true,
        weights: FAST,
        threads: 1,
    },
    Setup {
        name: "tab webnn encoder + wasm-cpu decoder, f16 kept (--compact-decoder)",
        encoder: Backend::Webnn,
        decoder: Backend::WasmCpu,
        two_tabs: false,
        weights: Preference::Compact,
        threads: 1,
    },
    Setup {
        name: "tab webnn encoder + wasm-cpu decoder, 2 threads",
        encoder: Backend::Webnn,
        decoder: Backend::WasmCpu,
        two_tabs: false,
        weights: FAST,
        threads: 2,
    },
    Setup {
        name: "tab webnn encoder + wasm-cpu decoder, f16 kept, 2 threads",
        encoder: Backend::Webnn,
        decoder: Backend::WasmCpu,
        two_tabs: false,
        weights: Preference::Compact,
        threads: 2,
    },
];

#[derive(serde::Serialize)]
struct InputResult {
    name: String,
    audio_s: f64,
    median_s: f64,
    x_realtime: f64,
    ids_match: Option<bool>,
    text: String,
    /// The parts' measured times (tab rows).
    parts: Option<PartTimes>,
}

#[derive(serde::Serialize)]
struct Row {
    setup: String,
    backend: String,
    load_s: f64,
    inputs: Vec<InputResult>,
    /// The tab(s) after serving, above the same tabs empty, beside the model file's bytes.
    memory: Option<Memory>,
}

/// A timed input: name, samples, and the reference ids when it has them.
type BenchInput = (String, Arc<Vec<f32>>, Option<Vec<u32>>);

fn inputs() -> anyhow::Result<Vec<BenchInput>> {
    let refj: serde_json::Value = serde_json::from_str(REFERENCE_JSON)?;
    let mut out = Vec::new();
    let mut clips = Vec::new();
    for ((name, bytes), case) in CLIPS.iter().zip(refj["cases"].as_array().context("reference cases")?) {
        let s = audio::decode(bytes)?.samples;
        let ids =
            case["token_ids"].as_array().context("token_ids")?.iter().filter_map(|v| v.as_u64()).map(|v| v as u32);
        out.push((name.to_string(), Arc::new(s.clone()), Some(ids.collect())));
        clips.push(s);
    }
    let gap = vec![0.0f32; audio::SAMPLE_RATE as usize];
    let mut long = Vec::new();
    for (i, c) in [0, 1, 0, 1, 0].into_iter().enumerate() {
        if i > 0 {
            long.extend_from_slice(&gap);
        }
        long.extend_from_slice(&clips[c]);
    }
    out.push(("long_5clips".into(), Arc::new(long), None));
    Ok(out)
}

/// The setup's transcriber, and for one in tabs the tabs and their memory before loading.
async fn place(
    host: &mut Host,
    model: Arc<Whisper>,
    s: Setup,
) -> anyhow::Result<(Transcriber, Vec<u64>, Option<Sample>)> {
    if s.encoder == Backend::Cpu {
        return Ok((Transcriber::on_host(model)?, vec![], None));
    }
    host.set_tab_threads(s.threads);
    let launched = async {
        let et = launch_for(host, s.encoder).await?;
        let dt = if s.two_tabs { launch_for(host, s.decoder).await? } else { et.clone() };
        anyhow::Ok((et, dt))
    }
    .await;
    host.set_tab_threads(host.tab_threads_asked().unwrap_or(1));
    let (et, dt) = launched?;
    anyhow::ensure!(
        et.caps().threads == s.threads,
        "asked for {} threads, the tab runs {} (is the page cross-origin isolated and the threaded build present?)",
        s.threads,
        et.caps().threads
    );
    let tabs: Vec<u64> = if s.two_tabs { vec![et.id(), dt.id()] } else { vec![et.id()] };
    collect_garbage(host, &tabs).await;
    let empty = settled(|| tab_pids(host, &tabs)).await;
    let b = |b: Backend| b.in_tab().context("an in-tab backend");
    let t = Transcriber::in_tabs(model, (&et, b(s.encoder)?), (&dt, b(s.decoder)?), s.weights, &()).await?;
    Ok((t, tabs, Some(empty)))
}

/// Both samples after a full collection: with garbage left to chance, the same row measured
/// 184 MB in one run and 300 MB in the next.
async fn collect_garbage(host: &Host, tabs: &[u64]) {
    for &t in tabs {
        host.collect_garbage(t).await;
    }
}

fn tab_pids(host: &Host, tabs: &[u64]) -> Vec<i32> {
    tabs.iter().flat_map(|&t| host.tab_processes(t)).map(|(p, _)| p).collect()
}

pub async fn run(host: &mut Host, args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.reps >= 1, "--reps must be at least 1");
    let inputs = inputs()?;
    let model = Arc::new(tokio::task::spawn_blocking(|| Whisper::load(None)).await??);
    let mut rows: Vec<Row> = Vec::new();
    let mut failures = Vec::new();
    let mut long_ids: Option<Vec<u32>> = None;
    // The weights as stored (f16): the bytes a user downloads.
    let weight_bytes = std::fs::metadata(crate::models::whisper::default_dir().join("model.bin"))?.len();
    for s in SETUPS {
        eprintln!("bench transcribe: {}…", s.name);
        let t0 = Instant::now();
        let (mut t, tabs, empty) = match place(host, model.clone(), s).await {
            Ok(t) => t,
            Err(e) => {
                failures.push(format!("{}: {e:#}", s.name));
                continue;
            }
        };
        let load_s = t0.elapsed().as_secs_f64();
        let mut results = Vec::new();
        for (name, samples, want) in &inputs {
            // One warm-up, then the timed rounds.
            t.transcribe(samples.clone()).await?;
            let mut secs = Vec::new();
            let mut last = None;
            for _ in 0..args.reps {
                let t1 = Instant::now();
                let out = t.transcribe(samples.clone()).await?;
                secs.push(t1.elapsed().as_secs_f64());
                last = Some(out);
            }
            let out = last.expect("reps ≥ 1");
            secs.sort_by(f64::total_cmp);
            let median_s = secs[secs.len() / 2];
            let audio_s = samples.len() as f64 / audio::SAMPLE_RATE as f64;
            let ids_match = match want {
                Some(w) => Some(out.ids == *w),
                None => match &long_ids {
                    Some(l) => Some(out.ids == *l),
                    None => {
                        long_ids = Some(out.ids.clone());
                        None
                    }
                },
            };
            let parts = (s.encoder != Backend::Cpu).then(|| part_times(&out, s.encoder != Backend::WasmCpu));
            results.push(InputResult {
                name: name.clone(),
                audio_s,
                median_s,
                x_realtime: audio_s / median_s,
                ids_match,
                text: out.text,
                parts,
            });
        }
        let memory = match empty {
            Some(empty) => {
                collect_garbage(host, &tabs).await;
                Some(Memory::of(&empty, &settled(|| tab_pids(host, &tabs)).await, weight_bytes))
            }
            None => None,
        };
        rows.push(Row { setup: s.name.into(), backend: t.backend(), load_s, inputs: results, memory });
    }
    eprintln!("bench transcribe: {POOL_ROW}…");
    match pool_of_two(host, &model, &inputs, args.reps, &long_ids).await {
        Ok(row) => rows.push(row),
        Err(e) => failures.push(format!("{POOL_ROW}: {e:#}")),
    }
    let predictions = predictions(&rows);
    let peers = if args.peers { Some(run_peers(args.reps, args.peers_wasm)) } else { None };
    let peer_rows = match &peers {
        Some(Ok(p)) => p.clone(),
        Some(Err(e)) => {
            failures.push(format!("peers: {e:#}"));
            vec![]
        }
        None => vec![],
    };
    if args.json {
        let out = json!({ "rows": rows, "split_predictions": predictions, "peers": peer_rows, "failures": failures, "reps": args.reps });
        println!("{}", serde_json::to_string(&out)?);
        return Ok(());
    }
    println!("Whisper tiny.en, greedy, median of {} rounds after one warm-up (s, x realtime):\n", args.reps);
    let names: Vec<String> =
        inputs.iter().map(|(n, s, _)| format!("{n} ({:.1} s)", s.len() as f64 / 16000.0)).collect();
    println!("| row | where | load s | {} | ids = ref (clips) / = cpu row (long) |", names.join(" | "));
    println!("|---|---|---:|{}---|", "---:|".repeat(names.len()));
    for r in &rows {
        let cells: Vec<String> = r.inputs.iter().map(|i| format!("{:.3} ({:.2}×)", i.median_s, i.x_realtime)).collect();
        let ids: Vec<&str> = r
            .inputs
            .iter()
            .map(|i| match i.ids_match {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "base",
            })
            .collect();
        println!("| {} | {} | {:.2} | {} | {} |", r.setup, r.backend, r.load_s, cells.join(" | "), ids.join(" "));
    }
    for p in &peer_rows {
        let cells: Vec<String> = p.inputs.iter().map(|(_, s, x)| format!("{s:.3} ({x:.2}×)")).collect();
        println!("| peer: {} | | {:.2} | {} | |", p.method, p.load_s, cells.join(" | "));
    }
    println!(
        "\nThe {POOL_ROW} row: two files at once, one per tab; its time is both files', its speed both files' audio over it."
    );
    if !predictions.is_empty() {
        println!(
            "\nThe split predicted (policy::speech_split, from the one-tab row's parts and the pool row's parallelism) against measured:\n"
        );
        println!(
            "| input | windows | encode / decode ms a window | parallel | one tab s | split predicted s | split measured s | verdict |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---|");
        for p in &predictions {
            println!(
                "| {} | {} | {:.0} / {:.0} | {:.2} | {:.3} | {:.3} | {:.3} | {} |",
                p.input,
                p.parts.windows,
                p.parts.encode_ms,
                p.parts.decode_ms,
                p.parallel,
                p.one_tab_s,
                p.predicted.split_ms / 1e3,
                p.split_measured_s,
                p.verdict
            );
        }
    }
    if !peer_rows.is_empty() {
        println!("\nSpeed ratios on the long input (ours x realtime / peer's, same run):\n");
        println!("| ours | peer | ratio |");
        println!("|---|---|---:|");
        for r in &rows {
            let ours = r.inputs.last().map(|i| i.x_realtime).unwrap_or(f64::NAN);
            for p in &peer_rows {
                let theirs = p.inputs.last().map(|i| i.2).unwrap_or(f64::NAN);
                println!("| {} | {} | {:.2} |", r.setup, p.method, ours / theirs);
            }
        }
    }
    println!(
        "\nMemory of the tab(s) after serving, above the same tab(s) empty (weights as stored, f16: {:.1} MB):\n",
        weight_bytes as f64 / 1e6
    );
    println!("| row | above empty MB | anonymous MB | × the weight bytes | by process, MB |");
    println!("|---|---:|---:|---:|---|");
    for r in &rows {
        if let Some(m) = &r.memory {
            let roles: Vec<String> = m
                .above_by_role
                .iter()
                .filter(|(_, b)| b.abs() >= 1_000_000)
                .map(|(role, b)| format!("{role} {:.1}", *b as f64 / 1e6))
                .collect();
            println!(
                "| {} | {:.1} | {:.1} | {:.2} | {} |",
                r.setup,
                m.served_above_empty_bytes as f64 / 1e6,
                m.anon_above_empty_bytes as f64 / 1e6,
                m.ratio,
                roles.join(", ")
            );
        }
    }
    for f in &failures {
        println!("\nFAILED {f}");
    }
    if let Some(t) = rows.first().and_then(|r| r.inputs.last()) {
        println!("\nlong input transcript (cpu row): {:?}", t.text);
    }
    Ok(())
}

const POOL_ROW: &str = "pool of 2 tabs: webnn encoder + wasm-cpu decoder each";
const ONE_TAB_ROW: usize = 2;
const SPLIT_ROW: usize = 3;

/// A transcript's parts per window, for the planner.
fn part_times(t: &Transcript, overlaps_in_one_tab: bool) -> PartTimes {
    let w = t.windows.len().max(1) as f64;
    PartTimes {
        windows: t.windows.len(),
        front_ms: t.front_ms,
        encode_ms: t.encode_wall_ms / w,
        decode_ms: t.decode_wall_ms / w,
        overlaps_in_one_tab,
    }
}

/// Two tabs, each with both parts (WebNN encoder, wasm decoder), given the same file at once:
/// per input one warm-up, then `reps` rounds, the median wall time for both files.
async fn pool_of_two(
    host: &mut Host,
    model: &Arc<Whisper>,
    inputs: &[BenchInput],
    reps: usize,
    long_ids: &Option<Vec<u32>>,
) -> anyhow::Result<Row> {
    let t0 = Instant::now();
    let mut ts = Vec::new();
    for _ in 0..2 {
        let tab = launch_for(host, Backend::Webnn).await?;
        let b = |b: Backend| b.in_tab().context("an in-tab backend");
        ts.push(
            Transcriber::in_tabs(model.clone(), (&tab, b(Backend::Webnn)?), (&tab, b(Backend::WasmCpu)?), FAST, &())
                .await?,
        );
    }
    let load_s = t0.elapsed().as_secs_f64();
    let backend = ts[0].backend();
    let [a, b] = &mut ts[..] else { unreachable!("two transcribers") };
    let mut results = Vec::new();
    for (name, samples, want) in inputs {
        let both = async |a: &mut Transcriber, b: &mut Transcriber| {
            let (x, y) = tokio::join!(a.transcribe(samples.clone()), b.transcribe(samples.clone()));
            anyhow::Ok((x?, y?))
        };
        both(a, b).await?;
        let mut secs = Vec::new();
        let mut last = None;
        for _ in 0..reps {
            let t1 = Instant::now();
            let out = both(a, b).await?;
            secs.push(t1.elapsed().as_secs_f64());
            last = Some(out);
        }
        let (x, y) = last.expect("reps ≥ 1");
        secs.sort_by(f64::total_cmp);
        let median_s = secs[secs.len() / 2];
        let audio_s = samples.len() as f64 / audio::SAMPLE_RATE as f64;
        let want = want.as_ref().or(long_ids.as_ref());
        results.push(InputResult {
            name: name.clone(),
            audio_s: 2.0 * audio_s,
            median_s,
            x_realtime: 2.0 * audio_s / median_s,
            ids_match: want.map(|w| x.ids == *w && y.ids == *w),
            text: x.text,
            parts: None,
        });
    }
    Ok(Row { setup: POOL_ROW.into(), backend, load_s, inputs: results, memory: None })
}

#[derive(serde::Serialize)]
struct SplitPrediction {
    input: String,
    parts: PartTimes,
    /// Two tabs at once against one: both files' time in the pool row over one file's in the
    /// one-tab row, ×2.
    parallel: f64,
    one_tab_s: f64,
    predicted: speech_split::SpeechPrediction,
    split_measured_s: f64,
    verdict: String,
}

/// Per input, the split predicted from the one-tab row and the pool row's parallelism.
fn predictions(rows: &[Row]) -> Vec<SplitPrediction> {
    let (Some(one), Some(split), Some(pool)) = (
        rows.iter().find(|r| r.setup == SETUPS[ONE_TAB_ROW].name),
        rows.iter().find(|r| r.setup == SETUPS[SPLIT_ROW].name),
        rows.iter().find(|r| r.setup == POOL_ROW),
    ) else {
        return vec![];
    };
    one.inputs
        .iter()
        .zip(&split.inputs)
        .zip(&pool.inputs)
        .filter_map(|((o, s), p)| {
            let parts = o.parts?;
            let parallel = 2.0 * o.median_s / p.median_s;
            let predicted = speech_split::predict(&parts, parallel);
            Some(SplitPrediction {
                input: o.name.clone(),
                parts,
                parallel,
                one_tab_s: o.median_s,
                predicted,
                split_measured_s: s.median_s,
                verdict: speech_split::verdict(&parts, &predicted),
            })
        })
        .collect()
}

/// A peer harness row: method, load s, per input (name, median s, x realtime).
#[derive(Clone, serde::Serialize)]
struct PeerRow {
    method: String,
    load_s: f64,
    inputs: Vec<(String, f64, f64)>,
}

fn run_peers(reps: usize, wasm: bool) -> anyhow::Result<Vec<PeerRow>> {
    let env = [("REPS", reps.to_string()), ("NICE", "0".into()), ("WASM", if wasm { "1" } else { "0" }.to_string())];
    let newest = super::bench::run_peer_harness("audio", &env)?;
    let mut rows = Vec::new();
    for line in std::fs::read_to_string(&newest)?.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)?;
        if v.get("error").is_some() {
            continue;
        }
        let inputs = v["inputs"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|x| {
                        let n = x["name"].as_str().unwrap_or("?").to_string();
                        (n, x["wall_s"].as_f64().unwrap_or(f64::NAN), x["x_realtime"].as_f64().unwrap_or(f64::NAN))
                    })
                    .collect()
            })
            .unwrap_or_default();
        rows.push(PeerRow {
            method: v["method"].as_str().unwrap_or("?").to_string(),
            load_s: v["load_s"].as_f64().unwrap_or(f64::NAN),
            inputs,
        });
    }
    Ok(rows)
}
