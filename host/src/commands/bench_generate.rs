//! `tabpool bench generate`: SmolLM2-135M generation per backend — load, prefill of a ~190-token chat
//! prompt, time to first token, decode tokens/s, and the aggregate rate of several streams in
//! shared steps (continuous batching) — with, under `--peers`, native llama.cpp and llama.cpp in
//! wasm measured by the peer harness in the same run, and ratios.

use std::time::Instant;

use anyhow::Context;
use serde_json::json;
use shared_proto::{Sampling, StepRow};

use super::bench_memory::{pids, settled};
use crate::Host;
use crate::exec::Stepper;
use crate::exec::placement;
use crate::models::smollm2::{KvLimits, Message, Outputs, SmolLm2};
use crate::policy::backend_choice::Backend;

pub struct Args {
    pub backends: Vec<Backend>,
    /// Tokens decoded after the prompt (fewer on WebGPU: SwiftShader is slow).
    pub decode: usize,
    pub webgpu_decode: usize,
    /// Concurrent streams in the batching rows.
    pub streams: Vec<usize>,
    /// Also run the streams over two tabs of the backend.
    pub two_tabs: bool,
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
    /// (streams, tabs, aggregate tokens/s).
    streams: Vec<(usize, usize, f64)>,
    /// The tab's PSS above the empty tab after the runs (None on the host).
    tab_mib_above_empty: Option<f64>,
    /// Threads of the tab's CPU executor (`--tab-threads`; 1 on the host row), and what its
    /// quantized Linear multiplies with (`--tab-activations`; "f32" on the host row).
    threads: u32,
    activations: String,
    /// The tab runs the page's relaxed-SIMD build (fused f32 multiply-adds).
    relaxed_simd: bool,
    /// The next chat turn after the single stream: its prompt tokens, those its prefix cache
    /// gave, TTFT with them and TTFT prefilling it all (`None`: the backend keeps no cache).
    turn2: Turn2,
}

#[derive(Clone, Copy)]
struct Turn2 {
    tokens: usize,
    cached: usize,
    cached_ttft_ms: f64,
    full_ttft_ms: f64,
}

async fn step1(s: &Stepper, session: u64, tokens: Vec<u32>) -> anyhow::Result<u32> {
    Ok(s.step(vec![StepRow { session, tokens, sampling: Sampling::Greedy }]).await?.0[0])
}

/// `n` streams after a short prompt, decoding `steps` tokens each in shared steps, split evenly
/// over `steppers` (each its own tab, stepping concurrently); aggregate tokens/s.
async fn streams(steppers: &[&Stepper], n: usize, prompt: &[u32], steps: usize) -> anyhow::Result<f64> {
    let short = &prompt[prompt.len() - 12..];
    let per = n.div_ceil(steppers.len());
    let t = Instant::now();
    let runs = steppers.iter().enumerate().map(|(k, s)| async move {
        let ids: Vec<u64> = (0..per as u64).map(|i| 1000 + 100 * k as u64 + i).collect();
        for &id in &ids {
            s.open(id, (short.len() + steps + 1) as u32).await?;
        }
        let rows = |toks: Vec<Vec<u32>>| -> Vec<StepRow> {
            ids.iter()
                .zip(toks)
                .map(|(&session, tokens)| StepRow { session, tokens, sampling: Sampling::Greedy })
                .collect()
        };
        let mut toks = s.step(rows(vec![short.to_vec(); per])).await?.0;
        for _ in 0..steps {
            toks = s.step(rows(toks.iter().map(|&t| vec![t]).collect())).await?.0;
        }
        for &id in &ids {
            s.close(id).await?;
        }
        anyhow::Ok(per * steps)
    });
    let tokens: usize = futures_util::future::try_join_all(runs).await?.into_iter().sum();
    Ok(tokens as f64 / t.elapsed().as_secs_f64())
}

