//! Linear and Gather over f16 weights (IEEE half, little-endian: how CTranslate2 stores
//! Whisper's). Each half is widened to f32 as it is read. The widening is exact (every finite
//! half is an f32), so a model keeps half of f32's memory. Natively and for prefill the sums are
//! those of [`matmul::linear`] in the same order (natively from 8 rows on: its packed GEMM over
//! the range widened whole): exactly what the weights widened at load would give. A decode step in a tab (SIMD128) sums each row in another f32 order, within f32
//! rounding of that. Weights with an infinity or NaN are refused at load ([`first_not_finite`]), which lets
//! the vector widening skip the special cases.

use shared_proto::{ErrorKind, RemoteError};

use super::matmul;

/// Index of the first half in `w` that is ±inf or NaN, if any.
pub fn first_not_finite(w: &[u8]) -> Option<usize> {
    w.chunks_exact(2).position(|c| u16::from_le_bytes([c[0], c[1]]) & 0x7c00 == 0x7c00)
}

/// `src` (halves, `2 · dst.len()` bytes, all finite) widened into `dst`.
pub fn widen_into(src: &[u8], dst: &mut [f32]) {
    assert_eq!(src.len(), 2 * dst.len(), "one half per float");
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    {
        simd128::widen_into(src, dst);
    }
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("f16c") && std::is_x86_feature_detected!("avx") {
            // SAFETY: the CPU has F16C and AVX (just checked); lengths asserted above.
            unsafe { f16c::widen_into(src, dst) };
            return;
        }
    }
    #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
    for (d, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *d = shared_proto::quant::f16_to_f32(u16::from_le_bytes([c[0], c[1]]));
    }
}

/// `Y[m,n] = X[m,k] · W[n,k]ᵀ (+ bias[n])` with `W` as `n · k` halves: [`matmul::linear`] over
/// blocks of `W`'s rows widened into a scratch that stays in cache while every row of `X` passes.
pub fn linear(x: &[f32], w: &[u8], bias: Option<&[f32]>, m: usize, k: usize, n: usize) -> Vec<f32> {
    assert_eq!(x.len(), m * k, "X is not {m}x{k}");
    assert_eq!(w.len(), 2 * n * k, "W is not {n}x{k} halves");
    if k == 0 {
        return matmul::linear(x, &[], bias, m, k, n);
    }
    // Over threads by ranges of W's rows (multiples of 4: the decode kernel's quads).
    super::par::columns(m, n, 4, m * n * k, |j0, j1| {
        linear_range(x, &w[2 * j0 * k..2 * j1 * k], bias.map(|b| &b[j0..j1]), m, k, j1 - j0)
    })
}

/// [`linear`] on one thread.
fn linear_range(x: &[f32], w: &[u8], bias: Option<&[f32]>, m: usize, k: usize, n: usize) -> Vec<f32> {
    #[cfg(not(target_arch = "wasm32"))]
    if m >= matmul::GEMM_MIN_ROWS {
        // The range widened whole (n·k floats, read by all m rows), then the f32 GEMM.
        let mut wide = vec![0.0f32; n * k];
        widen_into(w, &mut wide);
        return matmul::linear_gemm(x, &wide, bias, m, k, n);
    }
    let mut y = vec![0.0f32; m * n];
    let done = decode_rows(x, w, bias, &mut y, (m, k, n));
    // The f32 kernel's blocks of rows, widened first: one row at a time for a decode step
    // (each widened row is read by few rows of X).
    let block = if m <= 4 { 1 } else { matmul::block_rows(k, n) };
    let mut scratch = vec![0.0f32; block * k];
    for j0 in (done..n).step_by(block) {
        let j1 = (j0 + block).min(n);
        let rows = &mut scratch[..(j1 - j0) * k];
        widen_into(&w[2 * j0 * k..2 * j1 * k], rows);
        matmul::linear_block(x, rows, j0, bias, &mut y, k, n);
    }
    y
}

