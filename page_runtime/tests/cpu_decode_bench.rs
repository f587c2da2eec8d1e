//! Timings of the CPU executor at SmolLM2-135M's shapes (30 layers, hidden 576, 9/3 heads of 64,
//! FFN 1536, vocab 49152, Q4_1 projections, tied Q8_0 LM head) with random weights, on 1 and 2
//! threads. Not a pass/fail test; run it optimised:
//!
//! `cargo test --release -p page_runtime --test cpu_decode_bench -- --ignored --nocapture`
#![cfg(not(target_arch = "wasm32"))]

#[path = "common/llama.rs"]
mod llama;

use std::time::Instant;

use page_runtime::executors::cpu::{self, CpuModel, quantized};
use page_runtime::sessions::Sessions;
use shared_proto::{Sampling, StepRow};

const SMOLLM2: llama::Config = llama::Config {
    layers: 30,
    hidden: 576,
    heads: 9,
    kv_heads: 3,
    ffn: 1536,
    vocab: 49152,
    max_tokens: 2048,
    max_sessions: 4,
};

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// CPU time of all this process's threads (ms): on a machine shared with other work, wall time
/// alone says little about the kernels.
fn cpu_ms() -> f64 {
    let mut ns = 0u64;
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        if let Ok(s) = std::fs::read_to_string(task.path().join("schedstat")) {
            ns += s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    ns as f64 / 1e6
}

#[test]
#[ignore = "a benchmark: run with --release -- --ignored --nocapture"]
fn decode_step_at_smollm2_shapes() {
    let t = Instant::now();
    let (graph, weights) = llama::build(&SMOLLM2, 7, false);
    eprintln!("built random SmolLM2-shaped weights in {:.0} ms", ms(t));
    let (prompt, steps) = (64usize, 32usize);
    for threads in [1, 2] {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let model = CpuModel::new(graph.clone(), weights.clone()).unwrap();
            let mut sessions = Sessions::new(SMOLLM2.kv());
            sessions.open(1, (prompt + steps) as u32).unwrap();
            let row = |tokens: Vec<u32>| [StepRow { session: 1, tokens, sampling: Sampling::Greedy }];
            let tokens: Vec<u32> = (0..prompt as u32).map(|i| i * 761 % SMOLLM2.vocab).collect();
            let plan = sessions.plan(&row(tokens), SMOLLM2.vocab).unwrap();
            let t = Instant::now();
            let out = model.run(&plan.inputs).unwrap();
            let prefill = ms(t);
            sessions.commit(&plan);
            let mut next = i32::from_le_bytes(out[0].data[..4].try_into().unwrap()) as u32;
            let mut times = vec![];
            let cpu0 = cpu_ms();
            for _ in 0..steps {
                let plan = sessions.plan(&row(vec![next]), SMOLLM2.vocab).unwrap();
                let t = Instant::now();
                let out = model.run(&plan.inputs).unwrap();
                times.push(ms(t));
                sessions.commit(&plan);
                next = i32::from_le_bytes(out[0].data[..4].try_into().unwrap()) as u32;
            }
            let cpu_per_step = (cpu_ms() - cpu0) / steps as f64;
            times.sort_by(f64::total_cmp);
            let mean = times.iter().sum::<f64>() / steps as f64;
            eprintln!(
                "{threads} thread(s): prefill {prompt} tokens {prefill:.0} ms ({:.0} tok/s); decode step (context {prompt}..{}) median {:.1} ms, mean {mean:.1} ms ({:.1} tok/s), CPU time {cpu_per_step:.1} ms/step",
                prompt as f64 / prefill * 1e3,
                prompt + steps,
                times[steps / 2],
                1e3 / mean,
            );
            kernels(&weights);
        });
    }
}

/// Where a decode step's time goes: the quantized matvecs of all layers, the LM head, sampling.
fn kernels(weights: &[shared_proto::Tensor]) {
    let c = SMOLLM2;
    let reps = 10;
    // Activations of unit scale, so the LM head's logits spread as a model's do (sampling's cost
    // depends on how peaked they are).
    let act = |n: usize| (0..n).map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 0.2).collect::<Vec<f32>>();
    let (x576, x1536) = (act(c.hidden as usize), act(c.ffn as usize));
    let (t, c0) = (Instant::now(), cpu_ms());
    for _ in 0..reps {
        // Weights 1..=270: nine per layer (norm, q, k, v, o, norm, gate, up, down).
        for w in weights[1..1 + 9 * c.layers as usize].iter().filter(|w| w.shape.len() == 2) {
            let (n, k) = (w.shape[0] as usize, w.shape[1] as usize);
            let x = if k == 576 { &x576 } else { &x1536 };
            std::hint::black_box(quantized::linear(x, &w.data, w.dtype, None, 1, k, n));
        }
    }
    let (layers, layers_cpu) = (ms(t) / reps as f64, (cpu_ms() - c0) / reps as f64);
    // The memory floor: only reading the same bytes (xor of 8-byte words, which vectorises).
    let (t, c0) = (Instant::now(), cpu_ms());
    for _ in 0..reps {
        let mut acc = [0u64; 4];
        for w in weights[1..1 + 9 * c.layers as usize].iter().filter(|w| w.shape.len() == 2) {
            for chunk in w.data.chunks_exact(32) {
                for (a, word) in acc.iter_mut().zip(chunk.chunks_exact(8)) {
                    *a ^= u64::from_le_bytes(word.try_into().unwrap());
                }
            }
        }
        std::hint::black_box(acc);
    }
    let (read, read_cpu) = (ms(t) / reps as f64, (cpu_ms() - c0) / reps as f64);
    let embd = &weights[0];
    let (t, c0) = (Instant::now(), cpu_ms());
    let mut logits = vec![];
    for _ in 0..reps {
        logits = quantized::linear(&x576, &embd.data, embd.dtype, None, 1, 576, c.vocab as usize);
    }
    let (head, head_cpu) = (ms(t) / reps as f64, (cpu_ms() - c0) / reps as f64);
    let t = Instant::now();
    for _ in 0..reps {
        std::hint::black_box(cpu::sample(&logits, &[0.8, 40.0, 0.95, 0.5], c.vocab as usize));
    }
    let topk = ms(t) / reps as f64;
    let t = Instant::now();
    for _ in 0..reps {
        std::hint::black_box(cpu::sample(&logits, &[0.8, 0.0, 0.95, 0.5], c.vocab as usize));
    }
    let topp = ms(t) / reps as f64;
    eprintln!("   reading those layers' Q4_1 bytes alone: {read:.1} ms (CPU {read_cpu:.1})");
    eprintln!(
        "   kernels (M = 1): 30 layers' 210 Q4_1 matvecs {layers:.1} ms (CPU {layers_cpu:.1}), Q8_0 LM head {head:.1} ms (CPU {head_cpu:.1}), sample top-k 40 {topk:.2} ms, top-p only {topp:.2} ms"
    );
}
