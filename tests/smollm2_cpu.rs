//! The real SmolLM2-135M-Instruct generating greedily on the CPU executor through the tab's
//! session bookkeeping, against the independent float64 reference
//! (`tests/data/smollm2_greedy.json`): the generated ids must equal `greedy_ids` exactly.

use crate::support;

use page_runtime::executors::cpu::CpuModel;
use page_runtime::sessions::Sessions;
use shared_proto::{Sampling, StepRow};
use tabpool::models::smollm2::{KvLimits, Outputs, SmolLm2};

/// The reference stops at token 2 or after 24 tokens.
const MAX_NEW: usize = 24;

fn tokens(t: &shared_proto::Tensor) -> Vec<u32> {
    t.data.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap()) as u32).collect()
}

/// Both prompts prefilled in one step, then decoded together (continuous batching) until each
/// hits the reference's stop rule; returns each session's generated ids.
fn generate_batched(m: &SmolLm2, cpu: &CpuModel, sessions: &mut Sessions, cases: &[support::GenCase]) -> Vec<Vec<u32>> {
    for (i, c) in cases.iter().enumerate() {
        sessions.open(i as u64, (c.prompt_ids.len() + MAX_NEW) as u32).unwrap();
    }
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); cases.len()];
    let mut feed: Vec<Vec<u32>> = cases.iter().map(|c| c.prompt_ids.clone()).collect();
    loop {
        let active: Vec<usize> = (0..cases.len())
            .filter(|&i| out[i].len() < MAX_NEW && !out[i].last().is_some_and(|t| m.eos_ids.contains(t)))
            .collect();
        if active.is_empty() {
            break;
        }
        let rows: Vec<StepRow> = active
            .iter()
            .map(|&i| StepRow { session: i as u64, tokens: feed[i].clone(), sampling: Sampling::Greedy })
            .collect();
        let plan = sessions.plan(&rows, m.config.vocab).unwrap();
        let next = tokens(&cpu.run(&plan.inputs).unwrap()[0]);
        sessions.commit(&plan);
        for (&i, &t) in active.iter().zip(&next) {
            out[i].push(t);
            feed[i] = vec![t];
        }
    }
    for i in 0..cases.len() {
        assert!(sessions.close(i as u64));
    }
    out
}

#[test]
fn greedy_generation_equals_the_reference() {
    let m = SmolLm2::load(None).unwrap_or_else(|e| panic!("{e:#}"));
    let cases = support::smollm2_reference();
    let limits = KvLimits { max_tokens: 256, max_sessions: 4 };
    let (graph, weights) = m.graph(limits, Outputs::default()).unwrap();
    let kv = graph.kv.unwrap();
    let cpu = CpuModel::new(graph, weights).unwrap();
    let mut sessions = Sessions::new(kv);

    // Each case alone, then both in one batch: the same ids either way.
    for (i, c) in cases.iter().enumerate() {
        let started = std::time::Instant::now();
        let got = generate_batched(&m, &cpu, &mut sessions, std::slice::from_ref(c)).remove(0);
        let secs = started.elapsed().as_secs_f64();
        eprintln!(
            "case {i}: {} prompt + {} generated tokens in {secs:.2} s: {:?}",
            c.prompt_ids.len(),
            got.len(),
            m.decode(&got).unwrap()
        );
        assert_eq!(got, c.greedy_ids, "case {i} alone");
        assert_eq!(m.decode(&got).unwrap(), c.text);
    }
    let started = std::time::Instant::now();
    let got = generate_batched(&m, &cpu, &mut sessions, &cases);
    eprintln!("both cases batched: {:.2} s", started.elapsed().as_secs_f64());
    for (i, c) in cases.iter().enumerate() {
        assert_eq!(got[i], c.greedy_ids, "case {i} batched with the other");
    }
}
