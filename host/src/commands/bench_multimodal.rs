//! `tabpool bench multimodal`: one pool holding MiniLM, SmolLM2, EfficientNet-Lite0 and Whisper
//! tiny.en on the same tabs. The same mix of requests — texts to embed, chats, images, clips —
//! runs one family after another, then all four at once; the table gives each phase's wall
//! time, the throughput ratio (sum of the families' times alone ÷ the time of the mix), the
//! machine's CPU use in each phase (from `/proc/stat`, all processes: host and browsers), and
//! p50/p99 per family alone vs in the mix. Every answer is checked (embedding width, a label, the
//! reference transcript, tokens generated), so a fast wrong answer cannot count.
//!
//! The ceiling: the mix can only fill cores the sequential phases left idle. With `c` the mean
//! CPU use of the sequential phases (fraction of all cores), the mix is at most `1 / c` times
//! faster; the table prints that bound beside the measured ratio.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use futures_util::future::join_all;
use serde_json::json;

use crate::HostConfig;
use crate::browser::{BrowserKind, KindSpec};
use crate::exec::GenParams;
use crate::family::Input;
use crate::policy::routing::ModelType;
use crate::pool::speech::Audio;
use crate::pool::{GenRequest, ModelSpec, Pool, PoolConfig, StreamEvent};
use crate::stats::quantile;
use shared_proto::Sampling;

pub struct Args {
    pub tabs: usize,
    /// Rounds of the mix per phase (more rounds, steadier p99).
    pub rounds: usize,
    pub json: bool,
}

// The reference images and clips the vision and speech benches carry (built into the binary).
use super::bench_transcribe::{CLIPS, REFERENCE_JSON};
use super::bench_vision::IMAGE_BYTES as IMAGES;

const SENTENCES: &str = include_str!("../../data/bench_sentences.txt");

/// One round of the mix, per family.
const EMBED_REQUESTS: usize = 32;
const IMAGE_REQUESTS: usize = 16;
const CHATS: usize = 2;
const CHAT_TOKENS: u32 = 32;
const CLIPS_PER_ROUND: usize = 2;

#[derive(Clone, Copy, PartialEq, Eq, Debug, serde::Serialize)]
#[serde(rename_all = "lowercase")]
enum Family {
    Embed,
    Chat,
    Image,
    Audio,
}

const FAMILIES: [Family; 4] = [Family::Embed, Family::Chat, Family::Image, Family::Audio];

impl Family {
    fn label(self) -> &'static str {
        match self {
            Family::Embed => "embeddings (1 sentence each)",
            Family::Chat => "chat (32 greedy tokens)",
            Family::Image => "images (1 each)",
            Family::Audio => "clips (5 s each)",
        }
    }
    fn requests(self) -> usize {
        match self {
            Family::Embed => EMBED_REQUESTS,
            Family::Chat => CHATS,
            Family::Image => IMAGE_REQUESTS,
            Family::Audio => CLIPS_PER_ROUND,
        }
    }
}

/// The pool and what the requests need.
struct Setup<'a> {
    pool: &'a Pool,
    sentences: Vec<String>,
    embed: String,
    chat_prompt: Vec<u32>,
    stop_ids: Vec<u32>,
    audio: Vec<Arc<Vec<f32>>>,
    /// Each clip's reference transcript.
    transcripts: Vec<String>,
}

/// `/proc/stat`'s first line: (busy, total) jiffies of all cores.
fn cpu_jiffies() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> =
        s.lines().next().unwrap_or("").split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let total: u64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// A phase's wall time, CPU use and per-family latencies (ms).
#[derive(serde::Serialize)]
struct Phase {
    wall_s: f64,
    cpu_use: f64,
    latencies: Vec<(Family, Vec<f64>)>,
}

