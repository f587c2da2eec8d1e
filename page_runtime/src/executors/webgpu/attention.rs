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
    if h / heads > MAX_HEAD_DIM {
        return Err(unsupported(format!(
            "attention head width {} (WebGPU kernel handles ≤ {MAX_HEAD_DIM})",
            h / heads
        )));
    }
    let layout = Layout { b, s, h, heads, ld: h, offsets: [0, 0, 0] };
    dispatch(ex, rec, [&*q.buf, &args[1].buf, &args[2].buf], &args[3].buf, layout)
}

/// Attention over a packed `[B, S, 3H]` projection (q | k | v column ranges), as produced by the
/// fused q/k/v linear.
pub(super) fn encode_packed(
    ex: &WebGpuExecutor,
    rec: &mut Recorder,
    heads: u32,
    qkv: &GpuValue,
    mask: &GpuValue,
    h: u32,
) -> Result<GpuValue, RemoteError> {
    let (b, s) = (qkv.shape[0], qkv.shape[1]);
    if (h / heads) > MAX_HEAD_DIM {
        return Err(unsupported(format!(
            "attention head width {} (WebGPU kernel handles ≤ {MAX_HEAD_DIM})",
            h / heads
        )));
    }
    let layout = Layout { b, s, h, heads, ld: 3 * h, offsets: [0, h, 2 * h] };
    dispatch(ex, rec, [&qkv.buf, &qkv.buf, &qkv.buf], &mask.buf, layout)
}

/// Where q, k and v rows live: row stride `ld`, column offset per operand.
struct Layout {
    b: u32,
    s: u32,
    h: u32,
    heads: u32,
    ld: u32,
    offsets: [u32; 3],
}

fn dispatch(
    ex: &WebGpuExecutor,
    rec: &mut Recorder,
    qkv: [&wgpu::Buffer; 3],
    mask: &wgpu::Buffer,
    l: Layout,
) -> Result<GpuValue, RemoteError> {
    let d = l.h / l.heads;
    let out = ex.output(&[l.b, l.s, l.h]);
    let scale = 1.0f32 / (d as f32).sqrt();
    let rows = l.b * l.heads * l.s;
    let p = ex.pipeline("attention", || include_str!("attention.wgsl").into());
    let bufs: [&wgpu::Buffer; 5] = [qkv[0], qkv[1], qkv[2], mask, &out.buf];
    // One-dimensional: rows stay far below 65535·64 for any sequence the host sends.
    let groups = (rows.div_ceil(64), 1, 1);
    let words = [l.s, l.h, d, scale.to_bits(), l.heads, rows, l.ld, 0, l.offsets[0], l.offsets[1], l.offsets[2], 0];
    ex.dispatch(rec, p, &bufs, &words, groups)?;
    Ok(out)
}
