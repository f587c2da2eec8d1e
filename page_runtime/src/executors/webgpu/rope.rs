//! Rotary position embedding (interleaved pairs, GGUF's layout).

use shared_proto::{RemoteError, Tensor};

use super::{GpuValue, Recorder, WebGpuExecutor, flat_groups};

/// θ_i = base^(-2i/d) for i < d/2, in f64, each as (hi, lo) f32 with hi rounded to 11 significant
/// bits: the kernel's pos·hi is then exact (pos < 2^13) and lo carries the rest.
fn theta_table(base: f32, d: u32) -> Vec<f32> {
    (0..d / 2)
        .flat_map(|i| {
            let t = (base as f64).powf(-2.0 * i as f64 / d as f64);
            let hi = f32::from_bits((t as f32).to_bits() & !0x1fff);
            [hi, (t - hi as f64) as f32]
        })
        .collect()
}

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
    let d = width / heads;
    let theta = ex
        .rope_tables
        .borrow_mut()
        .entry((base.to_bits(), d))
        .or_insert_with(|| ex.weight_buffer(&Tensor::from_f32(vec![d / 2, 2], &theta_table(base, d))))
        .clone();
    let out = ex.output(&x.shape);
    let pairs = x.elements() / 2;
    let (groups, stride) = flat_groups(pairs);
    let p = ex.pipeline("rope", || include_str!("rope.wgsl").into());
    ex.dispatch(rec, p, &[&x.buf, &pos.buf, &theta, &out.buf], &[pairs, stride, width, d], groups)?;
    Ok(out)
}
