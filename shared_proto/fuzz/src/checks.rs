//! What every fuzz target checks. Shared, through `#[path]`, by the libFuzzer targets
//! (shared_proto/fuzz/fuzz_targets, nightly) and by the corpus replay CI runs on stable
//! (shared_proto/tests/fuzz_corpus.rs): an input that ever failed here fails both.
//!
//! The properties: no input panics; decoding allocates at most [`alloc_bound`] of its input
//! size; whatever decodes re-encodes under the same limits and decodes back to the same frame; a
//! graph that validates can be given minimal inputs and have its shapes inferred without a panic.

use std::sync::atomic::{AtomicUsize, Ordering};

use arbitrary::{Result as ArbResult, Unstructured};
use bytes::Bytes;
use page_runtime::executors::{inputs, shapes};
use serde::Serialize;
use serde::de::DeserializeOwned;
use shared_proto::{
    DType, Dim, ExecBackend, Frame, Graph, InputDecl, Limits, Node, Op, Request, Tensor, ToHost, ToTab, WeightDecl,
    decode, encode,
};

use crate::counting;

/// Narrow limits, as a test or a constrained peer might set them: every limit is hit by small
/// inputs, which the default limits (256 MiB frames) never are in a fuzz run.
pub const TIGHT: Limits =
    Limits { max_frame_bytes: 4096, max_header_bytes: 1024, max_tensors: 4, max_rank: 3, max_elements: 256 };

/// Every decode is tried under each: the protocol's limits, the host's before `Hello` (what any
/// local process can send it), and tight ones.
pub const LIMITS: [Limits; 3] = [Limits::DEFAULT, Limits::PRE_AUTH, TIGHT];

/// Bytes a decode may allocate per byte of its header. Only the header allocates in proportion
/// to its size (tensor payloads are slices of the frame). The codec bounds every claim by the
/// header bytes left after it (`codec::bounded`): a string's claimed length must follow it, and
/// a sequence preallocates at most one element per byte left. So per byte: a sequence of minimal
/// elements that decodes, e.g. a `Vec<String>` of empty strings, holds a 24-byte `String` per
/// 1-byte element, and past serde's 1 MiB preallocation cap `Vec` growth can leave the capacity
/// twice the length while a moving realloc briefly holds the old block too: 24 × 3 = 72
/// (`the_allocation_bound_can_fail` measures 64). A claim that fails preallocates at most
/// (bytes left) × (element size) — 80 for a `WeightDecl`, the largest element of any sequence —
/// and a failing claim nested in it at most 4 per byte left (`shape: Vec<u32>`, after the bytes
/// of the outer claim's first element): below 96 per byte in all.
pub const ALLOC_PER_BYTE: usize = 96;

/// Bytes any decode may allocate besides: its error message and bincode's bookkeeping. (Before
/// the codec bounded claims by the bytes left this was 4 MiB, whatever the limits: bincode let a
/// string claim 1 MiB and serde preallocated up to 1 MiB per claimed sequence, however short the
/// header — `bug_pre_auth_*` in the corpus.)
pub const ALLOC_FIXED: usize = 4 << 10;

/// The most a decode of `frame_len` bytes under `limits` may allocate: in proportion to its
/// header (at most `limits.max_header_bytes`), plus the tensor list and shapes the limits allow,
/// plus [`ALLOC_FIXED`]. Under `Limits::PRE_AUTH` 6 MiB at most; under `Limits::DEFAULT`, even
/// at its 256 MiB frame limit, 96 MiB.
pub fn alloc_bound(frame_len: usize, limits: &Limits) -> usize {
    let tensors = limits.max_tensors * (size_of::<Tensor>() + 4 * limits.max_rank);
    ALLOC_PER_BYTE * frame_len.min(limits.max_header_bytes) + tensors + ALLOC_FIXED
}

/// The largest peak seen so far in this process, and its share of the bound in ‰, for reports.
pub static MAX_PEAK: AtomicUsize = AtomicUsize::new(0);
pub static MAX_PERMILLE_OF_BOUND: AtomicUsize = AtomicUsize::new(0);

