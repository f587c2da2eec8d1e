//! Every graph op on WebNN in a real chromium-webnn tab (npm @sparticuz/chromium 153, LiteRT /
//! XNNPACK on the CPU) against the CPU executor: the same table as the WebGPU op tests (block-dtype
//! arguments as weights, which WebNN holds dequantized to f32). Rope, CachedAttention and Sample
//! take their angles, cache rows and draws from a step's extra inputs, so WebNN lowers them only
//! inside a stateful step graph (`tests/smollm2_tab.rs` checks those against the reference);
//! standalone they must be refused as Unsupported, saying so. CrossAttention reads the memories
//! `PutMemory` wrote: its row is a step graph of its own here, against the CPU executor.

use crate::support;

#[path = "../page_runtime/tests/common/op_cases.rs"]
mod op_cases;

use page_runtime::executors::cpu::CpuModel;
use shared_proto::{ExecBackend, Op};
use tabpool::browser::BrowserKind;
use tabpool::exec::TabModel;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_op_matches_the_cpu_executor_on_webnn() {
    let _procs = support::process_guard();
    let mut host = support::host().await;
    let tab = host.launch(BrowserKind::ChromiumWebnn).await.unwrap_or_else(|e| panic!("{e:#}"));
    assert!(tab.caps().webnn.api_present, "navigator.ml present: {:?}", tab.caps().webnn);
    let (mut failures, mut compared, mut refused) = (Vec::new(), 0, 0);
    for (i, case) in op_cases::cases().into_iter().chain(op_cases::generation_cases()).enumerate() {
        let (g, weights, inputs) = op_cases::split(&case);
        let want = CpuModel::new(g.clone(), weights.clone()).unwrap().run(&inputs).unwrap();
        let backend = ExecBackend::WebNn { device: "cpu".into() };
        let step_only = matches!(case.op, Op::Rope { .. } | Op::CachedAttention { .. } | Op::Sample);
        let loaded = TabModel::load(&tab, &format!("op{i}"), &g, &weights, backend, &()).await;
        if step_only {
            let err = format!("{:#}", loaded.err().expect("refused at load (its warm-up run)"));
            if !(err.contains("Unsupported") && err.contains("stateful step graph")) {
                failures.push(format!("{}: want Unsupported (step graphs only), got {err}", case.name));
            }
            refused += 1;
            continue;
        }
        let tm = loaded.unwrap_or_else(|e| panic!("{}: {e:#}", case.name));
        match tm.run(inputs).await {
            Ok((got, _)) => {
                compared += 1;
                if let Err(e) = op_cases::check(&case, &got[0], &want[0]) {
                    failures.push(e);
                }
            }
            Err(e) => failures.push(format!("{}: {e:#}", case.name)),
        }
    }
    eprintln!("{compared} ops compared with the CPU executor, {refused} refused outside step graphs");
    assert!(failures.is_empty(), "WebNN op failures:\n{}", failures.join("\n"));
    host.shutdown().await;
}

/// Run time of an EfficientNet-Lite0-sized MBConv block (24 channels at 56×56, expand 6: 1×1
/// 24→144 + ReLU6, depthwise 3×3 + ReLU6, 1×1 144→24, residual, pool) on WebNN (channels-last
/// inside the graph), checked against the CPU executor; printed with the CPU's time in the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mbconv_block_timing_on_webnn() {
    let _procs = support::process_guard();
    let mut host = support::host().await;
    let tab = host.launch(BrowserKind::ChromiumWebnn).await.unwrap_or_else(|e| panic!("{e:#}"));
    let case = op_cases::mbconv("mbconv 24@56 x6", 24, 56, 6, 1e-4);
    let (g, weights, inputs) = op_cases::split(&case);
    let cpu = CpuModel::new(g.clone(), weights.clone()).unwrap();
    let t0 = std::time::Instant::now();
    let want = cpu.run(&inputs).unwrap();
    let cpu_ms = t0.elapsed().as_secs_f64() * 1e3;
    let backend = ExecBackend::WebNn { device: "cpu".into() };
    let tm = TabModel::load(&tab, "mbconv", &g, &weights, backend, &()).await.unwrap_or_else(|e| panic!("{e:#}"));
    let mut times = Vec::new();
    for _ in 0..7 {
        let (got, ms) = tm.run(inputs.clone()).await.unwrap_or_else(|e| panic!("{e:#}"));
        op_cases::check(&case, &got[0], &want[0]).unwrap();
        times.push(ms);
    }
    times.sort_by(f64::total_cmp);
    eprintln!("{}: WebNN median {:.2} ms (min {:.2}); host CPU executor {cpu_ms:.2} ms", case.name, times[3], times[0]);
    host.shutdown().await;
}

