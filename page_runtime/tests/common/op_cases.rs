//! The per-op test table, shared by the WebGPU tests (in Chromium, wasm-bindgen-test) and the
//! WebNN tests (through a real chromium-webnn tab, tests/webnn_ops.rs): each row is one op on
//! given inputs with its tolerance |got − cpu| ≤ atol + rtol·|cpu| against the CPU executor.
#![allow(dead_code)]

use shared_proto::{DType, Dim, Graph, InputDecl, Node, Op, Tensor};

pub fn values(n: usize, seed: u32, scale: f32) -> Vec<f32> {
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

pub fn f32s(shape: &[u32], seed: u32, scale: f32) -> Tensor {
    Tensor::from_f32(shape.to_vec(), &values(shape.iter().product::<u32>() as usize, seed, scale))
}

pub fn i32s(shape: &[u32], vals: &[i32]) -> Tensor {
    Tensor {
        dtype: DType::I32,
        shape: shape.to_vec(),
        data: vals.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>().into(),
    }
}

pub struct Case {
    pub name: &'static str,
    pub op: Op,
    pub args: Vec<Tensor>,
    pub atol: f32,
    pub rtol: f32,
}

pub fn cases() -> Vec<Case> {
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
pub fn graph(case: &Case) -> Graph {
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
        kv: None,
    }
}

/// Check `got` against `want` with the case's tolerance; the message names the first offender.
pub fn check(case: &Case, got: &Tensor, want: &Tensor) -> Result<(), String> {
    if got.shape != want.shape {
        return Err(format!("{}: shape {:?} vs {:?}", case.name, got.shape, want.shape));
    }
    let (g, w) = (got.to_f32().unwrap(), want.to_f32().unwrap());
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        let tol = case.atol + case.rtol * b.abs();
        if (a - b).abs() > tol || a.is_nan() {
            return Err(format!("{}: element {i}: got {a} cpu {b} (tolerance {tol})", case.name));
        }
    }
    Ok(())
}
