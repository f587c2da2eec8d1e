//! Matmul family on the CPU.

/// `C[m,n] = A[m,k] · B[k,n]`, row-major f32. The i-k-j loop order streams rows of B and C so
/// the inner loop vectorises.
pub fn matmul(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    assert_eq!(a.len(), m * k, "A is not {m}x{k}");
    assert_eq!(b.len(), k * n, "B is not {k}x{n}");
    let mut c = vec![0.0f32; m * n];
    for i in 0..m {
        let c_row = &mut c[i * n..(i + 1) * n];
        for p in 0..k {
            let a_ip = a[i * k + p];
            let b_row = &b[p * n..(p + 1) * n];
            for (c_ij, b_pj) in c_row.iter_mut().zip(b_row) {
                *c_ij += a_ip * b_pj;
            }
        }
    }
    c
}

/// Dot product with 8 independent accumulators so it vectorises (and sums in a fixed order).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for j in 0..8 {
            acc[j] += x[j] * y[j];
        }
    }
    let mut s = acc.iter().sum::<f32>();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// `Y[m,n] = X[m,k] · W[n,k]ᵀ (+ bias[n])`: both operands walked along contiguous rows.
pub fn linear(x: &[f32], w: &[f32], bias: Option<&[f32]>, m: usize, k: usize, n: usize) -> Vec<f32> {
    assert_eq!(x.len(), m * k, "X is not {m}x{k}");
    assert_eq!(w.len(), n * k, "W is not {n}x{k}");
    // Over threads by ranges of W's rows: each output is the same dot in either case.
    super::par::columns(m, n, 4, m * n * k, |j0, j1| {
        linear_range(x, &w[j0 * k..j1 * k], bias.map(|b| &b[j0..j1]), m, k, j1 - j0)
    })
}

/// [`linear`] on one thread.
fn linear_range(x: &[f32], w: &[f32], bias: Option<&[f32]>, m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut y = vec![0.0f32; m * n];
    let block = block_rows(k, n);
    for j0 in (0..n).step_by(block) {
        let j1 = (j0 + block).min(n);
        linear_block(x, &w[j0 * k..j1 * k], j0, bias, &mut y, k, n);
    }
    y
}

/// Rows of W per block: small enough (64 KiB of f32) to stay in cache while every input row
/// passes by.
pub(super) fn block_rows(k: usize, n: usize) -> usize {
    (64 * 1024 / (k * 4)).clamp(1, n.max(1))
}

/// Columns `j0..` of `Y` — one per row of `w_rows` (each `k` long) — for every row of `X`.
#[inline]
pub(super) fn linear_block(
    x: &[f32],
    w_rows: &[f32],
    j0: usize,
    bias: Option<&[f32]>,
    y: &mut [f32],
    k: usize,
    n: usize,
) {
    for (i, y_row) in y.chunks_exact_mut(n).enumerate() {
        let x_row = &x[i * k..(i + 1) * k];
        for (r, w_row) in w_rows.chunks_exact(k).enumerate() {
            y_row[j0 + r] = dot(x_row, w_row) + bias.map_or(0.0, |b| b[j0 + r]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_known_product() {
        // [[1,2,3],[4,5,6]] · [[7,8],[9,10],[11,12]] = [[58,64],[139,154]]
        let c = matmul(&[1., 2., 3., 4., 5., 6.], &[7., 8., 9., 10., 11., 12.], 2, 3, 2);
        assert_eq!(c, vec![58., 64., 139., 154.]);
    }

    #[test]
    fn linear_is_matmul_with_transposed_weights_plus_bias() {
        let x = [1., 2., 3., 4., 5., 6.]; // 2x3
        let w = [7., 9., 11., 8., 10., 12.]; // 2x3 = [[7,8],[9,10],[11,12]]ᵀ
        assert_eq!(linear(&x, &w, Some(&[1.0, -1.0]), 2, 3, 2), vec![59., 63., 140., 153.]);
    }
}
