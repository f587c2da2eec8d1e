//! `tabpool bench gen`: SmolLM2-135M generation per backend — load, prefill of a ~190-token chat
//! prompt, time to first token, decode tokens/s, and the aggregate rate of several streams in
//! shared steps (continuous batching) — with, under `--peers`, native llama.cpp and llama.cpp in
//! wasm measured by the peer harness in the same run, and ratios.

use std::time::Instant;

use anyhow::Context;
use serde_json::json;
use shared_proto::{Sampling, StepRow};

use super::generate::{self, GenBackend};
use crate::Host;
use crate::exec::Stepper;
use crate::models::smollm2::{Message, SmolLm2};

pub struct Args {
    pub backends: Vec<GenBackend>,
    /// Tokens decoded after the prompt (fewer on WebGPU: SwiftShader is slow).
    pub decode: usize,
    pub webgpu_decode: usize,
    /// Concurrent streams in the batching row.
    pub streams: usize,
    pub peers: bool,
    pub json: bool,
}

/// The peer harness's prompt shape: the system prompt, then user turns with the model's own
/// answers, until about 190 tokens, ending on a new user turn (`anchors/gen/bench.py`).
const TURNS: [(&str, &str); 2] = [
    ("What is the capital of France?", "The capital of France is Paris."),
    (
        "Write one sentence about a cat.",
        "A cat is a majestic creature with a fluffy coat, a playful personality, and a loyal companion.",
    ),
];

fn prefill_prompt(m: &SmolLm2) -> anyhow::Result<Vec<u32>> {
    let mut messages = Vec::new();
    let mut k = 0;
    loop {
        let (user, answer) = TURNS[k % 2];
        let mut next = messages.clone();
        next.extend([
            Message::new("user", user),
            Message::new("assistant", answer),
            Message::new("user", TURNS[(k + 1) % 2].0),
        ]);
        if m.chat_ids(&next)?.len() > 200 {
            break;
        }
        messages.extend([Message::new("user", user), Message::new("assistant", answer)]);
        k += 1;
    }
    messages.push(Message::new("user", TURNS[k % 2].0));
    m.chat_ids(&messages)
}

struct Row {
    backend: String,
    load_ms: f64,
    prefill_tokens: usize,
    prefill_tok_s: f64,
    ttft_ms: f64,
    decode_tok_s: f64,
    streams: usize,
    streams_tok_s: f64,
}

async fn step1(s: &Stepper, session: u64, tokens: Vec<u32>) -> anyhow::Result<u32> {
    Ok(s.step(vec![StepRow { session, tokens, sampling: Sampling::Greedy }]).await?.0[0])
}

async fn measure(
    host: &mut Host,
    m: &SmolLm2,
    backend: GenBackend,
    prompt: &[u32],
    args: &Args,
) -> anyhow::Result<Row> {
    let decode = if backend == GenBackend::Webgpu { args.webgpu_decode } else { args.decode };
    let streams = args.streams.max(1);
    let t = Instant::now();
    let s = generate::stepper(host, m, backend, streams as u32, &()).await?;
    let load_ms = t.elapsed().as_secs_f64() * 1e3;
    // Warm-up: compile/tier up on a short session.
    s.open(0, 8).await?;
    step1(&s, 0, prompt[..4].to_vec()).await?;
    s.close(0).await?;
    // One stream: the prompt in one step (prefill and the first token), then single-token steps.
    // Decoding goes on past an end token: the count is fixed, as the peers do.
    let capacity = (prompt.len() + decode + 1) as u32;
    s.open(1, capacity).await?;
    let t = Instant::now();
    let mut tok = step1(&s, 1, prompt.to_vec()).await?;
    let ttft_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    for _ in 1..decode {
        tok = step1(&s, 1, vec![tok]).await?;
    }
    let decode_tok_s = (decode - 1) as f64 / t.elapsed().as_secs_f64();
    s.close(1).await?;
    // Several streams decoding in shared steps.
    let short = &prompt[prompt.len() - 12..];
    let steps = decode.min(32);
    for i in 0..streams as u64 {
        s.open(10 + i, (short.len() + steps + 1) as u32).await?;
    }
    let rows = |toks: &[u32]| -> Vec<StepRow> {
        toks.iter()
            .enumerate()
            .map(|(i, &t)| StepRow { session: 10 + i as u64, tokens: vec![t], sampling: Sampling::Greedy })
            .collect()
    };
    let first: Vec<StepRow> = (0..streams as u64)
        .map(|i| StepRow { session: 10 + i, tokens: short.to_vec(), sampling: Sampling::Greedy })
        .collect();
    let mut toks = s.step(first).await?.0;
    let t = Instant::now();
    for _ in 0..steps {
        toks = s.step(rows(&toks)).await?.0;
    }
    let streams_tok_s = (steps * streams) as f64 / t.elapsed().as_secs_f64();
    for i in 0..streams as u64 {
        s.close(10 + i).await?;
    }
    Ok(Row {
        backend: s.backend(),
        load_ms,
        prefill_tokens: prompt.len(),
        prefill_tok_s: prompt.len() as f64 / (ttft_ms / 1e3),
        ttft_ms,
        decode_tok_s,
        streams,
        streams_tok_s,
    })
}