fn decode_measured<M: DeserializeOwned>(data: &[u8], limits: &Limits) -> Result<Frame<M>, shared_proto::ProtoError> {
    let bytes = Bytes::copy_from_slice(data);
    let (res, peak) = counting::measure(move || decode::<M>(bytes, limits));
    let bound = alloc_bound(data.len(), limits);
    assert!(
        peak <= bound,
        "decoding {} bytes under {limits:?} allocated {peak} bytes at peak, over the bound of {bound}",
        data.len()
    );
    if MAX_PEAK.fetch_max(peak, Ordering::Relaxed) < peak {
        eprintln!("alloc: new max peak {peak} B for a {}-byte frame", data.len());
        // A fuzz run can keep these for the corpus: coverage-based minimisation drops them.
        if let Some(dir) = std::env::var_os("TABPOOL_FUZZ_KEEP_MAX_ALLOC") {
            let _ = std::fs::write(std::path::Path::new(&dir).join(format!("alloc_max_{peak}")), data);
        }
    }
    MAX_PERMILLE_OF_BOUND.fetch_max(peak * 1000 / bound, Ordering::Relaxed);
    res
}

/// Decode `data` as a frame of `M` under each of `limits`; what decodes must survive a round
/// trip. `inspect` sees each decoded message (graphs inside are checked further).
fn frame<M: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug>(
    data: &[u8],
    limits: &[Limits],
    inspect: impl Fn(&M),
) {
    for limits in limits {
        let Ok(f) = decode_measured::<M>(data, limits) else { continue };
        // Decode and encode must agree on what is legal: a frame the decoder accepted that the
        // encoder refuses would mean the two check different limits.
        let bytes = encode(&f, limits).unwrap_or_else(|e| panic!("decoded frame does not re-encode: {e}"));
        let back: Frame<M> = decode(Bytes::from(bytes.clone()), limits)
            .unwrap_or_else(|e| panic!("re-encoded frame does not decode: {e}"));
        // Bytes, not values: a NaN in a header is not equal to itself.
        assert_eq!(encode(&back, limits).expect("encodes again"), bytes, "round trip changed the frame");
        inspect(&f.msg);
    }
}

/// Target `decode_to_host`: frames a tab sends the host.
pub fn decode_to_host(data: &[u8]) {
    frame::<ToHost>(data, &LIMITS, |_| {});
}

/// Target `pre_auth`: a socket's first frame as the host decodes it, from a peer that has proven
/// nothing yet: under `Limits::PRE_AUTH` only, so every run goes where an unauthenticated peer
/// can reach. What decodes carries no tensors, and is a `Hello` or is refused by the host.
pub fn pre_auth(data: &[u8]) {
    frame::<ToHost>(data, &[Limits::PRE_AUTH], |_| {});
    if let Ok(f) = decode::<ToHost>(Bytes::copy_from_slice(data), &Limits::PRE_AUTH) {
        assert!(f.tensors.is_empty() && data.len() <= Limits::PRE_AUTH.max_frame_bytes, "{} bytes", data.len());
    }
}

/// Target `decode_to_tab`: frames the host sends a tab; a `LoadModel`'s graph goes on to
/// [`graph_consumers`] as a tab would use it.
pub fn decode_to_tab(data: &[u8]) {
    frame::<ToTab>(data, &LIMITS, |msg| {
        if let ToTab::Request { req: Request::LoadModel { graph, .. }, .. } = msg {
            graph_consumers(graph, &mut Unstructured::new(&[]));
        }
    });
}

