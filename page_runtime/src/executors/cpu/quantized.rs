//! Linear and Gather over block-quantized weights (Q4_1, Q8_0, ggml layouts). The blocks stay as
//! they came; each is dequantized inside the kernel when read, so no f32 copy of a quantized
//! weight ever exists. A block of `w = d·q + m` dotted with `x` is `d·Σq·x + m·Σx`: the kernels
//! unpack `q` once per block and reuse it for every row of `x`, so one decode step (one row)
//! reads each weight block once.

use shared_proto::quant::{BlockQ4_1, BlockQ8_0, QK, dequantize_row, f16_to_f32};
use shared_proto::{DType, ErrorKind, RemoteError};

use super::par;
use super::quantized_int::activations;

/// Bytes of one block of `dtype` (a block dtype).
fn block_bytes(dtype: DType) -> usize {
    dtype.block().expect("a block dtype").1
}

/// `q` of the block at the start of `b` as f32, and its `(d, m)`.
#[inline(always)]
fn unpack(dtype: DType, b: &[u8], q: &mut [f32; QK]) -> (f32, f32) {
    let d = f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
    if dtype == DType::Q4_1 {
        let m = f16_to_f32(u16::from_le_bytes([b[2], b[3]]));
        let qs: &[u8; QK / 2] = b[4..BlockQ4_1::BYTES].try_into().expect("block size");
        for j in 0..QK / 2 {
            q[j] = (qs[j] & 0x0f) as f32;
            q[j + QK / 2] = (qs[j] >> 4) as f32;
        }
        (d, m)
    } else {
        let qs: &[u8; QK] = b[2..BlockQ8_0::BYTES].try_into().expect("block size");
        for j in 0..QK {
            q[j] = qs[j] as i8 as f32;
        }
        (d, 0.0)
    }
}

/// `a·b + c`, fused when the kernel is compiled with FMA (unfused `mul_add` would be a libm call).
#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA { a.mul_add(b, c) } else { a * b + c }
}

/// `q ⊙ x` of one block summed into 8 lanes (no horizontal reduction per block: the lanes are
/// scaled by the block's `d` and reduced once per output row).
#[inline(always)]
fn block_lanes<const FMA: bool>(q: &[f32; QK], x: &[f32]) -> [f32; 8] {
    let x: &[f32; QK] = x.try_into().expect("a block of x");
    let mut p = [0.0f32; 8];
    for c in 0..QK / 8 {
        for l in 0..8 {
            p[l] = madd::<FMA>(q[c * 8 + l], x[c * 8 + l], p[l]);
        }
    }
    p
}

fn reduce8(v: &[f32; 8]) -> f32 {
    ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]))
}

/// One output row of W for every row of `x`: `acc[i] = x_i · w_j`, each block unpacked once.
#[inline(always)]
fn output_row<const FMA: bool>(dtype: DType, row: &[u8], x: &[f32], xsum: &[f32], acc: &mut [f32]) {
    let bb = block_bytes(dtype);
    let nb = row.len() / bb;
    let k = nb * QK;
    let mut q = [0.0f32; QK];
    if let [a] = acc {
        // Decode: one row of x, accumulators in registers.
        let (mut lanes, mut mins) = ([0.0f32; 8], 0.0f32);
        for (b, blk) in row.chunks_exact(bb).enumerate() {
            let (d, mn) = unpack(dtype, blk, &mut q);
            let p = block_lanes::<FMA>(&q, &x[b * QK..(b + 1) * QK]);
            for l in 0..8 {
                lanes[l] = madd::<FMA>(d, p[l], lanes[l]);
            }
            mins = madd::<FMA>(mn, xsum[b], mins);
        }
        *a = reduce8(&lanes) + mins;
        return;
    }
    // On the stack: a heap allocation per output row takes the allocator's lock, which the
    // threaded wasm build's workers contend for (it made batched steps slower on two threads).
    assert!(acc.len() <= ROW_TILE, "one tile of rows");
    let mut lanes = [[0.0f32; 8]; ROW_TILE];
    let mut mins = [0.0f32; ROW_TILE];
    for (b, blk) in row.chunks_exact(bb).enumerate() {
        let (d, mn) = unpack(dtype, blk, &mut q);
        for (i, (lane, min)) in lanes[..acc.len()].iter_mut().zip(mins.iter_mut()).enumerate() {
            let p = block_lanes::<FMA>(&q, &x[i * k + b * QK..i * k + (b + 1) * QK]);
            for l in 0..8 {
                lane[l] = madd::<FMA>(d, p[l], lane[l]);
            }
            *min = madd::<FMA>(mn, xsum[i * nb + b], *min);
        }
    }
    for ((a, lane), min) in acc.iter_mut().zip(&lanes).zip(&mins) {
        *a = reduce8(lane) + min;
    }
}