/// A peer's row: (method, load s, prefill tok/s, TTFT ms, decode tok/s).
type PeerRow = (String, f64, f64, f64, f64);

/// The generation peers (`anchors/gen/run.sh`), run now.
fn run_peers(decode: usize) -> anyhow::Result<Vec<PeerRow>> {
    let script = super::bench::anchors_dir().join("gen/run.sh");
    anyhow::ensure!(
        script.is_file(),
        "--peers needs the peer harness, which is not part of this repository: {} is absent (set TABPOOL_ANCHORS)",
        script.display()
    );
    let cache = std::env::var_os("ANCHORS_CACHE").map(std::path::PathBuf::from).unwrap_or_else(|| {
        std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/tabpool-anchors")
    });
    let results = cache.join("gen/results");
    let before: Vec<_> =
        std::fs::read_dir(&results).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    eprintln!("running the generation peers: bash {} (about 10 minutes)", script.display());
    let status = std::process::Command::new("bash")
        .arg(&script)
        .env("REPS", "1")
        .env("N_DECODE", decode.to_string())
        .stdout(std::process::Stdio::null())
        .status()
        .context("running the generation anchors")?;
    anyhow::ensure!(status.success(), "anchors gen/run.sh failed: {status}");
    let newest = std::fs::read_dir(&results)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl") && !before.contains(p))
        .max()
        .context("the generation anchors wrote no results file")?;
    let mut out = Vec::new();
    for line in std::fs::read_to_string(&newest)?.lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
        if let Some(m) = v["method"].as_str() {
            out.push((m.to_string(), f("load_s"), f("prefill_tok_s"), f("ttft_ms"), f("decode_tok_s")));
        }
    }
    Ok(out)
}

pub async fn run(host: &mut Host, args: Args) -> anyhow::Result<()> {
    let m = SmolLm2::load(None)?;
    let prompt = prefill_prompt(&m)?;
    let mut rows = Vec::new();
    for &b in &args.backends {
        eprintln!("bench gen: {b:?}…");
        rows.push(measure(host, &m, b, &prompt, &args).await.with_context(|| format!("measuring {b:?}"))?);
    }
    let peers = if args.peers { run_peers(args.decode)? } else { vec![] };
    if args.json {
        let r: Vec<_> = rows
            .iter()
            .map(|r| {
                json!({"backend": r.backend, "load_ms": r.load_ms, "prefill_tokens": r.prefill_tokens,
                       "prefill_tok_s": r.prefill_tok_s, "ttft_ms": r.ttft_ms, "decode_tok_s": r.decode_tok_s,
                       "streams": r.streams, "streams_tok_s": r.streams_tok_s})
            })
            .collect();
        let p: Vec<_> = peers
            .iter()
            .map(|p| json!({"method": p.0, "load_s": p.1, "prefill_tok_s": p.2, "ttft_ms": p.3, "decode_tok_s": p.4}))
            .collect();
        println!("{}", json!({"model": m.name, "rows": r, "peers": p}));
        return Ok(());
    }
    println!("bench gen — {} (Q4_1), prompt {} tokens, greedy", m.name, prompt.len());
    println!(
        "{:<12} | {:>8} | {:>12} | {:>8} | {:>11} | {:>22}",
        "backend", "load ms", "prefill t/s", "TTFT ms", "decode t/s", "streams: aggregate t/s"
    );
    for r in &rows {
        println!(
            "{:<12} | {:>8.0} | {:>12.1} | {:>8.0} | {:>11.1} | {:>2} × = {:>13.1}",
            r.backend, r.load_ms, r.prefill_tok_s, r.ttft_ms, r.decode_tok_s, r.streams, r.streams_tok_s
        );
    }
    for p in &peers {
        println!(
            "{:<60} | load {:.2} s | prefill {:.0} t/s | TTFT {:.0} ms | decode {:.1} t/s",
            p.0, p.1, p.2, p.3, p.4
        );
    }
    for p in &peers {
        for r in &rows {
            println!(
                "ratio {} / {}: decode {:.2}×, prefill {:.2}×",
                r.backend,
                p.0,
                r.decode_tok_s / p.4,
                r.prefill_tok_s / p.2
            );
        }
    }
    Ok(())
}