/// Target `graph`: a graph built from the input's bytes (structure first, so most inputs reach
/// deep into validation rather than failing to decode), validated, and if valid, carried in a
/// `LoadModel` frame and used as a tab would.
pub fn graph(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(g) = arb_graph(&mut u) else { return };
    if g.validate().is_err() {
        return;
    }
    let msg =
        ToTab::Request { id: 1, req: Request::LoadModel { model: "m".into(), graph: g, backend: ExecBackend::Cpu } };
    if let Ok(bytes) = encode(&Frame::new(msg.clone()), &Limits::DEFAULT) {
        let back: Frame<ToTab> = decode(Bytes::from(bytes), &Limits::DEFAULT).expect("a valid graph's frame decodes");
        assert_eq!(back.msg, msg, "a valid graph changed in transit");
    }
    let ToTab::Request { req: Request::LoadModel { graph: g, .. }, .. } = msg else { unreachable!() };
    graph_consumers(&g, &mut u);
}

/// What a tab does with a graph: validate it; if valid, build the minimal inputs it compiles the
/// model with, check them, and infer every value's shape, then the same for run inputs of an
/// arbitrary batch and sequence length. Errors are fine, panics are not.
fn graph_consumers(g: &Graph, u: &mut Unstructured) {
    if g.validate().is_err() {
        return;
    }
    let minimal = inputs::minimal(g);
    inputs::check(g, &minimal).expect("minimal inputs fit their own graph");
    // ...and are inputs a host could send: one Run frame's worth (the limits the decoder
    // applies). Sizes from shape and dtype: `minimal` fills 4 bytes per element whatever the
    // dtype (wrong for f16/u8 inputs; page_runtime's to fix), so its data length is not checked.
    let frame = Limits::DEFAULT;
    for t in &minimal {
        assert!(t.shape.len() <= frame.max_rank && t.elements() <= frame.max_elements, "minimal input {:?}", t.shape);
    }
    let bytes: u64 = minimal.iter().map(|t| t.elements() * t.dtype.size() as u64).sum();
    assert!(bytes <= frame.max_frame_bytes as u64, "minimal inputs of {bytes} bytes");
    let shapes_of = |ts: &[Tensor]| ts.iter().map(|t| t.shape.clone()).collect::<Vec<_>>();
    infer_shapes(g, &shapes_of(&minimal));
    let (Ok(batch), Ok(seq)) = (u.int_in_range(1..=64u32), u.int_in_range(1..=512u32)) else { return };
    let run: Vec<Tensor> = g
        .inputs
        .iter()
        .map(|d| Tensor {
            dtype: d.dtype,
            shape: d
                .dims
                .iter()
                .map(|x| match x {
                    Dim::Batch => batch,
                    Dim::Seq => seq,
                    Dim::Fixed(n) => *n,
                })
                .collect(),
            // Shape inference reads shapes only; the data's size is the frame decoder's business.
            data: Bytes::new(),
        })
        .collect();
    // Only inputs a frame could carry (the decoder refuses larger ones).
    if run.iter().any(|t| t.elements() > Limits::DEFAULT.max_elements || t.shape.len() > Limits::DEFAULT.max_rank) {
        return;
    }
    if inputs::check(g, &run).is_ok() {
        infer_shapes(g, &shapes_of(&run));
    }
}

/// `shapes::graph_shapes`, checked node by node against `shapes::infer`. Inference used to
/// multiply dims unchecked, which panicked in a debug build and wrapped in release (found by this
/// fuzzer: `Reshape { shape: [2^29, 2^15, 2^30, 1, 1] }`, corpus/graph/bug_infer_reshape_overflow);
/// it now refuses any value past `shapes::MAX_VALUE_ELEMENTS`, so no graph is stepped around.
fn infer_shapes(g: &Graph, input_shapes: &[Vec<u32>]) {
    let mut all: Vec<Vec<u32>> = input_shapes.to_vec();
    let mut dtypes: Vec<DType> = g.inputs.iter().map(|d| d.dtype).collect();
    for w in &g.weights {
        all.push(w.shape.clone());
        dtypes.push(w.dtype);
    }
    for n in &g.nodes {
        let s: Vec<&[u32]> = n.args.iter().map(|&a| all[a as usize].as_slice()).collect();
        let d: Vec<DType> = n.args.iter().map(|&a| dtypes[a as usize]).collect();
        let Ok((shape, dtype)) = shapes::infer(&n.op, &s, &d) else { return };
        all.push(shape);
        dtypes.push(dtype);
    }
    // Every node's shape inferred without overflow: the runtime's own walk must agree.
    assert_eq!(shapes::graph_shapes(g, input_shapes).expect("every node inferred above"), all);
}