/// [`output_row`] with AVX2, FMA and F16C intrinsics: x86-64's baseline is SSE2, where the
/// compiler unpacks nibbles byte by byte and converts each block's f16 scales in branchy scalar
/// code; nearly every host CPU has these extensions.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{BlockQ4_1, BlockQ8_0, QK};
    use shared_proto::DType;

    /// The 32 weights' `q` of a block as four vectors of 8, and `(d, m)`.
    #[inline(always)]
    unsafe fn unpack(dtype: DType, b: &[u8]) -> ([__m256; 4], f32, f32) {
        // SAFETY (whole body): the caller holds one whole block of `dtype` in `b` and runs on a
        // CPU with AVX2, FMA and F16C; unaligned loads only.
        unsafe {
            if dtype == DType::Q4_1 {
                debug_assert!(b.len() >= BlockQ4_1::BYTES);
                let dm = _mm_cvtph_ps(_mm_cvtsi32_si128(i32::from_le_bytes([b[0], b[1], b[2], b[3]])));
                let qs = _mm_loadu_si128(b.as_ptr().add(4) as *const __m128i);
                let nib = _mm_set1_epi8(0x0f);
                let lo = _mm_and_si128(qs, nib);
                let hi = _mm_and_si128(_mm_srli_epi16(qs, 4), nib);
                let f = |v: __m128i| _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v));
                let q = [f(lo), f(_mm_srli_si128(lo, 8)), f(hi), f(_mm_srli_si128(hi, 8))];
                (q, _mm_cvtss_f32(dm), _mm_cvtss_f32(_mm_shuffle_ps(dm, dm, 1)))
            } else {
                debug_assert!(b.len() >= BlockQ8_0::BYTES);
                let d = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(u16::from_le_bytes([b[0], b[1]]) as i32)));
                let p = b.as_ptr().add(2);
                let f =
                    |o: usize| _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p.add(o) as *const __m128i)));
                ([f(0), f(8), f(16), f(24)], d, 0.0)
            }
        }
    }

    /// `Σ q ⊙ x` of one block in 8 lanes; `x` points at 32 floats.
    #[inline(always)]
    unsafe fn lanes(q: &[__m256; 4], x: *const f32) -> __m256 {
        // SAFETY: the caller passes a pointer to a whole block of x.
        unsafe {
            let mut p = _mm256_mul_ps(q[0], _mm256_loadu_ps(x));
            p = _mm256_fmadd_ps(q[1], _mm256_loadu_ps(x.add(8)), p);
            p = _mm256_fmadd_ps(q[2], _mm256_loadu_ps(x.add(16)), p);
            _mm256_fmadd_ps(q[3], _mm256_loadu_ps(x.add(24)), p)
        }
    }

    #[inline(always)]
    unsafe fn sum(v: __m256) -> f32 {
        // SAFETY: register-only arithmetic on a CPU with AVX.
        unsafe {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
        }
    }

    /// See [`super::output_row`].
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C; `row` holds whole blocks of `dtype`, `x` is
    /// `acc.len()` rows of `blocks · 32` floats and `xsum` their per-block sums.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn output_row(dtype: DType, row: &[u8], x: &[f32], xsum: &[f32], acc: &mut [f32]) {
        let bb = dtype.block().expect("a block dtype").1;
        let nb = row.len() / bb;
        let k = nb * QK;
        assert!(x.len() >= acc.len() * k && xsum.len() >= acc.len() * nb, "x covers the rows");
        // SAFETY: every x pointer below stays inside row i < acc.len() of x (asserted above).
        unsafe {
            if let [a] = acc {
                let (mut lane, mut mins) = (_mm256_setzero_ps(), 0.0f32);
                for (b, blk) in row.chunks_exact(bb).enumerate() {
                    let (q, d, m) = unpack(dtype, blk);
                    lane = _mm256_fmadd_ps(_mm256_set1_ps(d), lanes(&q, x.as_ptr().add(b * QK)), lane);
                    mins = m.mul_add(xsum[b], mins);
                }
                *a = sum(lane) + mins;
                return;
            }
            assert!(acc.len() <= super::ROW_TILE, "one tile of rows");
            let mut lane = [_mm256_setzero_ps(); super::ROW_TILE];
            let mut mins = [0.0f32; super::ROW_TILE];
            for (b, blk) in row.chunks_exact(bb).enumerate() {
                let (q, d, m) = unpack(dtype, blk);
                let d = _mm256_set1_ps(d);
                for (i, (l, mn)) in lane[..acc.len()].iter_mut().zip(mins.iter_mut()).enumerate() {
                    *l = _mm256_fmadd_ps(d, lanes(&q, x.as_ptr().add(i * k + b * QK)), *l);
                    *mn = m.mul_add(xsum[i * nb + b], *mn);
                }
            }
            for ((a, l), mn) in acc.iter_mut().zip(lane).zip(mins) {
                *a = sum(l) + mn;
            }
        }
    }
}

