//! Binary element-wise family. One WGSL template; each op substitutes its expression.

use shared_proto::{Op, RemoteError};

use super::{GpuValue, Recorder, WebGpuExecutor, flat_groups};

const TEMPLATE: &str = include_str!("binary.wgsl");

fn expr(op: &Op) -> (&'static str, &'static str) {
    match op {
        Op::Add => ("binary_add", "x + y"),
        Op::Mul => ("binary_mul", "x * y"),
        // silu(gate) · up; shapes are equal, so b never wraps.
        Op::SiluMul => ("binary_silu_mul", "x / (1.0 + exp(-x)) * y"),
        other => unreachable!("{} is not binary", other.name()),
    }
}

/// `a (op) b`, with `b` repeating over `a`'s leading dims (shapes checked by `shapes::infer`).
pub(super) fn encode(
    ex: &WebGpuExecutor,
    rec: &mut Recorder,
    op: &Op,
    a: &GpuValue,
    b: &GpuValue,
) -> Result<GpuValue, RemoteError> {
    let (key, e) = expr(op);
    let pipeline = ex.pipeline(key, || TEMPLATE.replace("{{expr}}", e));
    let out = ex.output(&a.shape);
    let len = a.elements();
    let (groups, stride) = flat_groups(len);
    ex.dispatch(rec, pipeline, &[&a.buf, &b.buf, &out.buf], &[len, stride, b.elements(), 0], groups)?;
    Ok(out)
}