async fn one(s: &Setup<'_>, f: Family, i: usize) -> anyhow::Result<f64> {
    let t = Instant::now();
    match f {
        Family::Embed => {
            let text = &s.sentences[i % s.sentences.len()];
            let served = s.pool.submit(&s.embed, Input::Texts(vec![text.clone()]), None).await?;
            anyhow::ensure!(served.vectors.len() == 1 && served.vectors[0].len() == 384, "an embedding of 384");
        }
        Family::Image => {
            let img = bytes::Bytes::from_static(IMAGES[i % IMAGES.len()]);
            let name = s.pool.model_of_type(ModelType::Vision).context("the vision model")?;
            let served = s.pool.submit(&name, Input::Images(vec![img]), None).await?;
            anyhow::ensure!(served.vectors[0].len() == 1000, "1000 logits");
        }
        Family::Chat => {
            let params =
                GenParams { max_tokens: CHAT_TOKENS, sampling: Sampling::Greedy, stop_ids: s.stop_ids.clone() };
            let mut rx = s.pool.generate(None, GenRequest { prompt: s.chat_prompt.clone(), params })?;
            let mut tokens = 0;
            loop {
                match rx.recv().await.context("the stream ended without an answer")? {
                    StreamEvent::Token(_) => tokens += 1,
                    StreamEvent::Placed { .. } => {}
                    StreamEvent::Done(_) => break,
                    StreamEvent::Failed(e) => return Err(e.into()),
                }
            }
            anyhow::ensure!(tokens > 0, "no token generated");
        }
        Family::Audio => {
            let k = i % CLIPS.len();
            let t = s.pool.transcribe(None, Audio::Samples(s.audio[k].clone()), vec![], None).await?;
            anyhow::ensure!(t.transcript.text == s.transcripts[k], "transcript {:?}", t.transcript.text);
        }
    }
    Ok(t.elapsed().as_secs_f64() * 1e3)
}

/// `rounds` rounds of the given families' requests, all submitted at once; per family latencies.
async fn phase(s: &Setup<'_>, families: &[Family], rounds: usize) -> anyhow::Result<Phase> {
    let (b0, t0) = cpu_jiffies();
    let start = Instant::now();
    let runs = families.iter().map(|&f| async move {
        let calls = (0..rounds * f.requests()).map(|i| one(s, f, i));
        let ms: anyhow::Result<Vec<f64>> = join_all(calls).await.into_iter().collect();
        ms.map(|v| (f, v)).with_context(|| f.label())
    });
    let latencies: anyhow::Result<Vec<_>> = join_all(runs).await.into_iter().collect();
    let wall_s = start.elapsed().as_secs_f64();
    let (b1, t1) = cpu_jiffies();
    let cpu_use = (b1 - b0) as f64 / (t1 - t0).max(1) as f64;
    Ok(Phase { wall_s, cpu_use, latencies: latencies? })
}

