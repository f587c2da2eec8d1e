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
    /// Indices of f32 arguments held as model weights by [`split`] (block-dtype ones always are),
    /// as a loader would declare conv filters and biases.
    pub weights: Vec<usize>,
    /// Empty: one node of `op` over all arguments. Otherwise a small graph: value `i < args.len()`
    /// is argument `i`, node `j` defines value `args.len() + j`; the last node is the output.
    pub body: Vec<Node>,
}

impl Case {
    pub fn new(name: &'static str, op: Op, args: Vec<Tensor>, atol: f32, rtol: f32) -> Case {
        Case { name, op, args, atol, rtol, weights: vec![], body: vec![] }
    }

    /// The graph's nodes with values numbered as in [`Case::body`].
    fn nodes(&self) -> Vec<Node> {
        if self.body.is_empty() {
            vec![Node { op: self.op.clone(), args: (0..self.args.len() as u32).collect() }]
        } else {
            self.body.clone()
        }
    }
}

pub fn cases() -> Vec<Case> {
    let mut mask = vec![1.0f32; 3 * 11];
    mask[11 + 7..22].iter_mut().for_each(|m| *m = 0.0); // row 1: 7 real tokens
    mask[22..33].iter_mut().for_each(|m| *m = 0.0); // row 2: all padding → zeros
    let mut amask = vec![1.0f32; 2 * 9];
    amask[9 + 5..].iter_mut().for_each(|m| *m = 0.0);
    let c = Case::new;
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
        // --- convolution family (EfficientNet-Lite0's shapes, smaller); filters and biases as
        // weights, as the loader declares them ---
        conv(
            "conv2d 3x3/2 same pad (0,0,1,1) + bias",
            [2, 2],
            [0, 0, 1, 1],
            1,
            f32s(&[2, 3, 8, 8], 60, 1.0),
            f32s(&[8, 3, 3, 3], 61, 0.3),
            Some(f32s(&[8], 62, 0.5)),
        ),
        conv(
            "depthwise 3x3/1 pad 1 + bias",
            [1, 1],
            [1, 1, 1, 1],
            16,
            f32s(&[1, 16, 10, 10], 63, 1.0),
            f32s(&[16, 1, 3, 3], 64, 0.3),
            Some(f32s(&[16], 65, 0.5)),
        ),
        conv(
            "depthwise 5x5/2 pad (1,1,2,2) + bias",
            [2, 2],
            [1, 1, 2, 2],
            24,
            f32s(&[1, 24, 14, 14], 66, 1.0),
            f32s(&[24, 1, 5, 5], 67, 0.2),
            Some(f32s(&[24], 68, 0.5)),
        ),
        // 7×7 = 49 positions and 36 channels: ragged blocks of the pointwise kernel.
        conv(
            "pointwise 1x1 + bias",
            [1, 1],
            [0; 4],
            1,
            f32s(&[2, 24, 7, 7], 69, 1.0),
            f32s(&[36, 24, 1, 1], 70, 0.2),
            Some(f32s(&[36], 71, 0.5)),
        ),
        conv(
            "grouped conv 2 groups, stride (1,2)",
            [1, 2],
            [1, 0, 1, 2],
            2,
            f32s(&[1, 8, 6, 6], 72, 1.0),
            f32s(&[12, 4, 3, 3], 73, 0.3),
            None,
        ),
        c("clamp (relu6)", Op::Clamp { min: 0.0, max: 6.0 }, vec![f32s(&[1000], 74, 8.0)], 0.0, 0.0),
        c("global_avg_pool", Op::GlobalAvgPool, vec![f32s(&[2, 40, 7, 7], 75, 1.0)], 1e-6, 1e-5),
        mbconv_chain(),
    ]
}

/// One `Conv2d` row: filter (and bias) as weights.
fn conv(
    name: &'static str,
    stride: [u32; 2],
    pad: [u32; 4],
    groups: u32,
    x: Tensor,
    w: Tensor,
    bias: Option<Tensor>,
) -> Case {
    let op = Op::Conv2d { stride, pad, groups, bias: bias.is_some() };
    let mut args = vec![x, w];
    args.extend(bias);
    let weights = (1..args.len()).collect();
    Case { weights, ..Case::new(name, op, args, 2e-5, 1e-4) }
}