/// The next user turn after the single stream's reply: what `chat` would send, the history
/// being the prompt and the tokens the stream held (`prior`, generated ones included).
fn next_turn(m: &SmolLm2, prior: &[u32]) -> anyhow::Result<Vec<u32>> {
    let mut ids = prior.to_vec();
    // ChatML: end the assistant turn, then a user turn and the assistant's header.
    let tail = "<|im_end|>\n<|im_start|>user\nAnd what about dogs?<|im_end|>\n<|im_start|>assistant\n";
    ids.extend(m.encode(tail)?);
    Ok(ids)
}

/// KV rows for the bench: the long single stream kept as a cached prefix (at most half the
/// cache) with its next turn opened twice, or the most streams of one tab.
fn bench_limits(prompt: usize, decode: usize, max_streams: usize, steps: usize) -> KvLimits {
    let turn = prompt + decode + 64;
    let rows = (4 * turn).max(turn + max_streams * (12 + steps + 1)) + 8;
    KvLimits { max_tokens: rows.next_multiple_of(256) as u32, max_sessions: max_streams as u32 + 2 }
}

async fn measure(host: &mut Host, m: &SmolLm2, backend: Backend, prompt: &[u32], args: &Args) -> anyhow::Result<Row> {
    let webgpu = backend == Backend::Webgpu;
    let decode = if webgpu { args.webgpu_decode } else { args.decode };
    let steps = if webgpu { 4 } else { 16 };
    let max_streams = args.streams.iter().copied().max().unwrap_or(1).max(1);
    let limits = bench_limits(prompt.len(), decode, max_streams, steps);
    let t = Instant::now();
    let (s, tab, empty) = if backend == Backend::Cpu {
        let (graph, weights) = m.graph(limits, Outputs::default())?;
        (Stepper::on_host(graph, weights)?, None, 0)
    } else {
        let tab = placement::launch_for(host, backend).await?;
        let empty = settled(|| pids(host, tab.id())).await.bytes;
        (placement::load_in(&tab, m, backend, limits, &()).await?, Some(tab), empty)
    };
    let load_ms = t.elapsed().as_secs_f64() * 1e3;
    // Warm-up: compile/tier up on a short session.
    s.open(0, 8).await?;
    step1(&s, 0, prompt[..4].to_vec()).await?;
    s.close(0).await?;
    // One stream: the prompt in one step (prefill and the first token), then single-token steps.
    // Decoding goes on past an end token: the count is fixed, as the peers do.
    // Opened with its prompt: at close its rows stay in the prefix cache for the next turn.
    s.open_reusing(1, (prompt.len() + decode + 1) as u32, prompt).await?;
    let t = Instant::now();
    let mut tok = step1(&s, 1, prompt.to_vec()).await?;
    let ttft_ms = t.elapsed().as_secs_f64() * 1e3;
    let mut held = prompt.to_vec();
    let t = Instant::now();
    for _ in 1..decode {
        held.push(tok);
        tok = step1(&s, 1, vec![tok]).await?;
    }
    let decode_tok_s = (decode - 1) as f64 / t.elapsed().as_secs_f64();
    s.close(1).await?;
    // The next turn: from the prefix cache, then the same prompt prefilled whole.
    let turn = next_turn(m, &held)?;
    let capacity = (turn.len() + 1) as u32;
    let t = Instant::now();
    let (_, cached) = s.open_reusing(2, capacity, &turn).await?;
    step1(&s, 2, turn[cached as usize..].to_vec()).await?;
    let cached_ttft_ms = t.elapsed().as_secs_f64() * 1e3;
    s.open(3, capacity).await?;
    let t = Instant::now();
    step1(&s, 3, turn.clone()).await?;
    let full_ttft_ms = t.elapsed().as_secs_f64() * 1e3;
    for id in [2, 3] {
        s.close(id).await?;
    }
    let turn2 = Turn2 { tokens: turn.len(), cached: cached as usize, cached_ttft_ms, full_ttft_ms };
    let mut rates = Vec::new();
    for &n in &args.streams {
        rates.push((n, 1, streams(&[&s], n, prompt, steps).await?));
    }
    let tab_mib_above_empty = match &tab {
        Some(tab) => Some((settled(|| pids(host, tab.id())).await.bytes as f64 - empty as f64) / (1u64 << 20) as f64),
        None => None,
    };
    if args.two_tabs && backend != Backend::Cpu {
        let tab2 = placement::launch_for(host, backend).await?;
        let s2 = placement::load_in(&tab2, m, backend, limits, &()).await?;
        for &n in &args.streams {
            rates.push((n, 2, streams(&[&s, &s2], n, prompt, steps).await?));
        }
    }
    Ok(Row {
        threads: tab.as_ref().map_or(1, |t| t.caps().threads),
        activations: tab.as_ref().map_or("f32".into(), |t| t.caps().activations.clone()),
        relaxed_simd: tab.as_ref().is_some_and(|t| t.caps().relaxed_simd),
        backend: s.backend(),
        load_ms,
        prefill_tokens: prompt.len(),
        prefill_tok_s: prompt.len() as f64 / (ttft_ms / 1e3),
        ttft_ms,
        decode_tok_s,
        streams: rates,
        tab_mib_above_empty,
        turn2,
    })
}

