//! The quantized block dots of [`super::quantized`] in wasm32 SIMD128 (a tab's CPU executor).
//! Autovectorisation of the portable kernel leaves the nibble unpacking and the int → float
//! conversions scalar, and those dominate a decode step in a tab.

use core::arch::wasm32::*;

use super::simd::madd;

use shared_proto::DType;
use shared_proto::quant::{BlockQ4_1, BlockQ8_0, QK};

/// Rows of x one call takes at most (the callers' tile).
const ROWS: usize = super::quantized::ROW_TILE;

/// Halves held one per u32 lane → f32, bit-exact for every half. The magnitude bits shifted into
/// place read as a float 2¹¹² too small (a half subnormal becomes an f32 subnormal, which wasm
/// keeps), so one multiply rescales without a branch; ±inf/NaN get the f32 all-ones exponent.
#[inline(always)]
fn halves(v: v128) -> v128 {
    let abs = v128_and(v, u32x4_splat(0x7fff));
    let sign = u32x4_shl(v128_xor(v, abs), 16);
    let shifted = u32x4_shl(abs, 13);
    let finite = f32x4_mul(shifted, f32x4_splat(f32::from_bits((127 + 112) << 23)));
    let special = v128_or(shifted, u32x4_splat(0x7f80_0000));
    v128_or(v128_bitselect(special, finite, u32x4_ge(abs, u32x4_splat(0x7c00))), sign)
}

/// Four u8 (or i8 when `signed`) lanes of a 16-lane vector widened to f32x4.
#[inline(always)]
fn widen(v: v128, signed: bool) -> [v128; 4] {
    if signed {
        let (a, b) = (i16x8_extend_low_i8x16(v), i16x8_extend_high_i8x16(v));
        [i32x4_extend_low_i16x8(a), i32x4_extend_high_i16x8(a), i32x4_extend_low_i16x8(b), i32x4_extend_high_i16x8(b)]
            .map(|v| f32x4_convert_i32x4(v))
    } else {
        let (a, b) = (u16x8_extend_low_u8x16(v), u16x8_extend_high_u8x16(v));
        [u32x4_extend_low_u16x8(a), u32x4_extend_high_u16x8(a), u32x4_extend_low_u16x8(b), u32x4_extend_high_u16x8(b)]
            .map(|v| f32x4_convert_i32x4(v))
    }
}

/// The 32 weights' `q` of the block at `b` as eight f32x4, and `(d, m)`.
///
/// # Safety
/// `b` points at one whole block of `dtype`.
#[inline(always)]
unsafe fn unpack(dtype: DType, b: *const u8) -> ([v128; 8], f32, f32) {
    // SAFETY (whole body): unaligned loads inside the block (wasm loads need no alignment).
    unsafe {
        if dtype == DType::Q4_1 {
            let dm = halves(u32x4_extend_low_u16x8(v128_load32_zero(b as *const u32)));
            let qs = v128_load(b.add(4) as *const v128);
            let nib = u8x16_splat(0x0f);
            // Byte j holds weight j (low nibble) and weight j + 16 (high nibble).
            let [a, b, c, d] = widen(v128_and(qs, nib), false);
            let [e, f, g, h] = widen(v128_and(u16x8_shr(qs, 4), nib), false);
            ([a, b, c, d, e, f, g, h], f32x4_extract_lane::<0>(dm), f32x4_extract_lane::<1>(dm))
        } else {
            let d = halves(u32x4_splat(u16::from_le_bytes([*b, *b.add(1)]) as u32));
            let [a, b0, c, e] = widen(v128_load(b.add(2) as *const v128), true);
            let [f, g, h, i] = widen(v128_load(b.add(18) as *const v128), true);
            ([a, b0, c, e, f, g, h, i], f32x4_extract_lane::<0>(d), 0.0)
        }
    }
}

/// `Σ q ⊙ x` of one block in four lanes, two independent chains (a multiply and an add each
/// step, fused in the relaxed-SIMD build: `simd::madd`).
///
/// # Safety
/// `x` points at 32 floats.
#[inline(always)]
unsafe fn lanes(q: &[v128; 8], x: *const f32) -> v128 {
    // SAFETY: the caller passes a pointer to a whole block of x.
    unsafe {
        let x = |i: usize| v128_load(x.add(4 * i) as *const v128);
        let a = madd(q[6], x(6), madd(q[4], x(4), madd(q[2], x(2), f32x4_mul(q[0], x(0)))));
        let b = madd(q[7], x(7), madd(q[5], x(5), madd(q[3], x(3), f32x4_mul(q[1], x(1)))));
        f32x4_add(a, b)
    }
}

#[inline(always)]
fn sum(v: v128) -> f32 {
    let s = f32x4_add(v, i32x4_shuffle::<2, 3, 0, 1>(v, v));
    f32x4_extract_lane::<0>(s) + f32x4_extract_lane::<1>(s)
}

