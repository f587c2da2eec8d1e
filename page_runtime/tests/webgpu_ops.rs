//! Every graph op on WebGPU in a real headless Chromium tab against the CPU executor, one table
//! row per case with an explicit tolerance: |gpu − cpu| ≤ atol + rtol·|cpu|. Run with
//! `cargo test-wasm`.
#![cfg(target_arch = "wasm32")]

#[path = "common/op_cases.rs"]
mod op_cases;

use op_cases::{cases, check, f32s, graph, i32s};
use page_runtime::executors::cpu::CpuModel;
use page_runtime::webgpu::{self, WebGpuExecutor};
use shared_proto::{DType, Dim, Graph, InputDecl, Node, Op};
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

#[wasm_bindgen_test]
async fn every_op_matches_the_cpu_executor() {
    let ex = executor().await;
    for case in cases() {
        let g = graph(&case);
        let want = CpuModel::new(g.clone(), vec![]).unwrap().run(&case.args).unwrap();
        let model = ex.load_model(g, &[]).await.unwrap_or_else(|e| panic!("{}: load: {e}", case.name));
        let got = model.run(&ex, &case.args).await.unwrap_or_else(|e| panic!("{}: run: {e}", case.name));
        check(&case, &got.outputs[0], &want[0]).unwrap();
    }
}

#[wasm_bindgen_test]
async fn generation_ops_match_the_cpu_executor() {
    let ex = executor().await;
    for case in op_cases::generation_cases() {
        let (g, weights, inputs) = op_cases::split(&case);
        let want = CpuModel::new(g.clone(), weights.clone())
            .and_then(|m| m.run(&inputs))
            .unwrap_or_else(|e| panic!("{}: cpu: {e}", case.name));
        let model = ex.load_model(g, &weights).await.unwrap_or_else(|e| panic!("{}: load: {e}", case.name));
        let got = model.run(&ex, &inputs).await.unwrap_or_else(|e| panic!("{}: run: {e}", case.name));
        check(&case, &got.outputs[0], &want[0]).unwrap();
        if case.name.starts_with("sample") {
            // The rows must draw more than the argmax, or the comparison shows little.
            let ids = op_cases::ints(&got.outputs[0]);
            let argmax = CpuModel::new(
                shared_proto::Graph {
                    nodes: vec![Node { op: Op::Argmax, args: vec![0] }],
                    outputs: vec![2],
                    ..g_args(&case)
                },
                vec![],
            )
            .unwrap()
            .run(&inputs)
            .unwrap();
            let differ = ids.iter().zip(op_cases::ints(&argmax[0])).filter(|(a, b)| **a != *b).count();
            assert!(differ >= 3, "{}: only {differ} rows drew other than the argmax: {ids:?}", case.name);
        }
    }
}

/// The case's graph (its inputs as declared), for variants on the same inputs.
fn g_args(case: &op_cases::Case) -> Graph {
    op_cases::split(case).0
}

#[wasm_bindgen_test]
async fn out_of_range_ids_are_refused_not_clamped() {
    let ex = executor().await;
    let table = f32s(&[10, 4], 1, 1.0);
    let g = Graph {
        inputs: vec![InputDecl { name: "ids".into(), dtype: DType::I32, dims: vec![Dim::Batch] }],
        weights: vec![shared_proto::WeightDecl {
            name: "t".into(),
            dtype: DType::F32,
            shape: vec![10, 4],
            hash: shared_proto::content_hash(&table.data),
        }],
        nodes: vec![Node { op: Op::Gather, args: vec![1, 0] }],
        outputs: vec![2],
        kv: None,
    };
    let m = ex.load_model(g, &[table]).await.unwrap();
    let e = m.run(&ex, &[i32s(&[2], &[3, 10])]).await.err().expect("id 10 is outside 0..10");
    assert_eq!(e.kind, shared_proto::ErrorKind::BadInput);
}

