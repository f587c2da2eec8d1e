/// `C[m,n] = A[m,k] · B[k,n]`, row-major f32. The i-k-j loop order streams rows of B and C so
/// the inner loop vectorises; no blocking yet (the CPU path is a fallback, not the fast path).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_known_product() {
        // [[1,2,3],[4,5,6]] · [[7,8],[9,10],[11,12]] = [[58,64],[139,154]]
        let c = matmul(&[1., 2., 3., 4., 5., 6.], &[7., 8., 9., 10., 11., 12.], 2, 3, 2);
        assert_eq!(c, vec![58., 64., 139., 154.]);
    }
}