/// See [`super::output_row`]: `acc[i] = x_i · w` for one output row `w` of whole blocks.
pub fn output_row(dtype: DType, row: &[u8], x: &[f32], xsum: &[f32], acc: &mut [f32]) {
    let bb = dtype.block().expect("a block dtype").1;
    debug_assert!(bb == BlockQ4_1::BYTES || bb == BlockQ8_0::BYTES);
    let nb = row.len() / bb;
    let k = nb * QK;
    assert!(row.len() == nb * bb, "whole blocks");
    assert!(x.len() >= acc.len() * k && xsum.len() >= acc.len() * nb, "x covers the rows");
    // SAFETY: block b < nb lies inside `row` and every x pointer inside row i < acc.len() of x
    // (both asserted above).
    unsafe {
        if let [a] = acc {
            let (mut lane, mut mins) = (f32x4_splat(0.0), 0.0f32);
            for (b, &s) in xsum[..nb].iter().enumerate() {
                let (q, d, m) = unpack(dtype, row.as_ptr().add(b * bb));
                lane = madd(f32x4_splat(d), lanes(&q, x.as_ptr().add(b * QK)), lane);
                mins += m * s;
            }
            *a = sum(lane) + mins;
            return;
        }
        // On the stack: see `quantized::output_row`.
        assert!(acc.len() <= ROWS, "one tile of rows");
        let mut lane = [f32x4_splat(0.0); ROWS];
        let mut mins = [0.0f32; ROWS];
        for b in 0..nb {
            let (q, d, m) = unpack(dtype, row.as_ptr().add(b * bb));
            let d = f32x4_splat(d);
            for (i, (l, mn)) in lane[..acc.len()].iter_mut().zip(mins.iter_mut()).enumerate() {
                *l = madd(d, lanes(&q, x.as_ptr().add(i * k + b * QK)), *l);
                *mn += m * xsum[i * nb + b];
            }
        }
        for ((a, l), mn) in acc.iter_mut().zip(lane).zip(mins) {
            *a = sum(l) + mn;
        }
    }
}

/// See `quantized_int::quantize_block` (equal bit for bit): one block of 32 values of x →
/// `out` rounded to ±`levels`, and `(dx, Σx)`.
pub fn quantize_block(blk: &[f32], levels: f32, out: &mut [i16]) -> (f32, f32) {
    assert!(blk.len() == QK && out.len() == QK, "one block");
    // SAFETY: eight f32x4 loads inside `blk` and four i16x8 stores inside `out` (both 32 long,
    // asserted above); wasm loads and stores need no alignment.
    unsafe {
        let v = [0, 4, 8, 12, 16, 20, 24, 28].map(|o| v128_load(blk.as_ptr().add(o) as *const v128));
        let (mut amax, mut s) = (f32x4_splat(0.0), f32x4_splat(0.0));
        for &x in &v {
            // pmax (b > a ? b : a) is the portable fold's comparison; |x| is never −0.
            amax = f32x4_pmax(amax, f32x4_abs(x));
            s = f32x4_add(s, x);
        }
        let amax = f32x4_pmax(amax, i32x4_shuffle::<2, 3, 0, 1>(amax, amax));
        let (a, b) = (f32x4_extract_lane::<0>(amax), f32x4_extract_lane::<1>(amax));
        let amax = if b > a { b } else { a };
        let dx = amax / levels;
        let inv = f32x4_splat(if dx > 0.0 { 1.0 / dx } else { 0.0 });
        let (lo, hi) = (f32x4_splat(-levels), f32x4_splat(levels));
        let q = v.map(|x| i32x4_trunc_sat_f32x4(f32x4_pmin(f32x4_pmax(f32x4_nearest(f32x4_mul(x, inv)), lo), hi)));
        for (i, pair) in q.chunks_exact(2).enumerate() {
            v128_store(out.as_mut_ptr().add(8 * i) as *mut v128, i16x8_narrow_i32x4(pair[0], pair[1]));
        }
        (dx, sum(s))
    }
}

/// The 32 weights' `q` of the block at `b` as four i16x8 (weights 0–7, 8–15, 16–23, 24–31),
/// and `(d, m)`.
///
/// # Safety
/// `b` points at one whole block of `dtype`.
#[inline(always)]
unsafe fn unpack_i16(dtype: DType, b: *const u8) -> ([v128; 4], f32, f32) {
    // SAFETY (whole body): unaligned loads inside the block.
    unsafe {
        if dtype == DType::Q4_1 {
            let dm = halves(u32x4_extend_low_u16x8(v128_load32_zero(b as *const u32)));
            (q_i16(dtype, b), f32x4_extract_lane::<0>(dm), f32x4_extract_lane::<1>(dm))
        } else {
            let d = halves(u32x4_splat(u16::from_le_bytes([*b, *b.add(1)]) as u32));
            (q_i16(dtype, b), f32x4_extract_lane::<0>(d), 0.0)
        }
    }
}