// --- structured graph generation -----------------------------------------------------------------

/// True about once in `n`, and false once the input is used up (`Unstructured` then answers every
/// choice with its first option: `ratio` would say true, and every short input would build
/// graphs at the size limits, slowing the fuzzer a hundredfold).
fn rarely(u: &mut Unstructured, n: u32) -> ArbResult<bool> {
    Ok(!u.ratio(n - 1, n)?)
}

fn arb_dtype(u: &mut Unstructured) -> ArbResult<DType> {
    Ok(*u.choose(&[DType::F32, DType::F32, DType::I32, DType::F16, DType::U32, DType::U8])?)
}

/// Mostly small dims, so shapes line up often enough for inference to go deep; sometimes zero or
/// anything at all.
fn arb_dim(u: &mut Unstructured) -> ArbResult<u32> {
    Ok(match u.int_in_range(0..=15u8)? {
        15 => 0,
        14 => u.arbitrary()?,
        13 => 1 << u.int_in_range(8..=31u32)?,
        _ => u.int_in_range(1..=8)?,
    })
}

fn arb_name(u: &mut Unstructured) -> ArbResult<String> {
    Ok(if rarely(u, 4)? { "mask".into() } else { u.arbitrary::<&str>()?.chars().take(16).collect() })
}

fn arb_count(u: &mut Unstructured, usual: u32, limit: usize) -> ArbResult<usize> {
    // Now and then just past a validation limit, so those branches are reached too.
    if rarely(u, 200)? { Ok(limit + 1) } else { Ok(u.int_in_range(0..=usual)? as usize) }
}

fn arb_op(u: &mut Unstructured) -> ArbResult<Op> {
    Ok(match u.int_in_range(0..=12u8)? {
        0 => Op::MatMul,
        1 => Op::Linear { bias: u.arbitrary()? },
        2 => Op::Add,
        3 => Op::Mul,
        4 => Op::Gelu,
        5 => Op::LayerNorm { eps: u.arbitrary()? },
        6 => Op::Softmax,
        7 => Op::MeanPool,
        8 => Op::L2Normalize { eps: u.arbitrary()? },
        9 => Op::Gather,
        10 => {
            let n = u.int_in_range(0..=9)?;
            let shape = (0..n)
                .map(|_| {
                    Ok(match u.int_in_range(0..=7u8)? {
                        7 => -1,
                        6 => u.arbitrary()?,
                        5 => 1 << u.int_in_range(8..=30u32)?,
                        _ => u.int_in_range(1..=8)?,
                    })
                })
                .collect::<ArbResult<_>>()?;
            Op::Reshape { shape }
        }
        11 => {
            let n = u.int_in_range(0..=9u8)?;
            let mut perm: Vec<u8> = (0..n).collect();
            // A shuffled permutation, sometimes spoilt.
            for i in (1..perm.len()).rev() {
                let j = u.int_in_range(0..=i)?;
                perm.swap(i, j);
            }
            if !perm.is_empty() && rarely(u, 8)? {
                let i = u.choose_index(perm.len())?;
                perm[i] = u.arbitrary()?;
            }
            Op::Transpose { perm }
        }
        _ => Op::Attention { heads: if rarely(u, 8)? { u.arbitrary()? } else { u.int_in_range(0..=4)? } },
    })
}

