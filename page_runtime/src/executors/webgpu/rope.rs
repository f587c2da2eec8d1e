//! Rotary position embedding (interleaved pairs, GGUF's layout).

use shared_proto::RemoteError;

use super::{GpuValue, Recorder, WebGpuExecutor, flat_groups};

/// `x[T, heads·d]`, `pos[T]` → rotated `x`.
pub(super) fn encode(
    ex: &WebGpuExecutor,
    rec: &mut Recorder,
    heads: u32,
    base: f32,
    x: &GpuValue,
    pos: &GpuValue,
) -> Result<GpuValue, RemoteError> {
    let width = x.shape[1];
    let out = ex.output(&x.shape);
    let pairs = x.elements() / 2;
    let (groups, stride) = flat_groups(pairs);
    let p = ex.pipeline("rope", || include_str!("rope.wgsl").into());
    let words = [pairs, stride, width, width / heads, base.to_bits(), 0, 0, 0];
    ex.dispatch(rec, p, &[&x.buf, &pos.buf, &out.buf], &words, groups)?;
    Ok(out)
}
