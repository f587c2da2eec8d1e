//! Binary element-wise family; `b` broadcasts over `a`'s leading dims.

pub fn add(a: &[f32], b: &[f32]) -> Vec<f32> {
    broadcast(a, b, |x, y| x + y)
}

pub fn mul(a: &[f32], b: &[f32]) -> Vec<f32> {
    broadcast(a, b, |x, y| x * y)
}

fn broadcast(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> Vec<f32> {
    assert!(!b.is_empty() && a.len().is_multiple_of(b.len()), "b must tile a");
    a.chunks_exact(b.len()).flat_map(|row| row.iter().zip(b).map(|(&x, &y)| f(x, y))).collect()
}

/// `silu(gate) · up`, element-wise (SwiGLU); `exp` branch-free (`expf.rs`): libm's was 3 % of
/// a prefill in a tab.
pub fn silu_mul(gate: &[f32], up: &[f32]) -> Vec<f32> {
    assert_eq!(gate.len(), up.len(), "gate and up of one shape");
    gate.iter().zip(up).map(|(&g, &u)| g / (1.0 + super::expf::exp(-g)) * u).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silu_mul_matches_f64() {
        let gate = [-120.0f32, -20.0, -1.5, 0.0, 0.3, 4.0, 30.0, 95.0];
        let up = [1.0f32, 2.0, -0.5, 7.0, 1.0, -3.0, 0.25, 0.5];
        for ((g, u), got) in gate.iter().zip(&up).zip(silu_mul(&gate, &up)) {
            let (g, u) = (*g as f64, *u as f64);
            let want = g / (1.0 + (-g).exp()) * u;
            assert!((got as f64 - want).abs() <= 1e-7 + 1e-6 * want.abs(), "{got} vs {want}");
        }
    }
}
