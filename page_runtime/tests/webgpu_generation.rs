//! A tiny llama-shaped stateful graph (tests/common/llama.rs) driven through `Sessions` steps on
//! WebGPU (KV cache on the device) and on the CPU executor: prefill of two sessions in one step,
//! then decode steps with both sessions batched and with one alone; logits compared per step with
//! |gpu − cpu| ≤ atol + rtol·|cpu|, sampled tokens (one session greedy, one top-k/top-p) exactly. Runs in headless Chromium (`cargo test-wasm`).
#![cfg(target_arch = "wasm32")]

#[path = "common/llama.rs"]
mod llama;
#[path = "common/op_cases.rs"]
mod op_cases;

use page_runtime::executors::cpu::CpuModel;
use page_runtime::sessions::Sessions;
use page_runtime::webgpu::{self, WebGpuExecutor};
use shared_proto::{Sampling, StepRow};

/// 2 layers, hidden 64, 4 query / 2 kv heads of 16.
fn tiny(layers: u32, max_tokens: u32) -> llama::Config {
    llama::Config { layers, hidden: 64, heads: 4, kv_heads: 2, ffn: 128, vocab: 96, max_tokens, max_sessions: 4 }
}
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

/// The device, and the CPU executor's f32 kernels as the reference (WebGPU's are f32): not a
/// tab's default 16-bit integer activations, whose rounding `quantized_simd128` tests against f64.
async fn executor() -> WebGpuExecutor {
    use page_runtime::executors::cpu::quantized_int::{Activations, set_activations};
    set_activations(Activations::F32);
    match webgpu::init().await {
        Ok(gpu) => WebGpuExecutor::new(gpu),
        Err(caps) => panic!("no WebGPU device: {:?}", caps.error),
    }
}

const ATOL: f32 = 5e-5;
const RTOL: f32 = 1e-5;

#[wasm_bindgen_test]
async fn sessions_on_webgpu_match_the_cpu_executor() {
    let (graph, weights) = llama::build(&tiny(2, 40), 11, true);
    let kv = graph.kv.expect("stateful");
    let cpu = CpuModel::new(graph.clone(), weights.clone()).unwrap();
    let ex = executor().await;
    let gpu = ex.load_model(graph, &weights).await.unwrap();
    let mut sessions = Sessions::new(kv);
    sessions.open(1, 16).unwrap();
    sessions.open(2, 16).unwrap();
    let sampling = |session| match session {
        1 => Sampling::Greedy,
        _ => Sampling::TopKP { temperature: 0.9, top_k: 20, top_p: 0.9, seed: 7 },
    };
    let row = |session, tokens: Vec<u32>| StepRow { session, tokens, sampling: sampling(session) };
    // Prefill (5 and 3 tokens) in one step, then decodes: both, session 2 alone, both again.
    let mut steps: Vec<Vec<StepRow>> = vec![vec![row(1, vec![3, 17, 42, 8, 90]), row(2, vec![5, 5, 61])]];
    let mut next = [0u32; 2];
    let mut max_err = 0f32;
    for step in 0..5 {
        let rows = match step {
            0 => steps.remove(0),
            2 => vec![row(2, vec![next[1]])],
            _ => vec![row(1, vec![next[0]]), row(2, vec![next[1]])],
        };
        let plan = sessions.plan(&rows, 96).unwrap();
        let want = cpu.run(&plan.inputs).unwrap();
        let got = gpu.run(&ex, &plan.inputs).await.unwrap_or_else(|e| panic!("step {step}: {e}"));
        // Outputs: tokens, logits.
        let (w, g) = (want[1].to_f32().unwrap(), got.outputs[1].to_f32().unwrap());
        assert_eq!(got.outputs[1].shape, want[1].shape, "step {step}");
        for (i, (a, b)) in g.iter().zip(&w).enumerate() {
            let err = (a - b).abs();
            assert!(err <= ATOL + RTOL * b.abs(), "step {step}, logit {i}: gpu {a} cpu {b}");
            max_err = max_err.max(err);
        }
        let toks = op_cases::ints(&want[0]);
        assert_eq!(op_cases::ints(&got.outputs[0]), toks, "step {step}: sampled tokens");
        for (r, t) in rows.iter().zip(toks) {
            next[(r.session - 1) as usize] = t as u32;
        }
        sessions.commit(&plan);
    }
    assert_eq!((sessions.length(1), sessions.length(2)), (Some(8), Some(7)));
    web_sys::console::log_1(&format!("tiny llama sessions: max |gpu − cpu| logit error {max_err:e}").into());
}