/// A graph whose parts are mostly well formed (arguments defined before use, the op's arity) but
/// each can be wrong, so that every validation rule is both passed and failed.
pub fn arb_graph(u: &mut Unstructured) -> ArbResult<Graph> {
    let n_in = arb_count(u, 4, 64)?;
    let inputs = (0..n_in)
        .map(|_| {
            let rank = u.int_in_range(0..=9)?;
            let dims = (0..rank)
                .map(|_| {
                    let fixed = Dim::Fixed(arb_dim(u)?);
                    Ok(*u.choose(&[Dim::Batch, Dim::Seq, fixed])?)
                })
                .collect::<ArbResult<_>>()?;
            Ok(InputDecl { name: arb_name(u)?, dtype: arb_dtype(u)?, dims })
        })
        .collect::<ArbResult<Vec<_>>>()?;
    let n_w = arb_count(u, 6, shared_proto::graph::MAX_WEIGHTS)?;
    let weights = (0..n_w)
        .map(|_| {
            let rank = u.int_in_range(0..=9)?;
            let shape = (0..rank).map(|_| arb_dim(u)).collect::<ArbResult<_>>()?;
            Ok(WeightDecl { name: arb_name(u)?, dtype: arb_dtype(u)?, shape, hash: String::new() })
        })
        .collect::<ArbResult<Vec<_>>>()?;
    let n_nodes = arb_count(u, 24, shared_proto::graph::MAX_NODES)?;
    let mut nodes = Vec::with_capacity(n_nodes);
    for i in 0..n_nodes {
        let own = (n_in + n_w + i) as u32;
        let op = arb_op(u)?;
        let arity = match u.int_in_range(0..=31u8)? {
            31 => op.arity() + 1,
            30 => op.arity().saturating_sub(1),
            _ => op.arity(),
        };
        let args = (0..arity)
            .map(|_| if own > 0 && !rarely(u, 64)? { u.int_in_range(0..=own - 1) } else { u.arbitrary() })
            .collect::<ArbResult<_>>()?;
        nodes.push(Node { op, args });
    }
    let total = (n_in + n_w + n_nodes) as u32;
    let n_out = u.int_in_range(0..=3)?;
    let outputs = (0..n_out)
        .map(|_| if total > 0 && !rarely(u, 32)? { u.int_in_range(0..=total - 1) } else { u.arbitrary() })
        .collect::<ArbResult<_>>()?;
    Ok(Graph { inputs, weights, nodes, outputs, kv: None })
}

// --- seeds -----------------------------------------------------------------------------------------

/// A valid graph using every op, with consistent shapes: its `LoadModel` frame seeds the corpus.
pub fn every_op_graph() -> Graph {
    let input = |name: &str, dtype| InputDecl { name: name.into(), dtype, dims: vec![Dim::Batch, Dim::Seq] };
    let weight = |name: &str, shape: Vec<u32>| WeightDecl {
        name: name.into(),
        dtype: DType::F32,
        hash: shared_proto::content_hash(&vec![0; shape.iter().product::<u32>() as usize * 4]),
        shape,
    };
    let node = |op, args: &[u32]| Node { op, args: args.to_vec() };
    Graph {
        // 0 ids, 1 mask
        inputs: vec![input("ids", DType::I32), input("mask", DType::F32)],
        // 2 table, 3 w, 4 bias, 5 gamma, 6 beta, 7 mm
        weights: vec![
            weight("table", vec![10, 4]),
            weight("w", vec![4, 4]),
            weight("bias", vec![4]),
            weight("gamma", vec![4]),
            weight("beta", vec![4]),
            weight("mm", vec![4, 4]),
        ],
        nodes: vec![
            node(Op::Gather, &[2, 0]),                          // 8  [B, S, 4]
            node(Op::Linear { bias: true }, &[8, 3, 4]),        // 9
            node(Op::Add, &[9, 4]),                             // 10
            node(Op::Mul, &[10, 8]),                            // 11
            node(Op::Gelu, &[11]),                              // 12
            node(Op::LayerNorm { eps: 1e-12 }, &[12, 5, 6]),    // 13
            node(Op::Attention { heads: 2 }, &[13, 13, 13, 1]), // 14
            node(Op::MatMul, &[14, 7]),                         // 15
            node(Op::Softmax, &[15]),                           // 16
            node(Op::Transpose { perm: vec![1, 0, 2] }, &[16]), // 17 [S, B, 4]
            node(Op::Reshape { shape: vec![-1, 4] }, &[17]),    // 18 [S·B, 4]
            node(Op::MeanPool, &[16, 1]),                       // 19 [B, 4]
            node(Op::L2Normalize { eps: 1e-12 }, &[19]),        // 20
        ],
        outputs: vec![20, 18],
        kv: None,
    }
}

