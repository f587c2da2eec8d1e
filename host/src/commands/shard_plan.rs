//! `tabpool shard plan`: the sharding planner's plan for SmolLM2 on N tabs of a backend, and what
//! it predicts, without running the plan. The planner's inputs are measured first, on the
//! whole model: one tab's single-stream decode and its aggregate with `--streams` streams, a
//! hop's cost, and how much two tabs get done at once (a second tab beside it).

use serde_json::json;

use super::bench_shard::{chat_prompt, whole_copies};
use crate::Host;
use crate::models::smollm2::SmolLm2;
use crate::policy::backend_choice::Backend;
use crate::policy::sharding::{self, Measured, Plan, Strategy, describe};

pub struct Args {
    pub backend: Backend,
    pub tabs: usize,
    pub shards: usize,
    pub strategy: Strategy,
    pub streams: usize,
    pub json: bool,
}

fn mib(b: u64) -> f64 {
    b as f64 / (1u64 << 20) as f64
}

pub async fn run(host: &mut Host, args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.tabs >= 1 && args.shards >= 1, "--tabs and --shards must be at least 1");
    anyhow::ensure!(args.backend != Backend::Auto, "name the tabs' backend (wasm-cpu, webnn, webgpu, cpu)");
    let m = SmolLm2::load(None)?;
    let costs = m.part_costs()?;
    let prompt = chat_prompt(&m)?;
    let w = whole_copies(host, &m, args.backend, &prompt, 32, args.streams).await?;
    let (profile, machine) = w.measured.inputs(0);
    let (hop_ms, parallel) = (machine.hop_ms, machine.parallel);
    let Measured { decode_tok_s, batch_tok_s: one_agg, two_tabs_tok_s: two_agg, .. } = w.measured;
    let tabs = vec![profile.clone(); args.tabs];
    let chosen = sharding::plan(args.strategy, &costs, &tabs, &machine, args.shards, args.streams)?;
    let all: Vec<Plan> =
        [Strategy::Replicas, Strategy::Layer, Strategy::Pipeline, Strategy::Component, Strategy::AttentionFfn]
            .into_iter()
            .filter_map(|s| sharding::plan(s, &costs, &tabs, &machine, args.shards, args.streams).ok())
            .collect();
    if args.json {
        println!(
            "{}",
            json!({"model": m.name, "inputs": {"tab": profile, "machine": machine, "aggregate_two_tabs_tok_s": two_agg},
                   "plan": chosen, "alternatives": all})
        );
        return Ok(());
    }
    println!(
        "shard plan — {} on {} {} tab(s), {} shards, {} streams; measured now: one tab {:.1} tok/s alone, {:.1} with {} streams; a hop {:.2} ms; two tabs at once {:.2}× one",
        m.name,
        args.tabs,
        profile.backend,
        args.shards,
        args.streams,
        decode_tok_s,
        one_agg,
        args.streams,
        hop_ms,
        parallel
    );
    println!("strategy {} ({} micro-batches per step):", args.strategy.name(), chosen.micro_batches);
    println!("{:>5} | {:>3} | {:<40} | {:>10} | {:>12}", "stage", "tab", "parts", "weight MiB", "KV KiB/token");
    for (i, st) in chosen.stages.iter().enumerate() {
        println!(
            "{i:>5} | {:>3} | {:<40} | {:>10.1} | {:>12.2}",
            st.tab,
            describe(&st.parts),
            mib(st.weight_bytes),
            st.kv_bytes_per_token as f64 / 1024.0
        );
    }
    let p = &chosen.predicted;
    let per_tab: Vec<String> = p.per_tab_bytes.iter().map(|&b| format!("{:.0}", mib(b))).collect();
    println!(
        "predicted: one stream {:.1} tok/s, {} streams {:.1} tok/s, hops {:.0} % of a token, MiB per tab {}",
        p.stream_tok_s,
        chosen.streams,
        p.aggregate_tok_s,
        p.hop_share * 100.0,
        per_tab.join(" / ")
    );
    for n in &chosen.notes {
        println!("note: {n}");
    }
    println!("every strategy on these tabs:");
    for a in &all {
        println!(
            "  {:<14} stages {:>2}  one stream {:>6.1} tok/s  {} streams {:>6.1} tok/s  hops {:>3.0} %",
            a.strategy.name(),
            a.stages.len(),
            a.predicted.stream_tok_s,
            a.streams,
            a.predicted.aggregate_tok_s,
            a.predicted.hop_share * 100.0
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::sharding::Part;

    #[test]
    fn parts_are_described_as_ranges() {
        let whole = Part::whole_model(30);
        assert_eq!(describe(&whole[..31]), "embed + layers 0–14");
        assert_eq!(describe(&whole[31..]), "layers 15–29 + head");
        assert_eq!(describe(&[Part::Attention(3)]), "attn 3");
        assert_eq!(describe(&[Part::Ffn(29), Part::Head]), "ffn 29 + head");
        assert_eq!(describe(&[Part::Attention(2), Part::Ffn(2)]), "layer 2");
    }
}
