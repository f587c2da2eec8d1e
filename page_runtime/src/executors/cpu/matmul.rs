//! Matmul family on the CPU.

/// `C[m,n] = A[m,k] · B[k,n]`, row-major f32: a packed GEMM natively from [`GEMM_MIN_ROWS`]
/// rows on; otherwise the i-k-j loop order streams rows of B and C so the inner loop vectorises.
pub fn matmul(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    assert_eq!(a.len(), m * k, "A is not {m}x{k}");
    assert_eq!(b.len(), k * n, "B is not {k}x{n}");
    let mut c = vec![0.0f32; m * n];
    #[cfg(not(target_arch = "wasm32"))]
    if m >= GEMM_MIN_ROWS {
        sgemm((m, k, n), Strided { data: a, rs: k, cs: 1 }, Strided { data: b, rs: n, cs: 1 }, &mut c, false);
        return c;
    }
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

/// Dot product with 8 independent accumulators (lanes `j mod 8`, then summed in lane order,
/// then the tail). In a tab with SIMD128 the same sums in two f32x4 (so bit-equal to the
/// portable loop in the plain build), their multiply-adds fused in the relaxed-SIMD build.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    use core::arch::wasm32::*;
    let n = a.len().min(b.len());
    let (mut lo, mut hi) = (f32x4_splat(0.0), f32x4_splat(0.0));
    // SAFETY: every load reads 4 floats at c·8 (+4) < n − 7 (+4), inside both slices.
    unsafe {
        for c in 0..n / 8 {
            let (pa, pb) = (a.as_ptr().add(8 * c), b.as_ptr().add(8 * c));
            lo = super::simd::madd(v128_load(pa as *const v128), v128_load(pb as *const v128), lo);
            hi = super::simd::madd(v128_load(pa.add(4) as *const v128), v128_load(pb.add(4) as *const v128), hi);
        }
    }
    let l = |v: v128| {
        [f32x4_extract_lane::<0>(v), f32x4_extract_lane::<1>(v), f32x4_extract_lane::<2>(v), f32x4_extract_lane::<3>(v)]
    };
    let mut s = l(lo).into_iter().chain(l(hi)).sum::<f32>();
    for j in n / 8 * 8..n {
        s += a[j] * b[j];
    }
    s
}

/// Dot product with 8 independent accumulators so it vectorises (and sums in a fixed order).
#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
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
    #[cfg(not(target_arch = "wasm32"))]
    if m >= GEMM_MIN_ROWS {
        return linear_gemm(x, w, bias, m, k, n);
    }
    let mut y = vec![0.0f32; m * n];
    let block = block_rows(k, n);
    for j0 in (0..n).step_by(block) {
        let j1 = (j0 + block).min(n);
        linear_block(x, &w[j0 * k..j1 * k], j0, bias, &mut y, k, n);
    }
    y
}

/// From this many rows of X on, a native host multiplies with a packed GEMM (matrixmultiply:
/// BLIS-style panels, AVX/FMA kernels chosen at run time). Below it, packing W costs as much as
/// the product, and the dot kernel reads W once in place (a decode step, a batch of one).
#[cfg(not(target_arch = "wasm32"))]
pub(super) const GEMM_MIN_ROWS: usize = 8;

/// A matrix as the GEMM reads it: its elements, and the strides between rows and columns.
#[cfg(not(target_arch = "wasm32"))]
#[derive(Clone, Copy)]
struct Strided<'a> {
    data: &'a [f32],
    rs: usize,
    cs: usize,
}

#[cfg(not(target_arch = "wasm32"))]
impl Strided<'_> {
    /// Whether every element of a `rows × cols` matrix lies within `data`.
    fn covers(&self, rows: usize, cols: usize) -> bool {
        rows == 0 || cols == 0 || (rows - 1) * self.rs + (cols - 1) * self.cs < self.data.len()
    }
}

/// `C[m,n] = A[m,k] · B[k,n]`, plus C's values when `accumulate` (bias rows), with C row-major:
/// the one place the packed GEMM (matrixmultiply) is called, its bounds checked here.
#[cfg(not(target_arch = "wasm32"))]
fn sgemm((m, k, n): (usize, usize, usize), a: Strided, b: Strided, c: &mut [f32], accumulate: bool) {
    assert!(a.covers(m, k) && b.covers(k, n) && c.len() >= m * n, "operands cover {m}x{k} · {k}x{n}");
    // SAFETY: every element A, B and C name lies within their slices (asserted above); C is
    // exclusively borrowed, its rows n apart do not overlap, and it is initialised where beta = 1
    // reads it (a &mut [f32] always is).
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.data.as_ptr(),
            a.rs as isize,
            a.cs as isize,
            b.data.as_ptr(),
            b.rs as isize,
            b.cs as isize,
            if accumulate { 1.0 } else { 0.0 },
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
}

/// An `m × n` output holding `bias` in every row (zeros without one): what a GEMM adds to.
#[cfg(not(target_arch = "wasm32"))]
fn bias_rows(m: usize, n: usize, bias: Option<&[f32]>) -> Vec<f32> {
    let mut y = vec![0.0f32; m * n];
    if let Some(b) = bias {
        y.chunks_exact_mut(n.max(1)).for_each(|row| row.copy_from_slice(b));
    }
    y
}

