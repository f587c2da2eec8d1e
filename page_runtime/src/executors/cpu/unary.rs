//! Unary element-wise family.

/// Exact (erf, not tanh) GELU, `x·Φ(x) = x/2·(1 + erf(x/√2))`, with erf within 1e-6
/// ([`super::erff`]), over threads in blocks the loop vectorises.
pub fn gelu(x: &[f32]) -> Vec<f32> {
    let mut y = x.to_vec();
    super::par::row_blocks(&mut y, 1, 1024, x.len() * 24, |_, block| {
        for v in block.iter_mut() {
            *v = 0.5 * *v * (1.0 + super::erff::erf(*v * std::f32::consts::FRAC_1_SQRT_2));
        }
    });
    y
}

/// `min(max(x, lo), hi)` (ReLU6: 0, 6).
pub fn clamp(x: &[f32], lo: f32, hi: f32) -> Vec<f32> {
    x.iter().map(|&v| v.max(lo).min(hi)).collect()
}
