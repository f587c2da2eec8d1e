//! Convolution family (NCHW): the general kernel (conv2d.wgsl: any kernel size, stride, padding
//! and groups, depthwise included; one invocation per output) and the pointwise one
//! (conv_pointwise.wgsl: a 1×1 convolution as a register-blocked matmul over channels). Both can
//! apply a clamp in their store (a fused `Conv2d → Clamp`, ReLU6 in MBConv blocks). Global
//! average pooling is in the reduce family.

use shared_proto::{Op, RemoteError};

use super::{GpuValue, Recorder, WebGpuExecutor, flat_groups};

const GENERAL: &str = include_str!("conv2d.wgsl");
const POINTWISE: &str = include_str!("conv_pointwise.wgsl");
/// Output channels per invocation of the pointwise kernel (× 4 positions).
const PW_OB: u32 = 8;
/// Invocations per workgroup of the pointwise kernel.
const PW_WG: u32 = 64;

const BIAS_BINDING: &str = "@group(0) @binding(4) var<storage, read> bias: array<f32>;";

fn general_source(bias: bool, clamp: bool) -> String {
    GENERAL
        .replace("{{BIAS_BINDING}}", if bias { BIAS_BINDING } else { "" })
        .replace("{{BIAS_AT}}", if bias { "bias[oc]" } else { "0.0" })
        .replace("{{ACT}}", if clamp { "min(max(v, p.lo), p.hi)" } else { "v" })
}

fn pointwise_source(bias: bool, clamp: bool) -> String {
    let ob = PW_OB;
    let mut rows = String::new();
    for j in 0..ob {
        rows += &format!("    let w{j} = min(o0 + {j}u, p.o - 1u) * p.c;\n");
    }
    let mut acc = String::new();
    for j in 0..ob {
        acc += &format!("    var acc{j} = vec4<f32>(0.0);\n");
    }
    let mut body = String::new();
    for j in 0..ob {
        body += &format!("        acc{j} += wt[w{j} + c] * xv;\n");
    }
    let mut store = String::new();
    for j in 0..ob {
        let b = if bias { format!("bias[o0 + {j}u]") } else { "0.0".into() };
        store += &format!("    if (o0 + {j}u < p.o) {{\n        let b{j} = {b};\n");
        for (k, lane) in ["x", "y", "z", "w"].iter().enumerate() {
            store += &format!(
                "        if (q0 + {k}u < p.q) {{ y[yb + (o0 + {j}u) * p.q + q0 + {k}u] = act(acc{j}.{lane} + b{j}); }}\n"
            );
        }
        store += "    }\n";
    }
    POINTWISE
        .replace("{{BIAS_BINDING}}", if bias { BIAS_BINDING } else { "" })
        .replace("{{ACT}}", if clamp { "min(max(v, p.lo), p.hi)" } else { "v" })
        .replace("{{OB}}", &ob.to_string())
        .replace("{{W_ROWS}}", &rows)
        .replace("{{ACCUMULATORS}}", &acc)
        .replace("{{BODY}}", &body)
        .replace("{{STORE}}", &store)
}

fn key(base: &str, bias: bool, clamp: bool) -> String {
    format!("{base}{}{}", if bias { "_bias" } else { "" }, if clamp { "_clamp" } else { "" })
}

/// Groups for `blocks` invocations of `wg` each, wrapping into y past 65535 workgroups; returns
/// the groups and the row stride (in invocations) the shader folds back with.
pub(super) fn wrapped_groups(blocks: u32, wg: u32) -> ((u32, u32, u32), u32) {
    let total = blocks.div_ceil(wg).max(1);
    if total <= 65535 { ((total, 1, 1), total * wg) } else { ((65535, total.div_ceil(65535), 1), 65535 * wg) }
}

/// `Conv2d` (args: x, w, bias?) into `out_shape`, with `clamp` = (min, max) applied in the store
/// when a `Clamp` was fused into it.
pub(super) fn encode(
    ex: &WebGpuExecutor,
    rec: &mut Recorder,
    op: &Op,
    args: &[&GpuValue],
    out_shape: &[u32],
    clamp: Option<(f32, f32)>,
) -> Result<GpuValue, RemoteError> {
    let Op::Conv2d { stride, pad, groups, bias } = op else { unreachable!("{} is not conv2d", op.name()) };
    let (x, w) = (args[0], args[1]);
    let [n, c, h, wd] = x.shape[..] else { unreachable!("shapes checked: x[N, C, H, W]") };
    let [o, cg, kh, kw] = w.shape[..] else { unreachable!("shapes checked: w[O, C/g, kh, kw]") };
    let (ho, wo) = (out_shape[2], out_shape[3]);
    let out = ex.output(out_shape);
    let (lo, hi) = clamp.unwrap_or((f32::NEG_INFINITY, f32::INFINITY));
    let tail: Vec<&wgpu::Buffer> = if *bias { vec![&args[2].buf] } else { vec![] };
    let is_clamp = clamp.is_some();
    if kh == 1 && kw == 1 && *stride == [1, 1] && *pad == [0; 4] && *groups == 1 {
        let q = h * wd;
        let (qb, ob) = (q.div_ceil(4), o.div_ceil(PW_OB));
        let blocks = n * ob * qb;
        let (groups, row_stride) = wrapped_groups(blocks, PW_WG);
        let p = ex.pipeline(&key("conv_pointwise", *bias, is_clamp), || pointwise_source(*bias, is_clamp));
        let words = [blocks, row_stride, c, o, q, qb, ob, 0, lo.to_bits(), hi.to_bits(), 0, 0];
        ex.dispatch_with_tail(rec, p, &[&x.buf, &w.buf, &out.buf], &words, &tail, groups)?;
        return Ok(out);
    }
    let len = n * o * ho * wo;
    let (groups_xy, row_stride) = flat_groups(len);
    let p = ex.pipeline(&key("conv2d", *bias, is_clamp), || general_source(*bias, is_clamp));
    let words = [
        len,
        row_stride,
        c,
        h,
        wd,
        o,
        kh,
        kw,
        ho,
        wo,
        stride[0],
        stride[1],
        pad[0],
        pad[1],
        cg,
        o / groups,
        lo.to_bits(),
        hi.to_bits(),
        0,
        0,
    ];
    ex.dispatch_with_tail(rec, p, &[&x.buf, &w.buf, &out.buf], &words, &tail, groups_xy)?;
    Ok(out)
}
