//! Unary element-wise family.

/// Exact GELU, `x·Φ(x) = x/2·(1 + erf(x/√2))`, evaluated in f64.
pub fn gelu(x: &[f32]) -> Vec<f32> {
    x.iter().map(|&v| (0.5 * v as f64 * (1.0 + libm::erf(v as f64 / std::f64::consts::SQRT_2))) as f32).collect()
}

/// `min(max(x, lo), hi)` (ReLU6: 0, 6).
pub fn clamp(x: &[f32], lo: f32, hi: f32) -> Vec<f32> {
    x.iter().map(|&v| v.max(lo).min(hi)).collect()
}
