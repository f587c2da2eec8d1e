//! The SIMD128 build of the quantized Linear (what a tab runs) against the portable kernel and an
//! f64 reference, at SmolLM2's decode shapes (M = 1) and a small prefill (M = 3), and with every
//! finite f16 as a block scale (the kernel converts halves without branches). Tolerance per
//! output: |got − ref| ≤ 1e-6 + 4e-6·Σ|wⱼ·xⱼ| (f32 accumulation in another order; a wrong nibble,
//! lane or scale is off by the size of the value itself). Runs in headless Chromium
//! (`cargo test -p page_runtime --target wasm32-unknown-unknown --test quantized_simd128`).
#![cfg(all(target_arch = "wasm32", target_feature = "simd128"))]

use page_runtime::executors::cpu::quantized;
use shared_proto::DType;
use shared_proto::quant::{f16_to_f32, quantize_row_q4_1, quantize_row_q8_0};
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

/// Deterministic values in [-1, 1).
fn noise(n: usize, seed: u64) -> Vec<f32> {
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

/// Weights of one row, ggml formulas in f64.
fn dequant_f64(dtype: DType, row: &[u8]) -> Vec<f64> {
    let bb = dtype.block().unwrap().1;
    let mut out = vec![];
    for b in row.chunks_exact(bb) {
        let d = f16_to_f32(u16::from_le_bytes([b[0], b[1]])) as f64;
        if dtype == DType::Q4_1 {
            let m = f16_to_f32(u16::from_le_bytes([b[2], b[3]])) as f64;
            out.extend(b[4..20].iter().map(|q| d * (q & 15) as f64 + m));
            out.extend(b[4..20].iter().map(|q| d * (q >> 4) as f64 + m));
        } else {
            out.extend(b[2..34].iter().map(|&q| d * (q as i8) as f64));
        }
    }
    out
}

/// Checks both kernels' `[m, n]` outputs against f64.
fn check(dtype: DType, w: &[u8], x: &[f32], (m, k, n): (usize, usize, usize)) {
    // The f32 kernel: a tab's default is 16-bit integer activations (tested below on its own).
    use page_runtime::executors::cpu::quantized_int::{Activations, set_activations};
    set_activations(Activations::F32);
    let bias = noise(n, 9);
    let simd = quantized::linear(x, w, dtype, Some(&bias), m, k, n);
    let portable = quantized::linear_portable(x, w, dtype, Some(&bias), m, k, n);
    let rb = w.len() / n;
    for j in 0..n {
        let wr = dequant_f64(dtype, &w[j * rb..(j + 1) * rb]);
        for i in 0..m {
            let terms = wr.iter().zip(&x[i * k..(i + 1) * k]).map(|(a, &b)| a * b as f64);
            let want = bias[j] as f64 + terms.clone().sum::<f64>();
            let tol = 1e-6 + 4e-6 * (bias[j].abs() as f64 + terms.map(f64::abs).sum::<f64>());
            for (name, got) in [("simd128", &simd), ("portable", &portable)] {
                let g = got[i * n + j] as f64;
                assert!((g - want).abs() <= tol, "{name} {dtype:?} {m}x{k}x{n} [{i},{j}]: {g} vs {want} (tol {tol})");
            }
        }
    }
}

#[wasm_bindgen_test]
fn simd128_quantized_linear_matches_portable_and_f64() {
    for dtype in [DType::Q4_1, DType::Q8_0] {
        // SmolLM2's q/k/v/o, gate/up and down shapes at decode, then a 3-token prefill.
        for (m, k, n) in [(1, 576, 64), (1, 1536, 40), (1, 64, 5), (3, 576, 24), (2, 96, 7)] {
            let w: Vec<u8> = noise(n * k, 1 + n as u64)
                .chunks_exact(k)
                .flat_map(|r| if dtype == DType::Q4_1 { quantize_row_q4_1(r) } else { quantize_row_q8_0(r) })
                .collect();
            check(dtype, &w, &noise(m * k, 7 + k as u64), (m, k, n));
        }
    }
}

#[wasm_bindgen_test]
fn simd128_quantized_linear_converts_every_finite_half_scale() {
    // Every finite half (subnormals, ±0, 65504) in turn as d (and, in Q4_1, as m).
    let finite: Vec<u16> = (0..=u16::MAX).filter(|h| (h >> 10) & 0x1f != 0x1f).collect();
    let q = noise(finite.len() * 32, 11);
    for dtype in [DType::Q4_1, DType::Q8_0] {
        let per_block = if dtype == DType::Q4_1 { 2 } else { 1 };
        let mut w = vec![];
        for (b, scales) in finite.chunks(per_block).enumerate() {
            let d = scales[0];
            let mn = scales.get(1).copied().unwrap_or(d ^ 0x8000);
            w.extend(d.to_le_bytes());
            let qs = &q[b * 32..(b + 1) * 32];
            if dtype == DType::Q4_1 {
                w.extend(mn.to_le_bytes());
                w.extend(
                    (0..16)
                        .map(|j| (((qs[j] + 1.0) * 8.0) as u8 & 15) | ((((qs[j + 16] + 1.0) * 8.0) as u8 & 15) << 4)),
                );
            } else {
                w.extend(qs.iter().map(|v| (v * 127.0) as i8 as u8));
            }
        }
        // Rows of 32 blocks; the tail short of a whole row is dropped.
        let k = 32 * 32;
        let n = w.len() / (k / 32 * dtype.block().unwrap().1);
        w.truncate(n * k / 32 * dtype.block().unwrap().1);
        check(dtype, &w, &noise(k, 5), (1, k, n));
    }
}

/// The f16 Linear (`half`): the SIMD128 decode kernel (M ≤ 4: halves widened in registers, four
/// rows at once) and the blocked prefill path (M > 4), against f64 over the same halves, at
/// Whisper tiny's decoder shapes and a ragged one (N not a multiple of 4, K not of 8); and the
/// widening itself bit-exact for every finite half (subnormals included). The decode kernel
/// scales a row of X by 2¹¹² instead of each half while |x| < 2¹⁵: a row past that (its one
/// large value meeting zero weights) must give the same bits as the row without it.
#[wasm_bindgen_test]
fn simd128_f16_linear_matches_f64_and_widens_every_finite_half() {
    use page_runtime::executors::cpu::half;
    use shared_proto::quant::f32_to_f16;
    let to_halves = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|&v| f32_to_f16(v * 0.1).to_le_bytes()).collect() };
    let (k, n) = (388, 12);
    let mut wv = noise(n * k, 77);
    (0..n).for_each(|j| wv[j * k + 5] = 0.0);
    let w = to_halves(&wv);
    let small: Vec<f32> = noise(k, 78).iter().map(|v| v * 100.0).collect();
    let mut large = small.clone();
    large[5] = 40000.0;
    let (a, b) = (half::linear(&small, &w, None, 1, k, n), half::linear(&large, &w, None, 1, k, n));
    assert_eq!(a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), b.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
    for (m, k, n) in [(1, 384, 64), (1, 1536, 38), (3, 384, 13), (2, 44, 7), (6, 384, 21)] {
        let w = to_halves(&noise(n * k, 3 + n as u64));
        let x = noise(m * k, 9 + k as u64);
        let bias = noise(n, 4);
        let got = half::linear(&x, &w, Some(&bias), m, k, n);
        for j in 0..n {
            let wr: Vec<f64> = w[2 * j * k..2 * (j + 1) * k]
                .chunks_exact(2)
                .map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]])) as f64)
                .collect();
            for i in 0..m {
                let terms = wr.iter().zip(&x[i * k..(i + 1) * k]).map(|(a, &b)| a * b as f64);
                let want = bias[j] as f64 + terms.clone().sum::<f64>();
                let tol = 1e-6 + 4e-6 * (bias[j].abs() as f64 + terms.map(f64::abs).sum::<f64>());
                let g = got[i * n + j] as f64;
                assert!((g - want).abs() <= tol, "f16 {m}x{k}x{n} [{i},{j}]: {g} vs {want} (tol {tol})");
            }
        }
    }
    let finite: Vec<u16> = (0..=u16::MAX).filter(|h| h & 0x7c00 != 0x7c00).collect();
    let bytes: Vec<u8> = finite.iter().flat_map(|h| h.to_le_bytes()).collect();
    let mut out = vec![0.0f32; finite.len()];
    half::widen_into(&bytes, &mut out);
    for (h, x) in finite.iter().zip(&out) {
        assert_eq!(x.to_bits(), f16_to_f32(*h).to_bits(), "{h:#06x}");
    }
}

