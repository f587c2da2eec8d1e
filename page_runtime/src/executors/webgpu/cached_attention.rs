//! Attention over the model's KV cache (`Op::CachedAttention`): one dispatch writes this step's
//! k/v rows into the layer's cache buffers, the next attends over each row's session range (the
//! pass orders the two, so the second sees the first's writes). Cross-attention
//! (`Op::CrossAttention`) is the same kernel over a fixed count of rows a session's memory holds
//! (written once by `PutMemory`), unmasked, with nothing written.

use shared_proto::RemoteError;

use super::attention::MAX_HEAD_DIM;
use super::{GpuValue, Recorder, WebGpuExecutor, flat_groups, unsupported};

/// One layer's cache: `max_tokens` rows of `kv_heads · head_dim` f32, keys and values.
pub(crate) struct LayerCache {
    pub k: wgpu::Buffer,
    pub v: wgpu::Buffer,
}

/// `q[T, heads·d]`, `k, v[T, kv_heads·d]`, `pos[T]`, `kv_start[T]` → `[T, heads·d]`.
pub(super) fn encode(
    ex: &WebGpuExecutor,
    rec: &mut Recorder,
    heads: u32,
    kv_heads: u32,
    args: &[&GpuValue],
    cache: &LayerCache,
) -> Result<GpuValue, RemoteError> {
    let (q, k, v, pos, kv_start) = (args[0], args[1], args[2], args[3], args[4]);
    let t = q.shape[0];
    let d = q.shape[1] / heads;
    if d > MAX_HEAD_DIM {
        return Err(unsupported(format!("cached attention head width {d} (WebGPU kernel handles ≤ {MAX_HEAD_DIM})")));
    }
    let kv_width = kv_heads * d;
    let len = t * kv_width;
    let (groups, stride) = flat_groups(len);
    let write = ex.pipeline("kv_write", || include_str!("kv_write.wgsl").into());
    let bufs: [&wgpu::Buffer; 6] = [&k.buf, &v.buf, &pos.buf, &kv_start.buf, &cache.k, &cache.v];
    ex.dispatch(rec, write, &bufs, &[len, stride, kv_width, 0], groups)?;

    let out = ex.output(&q.shape);
    let rows = t * heads;
    let scale = 1.0f32 / (d as f32).sqrt();
    let p = ex.pipeline("cached_attention", || include_str!("cached_attention.wgsl").into());
    let bufs: [&wgpu::Buffer; 6] = [&q.buf, &pos.buf, &kv_start.buf, &cache.k, &cache.v, &out.buf];
    let words = [rows, heads, d, scale.to_bits(), heads / kv_heads, kv_width, 0, 0];
    ex.dispatch(rec, p, &bufs, &words, (rows.div_ceil(64), 1, 1))?;
    Ok(out)
}

/// `q[T, heads·d]`, `kv_start[T]` → `[T, heads·d]` over `rows` kept rows from each `kv_start`.
pub(super) fn encode_cross(
    ex: &WebGpuExecutor,
    rec: &mut Recorder,
    heads: u32,
    rows: u32,
    args: &[&GpuValue],
    cache: &LayerCache,
) -> Result<GpuValue, RemoteError> {
    let (q, kv_start) = (args[0], args[1]);
    let t = q.shape[0];
    let d = q.shape[1] / heads;
    if d > MAX_HEAD_DIM {
        return Err(unsupported(format!("cross attention head width {d} (WebGPU kernel handles ≤ {MAX_HEAD_DIM})")));
    }
    if rows == 0 {
        return Err(unsupported("cross attention over 0 rows".into()));
    }
    let out = ex.output(&q.shape);
    let scale = 1.0f32 / (d as f32).sqrt();
    let p = ex.pipeline("cached_attention", || include_str!("cached_attention.wgsl").into());
    // `pos` is not read when `fixed_rows` is set: kv_start is bound in its place.
    let bufs: [&wgpu::Buffer; 6] = [&q.buf, &kv_start.buf, &kv_start.buf, &cache.k, &cache.v, &out.buf];
    let words = [t * heads, heads, d, scale.to_bits(), 1, heads * d, rows, 0];
    ex.dispatch(rec, p, &bufs, &words, ((t * heads).div_ceil(64), 1, 1))?;
    Ok(out)
}