/// Whether the wide kernel (AVX2 on x86-64, SIMD128 on wasm32) may run (std caches the CPUID
/// answer).
fn wide_vectors() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
    }
    #[cfg(target_arch = "wasm32")]
    {
        // Fixed when the module is compiled: a wasm module with SIMD instructions does not
        // validate where SIMD is missing, so there is nothing to detect at run time.
        cfg!(target_feature = "simd128")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "wasm32")))]
    {
        false
    }
}

/// `Y[m,n] = X[m,k] · W[n,k]ᵀ (+ bias[n])` with `W` given as `n` rows of `k / 32` blocks.
/// With integer activations on (`quantized_int::set_activations`) x is rounded to integer
/// blocks first, where the mode says so for `m` rows.
pub fn linear(x: &[f32], w: &[u8], dtype: DType, bias: Option<&[f32]>, m: usize, k: usize, n: usize) -> Vec<f32> {
    if let Some(levels) = activations().levels(m) {
        return super::quantized_int::linear(x, w, dtype, bias, (m, k, n), levels, wide_vectors());
    }
    linear_with(x, w, dtype, bias, (m, k, n), wide_vectors())
}

/// [`linear`] on the portable kernel only: the reference the vector kernels are tested against
/// in a browser.
#[doc(hidden)]
pub fn linear_portable(
    x: &[f32],
    w: &[u8],
    dtype: DType,
    bias: Option<&[f32]>,
    m: usize,
    k: usize,
    n: usize,
) -> Vec<f32> {
    linear_with(x, w, dtype, bias, (m, k, n), false)
}

fn linear_with(
    x: &[f32],
    w: &[u8],
    dtype: DType,
    bias: Option<&[f32]>,
    mkn: (usize, usize, usize),
    wide: bool,
) -> Vec<f32> {
    let (m, k, n) = mkn;
    let bb = block_bytes(dtype);
    let nb = k / QK;
    assert!(k.is_multiple_of(QK), "K = {k} is not whole blocks");
    assert_eq!(x.len(), m * k, "X is not {m}x{k}");
    assert_eq!(w.len(), n * nb * bb, "W is not {n}x{k} of {dtype:?}");
    // Σx per block of each row: the `m` term of every Q4_1 block dot.
    let xsum: Vec<f32> = x.chunks_exact(QK).map(|c| c.iter().sum()).collect();
    let mut y = vec![0.0f32; m * n];
    // Rows of x go in tiles of `ROW_TILE`: each output row of W reads its tile of x block by
    // block, and a tile (32 × 576 floats here: 72 KiB) stays in cache across W's rows. With the
    // whole prompt at once every output row re-read all of x from memory — for a 188-token
    // prefill, ~2 GB of x per layer — which made the time to first token. Same sums in the same
    // order per (row, output): the results do not change.
    for r0 in (0..m).step_by(ROW_TILE) {
        let t = ROW_TILE.min(m - r0);
        let (xt, xs) = (&x[r0 * k..(r0 + t) * k], &xsum[r0 * nb..(r0 + t) * nb]);
        // Output rows of W are the parallel unit; results land transposed ([n][t]) so each task
        // owns a contiguous piece.
        let mut yt = vec![0.0f32; n * t];
        par::rows(&mut yt, t, n * k * t, |j, acc| {
            let row = &w[j * nb * bb..(j + 1) * nb * bb];
            #[cfg(target_arch = "x86_64")]
            if wide {
                // SAFETY: `wide_vectors` checked the CPU; shapes were asserted above.
                unsafe { avx2::output_row(dtype, row, xt, xs, acc) };
            } else {
                output_row::<false>(dtype, row, xt, xs, acc);
            }
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
            if wide {
                super::quantized_simd128::output_row(dtype, row, xt, xs, acc);
            } else {
                output_row::<false>(dtype, row, xt, xs, acc);
            }
            #[cfg(not(any(target_arch = "x86_64", all(target_arch = "wasm32", target_feature = "simd128"))))]
            {
                let _ = wide;
                output_row::<false>(dtype, row, xt, xs, acc);
            }
            if let Some(bias) = bias {
                for a in acc.iter_mut() {
                    *a += bias[j];
                }
            }
        });
        if m == 1 {
            return yt;
        }
        for (j, col) in yt.chunks_exact(t).enumerate() {
            for (i, &v) in col.iter().enumerate() {
                y[(r0 + i) * n + j] = v;
            }
        }
    }
    y
}