#[wasm_bindgen_test]
async fn a_cache_larger_than_one_binding_is_refused_at_load() {
    let ex = executor().await;
    let limit = ex.caps().limits.iter().find(|(n, _)| n == "maxStorageBufferBindingSize").expect("probed").1;
    // Rows of kv_heads · head_dim = 32 f32 = 128 bytes: one row past the limit.
    let tokens = (limit / 128 + 1) as u32;
    let (graph, _) = llama::build(&tiny(1, tokens), 11, false);
    let e = page_runtime::webgpu::GpuModel::new(&ex, graph).err().expect("cache too large for one binding");
    assert_eq!(e.kind, shared_proto::ErrorKind::Capacity, "{e}");
    assert!(e.message.contains("tokens"), "{e}");
}

/// Device time of the quantized matvec at SmolLM2's decode shapes (printed; each result is also
/// checked against the CPU executor so the timed kernel is the right one). Median of 15 runs of
/// a one-node graph (submit → result mapped: fixed costs included), and the kernel alone: the
/// median of a graph of 9 such nodes minus the one-node median, over 8.
#[wasm_bindgen_test]
async fn quantized_matvec_decode_timings() {
    use shared_proto::DType::{Q4_1, Q8_0};
    let ex = executor().await;
    for (dtype, k, n) in
        [(Q4_1, 576, 1536), (Q4_1, 1536, 576), (Q8_0, 576, 1536), (Q8_0, 1536, 576), (Q8_0, 576, 49152)]
    {
        let case = op_cases::Case::new(
            "matvec",
            shared_proto::Op::Linear { bias: false },
            vec![op_cases::f32s(&[1, k], 60, 1.0), op_cases::quantized(dtype, &[n, k], 61, 0.1)],
            2e-4,
            1e-4,
        );
        let (g, weights, inputs) = op_cases::split(&case);
        let want = CpuModel::new(g.clone(), weights.clone()).unwrap().run(&inputs).unwrap();
        let m = ex.load_model(g, &weights).await.unwrap();
        let mut times = Vec::new();
        for _ in 0..15 {
            let got = m.run(&ex, &inputs).await.unwrap();
            op_cases::check(&case, &got.outputs[0], &want[0]).unwrap();
            times.push(got.device_ms);
        }
        times.sort_by(f64::total_cmp);
        // Nine linears of the same x and w, in one submission; the output is the last.
        let (mut g9, _, _) = op_cases::split(&case);
        g9.nodes = vec![g9.nodes[0].clone(); 9];
        g9.outputs = vec![g9.node_value(8)];
        let m9 = ex.load_model(g9, &weights).await.unwrap();
        let mut times9 = Vec::new();
        for _ in 0..15 {
            let got = m9.run(&ex, &inputs).await.unwrap();
            op_cases::check(&case, &got.outputs[0], &want[0]).unwrap();
            times9.push(got.device_ms);
        }
        times9.sort_by(f64::total_cmp);
        web_sys::console::log_1(
            &format!(
                "matvec {dtype:?} K={k} N={n}: one-node graph median {:.3} ms (min {:.3}); kernel alone ≈ {:.3} ms",
                times[7],
                times[0],
                (times9[7] - times[7]) / 8.0
            )
            .into(),
        );
    }
}

/// Device time of Sample and Argmax over SmolLM2's vocabulary for one row (printed; ids checked
/// against the CPU executor).
#[wasm_bindgen_test]
async fn sampling_timings() {
    let ex = executor().await;
    let logits = op_cases::sample_logits();
    let v = logits.shape[1] as usize;
    let one_row = shared_proto::Tensor::from_f32(vec![1, v as u32], &logits.to_f32().unwrap()[3 * v..4 * v]);
    for (name, op, params) in [
        ("argmax", shared_proto::Op::Argmax, None),
        ("sample top-k 50 top-p 0.8", shared_proto::Op::Sample, Some(op_cases::SAMPLE_PARAMS[3])),
        ("sample top-p 0.9 (all tokens)", shared_proto::Op::Sample, Some(op_cases::SAMPLE_PARAMS[2])),
    ] {
        let mut args = vec![one_row.clone()];
        args.extend(params.map(|p| shared_proto::Tensor::from_f32(vec![1, 4], &p)));
        let case = op_cases::Case::new(name, op, args, 0.0, 0.0);
        let (g, weights, inputs) = op_cases::split(&case);
        let want = CpuModel::new(g.clone(), weights.clone()).unwrap().run(&inputs).unwrap();
        let m = ex.load_model(g, &weights).await.unwrap();
        let mut times = Vec::new();
        for _ in 0..9 {
            let got = m.run(&ex, &inputs).await.unwrap();
            op_cases::check(&case, &got.outputs[0], &want[0]).unwrap();
            times.push(got.device_ms);
        }
        times.sort_by(f64::total_cmp);
        web_sys::console::log_1(&format!("{name} V={v}: median {:.3} ms, min {:.3} ms", times[4], times[0]).into());
    }
}