/// `CrossAttention` (with `CachedAttention` beside it, as in Whisper's decoder) in a WebNN step
/// graph against the host's CPU executor, through the same requests a transcription sends:
/// three sessions' memories (`PutMemory`), steps batching two sessions (so tokens gather
/// different memory slots), and a session opened where a closed one's rows were (its slot
/// reused, not read stale). Each step's pre-head hidden rows must agree within 1e-4 relative
/// + 1e-5 absolute, and the sampled ids exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_attention_steps_match_the_cpu_executor_on_webnn() {
    use model_graphs::builder::GraphBuilder;
    use shared_proto::{KvDecl, Sampling, StepRow, Tensor};
    use tabpool::exec::Stepper;

    let _procs = support::process_guard();
    let (heads, d, mem_rows, vocab) = (2u32, 8u32, 24u32, 32usize);
    let w = (heads * d) as usize;
    let noise = |n: usize, seed: u32| op_cases::values(n, seed, 1.0);
    let mut g = GraphBuilder::default();
    g.kv(KvDecl { layers: 2, kv_heads: heads, head_dim: d, max_tokens: 2 * mem_rows, max_sessions: 2 });
    let [ids, pos, kv_start, rows, sampling] = g.step_inputs();
    let emb = g.weight("emb", Tensor::from_f32(vec![vocab as u32, w as u32], &noise(vocab * w, 1)));
    let x = g.op(Op::Gather, &[emb, ids]);
    let a = g.op(Op::CachedAttention { layer: 0, heads, kv_heads: heads }, &[x, x, x, pos, kv_start]);
    let y = g.op(Op::Add, &[x, a]);
    let c = g.op(Op::CrossAttention { layer: 1, heads, rows: mem_rows }, &[y, kv_start]);
    let z = g.op(Op::Add, &[y, c]);
    let last = g.op(Op::Gather, &[z, rows]);
    let logits = g.linear(last, emb, None);
    let next = g.op(Op::Sample, &[logits, sampling]);
    let (graph, weights) = g.finish(&[next, last]);
    graph.validate().unwrap();

    let mut host = support::host().await;
    let tab = host.launch(BrowserKind::ChromiumWebnn).await.unwrap_or_else(|e| panic!("{e:#}"));
    let backend = ExecBackend::WebNn { device: "cpu".into() };
    let nn = Stepper::in_tab(&tab, "cross", &graph, &weights, backend, &()).await.unwrap_or_else(|e| panic!("{e:#}"));
    let cpu = Stepper::on_host(graph, weights).unwrap();
    let memory = |seed: u32| Tensor::from_f32(vec![1, 2, mem_rows, w as u32], &noise(2 * mem_rows as usize * w, seed));
    let row = |session, tokens: &[u32]| StepRow { session, tokens: tokens.to_vec(), sampling: Sampling::Greedy };
    // (sessions to close, sessions to open with their memory seeds, the step's rows)
    type Script = (Vec<u64>, Vec<(u64, u32)>, Vec<StepRow>);
    let script: Vec<Script> = vec![
        (vec![], vec![(1, 11), (2, 12)], vec![row(1, &[3, 7, 5]), row(2, &[9, 4])]),
        (vec![], vec![], vec![row(1, &[20]), row(2, &[31])]),
        (vec![], vec![], vec![row(2, &[2])]),
        // Session 3 takes session 1's rows (and on WebNN its memory slot) with a new memory.
        (vec![1], vec![(3, 13)], vec![row(3, &[6, 1]), row(2, &[17])]),
        (vec![], vec![], vec![row(2, &[8]), row(3, &[12])]),
    ];
    let mut worst = 0f32;
    for (k, (close, open, rows)) in script.into_iter().enumerate() {
        for s in close {
            nn.close(s).await.unwrap();
            cpu.close(s).await.unwrap();
        }
        for (s, seed) in open {
            for st in [&nn, &cpu] {
                st.open(s, mem_rows).await.unwrap();
                st.put_memory(s, 1, memory(seed)).await.unwrap_or_else(|e| panic!("PutMemory: {e:#}"));
            }
        }
        let (got_ids, got, _) = nn.step_with_outputs(rows.clone()).await.unwrap_or_else(|e| panic!("step {k}: {e:#}"));
        let (want_ids, want, _) = cpu.step_with_outputs(rows).await.unwrap();
        assert_eq!(got_ids, want_ids, "step {k}: sampled ids");
        let (got, want) = (got[0].to_f32().unwrap(), want[0].to_f32().unwrap());
        assert_eq!(got.len(), want.len(), "step {k}: hidden rows");
        for (i, (g, e)) in got.iter().zip(&want).enumerate() {
            let err = (g - e).abs();
            assert!(err <= 1e-5 + 1e-4 * e.abs(), "step {k}, value {i}: WebNN {g} vs CPU {e}");
            worst = worst.max(err);
        }
    }
    eprintln!("cross attention on WebNN: 5 steps over 3 sessions, max |webnn − cpu| {worst:e}");
    host.shutdown().await;
}
