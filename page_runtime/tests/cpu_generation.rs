//! Generation on the CPU executor through the tab's session bookkeeping: a tiny random
//! llama-like graph (2 layers, Q4_1 projections, tied Q8_0 embedding) whose KV cache persists
//! across steps. References are the same model recomputing from scratch, so what is checked is
//! the cache: prefill then decode equals recomputation, batching sessions changes nothing, and a
//! reused row range carries nothing over.
#![cfg(not(target_arch = "wasm32"))]

#[path = "common/llama.rs"]
mod llama;

use page_runtime::executors::cpu::CpuModel;
use page_runtime::sessions::Sessions;
use shared_proto::{Sampling, StepRow, Tensor};

const TINY: llama::Config = llama::Config {
    layers: 2,
    hidden: 64,
    heads: 4,
    kv_heads: 2,
    ffn: 128,
    vocab: 96,
    max_tokens: 64,
    max_sessions: 4,
};

/// |got − want| ≤ 1e-4 (absolute; logits here are O(1..10)).
const ATOL: f32 = 1e-4;

struct Gen {
    model: CpuModel,
    sessions: Sessions,
}

impl Gen {
    fn new() -> Gen {
        let (graph, weights) = llama::build(&TINY, 42, true);
        Gen { model: CpuModel::new(graph, weights).unwrap(), sessions: Sessions::new(TINY.kv()) }
    }

    /// One step; per row: (sampled token, logits of its last token), and the kv_start input.
    fn step(&mut self, rows: &[(u64, &[u32])]) -> (Vec<(u32, Vec<f32>)>, Vec<i32>) {
        let rows: Vec<StepRow> =
            rows.iter().map(|(s, t)| StepRow { session: *s, tokens: t.to_vec(), sampling: Sampling::Greedy }).collect();
        let plan = self.sessions.plan(&rows, TINY.vocab).unwrap();
        let out = self.model.run(&plan.inputs).unwrap();
        self.sessions.commit(&plan);
        let tokens = i32s(&out[0]);
        let v = TINY.vocab as usize;
        let logits = out[1].to_f32().unwrap();
        assert_eq!(logits.len(), rows.len() * v);
        let per_row = tokens.iter().zip(logits.chunks_exact(v)).map(|(&t, l)| (t as u32, l.to_vec())).collect();
        (per_row, i32s(&plan.inputs[2]))
    }

    /// Logits after `tokens` in a session opened and closed just for this.
    fn recompute(&mut self, id: u64, tokens: &[u32]) -> Vec<f32> {
        self.sessions.open(id, tokens.len() as u32).unwrap();
        let (r, _) = self.step(&[(id, tokens)]);
        assert!(self.sessions.close(id));
        r[0].1.clone()
    }
}

fn i32s(t: &Tensor) -> Vec<i32> {
    t.data.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap())).collect()
}

fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len());
    let worst = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(worst <= ATOL, "{what}: max |Δ| = {worst}");
}

/// Greedy tokens are the argmax of the logits the same run returned (first among equals).
fn assert_greedy(token: u32, logits: &[f32]) {
    let best = logits.iter().enumerate().fold(0, |b, (i, &x)| if x > logits[b] { i } else { b });
    assert_eq!(token as usize, best);
}

#[test]
fn prefill_then_decode_equals_recomputing_each_prefix() {
    let mut g = Gen::new();
    g.sessions.open(1, 16).unwrap();
    let mut seq: Vec<u32> = vec![5, 17, 3, 88, 41];
    let (r, _) = g.step(&[(1, &seq)]);
    let (mut next, mut logits) = r[0].clone();
    let spread = logits.iter().fold(f32::MIN, |a, &b| a.max(b)) - logits.iter().fold(f32::MAX, |a, &b| a.min(b));
    assert!(spread > 1.0, "random weights give informative logits (spread {spread})");
    for step in 0..6 {
        assert_greedy(next, &logits);
        let want = g.recompute(100 + step, &seq);
        assert_close(&logits, &want, &format!("after {} tokens", seq.len()));
        seq.push(next);
        let (r, _) = g.step(&[(1, &[next])]);
        (next, logits) = r[0].clone();
    }
    assert_eq!(g.sessions.length(1), Some(11));
    // The history matters: without it the same token gives other logits.
    let alone = g.recompute(200, &[next]);
    let diff = logits.iter().zip(&alone).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(diff > 0.1, "the context changed the logits by only {diff}");
}

#[test]
fn sessions_batched_in_one_step_equal_each_alone() {
    let (a, b): (&[u32], &[u32]) = (&[1, 2, 3], &[70, 60, 50, 40]);
    let mut together = Gen::new();
    together.sessions.open(1, 8).unwrap();
    together.sessions.open(2, 8).unwrap();
    // Each alone in its own model, so session 2 sits at other cache rows than when batched.
    let (mut alone_a, mut alone_b) = (Gen::new(), Gen::new());
    alone_a.sessions.open(1, 8).unwrap();
    alone_b.sessions.open(2, 8).unwrap();
    // Prefill both in one step, then decode both in one step, three times.
    let (mut rt, starts) = together.step(&[(1, a), (2, b)]);
    assert_eq!((starts[0], starts[a.len()]), (0, 8));
    let mut ra = alone_a.step(&[(1, a)]).0.remove(0);
    let (rb0, starts) = alone_b.step(&[(2, b)]);
    assert_eq!(starts[0], 0);
    let mut rb = rb0[0].clone();
    for round in 0..3 {
        assert_close(&rt[0].1, &ra.1, &format!("session 1, round {round}"));
        assert_close(&rt[1].1, &rb.1, &format!("session 2, round {round}"));
        assert_eq!((rt[0].0, rt[1].0), (ra.0, rb.0), "round {round}");
        let (ta, tb) = (rt[0].0, rt[1].0);
        // Sessions in the other order: rows of a step need not follow the cache layout.
        rt = together.step(&[(2, &[tb]), (1, &[ta])]).0;
        rt.swap(0, 1);
        ra = alone_a.step(&[(1, &[ta])]).0.remove(0);
        rb = alone_b.step(&[(2, &[tb])]).0.remove(0);
    }
}

#[test]
fn a_closed_sessions_rows_do_not_leak_into_the_next() {
    let mut g = Gen::new();
    g.sessions.open(1, 12).unwrap();
    let (_, start1) = g.step(&[(1, &[9, 9, 9, 9, 9, 9, 9, 9, 9, 9])]);
    assert!(g.sessions.close(1));
    g.sessions.open(2, 12).unwrap();
    let prompt: &[u32] = &[4, 8, 15];
    let (r, start2) = g.step(&[(2, prompt)]);
    assert_eq!(start1[0], start2[0], "first fit hands session 2 the rows session 1 left");
    let mut fresh = Gen::new();
    assert_close(&r[0].1, &fresh.recompute(7, prompt), "reused rows, prefill");
    // A decode step reads only rows session 2 wrote, not session 1's stale row 3 onward.
    let next = r[0].0;
    let r = g.step(&[(2, &[next])]).0.remove(0);
    let mut seq = prompt.to_vec();
    seq.push(next);
    assert_close(&r.1, &fresh.recompute(8, &seq), "reused rows, decode");
}
