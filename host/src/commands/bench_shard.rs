//! `tabpool bench shard`: SmolLM2 whole in one tab beside the same model sharded across tabs —
//! per plan: load, single-stream decode tokens/s, aggregate tokens/s of concurrent streams, the
//! share of a token's time spent outside the stages' kernels (hops through the host and
//! orchestration), each tab's memory above an empty tab, whether the greedy tokens equal one
//! tab's — and how long a stream waits for its next token when a stage's renderer is killed.

use std::time::Instant;

use anyhow::Context;
use serde_json::json;
use shared_proto::{Sampling, StepRow};

use super::bench_memory::{pids, settled};
use super::generate::{self, GenBackend};
use crate::Host;
use crate::exec::{StepOut, Stepper};
use crate::models::smollm2::{Message, SmolLm2};
use crate::policy::sharding::{self, Part};

pub struct Args {
    pub backend: GenBackend,
    /// Tokens decoded by the single stream.
    pub decode: usize,
    /// Concurrent streams of the aggregate row.
    pub streams: usize,
    /// Stage kills for the recovery row (each uses a spare tab).
    pub kills: usize,
    pub json: bool,
}

/// One measured plan.
#[derive(serde::Serialize)]
struct Row {
    plan: String,
    stages: usize,
    tabs: usize,
    load_ms: f64,
    decode_tok_s: f64,
    aggregate_tok_s: f64,
    /// Of a decode token's wall time, the part outside the stages' own run time.
    hop_share: f64,
    tab_mib_above_empty: Vec<f64>,
    same_tokens: bool,
}

/// Stages in model order as `(tab, parts)`.
type Stages = Vec<(usize, Vec<Part>)>;

fn stage_list(plans: Vec<Vec<Part>>) -> Stages {
    plans.into_iter().enumerate().collect()
}

/// The plans measured: `(name, stages as (tab, parts), micro-batches)`.
fn plans(layers: u32) -> Vec<(String, Stages, usize)> {
    let body: Vec<Part> = (0..layers).flat_map(|l| [Part::Attention(l), Part::Ffn(l)]).collect();
    let mut out = Vec::new();
    for n in [2, 3] {
        out.push((format!("layer ×{n}"), stage_list(sharding::even_layers(layers, n)), 1));
        out.push((format!("pipeline ×{n}"), stage_list(sharding::even_layers(layers, n)), n as usize));
    }
    // Embedding and head on tab 0, the transformer body on tab 1.
    out.push(("component".into(), vec![(0, vec![Part::Embed]), (1, body), (0, vec![Part::Head])], 1));
    // Every layer's attention on tab 0, its FFN on tab 1: two hops per layer.
    let mut af = Vec::new();
    for l in 0..layers {
        let mut attn = vec![Part::Attention(l)];
        if l == 0 {
            attn.insert(0, Part::Embed);
        }
        let mut ffn = vec![Part::Ffn(l)];
        if l + 1 == layers {
            ffn.push(Part::Head);
        }
        af.extend([(0, attn), (1, ffn)]);
    }
    out.push(("attention-ffn".into(), af, 1));
    out
}

fn chat_prompt(m: &SmolLm2) -> anyhow::Result<Vec<u32>> {
    m.chat_ids(&[Message::new("user", "Write a short story about a robot who learns to paint.")])
}

async fn step(s: &Stepper, rows: Vec<StepRow>) -> anyhow::Result<(Vec<u32>, f64)> {
    match Box::pin(s.step_with(rows, Vec::new())).await? {
        (StepOut::Tokens(t), ms) => Ok((t, ms)),
        (other, _) => anyhow::bail!("a whole model's step gave {other:?}"),
    }
}

fn row(session: u64, tokens: Vec<u32>) -> StepRow {
    StepRow { session, tokens, sampling: Sampling::Greedy }
}

/// One stream: the prompt, then `decode` single-token steps (past an end token: the count is
/// fixed). The ids, decode tokens/s, and the share of decode wall time outside the stages.
async fn single(s: &Stepper, prompt: &[u32], decode: usize) -> anyhow::Result<(Vec<u32>, f64, f64)> {
    s.open(1, (prompt.len() + decode + 1) as u32).await?;
    let mut ids = vec![step(s, vec![row(1, prompt.to_vec())]).await?.0[0]];
    let (t, mut device_ms) = (Instant::now(), 0.0);
    for _ in 1..decode {
        let (tok, ms) = step(s, vec![row(1, vec![*ids.last().expect("a token")])]).await?;
        ids.push(tok[0]);
        device_ms += ms;
    }
    let wall = t.elapsed().as_secs_f64();
    s.close(1).await?;
    Ok((ids, (decode - 1) as f64 / wall, (1.0 - device_ms / 1e3 / wall).max(0.0)))
}