/// The `q` of [`unpack_i16`] alone.
///
/// # Safety
/// `b` points at one whole block of `dtype`.
#[inline(always)]
unsafe fn q_i16(dtype: DType, b: *const u8) -> [v128; 4] {
    // SAFETY (whole body): unaligned loads inside the block.
    unsafe {
        if dtype == DType::Q4_1 {
            let qs = v128_load(b.add(4) as *const v128);
            let nib = u8x16_splat(0x0f);
            let (lo, hi) = (v128_and(qs, nib), v128_and(u16x8_shr(qs, 4), nib));
            [
                u16x8_extend_low_u8x16(lo),
                u16x8_extend_high_u8x16(lo),
                u16x8_extend_low_u8x16(hi),
                u16x8_extend_high_u8x16(hi),
            ]
        } else {
            let (a, c) = (v128_load(b.add(2) as *const v128), v128_load(b.add(18) as *const v128));
            [
                i16x8_extend_low_i8x16(a),
                i16x8_extend_high_i8x16(a),
                i16x8_extend_low_i8x16(c),
                i16x8_extend_high_i8x16(c),
            ]
        }
    }
}

/// `Σ q·xq` of one block in four i32 lanes: four `i32x4.dot_i16x8_s`, eight multiply-adds each.
///
/// # Safety
/// `x` points at 32 i16.
#[inline(always)]
unsafe fn dot_block(q: &[v128; 4], x: *const i16) -> v128 {
    // SAFETY: the caller passes a pointer to a whole block of xq.
    unsafe {
        let d = |i: usize| i32x4_dot_i16x8(q[i], v128_load(x.add(8 * i) as *const v128));
        i32x4_add(i32x4_add(d(0), d(1)), i32x4_add(d(2), d(3)))
    }
}

/// See `quantized_int::output_row`: `acc[i] = x_i · w` for one output row `w` of whole blocks,
/// x given as integer blocks in i16 (`xq`, scales `xd`) and its f32 block sums `xsum`.
pub fn output_row_int(dtype: DType, row: &[u8], xq: &[i16], xd: &[f32], xsum: &[f32], acc: &mut [f32]) {
    let bb = dtype.block().expect("a block dtype").1;
    debug_assert!(bb == BlockQ4_1::BYTES || bb == BlockQ8_0::BYTES);
    let nb = row.len() / bb;
    let k = nb * QK;
    assert!(row.len() == nb * bb, "whole blocks");
    assert!(
        xq.len() >= acc.len() * k && xd.len() >= acc.len() * nb && xsum.len() >= acc.len() * nb,
        "x covers the rows"
    );
    // SAFETY: block b < nb lies inside `row` and every xq pointer inside row i < acc.len()
    // (both asserted above).
    unsafe {
        if let [a] = acc {
            // A decode step: accumulators in registers.
            let (mut lane, mut mins) = (f32x4_splat(0.0), 0.0f32);
            for b in 0..nb {
                let (q, d, m) = unpack_i16(dtype, row.as_ptr().add(b * bb));
                let s = f32x4_convert_i32x4(dot_block(&q, xq.as_ptr().add(b * QK)));
                lane = f32x4_add(lane, f32x4_mul(f32x4_splat(d * *xd.get_unchecked(b)), s));
                mins += m * *xsum.get_unchecked(b);
            }
            *a = sum(lane) + mins;
            return;
        }
        // On the stack: see `quantized::output_row`.
        assert!(acc.len() <= ROWS, "one tile of rows");
        let mut lane = [f32x4_splat(0.0); ROWS];
        let mut mins = [0.0f32; ROWS];
        for b in 0..nb {
            let (q, d, m) = unpack_i16(dtype, row.as_ptr().add(b * bb));
            for (i, (l, mn)) in lane[..acc.len()].iter_mut().zip(mins.iter_mut()).enumerate() {
                let s = f32x4_convert_i32x4(dot_block(&q, xq.as_ptr().add(i * k + b * QK)));
                *l = f32x4_add(*l, f32x4_mul(f32x4_splat(d * *xd.get_unchecked(i * nb + b)), s));
                *mn += m * *xsum.get_unchecked(i * nb + b);
            }
        }
        for ((a, l), mn) in acc.iter_mut().zip(lane).zip(mins) {
            *a = sum(l) + mn;
        }
    }
}

