//! Matmul family: the 64×64-tiled kernel with workgroup memory (plain MatMul, and Linear with
//! transposed weights and bias through template slots), register-blocked vec4 kernels without
//! workgroup memory (matmul_reg, linear_reg: fastest on software adapters), and the naive baseline.

use shared_proto::{MatMulVariant, RemoteError};

use super::{GpuValue, Recorder, WebGpuExecutor};

const TILED: &str = include_str!("matmul_tiled.wgsl");
const NAIVE: &str = include_str!("matmul_naive.wgsl");
const LINEAR_REG: &str = include_str!("linear_reg.wgsl");
/// Output block per invocation of the register kernel (rows × columns); tuned on SwiftShader.
pub(crate) const REG_ROWS: u32 = 4;
pub(crate) const REG_COLS: u32 = 8;

/// The register-blocked linear kernel for a `REG_ROWS × REG_COLS` block: loads, dots and
/// stores are unrolled here because WGSL has no generics.
fn linear_reg_source(bias: bool, gelu: bool) -> String {
    let (r, c) = (REG_ROWS, REG_COLS);
    let mut idx = String::new();
    for i in 0..r {
        idx += &format!("    let x{i} = min(r0 + {i}u, dims.m - 1u) * k4;\n");
    }
    for j in 0..c {
        idx += &format!("    let w{j} = min(c0 + {j}u, dims.n - 1u) * k4;\n");
    }
    let mut acc = String::new();
    for i in 0..r {
        for j in 0..c {
            acc += &format!("    var acc{i}_{j} = 0.0;\n");
        }
    }
    let mut body = String::new();
    for j in 0..c {
        body += &format!("        let b{j} = w[w{j} + t];\n");
    }
    for i in 0..r {
        body += &format!("        let a{i} = x[x{i} + t];\n");
        for j in 0..c {
            body += &format!("        acc{i}_{j} += dot(a{i}, b{j});\n");
        }
    }
    let mut store = String::new();
    for i in 0..r {
        for j in 0..c {
            store += &format!(
                "    if (r0 + {i}u < dims.m && c0 + {j}u < dims.n) {{ y[(r0 + {i}u) * dims.n + c0 + {j}u] = act(acc{i}_{j} + bias_at(c0 + {j}u)); }}\n"
            );
        }
    }
    let src = LINEAR_REG
        .replace("{{BIAS_AT}}", if bias { "bias[col]" } else { "0.0" })
        .replace("{{ACT}}", if gelu { super::unary::GELU } else { "x" })
        .replace("{{ROWS}}", &r.to_string())
        .replace("{{COLS}}", &c.to_string())
        .replace("{{INDICES}}", &idx)
        .replace("{{ACCUMULATORS}}", &acc)
        .replace("{{BODY}}", &body)
        .replace("{{STORE}}", &store);
    format!("{}{src}", super::ERF)
}
const MATMUL_REG: &str = include_str!("matmul_reg.wgsl");
/// Output tile edge of the tiled kernel (16×16 invocations × 4×4 outputs each).
const TILE: u32 = 64;

fn tiled_source(transposed_b: bool, bias: bool) -> String {
    let b_at = if transposed_b { "b[col * dims.k + kk]" } else { "b[kk * dims.n + col]" };
    TILED.replace("{{B_AT}}", b_at).replace("{{EPILOGUE}}", if bias { " + bias[col]" } else { "" })
}