/// `n` streams after a short prompt, 16 decode steps each, in shared steps; tokens/s in all.
async fn aggregate(s: &Stepper, prompt: &[u32], n: usize) -> anyhow::Result<f64> {
    const STEPS: usize = 16;
    let short = &prompt[prompt.len() - 12..];
    let ids: Vec<u64> = (0..n as u64).map(|i| 100 + i).collect();
    for &id in &ids {
        s.open(id, (short.len() + STEPS + 1) as u32).await?;
    }
    let t = Instant::now();
    let mut toks = step(s, ids.iter().map(|&id| row(id, short.to_vec())).collect()).await?.0;
    for _ in 0..STEPS {
        toks = step(s, ids.iter().zip(&toks).map(|(&id, &t)| row(id, vec![t])).collect()).await?.0;
    }
    let rate = (n * STEPS) as f64 / t.elapsed().as_secs_f64();
    for &id in &ids {
        s.close(id).await?;
    }
    Ok(rate)
}

/// Each tab's anonymous memory (PSS of private pages: the file-backed pages browsers share fall
/// in PSS as more browsers run, so whole PSS measured beside many tabs is not comparable with an
/// empty tab measured alone) above an empty tab's, in MiB.
async fn tab_memory(host: &Host, s: &Stepper, empty: u64) -> Vec<f64> {
    let mut tabs = s.tab_ids();
    tabs.dedup();
    tabs.sort_unstable();
    tabs.dedup();
    let mut out = Vec::new();
    for t in tabs {
        let bytes = settled(|| pids(host, t)).await.anon;
        out.push((bytes as f64 - empty as f64) / (1u64 << 20) as f64);
    }
    out
}

