//! Every graph op on WebGPU in a real headless Chromium tab against the CPU executor, one table
//! row per case with an explicit tolerance: |gpu − cpu| ≤ atol + rtol·|cpu|. Run with
//! `cargo test-wasm`.
#![cfg(target_arch = "wasm32")]

use page_runtime::executors::cpu::CpuModel;
use page_runtime::webgpu::{self, WebGpuExecutor};
use shared_proto::{DType, Dim, Graph, InputDecl, Node, Op, Tensor};
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

fn values(n: usize, seed: u32, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2654435761).max(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            ((s >> 8) as f32 / (1u32 << 23) as f32 - 1.0) * scale
        })
        .collect()
}

fn f32s(shape: &[u32], seed: u32, scale: f32) -> Tensor {
    Tensor::from_f32(shape.to_vec(), &values(shape.iter().product::<u32>() as usize, seed, scale))
}

fn i32s(shape: &[u32], vals: &[i32]) -> Tensor {
    Tensor {
        dtype: DType::I32,
        shape: shape.to_vec(),
        data: vals.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>().into(),
    }
}

struct Case {
    name: &'static str,
    op: Op,
    args: Vec<Tensor>,
    atol: f32,
    rtol: f32,
}

fn cases() -> Vec<Case> {
    let mut mask = vec![1.0f32; 3 * 11];
    mask[11 + 7..22].iter_mut().for_each(|m| *m = 0.0); // row 1: 7 real tokens
    mask[22..33].iter_mut().for_each(|m| *m = 0.0); // row 2: all padding → zeros
    let mut amask = vec![1.0f32; 2 * 9];
    amask[9 + 5..].iter_mut().for_each(|m| *m = 0.0);
    let c = |name, op, args, atol, rtol| Case { name, op, args, atol, rtol };
    vec![
        c("matmul batched", Op::MatMul, vec![f32s(&[3, 37, 50], 1, 1.0), f32s(&[50, 70], 2, 1.0)], 1e-4, 1e-5),
        c(
            "linear+bias",
            Op::Linear { bias: true },
            vec![f32s(&[2, 5, 384], 3, 1.0), f32s(&[96, 384], 4, 0.1), f32s(&[96], 5, 1.0)],
            1e-4,
            1e-5,
        ),
        c("linear", Op::Linear { bias: false }, vec![f32s(&[7, 33], 6, 1.0), f32s(&[65, 33], 7, 1.0)], 1e-4, 1e-5),
        // k % 4 == 0 takes the register-blocked kernel; ragged m and n exercise its edges.
        c(
            "linear reg ragged",
            Op::Linear { bias: true },
            vec![f32s(&[37, 1536], 28, 1.0), f32s(&[50, 1536], 29, 0.1), f32s(&[50], 30, 1.0)],
            1e-4,
            1e-5,
        ),
        c("add broadcast", Op::Add, vec![f32s(&[4, 6, 10], 8, 1.0), f32s(&[10], 9, 1.0)], 0.0, 0.0),
        c("add same shape", Op::Add, vec![f32s(&[300], 10, 1.0), f32s(&[300], 11, 1.0)], 0.0, 0.0),
        c("mul broadcast", Op::Mul, vec![f32s(&[4, 6, 10], 12, 1.0), f32s(&[6, 10], 13, 1.0)], 0.0, 0.0),
        c("gelu", Op::Gelu, vec![f32s(&[1000], 14, 6.0)], 1e-6, 1e-6),
        c(
            "layer_norm",
            Op::LayerNorm { eps: 1e-12 },
            vec![f32s(&[9, 384], 15, 3.0), f32s(&[384], 16, 1.0), f32s(&[384], 17, 1.0)],
            1e-5,
            1e-5,
        ),
        c("softmax", Op::Softmax, vec![f32s(&[7, 130], 18, 5.0)], 1e-6, 1e-5),
        c(
            "mean_pool",
            Op::MeanPool,
            vec![f32s(&[3, 11, 20], 19, 1.0), Tensor::from_f32(vec![3, 11], &mask)],
            1e-6,
            1e-6,
        ),
        c("l2_normalize", Op::L2Normalize { eps: 1e-12 }, vec![f32s(&[5, 384], 20, 1.0)], 1e-6, 1e-5),
        c(
            "gather",
            Op::Gather,
            vec![f32s(&[50, 16], 21, 1.0), i32s(&[3, 7], &(0..21).map(|i| (i * 7) % 50).collect::<Vec<_>>())],
            0.0,
            0.0,
        ),
        c("reshape", Op::Reshape { shape: vec![3, -1] }, vec![f32s(&[6, 4], 22, 1.0)], 0.0, 0.0),
        c("transpose 4d", Op::Transpose { perm: vec![0, 2, 1, 3] }, vec![f32s(&[2, 3, 4, 5], 23, 1.0)], 0.0, 0.0),
        c("transpose 2d", Op::Transpose { perm: vec![1, 0] }, vec![f32s(&[4, 6], 24, 1.0)], 0.0, 0.0),
        c(
            "attention",
            Op::Attention { heads: 4 },
            vec![
                f32s(&[2, 9, 48], 25, 1.0),
                f32s(&[2, 9, 48], 26, 1.0),
                f32s(&[2, 9, 48], 27, 1.0),
                Tensor::from_f32(vec![2, 9], &amask),
            ],
            1e-5,
            1e-4,
        ),
    ]
}

/// A one-node graph whose inputs are the case's arguments.
fn graph(case: &Case) -> Graph {
    let inputs = case
        .args
        .iter()
        .enumerate()
        .map(|(i, t)| InputDecl {
            name: if t.shape.len() == 2 && i == 3 || case.name == "mean_pool" && i == 1 {
                "mask".into()
            } else {
                format!("arg{i}")
            },
            dtype: t.dtype,
            dims: t.shape.iter().map(|&d| Dim::Fixed(d)).collect(),
        })
        .collect();
    let n = case.args.len() as u32;
    Graph {
        inputs,
        weights: vec![],
        nodes: vec![Node { op: case.op.clone(), args: (0..n).collect() }],
        outputs: vec![n],
    }
}

async fn executor() -> WebGpuExecutor {
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
        assert_eq!(got.outputs[0].shape, want[0].shape, "{}: shape", case.name);
        let (g, w) = (got.outputs[0].to_f32().unwrap(), want[0].to_f32().unwrap());
        for (i, (a, b)) in g.iter().zip(&w).enumerate() {
            let tol = case.atol + case.rtol * b.abs();
            assert!((a - b).abs() <= tol, "{}: element {i}: gpu {a} cpu {b} (tolerance {tol})", case.name);
        }
    }
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
    };
    let m = ex.load_model(g, &[w]).await.unwrap();
    let compiled = ex.compiled_pipelines();
    assert!(compiled >= 2, "load compiled linear and gelu: {compiled}");
    let x = f32s(&[5, 32], 2, 1.0);
    m.run(&ex, std::slice::from_ref(&x)).await.unwrap();
    let pooled = ex.pooled_buffers();
    for _ in 0..3 {
        m.run(&ex, std::slice::from_ref(&x)).await.unwrap();
    }
    assert_eq!(ex.compiled_pipelines(), compiled, "no pipeline compiled per request");
    assert_eq!(ex.pooled_buffers(), pooled, "buffers come back to the pool and are reused");
}