/// `a[.., M, K] · b[K, N]`: leading dims of `a` fold into M.
pub(super) fn encode_matmul(
    ex: &WebGpuExecutor,
    rec: &mut Recorder,
    a: &GpuValue,
    b: &GpuValue,
    variant: MatMulVariant,
) -> Result<GpuValue, RemoteError> {
    let (k, n) = (b.shape[0], b.shape[1]);
    let m = a.elements() / k;
    let mut shape = a.shape.clone();
    *shape.last_mut().expect("rank ≥ 2") = n;
    let out = ex.output(&shape);
    // The register kernel needs k and n divisible by 4; otherwise the tiled one serves.
    let variant =
        if variant == MatMulVariant::Register && (k % 4 != 0 || n % 4 != 0) { MatMulVariant::Tiled } else { variant };
    let (pipeline, groups) = match variant {
        MatMulVariant::Register => {
            (ex.pipeline("matmul_reg", || MATMUL_REG.to_string()), ((n / 4).div_ceil(16), m.div_ceil(16), 1))
        }
        MatMulVariant::Tiled => {
            (ex.pipeline("matmul_tiled", || tiled_source(false, false)), (n.div_ceil(TILE), m.div_ceil(TILE), 1))
        }
        MatMulVariant::Naive => {
            (ex.pipeline("matmul_naive", || NAIVE.to_string()), (n.div_ceil(16), m.div_ceil(16), 1))
        }
    };
    ex.dispatch(rec, pipeline, &[&a.buf, &b.buf, &out.buf], &[m, k, n, 0], groups)?;
    Ok(out)
}

/// `x[.., K] · w[N, K]ᵀ (+ bias[N])`.
pub(super) fn encode_linear(
    ex: &WebGpuExecutor,
    rec: &mut Recorder,
    args: &[&GpuValue],
    out_shape: &[u32],
) -> Result<GpuValue, RemoteError> {
    encode_linear_act(ex, rec, args, out_shape, false)
}

/// Linear, optionally with GELU applied in the store (a fused `Linear → Gelu` pair).
pub(super) fn encode_linear_act(
    ex: &WebGpuExecutor,
    rec: &mut Recorder,
    args: &[&GpuValue],
    out_shape: &[u32],
    gelu: bool,
) -> Result<GpuValue, RemoteError> {
    let (x, w) = (args[0], args[1]);
    if w.dtype.is_packed() {
        let y = super::linear_quant::encode(ex, rec, args, out_shape)?;
        return if gelu { super::unary::encode(ex, rec, &shared_proto::Op::Gelu, &y) } else { Ok(y) };
    }
    let (n, k) = (w.shape[0], w.shape[1]);
    let m = x.elements() / k;
    let out = ex.output(out_shape);
    if k % 4 == 0 {
        // Register-blocked vec4 kernel: a 16×4 workgroup of REG_ROWS × REG_COLS blocks.
        let groups = (n.div_ceil(16 * REG_COLS), m.div_ceil(4 * REG_ROWS), 1);
        let bias = args.get(2).is_some();
        let key = match (bias, gelu) {
            (false, false) => "linear_reg",
            (true, false) => "linear_reg_bias",
            (false, true) => "linear_reg_gelu",
            (true, true) => "linear_reg_bias_gelu",
        };
        let p = ex.pipeline(key, || linear_reg_source(bias, gelu));
        let tail: Vec<&wgpu::Buffer> = args.get(2).map(|b| &**b.buf).into_iter().collect();
        ex.dispatch_with_tail(rec, p, &[&x.buf, &w.buf, &out.buf], &[m, k, n, 0], &tail, groups)?;
        return Ok(out);
    }
    if gelu {
        // The tiled kernel has no activation slot: run it, then the unary kernel.
        let y = encode_linear_act(ex, rec, args, out_shape, false)?;
        return super::unary::encode(ex, rec, &shared_proto::Op::Gelu, &y);
    }
    let groups = (n.div_ceil(TILE), m.div_ceil(TILE), 1);
    if let Some(bias) = args.get(2) {
        let p = ex.pipeline("linear_bias", || tiled_source(true, true));
        // Bindings: a, b, c, dims, then bias (slot 4, after the uniform).
        ex.dispatch_with_tail(rec, p, &[&x.buf, &w.buf, &out.buf], &[m, k, n, 0], &[&bias.buf], groups)?;
    } else {
        let p = ex.pipeline("linear", || tiled_source(true, false));
        ex.dispatch(rec, p, &[&x.buf, &w.buf, &out.buf], &[m, k, n, 0], groups)?;
    }
    Ok(out)
}