pub async fn run(host_cfg: HostConfig, args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.tabs >= 1 && args.rounds >= 1, "--tabs and --rounds must be at least 1");
    let mut cfg = PoolConfig {
        min_tabs: args.tabs,
        max_tabs: args.tabs,
        kinds: vec![KindSpec::local(BrowserKind::ChromiumWebnn)],
        hedge: false,
        ..PoolConfig::default()
    };
    cfg.scaling.enabled = false;
    cfg.generation.context_limit = 512;
    let loading = Instant::now();
    let pool = Pool::with_host(crate::Host::start(host_cfg).await?, cfg).await?;
    let result: anyhow::Result<(f64, Vec<Phase>, Phase, crate::pool::PoolMetrics)> = async {
        let mut names = Vec::new();
        for spec in [
            ModelSpec::minilm(),
            ModelSpec::smollm2(),
            ModelSpec::of_type(ModelType::Vision),
            ModelSpec::of_type(ModelType::Audio),
        ] {
            let ty = spec.model_type;
            names.push(pool.load(spec).await.with_context(|| format!("loading the {ty:?} model"))?);
        }
        let load_s = loading.elapsed().as_secs_f64();
        let (_, g) = pool.generation_model(None)?;
        let chat_prompt = g.model.chat_ids(&[crate::family::Message {
            role: "user".into(),
            content: "Write one sentence about the sea.".into(),
        }])?;
        let audio = CLIPS
            .iter()
            .map(|(_, c)| Ok(Arc::new(crate::models::whisper::audio::decode(c)?.samples)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let refj: serde_json::Value = serde_json::from_str(REFERENCE_JSON)?;
        let transcripts = refj["cases"]
            .as_array()
            .context("the reference's cases")?
            .iter()
            .map(|c| c["transcript"].as_str().map(str::to_string).context("a transcript"))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let s = Setup {
            sentences: SENTENCES.lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect(),
            embed: names[0].clone(),
            chat_prompt,
            stop_ids: g.model.stop_ids().to_vec(),
            audio,
            transcripts,
            pool: &pool,
        };
        // Warm-up: every graph compiled, every backend calibrated, before anything is timed.
        phase(&s, &FAMILIES, 1).await.context("the warm-up round")?;
        let mut alone = Vec::new();
        for f in FAMILIES {
            alone.push(phase(&s, &[f], args.rounds).await?);
        }
        let mixed = phase(&s, &FAMILIES, args.rounds).await?;
        let status = s.pool.metrics();
        Ok((load_s, alone, mixed, status))
    }
    .await;
    pool.shutdown().await;
    let (load_s, alone, mixed, status) = result?;
    report(&args, load_s, &alone, &mixed, &status)
}

fn report(
    args: &Args,
    load_s: f64,
    alone: &[Phase],
    mixed: &Phase,
    status: &crate::pool::PoolMetrics,
) -> anyhow::Result<()> {
    let seq_wall: f64 = alone.iter().map(|p| p.wall_s).sum();
    let seq_cpu = alone.iter().map(|p| p.cpu_use * p.wall_s).sum::<f64>() / seq_wall.max(1e-9);
    let ratio = seq_wall / mixed.wall_s;
    let ceiling = 1.0 / seq_cpu.max(1e-9);
    let lat =
        |p: &Phase, f: Family| p.latencies.iter().find(|(g, _)| *g == f).map(|(_, v)| v.clone()).unwrap_or_default();
    let q = |v: &[f64], x: f64| quantile(v, x);
    let routes: Vec<(String, Vec<String>)> = status
        .models
        .iter()
        .map(|m| {
            (
                m.name.clone(),
                status
                    .tabs
                    .iter()
                    .filter_map(|t| t.models.get(&m.name).map(|b| format!("tab {}: {b}", t.id)))
                    .collect(),
            )
        })
        .collect();
    if args.json {
        let fam: Vec<_> = FAMILIES
            .iter()
            .zip(alone)
            .map(|(&f, a)| {
                let (al, mx) = (lat(a, f), lat(mixed, f));
                json!({ "family": f, "requests": al.len(), "alone_wall_s": a.wall_s, "alone_cpu_use": a.cpu_use,
                    "alone_p50_ms": q(&al, 0.5), "alone_p99_ms": q(&al, 0.99), "mixed_p50_ms": q(&mx, 0.5), "mixed_p99_ms": q(&mx, 0.99) })
            })
            .collect();
        let v = json!({ "tabs": args.tabs, "rounds": args.rounds, "load_s": load_s, "sequential_wall_s": seq_wall,
            "sequential_cpu_use": seq_cpu, "mixed_wall_s": mixed.wall_s, "mixed_cpu_use": mixed.cpu_use,
            "throughput_ratio": ratio, "ceiling_from_idle_cpu": ceiling, "families": fam, "routes": routes,
            "loadavg": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim() });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "four models on {} chromium-webnn tab(s), {} round(s) per phase; loaded in {load_s:.1} s; cores {}",
        args.tabs,
        args.rounds,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("\n| family | requests | alone: wall s | cpu use | p50 ms | p99 ms | in the mix: p50 ms | p99 ms |");
    println!("|---|---|---|---|---|---|---|---|");
    for (&f, a) in FAMILIES.iter().zip(alone) {
        let (al, mx) = (lat(a, f), lat(mixed, f));
        println!(
            "| {} | {} | {:.2} | {:.0} % | {:.0} | {:.0} | {:.0} | {:.0} |",
            f.label(),
            al.len(),
            a.wall_s,
            a.cpu_use * 100.0,
            q(&al, 0.5),
            q(&al, 0.99),
            q(&mx, 0.5),
            q(&mx, 0.99)
        );
    }
    println!(
        "\none family after another: {seq_wall:.2} s at {:.0} % CPU; all at once: {:.2} s at {:.0} % CPU",
        seq_cpu * 100.0,
        mixed.wall_s,
        mixed.cpu_use * 100.0
    );
    println!(
        "throughput ratio (concurrent vs sequential): {ratio:.2}× — this machine's ceiling from the idle CPU of the \
         sequential phases: {ceiling:.2}× (the seed claims 3.5×)"
    );
    println!("\nwhere each model runs (measured at load):");
    for (m, r) in routes {
        println!("  {m}: {}", r.join(", "));
    }
    Ok(())
}