#[wasm_bindgen_test]
async fn a_loaded_model_compiles_once_and_reuses_buffers() {
    let ex = executor().await;
    let w = f32s(&[64, 32], 1, 0.1);
    let g = Graph {
        inputs: vec![InputDecl { name: "x".into(), dtype: DType::F32, dims: vec![Dim::Batch, Dim::Fixed(32)] }],
        weights: vec![shared_proto::WeightDecl {
            name: "w".into(),
            dtype: DType::F32,
            shape: vec![64, 32],
            hash: shared_proto::content_hash(&w.data),
        }],
        nodes: vec![Node { op: Op::Linear { bias: false }, args: vec![0, 1] }, Node { op: Op::Gelu, args: vec![2] }],
        outputs: vec![3],
        kv: None,
    };
    let m = ex.load_model(g, &[w]).await.unwrap();
    let compiled = ex.compiled_pipelines();
    assert!(compiled >= 1, "load compiled the fused linear+gelu pipeline: {compiled}");
    let x = f32s(&[5, 32], 2, 1.0);
    m.run(&ex, std::slice::from_ref(&x)).await.unwrap();
    let pooled = ex.pooled_buffers();
    for _ in 0..3 {
        m.run(&ex, std::slice::from_ref(&x)).await.unwrap();
    }
    assert_eq!(ex.compiled_pipelines(), compiled, "no pipeline compiled per request");
    assert_eq!(ex.pooled_buffers(), pooled, "buffers come back to the pool and are reused");
}

#[wasm_bindgen_test]
async fn fused_pairs_match_the_cpu_executor() {
    use page_runtime::webgpu::graph::{Fuse, fusion_plan};
    // x → Linear → Gelu → Add(residual from a second Linear) → LayerNorm → output: both fusions.
    let (w1, b1) = (f32s(&[64, 32], 1, 0.2), f32s(&[64], 2, 0.5));
    let (w2, g, bt) = (f32s(&[64, 32], 3, 0.2), f32s(&[64], 4, 1.0), f32s(&[64], 5, 1.0));
    let wd = |name: &str, t: &shared_proto::Tensor| shared_proto::WeightDecl {
        name: name.into(),
        dtype: DType::F32,
        shape: t.shape.clone(),
        hash: shared_proto::content_hash(&t.data),
    };
    let graph = Graph {
        inputs: vec![InputDecl { name: "x".into(), dtype: DType::F32, dims: vec![Dim::Batch, Dim::Fixed(32)] }],
        weights: vec![wd("w1", &w1), wd("b1", &b1), wd("w2", &w2), wd("g", &g), wd("bt", &bt)],
        nodes: vec![
            Node { op: Op::Linear { bias: false }, args: vec![0, 3] }, // 6: residual branch
            Node { op: Op::Linear { bias: true }, args: vec![0, 1, 2] }, // 7
            Node { op: Op::Gelu, args: vec![7] },                      // 8
            Node { op: Op::Add, args: vec![8, 6] },                    // 9
            Node { op: Op::LayerNorm { eps: 1e-5 }, args: vec![9, 4, 5] }, // 10
        ],
        outputs: vec![10],
        kv: None,
    };
    let plan = fusion_plan(&graph);
    assert_eq!(plan, [Fuse::Alone, Fuse::IntoNext, Fuse::LinearGelu, Fuse::IntoNext, Fuse::AddLayerNorm]);
    let weights = [w1, b1, w2, g, bt];
    let x = f32s(&[7, 32], 6, 1.0);
    let want = CpuModel::new(graph.clone(), weights.to_vec()).unwrap().run(std::slice::from_ref(&x)).unwrap();
    let ex = executor().await;
    let m = ex.load_model(graph, &weights).await.unwrap();
    let got = m.run(&ex, std::slice::from_ref(&x)).await.unwrap();
    let case = op_cases::Case::new("linear+gelu, add+layer_norm", Op::Gelu, vec![], 1e-5, 1e-5);
    check(&case, &got.outputs[0], &want[0]).unwrap();
}

