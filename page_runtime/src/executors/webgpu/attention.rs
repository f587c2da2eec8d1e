//! Fused multi-head self-attention core.

use shared_proto::RemoteError;

use super::{GpuValue, Recorder, WebGpuExecutor, unsupported};

/// Longest sequence the kernel keeps in workgroup memory (`MAX_S` in attention.wgsl).
pub const MAX_SEQ: u32 = 256;

pub(super) fn encode(
    ex: &WebGpuExecutor,
    rec: &mut Recorder,
    heads: u32,
    args: &[&GpuValue],
) -> Result<GpuValue, RemoteError> {
    let q = args[0];
    let (b, s, h) = (q.shape[0], q.shape[1], q.shape[2]);
    if s > MAX_SEQ {
        return Err(unsupported(format!("attention over {s} positions (WebGPU kernel handles ≤ {MAX_SEQ})")));
    }
    let d = h / heads;
    let out = ex.output(&q.shape);
    let scale = 1.0f32 / (d as f32).sqrt();
    let p = ex.pipeline("attention", || include_str!("attention.wgsl").into());
    let bufs: [&wgpu::Buffer; 5] = [&q.buf, &args[1].buf, &args[2].buf, &args[3].buf, &out.buf];
    ex.dispatch(rec, p, &bufs, &[s, h, d, scale.to_bits()], (s, heads, b))?;
    Ok(out)
}
