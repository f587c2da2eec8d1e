//! Fused multi-head self-attention core (online softmax, one invocation per query row).

use shared_proto::RemoteError;

use super::{GpuValue, Recorder, WebGpuExecutor, unsupported};

/// Widest head the kernel's private accumulator holds (`acc` in attention.wgsl).
pub const MAX_HEAD_DIM: u32 = 128;

pub(super) fn encode(
    ex: &WebGpuExecutor,
    rec: &mut Recorder,
    heads: u32,
    args: &[&GpuValue],
) -> Result<GpuValue, RemoteError> {
    let q = args[0];
    let (b, s, h) = (q.shape[0], q.shape[1], q.shape[2]);
    let d = h / heads;
    if d > MAX_HEAD_DIM {
        return Err(unsupported(format!("attention head width {d} (WebGPU kernel handles ≤ {MAX_HEAD_DIM})")));
    }
    let out = ex.output(&q.shape);
    let scale = 1.0f32 / (d as f32).sqrt();
    let rows = b * heads * s;
    let p = ex.pipeline("attention", || include_str!("attention.wgsl").into());
    let bufs: [&wgpu::Buffer; 5] = [&q.buf, &args[1].buf, &args[2].buf, &args[3].buf, &out.buf];
    // One-dimensional: rows stay far below 65535·64 for any sequence the host sends.
    let groups = (rows.div_ceil(64), 1, 1);
    ex.dispatch(rec, p, &bufs, &[s, h, d, scale.to_bits(), heads, rows, 0, 0], groups)?;
    Ok(out)
}