#[wasm_bindgen_test]
async fn fused_qkv_attention_matches_the_cpu_executor() {
    use page_runtime::webgpu::graph::{Fuse, fusion_plan};
    let wd = |name: &str, t: &shared_proto::Tensor| shared_proto::WeightDecl {
        name: name.into(),
        dtype: DType::F32,
        shape: t.shape.clone(),
        hash: shared_proto::content_hash(&t.data),
    };
    let ws: Vec<shared_proto::Tensor> =
        (0..3).flat_map(|i| [f32s(&[48, 48], 10 + i, 0.3), f32s(&[48], 20 + i, 0.5)]).collect();
    let names = ["wq", "bq", "wk", "bk", "wv", "bv"];
    let bs = vec![Dim::Batch, Dim::Seq];
    let graph = Graph {
        inputs: vec![
            InputDecl { name: "x".into(), dtype: DType::F32, dims: vec![Dim::Batch, Dim::Seq, Dim::Fixed(48)] },
            InputDecl { name: "mask".into(), dtype: DType::F32, dims: bs },
        ],
        weights: names.iter().zip(&ws).map(|(n, t)| wd(n, t)).collect(),
        nodes: vec![
            Node { op: Op::Linear { bias: true }, args: vec![0, 2, 3] }, // 8: q
            Node { op: Op::Linear { bias: true }, args: vec![0, 4, 5] }, // 9: k
            Node { op: Op::Linear { bias: true }, args: vec![0, 6, 7] }, // 10: v
            Node { op: Op::Attention { heads: 4 }, args: vec![8, 9, 10, 1] },
        ],
        outputs: vec![11],
        kv: None,
    };
    assert_eq!(fusion_plan(&graph), [Fuse::IntoNext, Fuse::IntoNext, Fuse::IntoNext, Fuse::QkvAttention]);
    let mut mask = vec![1.0f32; 2 * 9];
    mask[9 + 6..].iter_mut().for_each(|m| *m = 0.0);
    let inputs = [f32s(&[2, 9, 48], 30, 1.0), shared_proto::Tensor::from_f32(vec![2, 9], &mask)];
    let want = CpuModel::new(graph.clone(), ws.clone()).unwrap().run(&inputs).unwrap();
    let ex = executor().await;
    let m = ex.load_model(graph, &ws).await.unwrap();
    // Loading ran the graph once: the six q/k/v parts live only in the concatenation now.
    assert_eq!((m.folded_weights(), m.missing_weights()), (6, 0));
    for _ in 0..2 {
        // Later runs use the concatenated weights; the parts' buffers are gone.
        let got = m.run(&ex, &inputs).await.unwrap();
        let case = op_cases::Case::new("q|k|v linear + attention", Op::Gelu, vec![], 1e-5, 1e-4);
        check(&case, &got.outputs[0], &want[0]).unwrap();
    }
}

#[wasm_bindgen_test]
async fn mbconv_chain_fuses_conv_clamp_and_matches_the_cpu_executor() {
    use page_runtime::webgpu::graph::{Fuse, fusion_plan};
    let case = op_cases::mbconv_chain();
    // Filters and biases as model weights (as the loader declares them).
    let (g, weights, inputs) = op_cases::split(&case);
    use Fuse::{Alone, ConvClamp, IntoNext};
    assert_eq!(fusion_plan(&g), [IntoNext, ConvClamp, IntoNext, ConvClamp, Alone, Alone, Alone]);
    let want = CpuModel::new(g.clone(), weights.clone()).unwrap().run(&inputs).unwrap();
    let ex = executor().await;
    let m = ex.load_model(g, &weights).await.unwrap();
    let got = m.run(&ex, &inputs).await.unwrap();
    check(&case, &got.outputs[0], &want[0]).unwrap();
}