/// A decode step in a tab (M ≤ 4): halves widened in registers, four rows of W at a time, with
/// no scratch to write and read back. Returns the rows of W it did (a multiple of four); the
/// rest, and every other case, go through [`linear`]'s widened blocks.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
fn decode_rows(x: &[f32], w: &[u8], bias: Option<&[f32]>, y: &mut [f32], (m, k, n): (usize, usize, usize)) -> usize {
    if m > 4 {
        return 0;
    }
    let quads = n / 4 * 4;
    let mut scaled = vec![0f32; k];
    for (i, y_row) in y.chunks_exact_mut(n).enumerate() {
        // The widening leaves each half 2¹¹² too small; scaling x by 2¹¹² instead (exact, a
        // power of two, while |x| < 2¹⁵ keeps it finite) saves a multiply per weight. Each
        // product is then the same real number, so the same f32: the sums are unchanged.
        let row = &x[i * k..(i + 1) * k];
        let prescale = row.iter().all(|v| v.abs() < 32768.0);
        if prescale {
            // The last k mod 8 values stay as they are: `dot4` widens those halves one by one.
            for (at, (s, v)) in scaled.iter_mut().zip(row).enumerate() {
                *s = if at < k / 8 * 8 { v * f32::from_bits((127 + 112) << 23) } else { *v };
            }
        }
        for j in (0..quads).step_by(4) {
            // SAFETY: row i of x (and `scaled`) has k floats, rows j..j + 4 of w (j + 4 ≤ n)
            // have k halves each (lengths asserted by `linear`), and y_row[j..j + 4] is inside
            // the row.
            unsafe {
                let (wj, yj) = (w.as_ptr().add(2 * j * k), y_row.as_mut_ptr().add(j));
                if prescale {
                    simd128::dot4::<false>(scaled.as_ptr(), wj, k, yj);
                } else {
                    simd128::dot4::<true>(row.as_ptr(), wj, k, yj);
                }
            }
        }
        if let Some(b) = bias {
            for (v, b) in y_row[..quads].iter_mut().zip(b) {
                *v += b;
            }
        }
    }
    quads
}

#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
fn decode_rows(_: &[f32], _: &[u8], _: Option<&[f32]>, _: &mut [f32], _: (usize, usize, usize)) -> usize {
    0
}