/// A peer's row: (method, load s, prefill tok/s, TTFT ms, decode tok/s).
type PeerRow = (String, f64, f64, f64, f64);

/// What the peer harness wrote: the peers' rows, and its "limits" record's memory-bandwidth bound
/// on decode tok/s (a property of the machine and the file, not a peer).
#[derive(Default)]
struct Peers {
    rows: Vec<PeerRow>,
    decode_upper_tok_s: Option<f64>,
}

fn parse_peers(jsonl: &str) -> anyhow::Result<Peers> {
    let mut out = Peers::default();
    for line in jsonl.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)?;
        let Some(method) = v["method"].as_str() else { continue };
        if method == "limits" {
            out.decode_upper_tok_s = v["decode_upper_tok_s"].as_f64();
            continue;
        }
        let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
        out.rows.push((method.to_string(), f("load_s"), f("prefill_tok_s"), f("ttft_ms"), f("decode_tok_s")));
    }
    Ok(out)
}

/// The generation peers (`anchors/gen/run.sh`), run now.
fn run_peers(decode: usize) -> anyhow::Result<Peers> {
    let script = super::bench::anchors_dir().join("gen/run.sh");
    anyhow::ensure!(
        script.is_file(),
        "--peers needs the peer harness, which is not part of this repository: {} is absent (set TABPOOL_ANCHORS)",
        script.display()
    );
    eprintln!("bench generate: the generation peers take about 10 minutes");
    let newest = super::bench::run_peer_harness("gen", &[("REPS", "1".into()), ("N_DECODE", decode.to_string())])?;
    parse_peers(&std::fs::read_to_string(&newest)?).with_context(|| format!("reading {}", newest.display()))
}

