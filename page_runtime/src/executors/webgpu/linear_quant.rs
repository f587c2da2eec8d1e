//! Linear with packed weights (Q4_1, Q8_0, f16): the weight buffer holds the bytes as uploaded
//! (GGUF blocks; halves read as blocks of 32) and the kernel widens them as it reads. Decode (M ≤ 4 rows) takes one invocation per
//! output column over all rows, so each weight block is decoded once per step; prefill takes
//! 4×4 register blocks.

use shared_proto::{DType, RemoteError};

use super::{GpuValue, Recorder, WebGpuExecutor, unsupported};

const TEMPLATE: &str = include_str!("linear_quant.wgsl");

/// The WGSL helpers (`q_block`, `q_one`) reading `dtype`'s blocks from `w: array<u32>`.
pub(super) fn format_source(dtype: DType) -> &'static str {
    match dtype {
        DType::Q4_1 => include_str!("q4_1.wgsl"),
        DType::Q8_0 => include_str!("q8_0.wgsl"),
        DType::F16 => include_str!("f16.wgsl"),
        other => unreachable!("{other:?} is not a packed dtype"),
    }
}

/// The kernels walk a weight's rows in blocks of 32. A block dtype's rows are whole blocks by
/// construction (checked when the weight was declared); an f16 row must be too.
pub(super) fn check_rows(dtype: DType, k: u32) -> Result<(), RemoteError> {
    if dtype == DType::F16 && !k.is_multiple_of(32) {
        return Err(unsupported(format!("f16 weight rows of {k}: the WebGPU kernels need a multiple of 32")));
    }
    Ok(())
}

/// Rows of x per invocation for `m` rows: all of them up to 4 (decode), else 4 with 4 columns.
fn block_shape(m: u32) -> (u32, u32) {
    if m <= 4 { (m.max(1), 1) } else { (4, 4) }
}

fn source(dtype: DType, rows: u32, cols: u32, bias: bool) -> String {
    let mut idx = String::new();
    for i in 0..rows {
        idx += &format!("    let x{i} = min(r0 + {i}u, dims.m - 1u) * k4;\n");
    }
    for j in 0..cols {
        idx += &format!("    let w{j} = min(c0 + {j}u, dims.n - 1u) * nb;\n");
    }
    let mut acc = String::new();
    for i in 0..rows {
        for j in 0..cols {
            acc += &format!("    var acc{i}_{j} = 0.0;\n");
        }
    }
    let mut body = String::new();
    for j in 0..cols {
        body += &format!("        let q{j} = q_block(w{j} + b);\n");
    }
    for c in 0..8 {
        for i in 0..rows {
            body += &format!("        let a{i}_{c} = x[x{i} + t + {c}u];\n");
            for j in 0..cols {
                body += &format!("        acc{i}_{j} += dot(a{i}_{c}, q{j}[{c}]);\n");
            }
        }
    }
    let mut store = String::new();
    for i in 0..rows {
        for j in 0..cols {
            store += &format!(
                "    if (r0 + {i}u < dims.m && c0 + {j}u < dims.n) {{ y[(r0 + {i}u) * dims.n + c0 + {j}u] = acc{i}_{j} + bias_at(c0 + {j}u); }}\n"
            );
        }
    }
    TEMPLATE
        .replace("{{FORMAT}}", format_source(dtype))
        .replace("{{BIAS_AT}}", if bias { "bias[col]" } else { "0.0" })
        .replace("{{ROWS}}", &rows.to_string())
        .replace("{{COLS}}", &cols.to_string())
        .replace("{{INDICES}}", &idx)
        .replace("{{ACCUMULATORS}}", &acc)
        .replace("{{BODY}}", &body)
        .replace("{{STORE}}", &store)
}

/// `x[.., K] · w[N, K]ᵀ (+ bias[N])` for a packed `w` (K a whole number of blocks).
pub(super) fn encode(
    ex: &WebGpuExecutor,
    rec: &mut Recorder,
    args: &[&GpuValue],
    out_shape: &[u32],
) -> Result<GpuValue, RemoteError> {
    let (x, w) = (args[0], args[1]);
    let (n, k) = (w.shape[0], w.shape[1]);
    check_rows(w.dtype, k)?;
    let m = x.elements() / k;
    let bias = args.get(2).is_some();
    let tail: Vec<&wgpu::Buffer> = args.get(2).map(|b| &**b.buf).into_iter().collect();
    let out = ex.output(out_shape);
    let (rows, cols) = block_shape(m);
    let groups = (n.div_ceil(64 * cols), m.div_ceil(rows), 1);
    if groups.0 > 65535 || groups.1 > 65535 {
        return Err(unsupported(format!("linear {m}×{k}→{n}: too many workgroups for one dispatch")));
    }
    let key = format!("linear_{:?}_{rows}x{cols}{}", w.dtype, if bias { "_bias" } else { "" });
    let p = ex.pipeline(&key, || source(w.dtype, rows, cols, bias));
    ex.dispatch_with_tail(rec, p, &[&x.buf, &w.buf, &out.buf], &[m, k, n, 0], &tail, groups)?;
    Ok(out)
}