/// An MBConv block, smaller: expand 1×1 96→192 + ReLU6, depthwise 3×3 + ReLU6, project 1×1
/// 192→96, residual add, global average pool. The 1×1 filters are 72 KiB (WebNN binds them as
/// graph inputs, not constants); the two Conv2d → Clamp pairs are fused on WebGPU.
pub fn mbconv_chain() -> Case {
    mbconv("mbconv chain", 96, 8, 2, 1e-4)
}

/// An MBConv block of `c` channels at `hw`×`hw`: expand 1×1 c→c·`expand` + bias + ReLU6,
/// depthwise 3×3 pad 1 + bias + ReLU6, project 1×1 back to c, residual add, global average pool.
pub fn mbconv(name: &'static str, c: u32, hw: u32, expand: u32, tol: f32) -> Case {
    let conv = |stride, pad, groups, bias| Op::Conv2d { stride, pad, groups, bias };
    let relu6 = Op::Clamp { min: 0.0, max: 6.0 };
    let e = c * expand;
    let args = vec![
        f32s(&[1, c, hw, hw], 80, 1.0),
        f32s(&[e, c, 1, 1], 81, 2.0 / (c as f32).sqrt()),
        f32s(&[e], 82, 0.5),
        f32s(&[e, 1, 3, 3], 83, 0.5),
        f32s(&[e], 84, 0.5),
        f32s(&[c, e, 1, 1], 85, 1.0 / (e as f32).sqrt()),
    ];
    let body = vec![
        Node { op: conv([1, 1], [0; 4], 1, true), args: vec![0, 1, 2] }, // 6
        Node { op: relu6.clone(), args: vec![6] },                       // 7
        Node { op: conv([1, 1], [1; 4], e, true), args: vec![7, 3, 4] }, // 8
        Node { op: relu6, args: vec![8] },                               // 9
        Node { op: conv([1, 1], [0; 4], 1, false), args: vec![9, 5] },   // 10
        Node { op: Op::Add, args: vec![10, 0] },                         // 11
        Node { op: Op::GlobalAvgPool, args: vec![11] },                  // 12
    ];
    Case { weights: (1..6).collect(), body, ..Case::new(name, Op::Add, args, tol, tol) }
}

/// A tensor of `shape` packed row by row to `dtype` (Q4_1, Q8_0 or f16) from seeded values.
pub fn quantized(dtype: DType, shape: &[u32], seed: u32, scale: f32) -> Tensor {
    let x = values(shape.iter().product::<u32>() as usize, seed, scale);
    let data = match dtype {
        DType::Q4_1 => shared_proto::quant::quantize_row_q4_1(&x),
        DType::Q8_0 => shared_proto::quant::quantize_row_q8_0(&x),
        DType::F16 => x.iter().flat_map(|&v| shared_proto::quant::f32_to_f16(v).to_le_bytes()).collect(),
        other => panic!("{other:?} is not a packed dtype"),
    };
    Tensor { dtype, shape: shape.to_vec(), data: data.into() }
}