/// Rows of x per pass over W in [`linear`] (see there).
pub(super) const ROW_TILE: usize = 32;

/// Rows of the block table `[v, h]` picked by `ids`, dequantized; an id outside `0..v` is a bad
/// input.
pub fn gather(table: &[u8], dtype: DType, h: usize, ids: &[i32]) -> Result<Vec<f32>, RemoteError> {
    let row_bytes = h / QK * block_bytes(dtype);
    let v = table.len() / row_bytes;
    let mut out = vec![0.0f32; ids.len() * h];
    for (&id, o) in ids.iter().zip(out.chunks_exact_mut(h)) {
        if id < 0 || id as usize >= v {
            return Err(RemoteError::new(ErrorKind::BadInput, format!("gather: id {id} outside 0..{v}")));
        }
        let id = id as usize;
        dequantize_row(dtype, &table[id * row_bytes..(id + 1) * row_bytes], o);
    }
    Ok(out)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use shared_proto::quant::{quantize_row_q4_1, quantize_row_q8_0};

    /// Deterministic values in [-1, 1).
    pub(in super::super) fn noise(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    /// The ggml formulas, block by block, in f64.
    pub(in super::super) fn dequant_f64(dtype: DType, row: &[u8]) -> Vec<f64> {
        let mut out = vec![];
        for b in row.chunks_exact(block_bytes(dtype)) {
            let d = f16_to_f32(u16::from_le_bytes([b[0], b[1]])) as f64;
            if dtype == DType::Q4_1 {
                let m = f16_to_f32(u16::from_le_bytes([b[2], b[3]])) as f64;
                let lo: Vec<f64> = b[4..20].iter().map(|q| d * (q & 15) as f64 + m).collect();
                let hi: Vec<f64> = b[4..20].iter().map(|q| d * (q >> 4) as f64 + m).collect();
                out.extend(lo);
                out.extend(hi);
            } else {
                out.extend(b[2..34].iter().map(|&q| d * (q as i8) as f64));
            }
        }
        out
    }

    #[test]
    fn quantized_linear_matches_f64_dequantized_reference() {
        for dtype in [DType::Q4_1, DType::Q8_0] {
            // m = 1 is the decode path, m = 3 prefill; n large enough to go parallel natively.
            for (m, k, n) in [(1, 64, 5), (3, 96, 7), (1, 256, 300), (4, 128, 520)] {
                let wf = noise(n * k, 1 + n as u64);
                let w: Vec<u8> = wf
                    .chunks_exact(k)
                    .flat_map(|r| if dtype == DType::Q4_1 { quantize_row_q4_1(r) } else { quantize_row_q8_0(r) })
                    .collect();
                let x = noise(m * k, 7);
                let bias = noise(n, 9);
                // Both the baseline and (where the CPU has it) the AVX2 build of the kernel.
                for wide in [false, wide_vectors()] {
                    let got = linear_with(&x, &w, dtype, Some(&bias), (m, k, n), wide);
                    let rb = w.len() / n;
                    for i in 0..m {
                        for j in 0..n {
                            let wr = dequant_f64(dtype, &w[j * rb..(j + 1) * rb]);
                            let want: f64 = bias[j] as f64
                                + wr.iter().zip(&x[i * k..(i + 1) * k]).map(|(a, &b)| a * b as f64).sum::<f64>();
                            let g = got[i * n + j] as f64;
                            assert!(
                                (g - want).abs() <= 1e-5 + 1e-5 * want.abs(),
                                "{dtype:?} {m}x{k}x{n} wide {wide} [{i},{j}]: {g} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn quantized_gather_dequantizes_rows_and_rejects_bad_ids() {
        for dtype in [DType::Q4_1, DType::Q8_0] {
            let (v, h) = (6, 64);
            let tf = noise(v * h, 3);
            let t: Vec<u8> = tf
                .chunks_exact(h)
                .flat_map(|r| if dtype == DType::Q4_1 { quantize_row_q4_1(r) } else { quantize_row_q8_0(r) })
                .collect();
            let got = gather(&t, dtype, h, &[5, 0, 5]).unwrap();
            let rb = t.len() / v;
            for (o, id) in got.chunks_exact(h).zip([5usize, 0, 5]) {
                let want = dequant_f64(dtype, &t[id * rb..(id + 1) * rb]);
                for (a, b) in o.iter().zip(&want) {
                    assert!((*a as f64 - b).abs() <= 1e-6 * (1.0 + b.abs()), "{a} vs {b}");
                }
            }
            assert_eq!(gather(&t, dtype, h, &[6]).unwrap_err().kind, ErrorKind::BadInput);
            assert_eq!(gather(&t, dtype, h, &[-1]).unwrap_err().kind, ErrorKind::BadInput);
        }
    }
}
