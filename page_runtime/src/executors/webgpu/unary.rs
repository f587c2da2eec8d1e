//! Unary element-wise family. One WGSL template; each op substitutes its expression.

use shared_proto::{Op, RemoteError};

use super::{GpuValue, Recorder, WebGpuExecutor, flat_groups};

const TEMPLATE: &str = include_str!("unary.wgsl");
/// Exact (erf) GELU of `x`, as BERT uses; shared with the fused linear epilogue.
pub(super) const GELU: &str = "0.5 * x * (1.0 + erf_approx(x * 0.70710678118654752))";

fn expr(op: &Op) -> (&'static str, &'static str) {
    match op {
        Op::Gelu => ("unary_gelu", GELU),
        // As the CPU: min(max(x, lo), hi).
        Op::Clamp { .. } => ("unary_clamp", "min(max(x, lo), hi)"),
        other => unreachable!("{} is not unary", other.name()),
    }
}

pub(super) fn encode(ex: &WebGpuExecutor, rec: &mut Recorder, op: &Op, x: &GpuValue) -> Result<GpuValue, RemoteError> {
    let (key, e) = expr(op);
    let pipeline = ex.pipeline(key, || format!("{}{}", super::ERF, TEMPLATE.replace("{{expr}}", e)));
    let out = ex.output(&x.shape);
    let len = x.elements();
    let (groups, stride) = flat_groups(len);
    let (lo, hi) = match op {
        Op::Clamp { min, max } => (*min, *max),
        _ => (0.0, 0.0),
    };
    ex.dispatch(rec, pipeline, &[&x.buf, &out.buf], &[len, stride, lo.to_bits(), hi.to_bits()], groups)?;
    Ok(out)
}