/// Kill a stage's renderer every few tokens of one stream: kill → next token, in ms each.
async fn recovery(host: &mut Host, m: &SmolLm2, args: &Args, prompt: &[u32]) -> anyhow::Result<(Vec<f64>, Vec<u32>)> {
    let s = generate::pipeline(host, m, args.backend, 3, 1, args.kills as u32, &()).await?;
    let total = args.kills * 6 + 4;
    s.open(1, (prompt.len() + total + 1) as u32).await?;
    let mut tok = step(&s, vec![row(1, prompt.to_vec())]).await?.0[0];
    let mut ids = vec![tok];
    let mut waits = Vec::new();
    for k in 0..total {
        let kill = k % 6 == 3 && waits.len() < args.kills;
        if kill {
            let tabs = s.tab_ids();
            let victim = tabs[waits.len() % tabs.len()];
            let procs = host.tab_processes(victim);
            let t = Instant::now();
            for (pid, renderer) in procs {
                if renderer {
                    // SAFETY: a plain kill(2) of a renderer this command started.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
            tok = step(&s, vec![row(1, vec![tok])]).await?.0[0];
            waits.push(t.elapsed().as_secs_f64() * 1e3);
        } else {
            tok = step(&s, vec![row(1, vec![tok])]).await?.0[0];
        }
        ids.push(tok);
    }
    s.close(1).await?;
    Ok((waits, ids))
}

fn percentile(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(((v.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(f64::NAN)
}

pub async fn run(host: &mut Host, args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.decode >= 2 && args.streams >= 1, "--decode must be at least 2 and --streams at least 1");
    let m = SmolLm2::load(None)?;
    let prompt = chat_prompt(&m)?;
    let sessions = args.streams as u32 + 1;
    // An empty tab of the kind the plans use, for the memory baseline.
    let empty = if args.backend == GenBackend::Cpu {
        0
    } else {
        let tab = generate::launch_for(host, args.backend).await?;
        settled(|| pids(host, tab.id())).await.anon
    };
    let mut rows = Vec::new();
    eprintln!("bench shard: 1 tab…");
    let t = Instant::now();
    let one = generate::place(host, &m, args.backend, sessions, 1, &()).await?.0;
    let load_ms = t.elapsed().as_secs_f64() * 1e3;
    let (base_ids, decode_tok_s, hop_share) = single(&one, &prompt, args.decode).await?;
    rows.push(Row {
        plan: "1 tab".into(),
        stages: 1,
        tabs: one.tab_ids().len(),
        load_ms,
        decode_tok_s,
        aggregate_tok_s: aggregate(&one, &prompt, args.streams).await?,
        hop_share,
        tab_mib_above_empty: tab_memory(host, &one, empty).await,
        same_tokens: true,
    });
    drop(one);
    for (name, stages, micro) in plans(m.config.layers) {
        eprintln!("bench shard: {name}…");
        let t = Instant::now();
        let s = generate::pipeline_of(host, &m, args.backend, &stages, micro, sessions, 0, &())
            .await
            .with_context(|| format!("loading plan {name}"))?;
        let load_ms = t.elapsed().as_secs_f64() * 1e3;
        let (ids, decode_tok_s, hop_share) = single(&s, &prompt, args.decode).await?;
        let mut tabs = s.tab_ids();
        tabs.sort_unstable();
        tabs.dedup();
        rows.push(Row {
            plan: name,
            stages: stages.len(),
            tabs: tabs.len(),
            load_ms,
            decode_tok_s,
            aggregate_tok_s: aggregate(&s, &prompt, args.streams).await?,
            hop_share,
            tab_mib_above_empty: tab_memory(host, &s, empty).await,
            same_tokens: ids == base_ids,
        });
    }
    let (waits, recovered_ids) = if args.kills > 0 && args.backend != GenBackend::Cpu {
        eprintln!("bench shard: recovery, {} kills…", args.kills);
        recovery(host, &m, &args, &prompt).await?
    } else {
        (Vec::new(), Vec::new())
    };
    // The fault-free tokens of the same prompt: one tab's, as long as both ran.
    let n = recovered_ids.len().min(base_ids.len());
    let recovered_same = recovered_ids[..n] == base_ids[..n];
    let (p50, p95) = (percentile(&waits, 0.5), percentile(&waits, 0.95));
    if args.json {
        println!(
            "{}",
            json!({"model": m.name, "backend": format!("{:?}", args.backend), "prompt_tokens": prompt.len(),
                   "decode": args.decode, "streams": args.streams, "rows": rows,
                   "recovery_ms": waits, "recovery_p50_ms": p50, "recovery_p95_ms": p95,
                   "recovery_tokens_compared": n, "recovery_same_tokens": recovered_same})
        );
        return Ok(());
    }
    let base = rows[0].decode_tok_s.max(f64::MIN_POSITIVE);
    println!(
        "bench shard — {} on {:?} tabs, prompt {} tokens, {} decoded, {} streams, greedy",
        m.name,
        args.backend,
        prompt.len(),
        args.decode,
        args.streams
    );
    println!(
        "{:<14} | {:>6} | {:>4} | {:>8} | {:>10} | {:>8} | {:>15} | {:>9} | {:>16} | tab MiB above empty",
        "plan", "stages", "tabs", "load ms", "decode t/s", "vs 1 tab", "aggregate t/s", "agg/1 str", "hops+orch share"
    );
    for r in &rows {
        let mem: Vec<String> = r.tab_mib_above_empty.iter().map(|b| format!("{b:.0}")).collect();
        println!(
            "{:<14} | {:>6} | {:>4} | {:>8.0} | {:>10.1} | {:>7.2}× | {:>15.1} | {:>8.2}× | {:>15.0} % | {}{}",
            r.plan,
            r.stages,
            r.tabs,
            r.load_ms,
            r.decode_tok_s,
            r.decode_tok_s / base,
            r.aggregate_tok_s,
            r.aggregate_tok_s / r.decode_tok_s,
            r.hop_share * 100.0,
            mem.join(" / "),
            if r.same_tokens { "" } else { "  (tokens differ from 1 tab!)" }
        );
    }
    if !waits.is_empty() {
        println!(
            "stage lost (renderer killed) → next token, 3-stage layer pipeline, {} kills: p50 {p50:.0} ms, p95 {p95:.0} ms ({}); {n} tokens {} one tab's",
            waits.len(),
            waits.iter().map(|w| format!("{w:.0}")).collect::<Vec<_>>().join(", "),
            if recovered_same { "identical to" } else { "DIFFERENT from" }
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_plan_covers_the_model_once_in_order() {
        for (name, stages, _) in plans(30) {
            let parts: Vec<Part> = stages.iter().flat_map(|(_, p)| p.clone()).collect();
            let whole = Part::whole_model(30);
            assert_eq!(parts, whole, "{name}");
        }
    }

    #[test]
    fn percentiles_pick_ranks() {
        let v = [5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!((percentile(&v, 0.5), percentile(&v, 0.95)), (3.0, 5.0));
        assert!(percentile(&[], 0.5).is_nan());
    }
}