/// `Op::CrossAttention`'s row: query rows of two sessions, each over the memory `PutMemory`
/// wrote for it (layer 1 of 2, 3 heads of 8, 5 memory rows at cache rows 0 and 16), on WebGPU
/// against the CPU executor given the same memories, |gpu − cpu| ≤ ATOL + RTOL·|cpu|.
#[wasm_bindgen_test]
async fn cross_attention_over_put_memories_matches_the_cpu_executor() {
    use shared_proto::{DType, Dim, Graph, InputDecl, KvDecl, Node, Op, STEP_INPUTS, Tensor, WeightDecl, content_hash};
    let (heads, d, rows, vocab) = (3u32, 8u32, 5u32, 7u32);
    let w = heads * d;
    let inputs = STEP_INPUTS
        .iter()
        .map(|&(name, dtype)| InputDecl {
            name: name.into(),
            dtype,
            dims: match name {
                "sampling" => vec![Dim::Batch, Dim::Fixed(4)],
                "rows" => vec![Dim::Batch],
                _ => vec![Dim::Seq],
            },
        })
        .collect();
    // Each id's query row from a table (value 5), attending over its session's memory.
    let table = op_cases::f32s(&[vocab, w], 51, 1.0);
    let weights = vec![WeightDecl {
        name: "q".into(),
        dtype: DType::F32,
        shape: vec![vocab, w],
        hash: content_hash(&table.data),
    }];
    let nodes = vec![
        Node { op: Op::Gather, args: vec![5, 0] },
        Node { op: Op::CrossAttention { layer: 1, heads, rows }, args: vec![6, 2] },
    ];
    let kv = KvDecl { layers: 2, kv_heads: heads, head_dim: d, max_tokens: 32, max_sessions: 2 };
    let graph = Graph { inputs, weights, nodes, outputs: vec![7], kv: Some(kv) };
    graph.validate().expect("a valid graph");
    let cpu = CpuModel::new(graph.clone(), vec![table.clone()]).unwrap();
    let ex = executor().await;
    let gpu = ex.load_model(graph, &[table]).await.unwrap();
    for (start, seed) in [(0usize, 52u32), (16, 53)] {
        let memory = op_cases::f32s(&[2, 2, rows, w], seed, 1.0);
        cpu.put_memory(0, start, &memory).unwrap();
        gpu.put_memory(&ex, 0, start, &memory).unwrap();
    }
    // Four rows: ids 3, 1 of the session at 0; ids 6, 3 of the one at 16.
    let step = vec![
        op_cases::i32s(&[4], &[3, 1, 6, 3]),
        op_cases::i32s(&[4], &[0, 1, 0, 1]),
        op_cases::i32s(&[4], &[0, 0, 16, 16]),
        op_cases::i32s(&[2], &[1, 3]),
        Tensor::from_f32(vec![2, 4], &[0.0; 8]),
    ];
    let want = cpu.run(&step).unwrap();
    let got = gpu.run(&ex, &step).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(got.outputs[0].shape, want[0].shape);
    let (g, c) = (got.outputs[0].to_f32().unwrap(), want[0].to_f32().unwrap());
    let mut max_err = 0f32;
    for (i, (a, b)) in g.iter().zip(&c).enumerate() {
        let err = (a - b).abs();
        assert!(err <= ATOL + RTOL * b.abs(), "value {i}: gpu {a} cpu {b}");
        max_err = max_err.max(err);
    }
    // The two sessions' rows of id 3 read different memories: the rows were really kept apart.
    let w = w as usize;
    assert!(c[..w].iter().zip(&c[3 * w..]).any(|(a, b)| (a - b).abs() > 1e-3), "sessions not told apart");
    web_sys::console::log_1(&format!("cross attention: max |gpu − cpu| {max_err:e}").into());
}