pub async fn run(host: &mut Host, args: Args) -> anyhow::Result<()> {
    if args.backends.contains(&Backend::Auto) {
        anyhow::bail!("bench generate measures named backends (cpu, wasm-cpu, webgpu, webnn), not auto");
    }
    let m = SmolLm2::load(None)?;
    let prompt = prefill_prompt(&m)?;
    let mut rows = Vec::new();
    for &b in &args.backends {
        eprintln!("bench generate: {b:?}…");
        rows.push(measure(host, &m, b, &prompt, &args).await.with_context(|| format!("measuring {b:?}"))?);
    }
    let Peers { rows: peers, decode_upper_tok_s } = if args.peers { run_peers(args.decode)? } else { Peers::default() };
    let gguf_mib = std::fs::metadata(&m.path).map(|md| md.len() as f64 / (1u64 << 20) as f64).unwrap_or(f64::NAN);
    if args.json {
        let r: Vec<_> = rows
            .iter()
            .map(|r| {
                let st: Vec<_> = r
                    .streams
                    .iter()
                    .map(|(n, tabs, rate)| json!({"streams": n, "tabs": tabs, "tok_s": rate}))
                    .collect();
                json!({"backend": r.backend, "load_ms": r.load_ms, "prefill_tokens": r.prefill_tokens,
                       "prefill_tok_s": r.prefill_tok_s, "ttft_ms": r.ttft_ms, "decode_tok_s": r.decode_tok_s,
                       "streams": st, "tab_mib_above_empty": r.tab_mib_above_empty, "threads": r.threads, "activations": r.activations, "relaxed_simd": r.relaxed_simd,
                       "turn2": {"tokens": r.turn2.tokens, "cached": r.turn2.cached,
                                 "cached_ttft_ms": r.turn2.cached_ttft_ms, "full_ttft_ms": r.turn2.full_ttft_ms}})
            })
            .collect();
        let p: Vec<_> = peers
            .iter()
            .map(|p| json!({"method": p.0, "load_s": p.1, "prefill_tok_s": p.2, "ttft_ms": p.3, "decode_tok_s": p.4}))
            .collect();
        println!(
            "{}",
            json!({"model": m.name, "gguf_mib": gguf_mib, "rows": r, "peers": p, "decode_upper_tok_s": decode_upper_tok_s})
        );
        return Ok(());
    }
    println!("bench generate — {} (Q4_1 GGUF {gguf_mib:.1} MiB), prompt {} tokens, greedy", m.name, prompt.len());
    println!(
        "{:<10} | {:>12} | {:>12} | {:>8} | {:>11} | {:>8} | {:>10} | {:>16} | streams: aggregate tok/s",
        "backend", "threads", "activations", "load ms", "prefill t/s", "TTFT ms", "decode t/s", "tab above empty"
    );
    for r in &rows {
        let mem = r.tab_mib_above_empty.map(|b| format!("{b:.0} MiB = {:.2}×", b / gguf_mib)).unwrap_or("-".into());
        let st: Vec<String> = r.streams.iter().map(|(n, tabs, rate)| format!("{n} on {tabs} tab: {rate:.1}")).collect();
        println!(
            "{:<10} | {:>12} | {:>12} | {:>8.0} | {:>11.1} | {:>8.0} | {:>10.1} | {:>16} | {}",
            r.backend,
            format!("{}{}", r.threads, if r.relaxed_simd { ", relaxed" } else { "" }),
            r.activations,
            r.load_ms,
            r.prefill_tok_s,
            r.ttft_ms,
            r.decode_tok_s,
            mem,
            st.join(", ")
        );
    }
    println!("next chat turn (the single stream's prompt and reply as history, then a new question):");
    for r in &rows {
        let t = r.turn2;
        println!(
            "{:<10} | {} tokens, {} from the prefix cache: TTFT {:.0} ms, prefilled whole {:.0} ms ({:.2}×)",
            r.backend,
            t.tokens,
            t.cached,
            t.cached_ttft_ms,
            t.full_ttft_ms,
            t.full_ttft_ms / t.cached_ttft_ms
        );
    }
    for p in &peers {
        println!(
            "{:<60} | load {:.2} s | prefill {:.0} t/s | TTFT {:.0} ms | decode {:.1} t/s",
            p.0, p.1, p.2, p.3, p.4
        );
    }
    if let Some(bound) = decode_upper_tok_s {
        println!("decode bound by memory bandwidth (the peer harness's limits): {bound:.0} tok/s");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limits_record_is_a_bound_not_a_peer_row() {
        // The shapes `anchors/gen/run.sh` writes (abridged from a run on this machine).
        let jsonl = r#"{"method": "limits", "file_bytes": 98362432, "decode_upper_tok_s": 468.5}
{"method": "llama.cpp native (node-llama-cpp 3.21.1), 2 thr", "load_s": 0.484, "prefill_tok_s": 1435.1, "ttft_ms": 151.9, "decode_tok_s": 62.6}
"#;
        let p = parse_peers(jsonl).unwrap();
        assert_eq!(p.decode_upper_tok_s, Some(468.5));
        assert_eq!(p.rows.len(), 1);
        let (method, load, prefill, ttft, decode) = p.rows[0].clone();
        assert!(method.starts_with("llama.cpp native"));
        assert_eq!((load, prefill, ttft, decode), (0.484, 1435.1, 151.9, 62.6));
    }
}