/// Rows for the generation ops (SmolLM2-135M's widths: hidden 576, MLP 1536, 9 heads of 64,
/// vocabulary 49152). Block-dtype arguments become weights (see [`split`]); the table is kept
/// apart from [`cases`] until every executor runs these ops.
pub fn generation_cases() -> Vec<Case> {
    use DType::{F16, Q4_1, Q8_0};
    let c = Case::new;
    let mut tied = values(3 * 49152, 40, 8.0);
    tied[2 * 49152 + 7] = 9.0; // row 2: two equal maxima, the first must win
    tied[2 * 49152 + 40000] = 9.0;
    let linear = |x: Tensor, w: Tensor| vec![x, w];
    // Top-k 200 then top-p 0.9 at temperature 1.1, u from 0.05 to 0.925.
    let sweep: Vec<f32> = (0..8).flat_map(|i| [1.1, 200.0, 0.9, 0.05 + 0.125 * i as f32]).collect();
    vec![
        c("rms_norm", Op::RmsNorm { eps: 1e-5 }, vec![f32s(&[5, 576], 31, 3.0), f32s(&[576], 32, 1.0)], 1e-5, 1e-5),
        c("silu_mul", Op::SiluMul, vec![f32s(&[3, 1536], 33, 8.0), f32s(&[3, 1536], 34, 2.0)], 1e-6, 1e-5),
        // Angles up to 300 rad: f32 rounding of pos·θ differs by ~1e-5 rad between libms.
        c(
            "rope",
            Op::Rope { heads: 9, base: 10000.0 },
            vec![f32s(&[4, 576], 35, 1.0), i32s(&[4], &[0, 1, 17, 300])],
            1e-4,
            1e-4,
        ),
        c(
            "linear q4_1 decode",
            Op::Linear { bias: false },
            linear(f32s(&[1, 576], 36, 1.0), quantized(Q4_1, &[1536, 576], 37, 0.1)),
            2e-4,
            1e-4,
        ),
        c(
            "linear q8_0 decode",
            Op::Linear { bias: false },
            linear(f32s(&[1, 576], 38, 1.0), quantized(Q8_0, &[1536, 576], 39, 0.1)),
            2e-4,
            1e-4,
        ),
        c(
            "linear q8_0 decode 1536→576",
            Op::Linear { bias: false },
            linear(f32s(&[1, 1536], 41, 1.0), quantized(Q8_0, &[576, 1536], 42, 0.1)),
            2e-4,
            1e-4,
        ),
        c(
            "linear q4_1 two rows",
            Op::Linear { bias: false },
            linear(f32s(&[2, 576], 43, 1.0), quantized(Q4_1, &[192, 576], 44, 0.1)),
            2e-4,
            1e-4,
        ),
        c(
            "linear q4_1 prefill ragged + bias",
            Op::Linear { bias: true },
            vec![f32s(&[37, 576], 45, 1.0), quantized(Q4_1, &[203, 576], 46, 0.1), f32s(&[203], 47, 1.0)],
            2e-4,
            1e-4,
        ),
        // 3 blocks per row: Q8_0 rows of 102 bytes, so blocks straddle words both ways.
        c(
            "linear q8_0 prefill ragged",
            Op::Linear { bias: false },
            linear(f32s(&[13, 96], 48, 1.0), quantized(Q8_0, &[70, 96], 49, 0.1)),
            2e-4,
            1e-4,
        ),
        c(
            "gather q4_1",
            Op::Gather,
            vec![quantized(Q4_1, &[100, 64], 50, 1.0), i32s(&[5], &[0, 99, 3, 3, 57])],
            1e-6,
            1e-6,
        ),
        c(
            "gather q8_0",
            Op::Gather,
            vec![quantized(Q8_0, &[101, 96], 51, 1.0), i32s(&[5], &[0, 100, 3, 3, 57])],
            1e-6,
            1e-6,
        ),
        // f16 weights (Whisper tiny's decoder widths): decode, a prefill with bias, a table.
        // WGSL's unpack2x16float may flush a subnormal half (< 6.1e-5) to zero: the tolerances
        // allow one such term; a wrong half or lane is off by the weight's size (~0.1).
        c(
            "linear f16 decode",
            Op::Linear { bias: false },
            linear(f32s(&[1, 384], 52, 1.0), quantized(F16, &[1536, 384], 53, 0.1)),
            2e-4,
            1e-4,
        ),
        c(
            "linear f16 prefill + bias",
            Op::Linear { bias: true },
            vec![f32s(&[9, 384], 54, 1.0), quantized(F16, &[70, 384], 55, 0.1), f32s(&[70], 56, 1.0)],
            2e-4,
            1e-4,
        ),
        c(
            "gather f16",
            Op::Gather,
            vec![quantized(F16, &[100, 64], 57, 1.0), i32s(&[5], &[0, 99, 3, 3, 57])],
            6.2e-5,
            0.0,
        ),
        c("argmax", Op::Argmax, vec![Tensor::from_f32(vec![3, 49152], &tied)], 0.0, 0.0),
        c("sample", Op::Sample, vec![sample_logits(), Tensor::from_f32(vec![8, 4], &SAMPLE_PARAMS.concat())], 0.0, 0.0),
        c("sample u sweep", Op::Sample, vec![sample_logits(), Tensor::from_f32(vec![8, 4], &sweep)], 0.0, 0.0),
    ]
}