/// Rows `ids` of a `[V, h]` table of halves, as f32.
pub fn gather(w: &[u8], h: usize, ids: &[i32]) -> Result<Vec<f32>, RemoteError> {
    let v = w.len() / (2 * h.max(1));
    let mut out = vec![0.0f32; ids.len() * h];
    for (o, &id) in out.chunks_exact_mut(h.max(1)).zip(ids) {
        if id < 0 || id as usize >= v {
            return Err(RemoteError::new(
                ErrorKind::BadInput,
                format!("gather: id {id} outside the table of {v} rows"),
            ));
        }
        let r = id as usize;
        widen_into(&w[2 * r * h..2 * (r + 1) * h], o);
    }
    Ok(out)
}

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod simd128 {
    use core::arch::wasm32::*;

    /// Eight halves → two f32x4, exact for every finite half, without branches: the half's
    /// exponent and mantissa land in an f32's fields as a number 2¹¹² too small (a subnormal
    /// half becomes an f32 subnormal, which wasm keeps), and one multiply rescales.
    #[inline(always)]
    fn halves8(h: v128) -> (v128, v128) {
        let (a, b) = halves8_small(h);
        let s = f32x4_splat(f32::from_bits((127 + 112) << 23));
        (f32x4_mul(a, s), f32x4_mul(b, s))
    }

    /// [`halves8`] without its rescale: each value 2¹¹² too small.
    #[inline(always)]
    fn halves8_small(h: v128) -> (v128, v128) {
        // Low 16 bits of each f32: the mantissa's last 3 bits; high 16: sign, 3 zeros, the
        // exponent and the mantissa's first 7 bits.
        let lo = i16x8_shl(h, 13);
        let hi = v128_and(i16x8_shr(h, 3), i16x8_splat(0x8fffu16 as i16));
        let a = i8x16_shuffle::<0, 1, 16, 17, 2, 3, 18, 19, 4, 5, 20, 21, 6, 7, 22, 23>(lo, hi);
        let b = i8x16_shuffle::<8, 9, 24, 25, 10, 11, 26, 27, 12, 13, 28, 29, 14, 15, 30, 31>(lo, hi);
        (a, b)
    }

    /// `y[r] = x · w_r` for four consecutive rows of `k` halves at `w`: the halves widened in
    /// registers, four rows at once so their sums' chains overlap and each `x` load serves
    /// four rows. Written with raw pointers: bounds checks and a lane-by-lane reduction made
    /// the first, slice-based version 2× slower than the f32 kernel on cache-resident rows.
    ///
    /// With `RESCALE` false, `x` must be the row scaled by 2¹¹² (the halves are left 2¹¹² too
    /// small) except for the last `k mod 8` values, which are widened one by one.
    ///
    /// # Safety
    /// `x` points at `k` floats, `w` at `4·k` halves, `y` at 4 floats.
    #[inline(always)]
    pub unsafe fn dot4<const RESCALE: bool>(x: *const f32, w: *const u8, k: usize, y: *mut f32) {
        // SAFETY (whole body): every offset stays inside the extents the caller guarantees.
        unsafe {
            let mut acc = [f32x4_splat(0.0); 8];
            let rows = [w, w.add(2 * k), w.add(4 * k), w.add(6 * k)];
            let mut i = 0;
            while i + 8 <= k {
                let x0 = v128_load(x.add(i) as *const v128);
                let x1 = v128_load(x.add(i + 4) as *const v128);
                for r in 0..4 {
                    let h = v128_load(rows[r].add(2 * i) as *const v128);
                    let (a, b) = if RESCALE { halves8(h) } else { halves8_small(h) };
                    acc[2 * r] = super::super::simd::madd(a, x0, acc[2 * r]);
                    acc[2 * r + 1] = super::super::simd::madd(b, x1, acc[2 * r + 1]);
                }
                i += 8;
            }
            for r in 0..4 {
                let t = f32x4_add(acc[2 * r], acc[2 * r + 1]);
                let mut s = (f32x4_extract_lane::<0>(t) + f32x4_extract_lane::<1>(t))
                    + (f32x4_extract_lane::<2>(t) + f32x4_extract_lane::<3>(t));
                for j in i..k {
                    let h = u16::from_le_bytes([*rows[r].add(2 * j), *rows[r].add(2 * j + 1)]);
                    s += *x.add(j) * shared_proto::quant::f16_to_f32(h);
                }
                *y.add(r) = s;
            }
        }
    }

    pub fn widen_into(src: &[u8], dst: &mut [f32]) {
        let n8 = dst.len() / 8 * 8;
        // SAFETY: i + 8 ≤ n8 ≤ dst.len() floats and 2·(i + 8) ≤ src.len() bytes (the caller
        // asserted src.len() == 2·dst.len()); wasm loads and stores need no alignment.
        unsafe {
            for i in (0..n8).step_by(8) {
                let (a, b) = halves8(v128_load(src.as_ptr().add(2 * i) as *const v128));
                v128_store(dst.as_mut_ptr().add(i) as *mut v128, a);
                v128_store(dst.as_mut_ptr().add(i + 4) as *mut v128, b);
            }
        }
        for i in n8..dst.len() {
            dst[i] = shared_proto::quant::f16_to_f32(u16::from_le_bytes([src[2 * i], src[2 * i + 1]]));
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod f16c {
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU has F16C and AVX; `src.len() == 2 · dst.len()`.
    #[target_feature(enable = "avx,f16c")]
    pub unsafe fn widen_into(src: &[u8], dst: &mut [f32]) {
        let n8 = dst.len() / 8 * 8;
        // SAFETY: i + 8 ≤ n8 floats of dst and 16 bytes from 2·i inside src; unaligned loads
        // and stores only.
        unsafe {
            for i in (0..n8).step_by(8) {
                let h = _mm_loadu_si128(src.as_ptr().add(2 * i) as *const __m128i);
                _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
            }
        }
        for i in n8..dst.len() {
            dst[i] = shared_proto::quant::f16_to_f32(u16::from_le_bytes([src[2 * i], src[2 * i + 1]]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared_proto::quant::{f16_to_f32, f32_to_f16};

    fn halves(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|&x| f32_to_f16(x).to_le_bytes()).collect()
    }

    #[test]
    fn widening_is_exact_for_every_finite_half() {
        let all: Vec<u16> = (0..=u16::MAX).filter(|h| h & 0x7c00 != 0x7c00).collect();
        let bytes: Vec<u8> = all.iter().flat_map(|h| h.to_le_bytes()).collect();
        let mut out = vec![0.0f32; all.len()];
        widen_into(&bytes, &mut out);
        for (h, x) in all.iter().zip(&out) {
            assert_eq!(x.to_bits(), f16_to_f32(*h).to_bits(), "{h:#06x}");
        }
    }

    #[test]
    fn linear_and_gather_equal_the_f32_kernels_on_the_widened_values() {
        let (m, k, n) = (5, 40, 7);
        let w: Vec<f32> = (0..n * k).map(|i| ((i * 37 % 101) as f32 - 50.0) * 1e-3).collect();
        let packed = halves(&w);
        let wide: Vec<f32> = packed.chunks_exact(2).map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]]))).collect();
        let bias: Vec<f32> = (0..n).map(|j| j as f32 * 0.5).collect();
        for rows in [1, m] {
            let x: Vec<f32> = (0..rows * k).map(|i| (i % 13) as f32 - 6.0).collect();
            let got = linear(&x, &packed, Some(&bias), rows, k, n);
            assert_eq!(got, matmul::linear(&x, &wide, Some(&bias), rows, k, n), "{rows} rows");
        }
        let g = gather(&packed, k, &[3, 0, 6]).unwrap();
        assert_eq!(g[..k], wide[3 * k..4 * k]);
        assert_eq!(g[2 * k..], wide[6 * k..7 * k]);
        assert!(gather(&packed, k, &[7]).is_err(), "id past the table");
    }

    #[test]
    fn infinities_and_nans_are_found() {
        assert_eq!(first_not_finite(&halves(&[1.0, 2.0])), None);
        assert_eq!(first_not_finite(&[0, 0x3c, 0, 0x7c]), Some(1), "+inf");
        assert_eq!(first_not_finite(&[0x01, 0xfe]), Some(0), "NaN");
    }
}