/// The integer-activation Linear (`quantized_int`, 8- and 16-bit x): the SIMD128 kernel
/// (`i32x4.dot_i16x8_s`) against the portable one on the same quantized x — integer dots are
/// exact, so only the f32 scaling's order differs: ≤ 1e-6 + 4e-6·Σ|wⱼ·xⱼ| — and against f64 on
/// the unquantized x within x's rounding (dx/2 · Σ|w| per block), at SmolLM2's decode (M = 1)
/// and prefill shapes (M past one row tile). Rows of W taken four at a time (`output_quad_int`,
/// decode and prefill) sum as the portable kernel does: equal to it bit for bit.
#[wasm_bindgen_test]
fn simd128_integer_linear_matches_portable_and_the_rounding_bound() {
    use page_runtime::executors::cpu::quantized_int;
    for (dtype, levels) in [(DType::Q4_1, 127.0), (DType::Q8_0, 127.0), (DType::Q4_1, 32767.0), (DType::Q8_0, 32767.0)]
    {
        for (m, k, n) in [
            (1, 576, 24),
            (1, 1536, 9),
            (1, 64, 13),
            (2, 576, 24),
            (33, 576, 9),
            (5, 1536, 7),
            (3, 64, 5),
            (70, 64, 18),
        ] {
            let w: Vec<u8> = noise(n * k, 1 + n as u64)
                .chunks_exact(k)
                .flat_map(|r| if dtype == DType::Q4_1 { quantize_row_q4_1(r) } else { quantize_row_q8_0(r) })
                .collect();
            let x = noise(m * k, 7 + k as u64);
            let simd = quantized_int::linear(&x, &w, dtype, None, (m, k, n), levels, true);
            let portable = quantized_int::linear(&x, &w, dtype, None, (m, k, n), levels, false);
            let xq = quantized_int::quantize_rows(&x, levels);
            let rb = w.len() / n;
            for j in 0..n {
                let wr = dequant_f64(dtype, &w[j * rb..(j + 1) * rb]);
                for i in 0..m {
                    let (mut exact, mut abs, mut bound) = (0.0f64, 0.0f64, 0.0f64);
                    for c in 0..k {
                        exact += wr[c] * x[i * k + c] as f64;
                        abs += (wr[c] * x[i * k + c] as f64).abs();
                        bound += wr[c].abs() * xq.d[(i * k + c) / 32] as f64 / 2.0;
                    }
                    let (s, p) = (simd[i * n + j] as f64, portable[i * n + j] as f64);
                    if j < n / 4 * 4 {
                        assert_eq!(
                            s, p,
                            "{dtype:?} {m}x{k}x{n} [{i},{j}]: four rows at a time, as the portable kernel"
                        );
                    }
                    assert!(
                        (s - p).abs() <= 1e-6 + 4e-6 * abs,
                        "{dtype:?} {m}x{k}x{n} [{i},{j}]: simd {s} vs portable {p}"
                    );
                    assert!(
                        (s - exact).abs() <= bound + 1e-5 * abs,
                        "{dtype:?} [{i},{j}]: {s} vs f64 {exact} (bound {bound})"
                    );
                }
            }
        }
    }
}