/// (temperature, top_k, top_p, u) per row of [`sample_logits`]: greedy, top-k only, top-p only,
/// both, top-k 1, a tie cut by top_k, u at its ends.
pub const SAMPLE_PARAMS: [[f32; 4]; 8] = [
    [0.0, 0.0, 1.0, 0.5],
    [0.8, 40.0, 1.0, 0.37],
    [1.0, 0.0, 0.9, 0.61],
    [0.7, 50.0, 0.8, 0.93],
    [1.3, 1.0, 1.0, 0.99],
    [1.0, 3.0, 1.0, 0.8],
    [1.0, 0.0, 1.0, 0.0],
    [0.5, 0.0, 0.95, 0.999],
];

/// Logits over SmolLM2's vocabulary, 8 rows; row 5 has its top 4 equal (top_k 3 cuts the tie).
pub fn sample_logits() -> Tensor {
    let v = 49152;
    let mut l = values(8 * v, 53, 4.0);
    for &j in &[100, 7000, 20000, 49000] {
        l[5 * v + j] = 9.0;
    }
    Tensor::from_f32(vec![8, v as u32], &l)
}

/// `case` as a graph whose packed-dtype arguments are weights and the rest inputs: `(graph,
/// weights, inputs)`.
pub fn split(case: &Case) -> (Graph, Vec<Tensor>, Vec<Tensor>) {
    let (mut inputs, mut weights, mut decls, mut args) = (vec![], vec![], vec![], vec![]);
    let quantized: Vec<bool> =
        case.args.iter().enumerate().map(|(i, t)| t.dtype.is_packed() || case.weights.contains(&i)).collect();
    let n_inputs = quantized.iter().filter(|&&q| !q).count() as u32;
    for (t, &q) in case.args.iter().zip(&quantized) {
        if q {
            args.push(n_inputs + weights.len() as u32);
            decls.push(shared_proto::WeightDecl {
                name: format!("w{}", weights.len()),
                dtype: t.dtype,
                shape: t.shape.clone(),
                hash: shared_proto::content_hash(&t.data),
            });
            weights.push(t.clone());
        } else {
            args.push(inputs.len() as u32);
            inputs.push(t.clone());
        }
    }
    let g = Graph {
        inputs: inputs
            .iter()
            .enumerate()
            .map(|(i, t)| InputDecl {
                name: format!("arg{i}"),
                dtype: t.dtype,
                dims: t.shape.iter().map(|&d| Dim::Fixed(d)).collect(),
            })
            .collect(),
        weights: decls,
        nodes: case
            .nodes()
            .into_iter()
            .map(|n| Node { args: n.args.iter().map(|&a| args.get(a as usize).copied().unwrap_or(a)).collect(), ..n })
            .collect(),
        outputs: vec![(case.args.len() + case.nodes().len() - 1) as u32],
        kv: None,
    };
    (g, weights, inputs)
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
    let nodes = case.nodes();
    Graph { inputs, weights: vec![], outputs: vec![(case.args.len() + nodes.len() - 1) as u32], nodes, kv: None }
}

/// Check `got` against `want` with the case's tolerance; the message names the first offender.
pub fn check(case: &Case, got: &Tensor, want: &Tensor) -> Result<(), String> {
    if got.shape != want.shape {
        return Err(format!("{}: shape {:?} vs {:?}", case.name, got.shape, want.shape));
    }
    if got.dtype != want.dtype {
        return Err(format!("{}: dtype {:?} vs {:?}", case.name, got.dtype, want.dtype));
    }
    if got.dtype == DType::I32 {
        return if got.data == want.data {
            Ok(())
        } else {
            Err(format!("{}: ids {:?} vs {:?}", case.name, ints(got), ints(want)))
        };
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

pub fn ints(t: &Tensor) -> Vec<i32> {
    t.data.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}