#[wasm_bindgen_test]
fn conv_clamp_is_not_fused_when_the_conv_has_another_consumer() {
    use page_runtime::webgpu::graph::{Fuse, fusion_plan};
    let x = InputDecl {
        name: "x".into(),
        dtype: DType::F32,
        dims: vec![Dim::Fixed(1), Dim::Fixed(4), Dim::Fixed(5), Dim::Fixed(5)],
    };
    let w = InputDecl {
        name: "w".into(),
        dtype: DType::F32,
        dims: vec![Dim::Fixed(4), Dim::Fixed(1), Dim::Fixed(3), Dim::Fixed(3)],
    };
    let conv = Op::Conv2d { stride: [1, 1], pad: [1; 4], groups: 4, bias: false };
    let g = Graph {
        inputs: vec![x, w],
        weights: vec![],
        nodes: vec![
            Node { op: conv, args: vec![0, 1] },                          // 2
            Node { op: Op::Clamp { min: 0.0, max: 6.0 }, args: vec![2] }, // 3
            Node { op: Op::Add, args: vec![3, 2] },                       // 4: the conv's value used again
        ],
        outputs: vec![4],
        kv: None,
    };
    assert_eq!(fusion_plan(&g), [Fuse::Alone, Fuse::Alone, Fuse::Alone]);
}

/// Device time of EfficientNet-Lite0's convolution shapes at 224×224 (printed; checked against
/// the CPU executor): the stem, an expand 1×1 + ReLU6, a depthwise 3×3/2 + ReLU6, the head 1×1.
#[wasm_bindgen_test]
async fn efficientnet_conv_timings() {
    let ex = executor().await;
    let relu6 = Op::Clamp { min: 0.0, max: 6.0 };
    /// Name, x, w, stride, pad, groups.
    type ConvShape = (&'static str, [u32; 4], [u32; 4], [u32; 2], [u32; 4], u32);
    let shapes: [ConvShape; 4] = [
        ("stem 3x3/2 3→32 @224", [1, 3, 224, 224], [32, 3, 3, 3], [2, 2], [0, 0, 1, 1], 1),
        ("expand 1x1 16→96 @112", [1, 16, 112, 112], [96, 16, 1, 1], [1, 1], [0; 4], 1),
        ("depthwise 3x3/2 96 @112", [1, 96, 112, 112], [96, 1, 3, 3], [2, 2], [0, 0, 1, 1], 96),
        ("head 1x1 320→1280 @7", [1, 320, 7, 7], [1280, 320, 1, 1], [1, 1], [0; 4], 1),
    ];
    for (name, xs, ws, stride, pad, groups) in shapes {
        let conv = Op::Conv2d { stride, pad, groups, bias: true };
        let args = vec![f32s(&xs, 90, 1.0), f32s(&ws, 91, 0.2), f32s(&[ws[0]], 92, 0.5)];
        let body = vec![Node { op: conv, args: vec![0, 1, 2] }, Node { op: relu6.clone(), args: vec![3] }];
        let case = op_cases::Case { weights: vec![1, 2], body, ..op_cases::Case::new(name, Op::Add, args, 1e-4, 1e-4) };
        let (g, weights, inputs) = op_cases::split(&case);
        let want = CpuModel::new(g.clone(), weights.clone()).unwrap().run(&inputs).unwrap();
        let m = ex.load_model(g, &weights).await.unwrap();
        let mut times = Vec::new();
        for _ in 0..5 {
            let got = m.run(&ex, &inputs).await.unwrap();
            check(&case, &got.outputs[0], &want[0]).unwrap();
            times.push(got.device_ms);
        }
        times.sort_by(f64::total_cmp);
        web_sys::console::log_1(&format!("{name} + relu6: median {:.2} ms (min {:.2})", times[2], times[0]).into());
    }
    // A whole MBConv block (as tests/webnn_ops.rs times on WebNN).
    let case = op_cases::mbconv("mbconv 24@56 x6", 24, 56, 6, 1e-4);
    let (g, weights, inputs) = op_cases::split(&case);
    let want = CpuModel::new(g.clone(), weights.clone()).unwrap().run(&inputs).unwrap();
    let m = ex.load_model(g, &weights).await.unwrap();
    let mut times = Vec::new();
    for _ in 0..7 {
        let got = m.run(&ex, &inputs).await.unwrap();
        check(&case, &got.outputs[0], &want[0]).unwrap();
        times.push(got.device_ms);
    }
    times.sort_by(f64::total_cmp);
    web_sys::console::log_1(&format!("{}: median {:.2} ms (min {:.2})", case.name, times[3], times[0]).into());
}