/// `Y[m,n] = X[m,k] · W[n,k]ᵀ (+ bias[n])` by a packed GEMM on one thread (native hosts; the
/// tab's wasm keeps the dot kernels, which its SIMD128 build vectorises).
#[cfg(not(target_arch = "wasm32"))]
pub(super) fn linear_gemm(x: &[f32], w: &[f32], bias: Option<&[f32]>, m: usize, k: usize, n: usize) -> Vec<f32> {
    assert_eq!(x.len(), m * k, "X is not {m}x{k}");
    assert_eq!(w.len(), n * k, "W is not {n}x{k}");
    let mut y = bias_rows(m, n, bias);
    // Wᵀ is W read with its strides swapped: element (p, j) of the k×n operand is w[j·k + p].
    sgemm((m, k, n), Strided { data: x, rs: k, cs: 1 }, Strided { data: w, rs: 1, cs: k }, &mut y, bias.is_some());
    y
}

/// [`linear`] with W stored transposed (`wt`: `k × n` row-major), how a native host keeps f32
/// Linear weights (`CpuModel`): the GEMM packs W's panels from contiguous rows instead of
/// gathering them across rows, which doubled its speed on a batch of one sentence. Below
/// [`GEMM_MIN_ROWS`] rows, each row of Y sums the rows of `wt` scaled by x (streamed once).
#[cfg(not(target_arch = "wasm32"))]
pub fn linear_t(x: &[f32], wt: &[f32], bias: Option<&[f32]>, m: usize, k: usize, n: usize) -> Vec<f32> {
    assert_eq!(x.len(), m * k, "X is not {m}x{k}");
    assert_eq!(wt.len(), k * n, "Wᵀ is not {k}x{n}");
    let mut y = bias_rows(m, n, bias);
    if n == 0 {
        return y;
    }
    if m >= GEMM_MIN_ROWS {
        // Over threads by blocks of X's rows: each block packs its rows of X once (a strided
        // gather, as X is row-major) and Wᵀ's contiguous panels; split by columns instead, every
        // part gathered all of X again, which cost as much as the products.
        super::par::row_blocks(&mut y, n, 16, m * n * k, |r0, block| {
            let x_rows = Strided { data: &x[r0 * k..], rs: k, cs: 1 };
            let wt = Strided { data: wt, rs: n, cs: 1 };
            sgemm((block.len() / n, k, n), x_rows, wt, block, bias.is_some());
        });
        return y;
    }
    // A few rows (rarely: batches of one sentence have more): each row of Y sums the rows of
    // Wᵀ scaled by x.
    super::par::row_blocks(&mut y, n, 1, m * n * k, |r0, block| {
        for (i, y_row) in block.chunks_exact_mut(n).enumerate() {
            let x_row = &x[(r0 + i) * k..(r0 + i + 1) * k];
            for (p, &xp) in x_row.iter().enumerate() {
                for (o, w) in y_row.iter_mut().zip(&wt[p * n..(p + 1) * n]) {
                    *o += xp * w;
                }
            }
        }
    });
    y
}

/// `w` (`n × k` row-major) transposed: `k × n`.
#[cfg(not(target_arch = "wasm32"))]
pub fn transpose(w: &[f32], n: usize, k: usize) -> Vec<f32> {
    assert_eq!(w.len(), n * k, "W is not {n}x{k}");
    let mut t = vec![0.0f32; n * k];
    // Tiles, so both sides stay in cache.
    const T: usize = 32;
    for j0 in (0..n).step_by(T) {
        for p0 in (0..k).step_by(T) {
            for j in j0..(j0 + T).min(n) {
                for p in p0..(p0 + T).min(k) {
                    t[p * n + j] = w[j * k + p];
                }
            }
        }
    }
    t
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

    /// Deterministic values in [-1, 1).
    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..len)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// Both paths (packed GEMM from 8 rows on natively, dot kernels below), and natively the
    /// transposed weights' (`linear_t`), against float64, with
    /// shapes that are not multiples of any kernel tile: |got − want| ≤ 1e-5 + 1e-5·Σ|x·w|.
    #[test]
    fn linear_and_matmul_match_float64_on_ragged_shapes() {
        for &(m, k, n) in &[(1, 7, 5), (7, 33, 19), (8, 384, 37), (37, 129, 70), (512, 384, 96)] {
            let (x, w, b) = (values(m * k, 1), values(n * k, 2), values(n, 3));
            let y = linear(&x, &w, Some(&b), m, k, n);
            let c = matmul(&x, &w, m, k, n); // W read as a k×n matrix: another product
            // A native host's transposed weights: the same products, summed in another order.
            #[cfg(not(target_arch = "wasm32"))]
            let yt = linear_t(&x, &transpose(&w, n, k), Some(&b), m, k, n);
            #[cfg(target_arch = "wasm32")]
            let yt = y.clone();
            for i in 0..m {
                for j in 0..n {
                    let terms = (0..k).map(|p| x[i * k + p] as f64 * w[j * k + p] as f64);
                    let (want, mag) = terms.fold((b[j] as f64, b[j].abs() as f64), |(s, a), t| (s + t, a + t.abs()));
                    for (what, got) in [("linear", y[i * n + j] as f64), ("linear_t", yt[i * n + j] as f64)] {
                        assert!(
                            (got - want).abs() <= 1e-5 + 1e-5 * mag,
                            "{what} {m}x{k}x{n} [{i},{j}]: {got} vs {want}"
                        );
                    }
                    let terms = (0..k).map(|p| x[i * k + p] as f64 * w[p * n + j] as f64);
                    let (want, mag) = terms.fold((0.0, 0.0), |(s, a), t| (s + t, a + t.abs()));
                    let got = c[i * n + j] as f64;
                    assert!((got - want).abs() <= 1e-5 + 1e-5 * mag, "matmul {m}x{k}x{n} [{i},{j}]: {got} vs {want}");
                }
            }
        }
    }
}