/// Four output rows of W for every row of x in a tile: `out[4·i + r] = x_i · w_r`, where `rows`
/// holds W's rows r = 0..4 back to back and `xq` the tile's `out.len() / 4` rows. Each block of
/// W is unpacked once for the tile and each block of x loaded once for the four rows; the four
/// integer dots are summed across lanes together (three adds, four shuffles), and the scales of
/// the four rows are read and widened as one vector, so a block costs one int → float
/// conversion and one scaling per four outputs instead of per output — fewer operations per
/// weight than four calls of [`output_row_int`]. The sums are those of the portable
/// `output_row` — the exact integer dot of each block, times `d · dx` in f32, plus `m · Σx`
/// kept apart — so the result equals it bit for bit.
pub fn output_quad_int(dtype: DType, rows: &[u8], xq: &[i16], xd: &[f32], xsum: &[f32], out: &mut [f32]) {
    // A decode step (one row of x) compiled apart, its accumulators in registers.
    if out.len() == 4 {
        quad::<true>(dtype, rows, xq, xd, xsum, out)
    } else {
        quad::<false>(dtype, rows, xq, xd, xsum, out)
    }
}

#[inline(always)]
fn quad<const ONE: bool>(dtype: DType, rows: &[u8], xq: &[i16], xd: &[f32], xsum: &[f32], out: &mut [f32]) {
    let bb = dtype.block().expect("a block dtype").1;
    debug_assert!(bb == BlockQ4_1::BYTES || bb == BlockQ8_0::BYTES);
    let rb = rows.len() / 4;
    let nb = rb / bb;
    let t = if ONE { 1 } else { out.len() / 4 };
    let k = nb * QK;
    assert!(out.len() == 4 * t && (1..=ROWS).contains(&t), "four outputs per row of x, one tile");
    assert!(rows.len() == 4 * nb * bb, "four rows of whole blocks");
    assert!(xq.len() >= t * k && xd.len() >= t * nb && xsum.len() >= t * nb, "x covers the rows");
    let p = rows.as_ptr();
    // SAFETY: block b < nb of row r < 4 lies inside `rows`, and block b of x row i < t inside
    // xq, xd and xsum (all asserted above); the header load reads the first 4 bytes of a block
    // (at least 20 long).
    unsafe {
        let mut acc = [f32x4_splat(0.0); ROWS];
        let mut mins = [f32x4_splat(0.0); ROWS];
        for b in 0..nb {
            let q = [0, 1, 2, 3].map(|r| q_i16(dtype, p.add(r * rb + b * bb)));
            // The four rows' block headers: d (and Q4_1's m) as halves, one row per lane.
            let h = v128_load32_zero(p.add(b * bb) as *const u32);
            let h = v128_load32_lane::<1>(h, p.add(rb + b * bb) as *const u32);
            let h = v128_load32_lane::<2>(h, p.add(2 * rb + b * bb) as *const u32);
            let h = v128_load32_lane::<3>(h, p.add(3 * rb + b * bb) as *const u32);
            let d = halves(v128_and(h, u32x4_splat(0xffff)));
            let m = halves(u32x4_shr(h, 16));
            for i in 0..t {
                let x = xq.as_ptr().add(i * k + b * QK);
                let xv = [0, 8, 16, 24].map(|o| v128_load(x.add(o) as *const v128));
                let dot = |r: usize| {
                    let d = |j: usize| i32x4_dot_i16x8(q[r][j], xv[j]);
                    i32x4_add(i32x4_add(d(0), d(1)), i32x4_add(d(2), d(3)))
                };
                let (s0, s1, s2, s3) = (dot(0), dot(1), dot(2), dot(3));
                // [s0a+s0c, s1a+s1c, s0b+s0d, s1b+s1d] and the same of s2, s3; then [Σs0, Σs1, Σs2, Σs3].
                let t0 = i32x4_add(i32x4_shuffle::<0, 4, 1, 5>(s0, s1), i32x4_shuffle::<2, 6, 3, 7>(s0, s1));
                let t1 = i32x4_add(i32x4_shuffle::<0, 4, 1, 5>(s2, s3), i32x4_shuffle::<2, 6, 3, 7>(s2, s3));
                let s = i32x4_add(i32x4_shuffle::<0, 1, 4, 5>(t0, t1), i32x4_shuffle::<2, 3, 6, 7>(t0, t1));
                let dx = f32x4_mul(d, f32x4_splat(*xd.get_unchecked(i * nb + b)));
                let a = acc.get_unchecked_mut(i);
                *a = f32x4_add(*a, f32x4_mul(dx, f32x4_convert_i32x4(s)));
                if dtype == DType::Q4_1 {
                    let mn = mins.get_unchecked_mut(i);
                    *mn = f32x4_add(*mn, f32x4_mul(m, f32x4_splat(*xsum.get_unchecked(i * nb + b))));
                }
            }
        }
        for i in 0..t {
            v128_store(out.as_mut_ptr().add(4 * i) as *mut v128, f32x4_add(acc[i], mins[i]));
        }
    }
}
