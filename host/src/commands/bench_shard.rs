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
use crate::Host;
use crate::exec::placement;
use crate::exec::{StepOut, Stepper};
use crate::models::smollm2::{Message, SmolLm2};
use crate::policy::backend_choice::Backend;
use crate::policy::sharding::{self, Measured, Strategy};

pub struct Args {
    pub backend: Backend,
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
    /// The planner's figures for the plan, from the one-tab row's measurements.
    predicted_tok_s: Option<f64>,
    predicted_aggregate_tok_s: Option<f64>,
}

/// The plans measured: (strategy, shards).
const PLANS: [(Strategy, usize); 6] = [
    (Strategy::Layer, 2),
    (Strategy::Pipeline, 2),
    (Strategy::Layer, 3),
    (Strategy::Pipeline, 3),
    (Strategy::Component, 2),
    (Strategy::AttentionFfn, 2),
];

pub(crate) fn chat_prompt(m: &SmolLm2) -> anyhow::Result<Vec<u32>> {
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
pub(crate) async fn single(s: &Stepper, prompt: &[u32], decode: usize) -> anyhow::Result<(Vec<u32>, f64, f64)> {
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

/// `n` streams after a short prompt, 16 decode steps each, in shared steps, split evenly over
/// `steppers` running at once; tokens/s in all.
pub(crate) async fn aggregate(steppers: &[&Stepper], prompt: &[u32], n: usize) -> anyhow::Result<f64> {
    const STEPS: usize = 16;
    let short = &prompt[prompt.len() - 12..];
    let per = n.div_ceil(steppers.len());
    let t = Instant::now();
    let runs = steppers.iter().map(|s| async move {
        let ids: Vec<u64> = (0..per as u64).map(|i| 100 + i).collect();
        for &id in &ids {
            s.open(id, (short.len() + STEPS + 1) as u32).await?;
        }
        let mut toks = step(s, ids.iter().map(|&id| row(id, short.to_vec())).collect()).await?.0;
        for _ in 0..STEPS {
            toks = step(s, ids.iter().zip(&toks).map(|(&id, &t)| row(id, vec![t])).collect()).await?.0;
        }
        for &id in &ids {
            s.close(id).await?;
        }
        anyhow::Ok(per * STEPS)
    });
    let tokens: usize = futures_util::future::try_join_all(runs).await?.into_iter().sum();
    Ok(tokens as f64 / t.elapsed().as_secs_f64())
}

/// Two whole copies of the model in two tabs, and what they measured: the planner's inputs.
pub(crate) struct WholeCopies {
    pub one: Stepper,
    pub two: Stepper,
    /// Load of each, ms.
    pub load_ms: (f64, f64),
    /// The single stream's greedy ids on the first.
    pub ids: Vec<u32>,
    pub measured: Measured,
}

/// Load one copy, measure one stream (`decode` tokens) and `streams` streams on it, then load a
/// second beside it and measure the streams split over both at once.
pub(crate) async fn whole_copies(
    host: &mut Host,
    m: &SmolLm2,
    backend: Backend,
    prompt: &[u32],
    decode: usize,
    streams: usize,
) -> anyhow::Result<WholeCopies> {
    let sessions = streams as u32 + 1;
    eprintln!("measuring one whole copy in a tab, then two at once…");
    let t = Instant::now();
    let one = placement::place(host, m, backend, sessions, (1, Strategy::Layer), &()).await?.0;
    let load_one = t.elapsed().as_secs_f64() * 1e3;
    let (ids, decode_tok_s, hop_share) = single(&one, prompt, decode).await?;
    let batch_tok_s = aggregate(&[&one], prompt, streams).await?;
    let t = Instant::now();
    let two = placement::place(host, m, backend, sessions, (1, Strategy::Layer), &()).await?.0;
    let load_two = t.elapsed().as_secs_f64() * 1e3;
    let two_tabs_tok_s = aggregate(&[&one, &two], prompt, streams).await?;
    let measured =
        Measured { backend: one.backend(), decode_tok_s, hop_share, batch_tok_s, batch: streams, two_tabs_tok_s };
    Ok(WholeCopies { one, two, load_ms: (load_one, load_two), ids, measured })
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
    let s = placement::pipeline(host, m, args.backend, 3, 1, args.kills as u32, &()).await?;
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
    let empty = if args.backend == Backend::Cpu {
        0
    } else {
        let tab = placement::launch_for(host, args.backend).await?;
        settled(|| pids(host, tab.id())).await.anon
    };
    let mut rows = Vec::new();
    let w = whole_copies(host, &m, args.backend, &prompt, args.decode, args.streams).await?;
    let (profile, machine) = w.measured.inputs(0);
    let (hop_ms, parallel) = (machine.hop_ms, machine.parallel);
    let Measured { decode_tok_s, hop_share, batch_tok_s: one_agg, two_tabs_tok_s: two_agg, .. } = w.measured;
    // The whole-model rows: the planner's inputs, so nothing is predicted for them.
    let whole = |plan: &str, tabs, load_ms, aggregate_tok_s, tab_mib_above_empty| Row {
        plan: plan.into(),
        stages: 1,
        tabs,
        load_ms,
        decode_tok_s,
        aggregate_tok_s,
        hop_share,
        tab_mib_above_empty,
        same_tokens: true,
        predicted_tok_s: None,
        predicted_aggregate_tok_s: None,
    };
    rows.push(whole("1 tab", 1, w.load_ms.0, one_agg, tab_memory(host, &w.one, empty).await));
    let base_ids = w.ids;
    let costs = m.part_costs()?;
    let tabs = vec![profile; 3];
    rows.push(whole("replicas ×2", 2, w.load_ms.1, two_agg, tab_memory(host, &w.two, empty).await));
    drop(w.one);
    drop(w.two);
    let hybrid = sharding::plan(Strategy::Hybrid, &costs, &tabs[..2], &machine, 2, args.streams)?;
    for (strategy, shards) in PLANS {
        let plan = sharding::plan(strategy, &costs, &tabs, &machine, shards, args.streams)?;
        let name = format!("{} ×{shards}", strategy.name());
        let stages: Vec<_> = plan.stages.iter().map(|s| (s.tab, s.parts.clone())).collect();
        let micro = plan.micro_batches;
        eprintln!("bench shard: {name}…");
        let t = Instant::now();
        let s = placement::pipeline_of(host, &m, args.backend, &stages, micro, sessions, 0, &())
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
            aggregate_tok_s: aggregate(&[&s], &prompt, args.streams).await?,
            hop_share,
            tab_mib_above_empty: tab_memory(host, &s, empty).await,
            same_tokens: ids == base_ids,
            predicted_tok_s: Some(plan.predicted.stream_tok_s),
            predicted_aggregate_tok_s: Some(plan.predicted.aggregate_tok_s),
        });
    }
    let (waits, recovered_ids) = if args.kills > 0 && args.backend != Backend::Cpu {
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
                   "recovery_tokens_compared": n, "recovery_same_tokens": recovered_same,
                   "planner_inputs": {"hop_ms": hop_ms, "parallel": parallel}, "hybrid": hybrid})
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
    println!(
        "planner (from the rows above: 1 tab {decode_tok_s:.1} / {one_agg:.1} tok/s, a hop {hop_ms:.2} ms, two tabs at once {parallel:.2}× one):"
    );
    for r in rows.iter().filter(|r| r.predicted_tok_s.is_some()) {
        let (p, pa) = (r.predicted_tok_s.unwrap_or(f64::NAN), r.predicted_aggregate_tok_s.unwrap_or(f64::NAN));
        println!(
            "  {:<16} predicted {p:>6.1} / {pa:>6.1} tok/s, measured {:>6.1} / {:>6.1} (measured / predicted {:.2} / {:.2})",
            r.plan,
            r.decode_tok_s,
            r.aggregate_tok_s,
            r.decode_tok_s / p,
            r.aggregate_tok_s / pa
        );
    }
    println!("  {}", hybrid.notes.join("; "));
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
    fn percentiles_pick_ranks() {
        let v = [5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!((percentile(&v, 0.5), percentile(&v, 0.95)), (3.0, 5.0));
        assert!(percentile(&[], 0.5).is_nan());
    }
}