fn tensors() -> Vec<Tensor> {
    vec![
        Tensor::from_f32(vec![2, 3], &[1.0, -2.0, 0.5, f32::NAN, 0.0, 3.25]),
        Tensor {
            dtype: DType::I32,
            shape: vec![2, 2],
            data: Bytes::from((1..=4i32).flat_map(i32::to_le_bytes).collect::<Vec<u8>>()),
        },
        Tensor { dtype: DType::F16, shape: vec![3], data: Bytes::from_static(&[0, 60, 0, 64, 0, 0]) },
        Tensor { dtype: DType::U32, shape: vec![], data: Bytes::from_static(&[7, 0, 0, 0]) },
        Tensor { dtype: DType::U8, shape: vec![0, 5], data: Bytes::new() },
    ]
}

/// Named frames for the corpus.
pub type Seeds = Vec<(String, Vec<u8>)>;

/// One valid frame of every message kind in each direction (named for the corpus file), with and
/// without tensors. Every one fits [`TIGHT`] too, except the `LoadModel`, whose header is larger.
pub fn seed_frames() -> (Seeds, Seeds) {
    use shared_proto::*;
    let l = &Limits::DEFAULT;
    let enc_tab = |m: ToTab, t: Vec<Tensor>| encode(&Frame::with_tensors(m, t), l).expect("seed encodes");
    let enc_host = |m: ToHost, t: Vec<Tensor>| encode(&Frame::with_tensors(m, t), l).expect("seed encodes");
    let req = |req| ToTab::Request { id: 42, req };
    let mut to_tab = vec![("welcome".to_string(), enc_tab(ToTab::Welcome { tab_id: 3 }, vec![]))];
    for (i, reason) in
        [RejectReason::VersionMismatch, RejectReason::BadToken, RejectReason::UnknownTab, RejectReason::DuplicateTab]
            .into_iter()
            .enumerate()
    {
        to_tab.push((format!("reject_{i}"), enc_tab(ToTab::Reject { reason, message: "no".into() }, vec![])));
    }
    let mut requests = vec![
        ("ping", Request::Ping, vec![]),
        ("sink", Request::Sink, tensors()),
        ("kernel_add", Request::Kernel(Kernel::Add), tensors()[..1].to_vec()),
        ("put_weights", Request::PutWeights { model: "m".into(), first: 2 }, tensors()),
        ("run", Request::Run { model: "m".into() }, tensors()[1..2].to_vec()),
        ("unload", Request::UnloadModel { model: "m".into() }, vec![]),
        ("lose_device", Request::LoseDevice, vec![]),
        ("set_threads", Request::SetThreads { threads: 2 }, vec![]),
        (
            "open_session",
            Request::OpenSession { model: "m".into(), session: 7, capacity: 512, prompt: vec![1, 2, 3] },
            vec![],
        ),
        ("close_session", Request::CloseSession { model: "m".into(), session: 7 }, vec![]),
        (
            "step",
            Request::Step {
                model: "m".into(),
                rows: vec![
                    StepRow { session: 7, tokens: vec![1, 9690, 198], sampling: Sampling::Greedy },
                    StepRow {
                        session: 8,
                        tokens: vec![42],
                        sampling: Sampling::TopKP { temperature: 0.7, top_k: 40, top_p: 0.9, seed: 3 },
                    },
                ],
            },
            vec![],
        ),
    ];
    for (name, variant) in [
        ("matmul_tiled", MatMulVariant::Tiled),
        ("matmul_naive", MatMulVariant::Naive),
        ("matmul_register", MatMulVariant::Register),
    ] {
        requests.push((name, Request::Kernel(Kernel::MatMul { variant, repeats: 300 }), tensors()[..1].to_vec()));
    }
    for (name, backend) in [
        ("load_model_webgpu", ExecBackend::WebGpu),
        ("load_model_webnn", ExecBackend::WebNn { device: "gpu".into() }),
        ("load_model_cpu", ExecBackend::Cpu),
    ] {
        requests.push((name, Request::LoadModel { model: "m".into(), graph: every_op_graph(), backend }, vec![]));
    }
    for (name, r, t) in requests {
        to_tab.push((name.to_string(), enc_tab(req(r), t)));
    }

    let caps = Capabilities {
        user_agent: "Mozilla/5.0 HeadlessChrome".into(),
        hardware_concurrency: 2,
        device_memory_gib: Some(8.0),
        webgpu: WebGpuCaps {
            api_present: true,
            adapter: Some(AdapterInfo { name: "SwiftShader".into(), is_fallback: true, ..Default::default() }),
            error: None,
            limits: vec![("maxBufferSize".into(), 1 << 28), ("maxComputeWorkgroupSizeX".into(), 256)],
            features: vec!["shader-f16".into()],
        },
        webnn: WebNnCaps {
            api_present: true,
            contexts: vec![
                WebNnContextProbe { device_type: "cpu".into(), ok: true, error: None },
                WebNnContextProbe { device_type: "npu".into(), ok: false, error: Some("NotSupportedError".into()) },
            ],
        },
        threads: 2,
        activations: "int16".into(),
        relaxed_simd: true,
    };
    let hello = |caps| {
        ToHost::Hello(Box::new(Hello { protocol_version: PROTOCOL_VERSION, tab_id: 3, token: "0123abcd".into(), caps }))
    };
    let mut to_host = vec![
        ("hello".to_string(), enc_host(hello(caps), vec![])),
        (
            "hello_no_gpu".to_string(),
            enc_host(
                hello(Capabilities {
                    webgpu: WebGpuCaps { error: Some("no adapter".into()), ..Default::default() },
                    ..Default::default()
                }),
                vec![],
            ),
        ),
    ];
    let replies = [
        ("pong", Reply::Pong, vec![]),
        ("sunk", Reply::Sunk { bytes: 1 << 20 }, vec![]),
        ("kernel_done", Reply::KernelDone { device_ms: 1.5 }, tensors()[..1].to_vec()),
        ("model_declared", Reply::ModelDeclared { held: vec![], prepare_ms: None }, vec![]),
        ("model_declared_held", Reply::ModelDeclared { held: vec![0, 2, 5], prepare_ms: Some(3.5) }, vec![]),
        ("session_opened", Reply::SessionOpened { kv_bytes: 47_185_920, reused: 2 }, vec![]),
        ("stepped", Reply::Stepped { tokens: vec![504, 2], device_ms: 12.5 }, vec![]),
        ("session_closed", Reply::SessionClosed, vec![]),
        ("weights_stored", Reply::WeightsStored { bytes: 4096, missing: 0, prepare_ms: Some(12.0) }, vec![]),
        ("weights_pending", Reply::WeightsStored { bytes: 4096, missing: 3, prepare_ms: None }, vec![]),
        ("ran", Reply::Ran { device_ms: 0.25 }, tensors()),
        ("unloaded", Reply::Unloaded, vec![]),
        ("device_destroyed", Reply::DeviceDestroyed { webgpu: true, webnn_contexts: 2 }, vec![]),
        ("threads_set", Reply::ThreadsSet { threads: 1 }, vec![]),
    ];
    for (name, r, t) in replies {
        to_host.push((format!("reply_{name}"), enc_host(ToHost::Reply { id: 42, result: Ok(r) }, t)));
    }
    for (i, kind) in [
        ErrorKind::BadInput,
        ErrorKind::Unsupported,
        ErrorKind::DeviceLost,
        ErrorKind::OutOfMemory,
        ErrorKind::Internal,
        ErrorKind::Capacity,
    ]
    .into_iter()
    .enumerate()
    {
        let result = Err(RemoteError::new(kind, "broken"));
        to_host.push((format!("reply_err_{i}"), enc_host(ToHost::Reply { id: 42, result }, vec![])));
    }
    (to_tab, to_host)
}
