//! Numerical tolerances used to compare executors, stated once.

/// Element-wise forward-error bound for an f32 matmul computed in any summation order, against
/// another f32 result: each side is within γ_k·Σ_p|a_ip·b_pj| of the exact value (Higham,
/// *Accuracy and Stability of Numerical Algorithms*, §3.5) with γ_k ≈ k·u, so two results differ
/// by at most twice that. Returned per output element, row-major.
pub fn matmul_bound(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let abs_a: Vec<f32> = a.iter().map(|x| x.abs()).collect();
    let abs_b: Vec<f32> = b.iter().map(|x| x.abs()).collect();
    let gamma = 2.0 * k as f32 * (f32::EPSILON / 2.0);
    super::cpu::matmul(&abs_a, &abs_b, m, k, n).into_iter().map(|s| 2.0 * gamma * s + f32::MIN_POSITIVE).collect()
}

/// Largest absolute and relative difference, and how many elements broke their bound.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Comparison {
    pub max_abs: f32,
    pub max_rel: f32,
    pub violations: usize,
}

pub fn compare(got: &[f32], want: &[f32], bound: &[f32]) -> Comparison {
    assert_eq!(got.len(), want.len(), "result lengths differ");
    assert_eq!(bound.len(), want.len(), "bound length differs");
    let mut c = Comparison { max_abs: 0.0, max_rel: 0.0, violations: 0 };
    for ((g, w), b) in got.iter().zip(want).zip(bound) {
        let d = (g - w).abs();
        // NaN never satisfies `d <= b`, so a NaN output counts as a violation.
        if d.is_nan() || d > *b {
            c.violations += 1;
        }
        c.max_abs = c.max_abs.max(d);
        if w.abs() > 1e-6 {
            c.max_rel = c.max_rel.max(d / w.abs());
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_catches_a_wrong_element_and_nan() {
        let (a, b) = ([1.0f32, 2.0, 3.0, 4.0], [0.5f32, -1.0, 2.0, 0.25]);
        let want = crate::executors::cpu::matmul(&a, &b, 2, 2, 2);
        let bound = matmul_bound(&a, &b, 2, 2, 2);
        assert_eq!(compare(&want, &want, &bound).violations, 0);
        let mut wrong = want.clone();
        wrong[3] += 1e-3;
        assert_eq!(compare(&wrong, &want, &bound).violations, 1);
        wrong[0] = f32::NAN;
        assert_eq!(compare(&wrong, &want, &bound).violations, 2);
    }
}