/// x's rounding to integer blocks in SIMD128 against the portable block, bit for bit (scale, sum
/// and every value): blocks of noise at several magnitudes, an all-zero block, exact ties of
/// rounding (values at half a step), a lone outlier and negative zeros.
#[wasm_bindgen_test]
fn simd128_rounding_of_x_equals_the_portable_block() {
    use page_runtime::executors::cpu::{quantized_int, quantized_simd128};
    let mut blocks: Vec<Vec<f32>> =
        (0..64u64).map(|s| noise(32, 100 + s).iter().map(|v| v * (s as f32 * 0.37).exp2()).collect()).collect();
    blocks.push(vec![0.0; 32]);
    blocks.push(vec![-0.0; 32]);
    blocks.push((0..32).map(|j| (j as f32 - 16.0) * 0.5 * (127.0f32 / 16.0).recip()).collect());
    let mut outlier = vec![1e-3f32; 32];
    outlier[17] = -4096.0;
    blocks.push(outlier);
    for levels in [127.0, 32767.0] {
        for (b, blk) in blocks.iter().enumerate() {
            let (mut p, mut s) = ([0i16; 32], [0i16; 32]);
            let want = quantized_int::quantize_block(blk, levels, &mut p);
            let got = quantized_simd128::quantize_block(blk, levels, &mut s);
            assert_eq!(want.0.to_bits(), got.0.to_bits(), "block {b}, {levels} levels: scale");
            assert_eq!(want.1.to_bits(), got.1.to_bits(), "block {b}, {levels} levels: sum");
            assert_eq!(p, s, "block {b}, {levels} levels: values");
        }
    }
}

/// The f32 dot product every f32 Linear and attention of a tab uses (`cpu::dot`, SIMD128): in the
/// plain build equal bit for bit to eight lanes (`j mod 8`) summed in lane order, then the tail,
/// as the portable loop adds; in the relaxed-SIMD build (fused multiply-adds, what
/// `www/pkg-threads-relaxed` runs; scripts/test.sh runs this file built both ways) within
/// 1e-6 + 2e-6·Σ|aⱼ·bⱼ| of f64 — a wrong lane or a lost tail is off by a whole term.
#[wasm_bindgen_test]
fn simd128_dot_sums_as_the_portable_loop_or_fused_within_tolerance() {
    let relaxed = page_runtime::executors::cpu::simd::RELAXED;
    for n in (0..40).chain([64, 100, 384, 1536, 1537]) {
        let (a, b) = (noise(n, 11 + n as u64), noise(n, 5 + 3 * n as u64));
        let got = page_runtime::executors::cpu::dot(&a, &b);
        let mut lanes = [0.0f32; 8];
        for c in 0..n / 8 {
            for j in 0..8 {
                lanes[j] += a[8 * c + j] * b[8 * c + j];
            }
        }
        let mut want = lanes.iter().sum::<f32>();
        for j in n / 8 * 8..n {
            want += a[j] * b[j];
        }
        let exact: f64 = a.iter().zip(&b).map(|(&x, &y)| x as f64 * y as f64).sum();
        let abs: f64 = a.iter().zip(&b).map(|(&x, &y)| (x as f64 * y as f64).abs()).sum();
        if relaxed {
            assert!((got as f64 - exact).abs() <= 1e-6 + 2e-6 * abs, "n = {n}: {got} vs {exact}");
        } else {
            assert_eq!(got.to_bits(), want.to_bits(), "n = {n}: {got} vs the portable {want}");
        }
    }
}
