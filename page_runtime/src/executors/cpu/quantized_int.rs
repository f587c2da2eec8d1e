//! Linear over block-quantized weights with integer activations (llama.cpp's Q4_1 × Q8_1 path,
//! and a 16-bit variant of it): each 32-value block of a row of x becomes `dx · xq` (xq rounded
//! to nearest within ±127, or ±32767), and a weight block `w = d·q + m` dotted with it is
//! `d·dx·Σq·xq + m·Σx` — the integer dot exact, wasm SIMD128's `i32x4.dot_i16x8_s` doing eight
//! multiply-adds per instruction where the f32 kernel does four in two, with no int → float
//! conversion of the weights. `Σx` is kept in f32 from the unquantized x.
//!
//! The price is x's rounding: per block at most `dx/2 · Σ|w|` on an output — with 8 bits,
//! enough to change SmolLM2's greedy ids; with 16 bits, 1/258 of that. Whether a model's answers
//! survive it is measured, not assumed (see [`Activations`]).

use std::sync::atomic::{AtomicU8, Ordering};

use shared_proto::DType;
use shared_proto::quant::{BlockQ4_1, BlockQ8_0, QK, f16_to_f32};

use super::par;

/// What the CPU executor's quantized Linear multiplies its weights with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Activations {
    /// f32 activations, f32 products.
    F32 = 0,
    /// Every row's activations rounded to 16-bit blocks (±32767 levels), integer dots.
    Int16 = 1,
    /// Several rows at once (a prefill, a batched step) rounded to 8-bit blocks; one-row steps
    /// in f32.
    Int8Batched = 2,
}

impl Activations {
    pub const ALL: [Activations; 3] = [Activations::F32, Activations::Int16, Activations::Int8Batched];

    pub fn name(self) -> &'static str {
        match self {
            Activations::F32 => "f32",
            Activations::Int16 => "int16",
            Activations::Int8Batched => "int8-batched",
        }
    }

    pub fn from_name(name: &str) -> Option<Activations> {
        Activations::ALL.into_iter().find(|a| a.name() == name)
    }

    /// The integer levels x is rounded to for `m` rows, or `None`: f32.
    pub fn levels(self, m: usize) -> Option<f32> {
        match self {
            Activations::F32 => None,
            Activations::Int16 => Some(32767.0),
            Activations::Int8Batched => (m > 1).then_some(127.0),
        }
    }
}

/// In a tab, 16-bit activations unless the host asks otherwise: measured in Chromium on this
/// project's 2-core machine (bench generate, SmolLM2-135M Q4_1, 2 threads) prefill 131 → 148
/// tok/s, 16 streams 70 → 78 tok/s, decode 28 → 29 tok/s (one thread 16 → 19), and the greedy ids
/// of both reference prompts unchanged. 8-bit activations change them, so they are only asked
/// for. Natively (the host's CPU executor, AVX2 f32 with FMA) f32.
static MODE: AtomicU8 =
    AtomicU8::new(if cfg!(target_arch = "wasm32") { Activations::Int16 } else { Activations::F32 } as u8);

/// Set the process-wide mode (a tab sets it once at start, from what its host asked).
pub fn set_activations(mode: Activations) {
    MODE.store(mode as u8, Ordering::Relaxed);
}

pub fn activations() -> Activations {
    match MODE.load(Ordering::Relaxed) {
        1 => Activations::Int16,
        2 => Activations::Int8Batched,
        _ => Activations::F32,
    }
}

/// Rows of x as integer blocks in i16 (what the dot instruction takes: 8-bit values are widened
/// once here, not once per output row), one scale per block, and each block's f32 sum (the
/// Q4_1 minimum's share, `m·Σx`, is taken from x itself).
pub struct QuantizedRows {
    pub q: Vec<i16>,
    pub d: Vec<f32>,
    pub sum: Vec<f32>,
}

/// Quantize `x` (whole blocks of 32) block by block: `dx = max|x| / levels`, `xq = x / dx`
/// rounded to nearest, ties to even. In a tab with SIMD128 the same arithmetic four lanes at a
/// time (the scalar loop called libm's `fmaxf` and `roundf` per value: a tenth of a prefill);
/// both sum a block in the same order, so the results are equal bit for bit.
pub fn quantize_rows(x: &[f32], levels: f32) -> QuantizedRows {
    assert!(x.len().is_multiple_of(QK), "whole blocks");
    let mut q = vec![0i16; x.len()];
    let (mut d, mut sum) = (Vec::with_capacity(x.len() / QK), Vec::with_capacity(x.len() / QK));
    for (blk, out) in x.chunks_exact(QK).zip(q.chunks_exact_mut(QK)) {
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        let (dx, s) = super::quantized_simd128::quantize_block(blk, levels, out);
        #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
        let (dx, s) = quantize_block(blk, levels, out);
        d.push(dx);
        sum.push(s);
    }
    QuantizedRows { q, d, sum }
}

/// One block of [`quantize_rows`], portable: `(dx, Σx)`, the sum taken in four lanes
/// (`lane[j % 4]`, then `(l0 + l2) + (l1 + l3)`) as the SIMD128 version adds.
pub fn quantize_block(blk: &[f32], levels: f32, out: &mut [i16]) -> (f32, f32) {
    let amax = blk.iter().fold(0.0f32, |a, v| if v.abs() > a { v.abs() } else { a });
    let dx = amax / levels;
    let inv = if dx > 0.0 { 1.0 / dx } else { 0.0 };
    let mut lane = [0.0f32; 4];
    for (j, (o, v)) in out.iter_mut().zip(blk).enumerate() {
        *o = (v * inv).round_ties_even().clamp(-levels, levels) as i16;
        lane[j % 4] += v;
    }
    (dx, (lane[0] + lane[2]) + (lane[1] + lane[3]))
}

/// One output row of W for every row of x (portable): `acc[i] = x_i · w`.
fn output_row(dtype: DType, row: &[u8], xq: &[i16], xd: &[f32], xsum: &[f32], acc: &mut [f32]) {
    let bb = dtype.block().expect("a block dtype").1;
    let nb = row.len() / bb;
    let k = nb * QK;
    let mut q = [0i32; QK];
    assert!(acc.len() <= super::quantized::ROW_TILE, "one tile of rows");
    let mut mins = [0.0f32; super::quantized::ROW_TILE];
    acc.fill(0.0);
    for (b, blk) in row.chunks_exact(bb).enumerate() {
        let d = f16_to_f32(u16::from_le_bytes([blk[0], blk[1]]));
        let m = if dtype == DType::Q4_1 {
            for j in 0..QK / 2 {
                q[j] = (blk[4 + j] & 0x0f) as i32;
                q[j + QK / 2] = (blk[4 + j] >> 4) as i32;
            }
            f16_to_f32(u16::from_le_bytes([blk[2], blk[3]]))
        } else {
            for j in 0..QK {
                q[j] = blk[2 + j] as i8 as i32;
            }
            0.0
        };
        for (i, (a, mn)) in acc.iter_mut().zip(mins.iter_mut()).enumerate() {
            let xb = &xq[i * k + b * QK..i * k + (b + 1) * QK];
            let s: i32 = q.iter().zip(xb).map(|(&w, &v)| w * v as i32).sum();
            *a += d * xd[i * nb + b] * s as f32;
            *mn += m * xsum[i * nb + b];
        }
    }
    for (a, mn) in acc.iter_mut().zip(mins) {
        *a += mn;
    }
}

/// `Y[m,n] = X[m,k] · W[n,k]ᵀ (+ bias[n])` with X rounded to integer blocks of ±`levels` (127
/// or 32767, see the module). `wide`: the SIMD128 kernel (wasm32 with simd128 only; elsewhere
/// the portable one runs).
pub fn linear(
    x: &[f32],
    w: &[u8],
    dtype: DType,
    bias: Option<&[f32]>,
    (m, k, n): (usize, usize, usize),
    levels: f32,
    wide: bool,
) -> Vec<f32> {
    let bb = dtype.block().expect("a block dtype").1;
    debug_assert!(bb == BlockQ4_1::BYTES || bb == BlockQ8_0::BYTES);
    let nb = k / QK;
    assert!(k.is_multiple_of(QK), "K = {k} is not whole blocks");
    assert_eq!(x.len(), m * k, "X is not {m}x{k}");
    assert_eq!(w.len(), n * nb * bb, "W is not {n}x{k} of {dtype:?}");
    let xq = quantize_rows(x, levels);
    let xsum = &xq.sum;
    let mut y = vec![0.0f32; m * n];
    // Tiles of x rows as in the f32 kernel (`quantized::linear`): a tile stays in cache while
    // every output row of W passes over it.
    for r0 in (0..m).step_by(super::quantized::ROW_TILE) {
        let t = super::quantized::ROW_TILE.min(m - r0);
        // Slices of the quantized rows, not copies.
        let (tq, td) = (&xq.q[r0 * k..(r0 + t) * k], &xq.d[r0 * nb..(r0 + t) * nb]);
        let xs = &xsum[r0 * nb..(r0 + t) * nb];
        let mut yt = vec![0.0f32; n * t];
        // yt is [row of W][row of x]: one output row of W per task row.
        let portable = |yt: &mut [f32]| {
            par::rows(yt, t, n * k * t, |j, acc| {
                output_row(dtype, &w[j * nb * bb..(j + 1) * nb * bb], tq, td, xs, acc);
                if let Some(bias) = bias {
                    acc.iter_mut().for_each(|a| *a += bias[j]);
                }
            })
        };
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        if wide {
            // Four rows of W at a time (blocks of four rows per thread), every row of the tile.
            par::row_blocks(&mut yt, t, 4, n * k * t, |j0, block| {
                let rows = |j: usize, count: usize| &w[j * nb * bb..(j + count) * nb * bb];
                let quads = block.len() / t / 4 * 4;
                let mut quad = [0.0f32; 4 * super::quantized::ROW_TILE];
                let quad = &mut quad[..4 * t];
                for (c, out) in block[..quads * t].chunks_exact_mut(4 * t).enumerate() {
                    super::quantized_simd128::output_quad_int(dtype, rows(j0 + 4 * c, 4), tq, td, xs, quad);
                    // quad is [row of x][row of W]; the block is [row of W][row of x].
                    for (i, four) in quad.chunks_exact(4).enumerate() {
                        for (r, &v) in four.iter().enumerate() {
                            out[r * t + i] = v;
                        }
                    }
                }
                for (r, acc) in block[quads * t..].chunks_exact_mut(t).enumerate() {
                    super::quantized_simd128::output_row_int(dtype, rows(j0 + quads + r, 1), tq, td, xs, acc);
                }
                if let Some(bias) = bias {
                    for (col, b) in block.chunks_exact_mut(t).zip(&bias[j0..]) {
                        col.iter_mut().for_each(|o| *o += b);
                    }
                }
            });
        } else {
            portable(&mut yt);
        }
        #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
        {
            let _ = wide;
            portable(&mut yt);
        }
        for (j, col) in yt.chunks_exact(t).enumerate() {
            for (i, &v) in col.iter().enumerate() {
                y[(r0 + i) * n + j] = v;
            }
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::super::quantized::tests::{dequant_f64, noise};
    use super::*;
    use shared_proto::quant::{quantize_row_q4_1, quantize_row_q8_0};

    #[test]
    fn int8_rows_round_to_nearest_within_half_a_step() {
        let mut x = noise(96, 3);
        x[32..64].fill(0.0);
        let q = quantize_rows(&x, 127.0);
        assert_eq!(q.d[1], 0.0, "an all-zero block has scale 0 and zeros");
        assert!(q.q[32..64].iter().all(|&v| v == 0));
        for (b, blk) in x.chunks_exact(QK).enumerate() {
            let amax = blk.iter().fold(0.0f32, |a, v| a.max(v.abs()));
            assert!(q.q[b * QK..(b + 1) * QK].iter().any(|v| v.abs() == 127) || amax == 0.0);
            for (j, v) in blk.iter().enumerate() {
                let back = q.q[b * QK + j] as f32 * q.d[b];
                assert!((back - v).abs() <= q.d[b] / 2.0 * 1.0001, "{v} → {back}");
            }
        }
    }

    /// Against f64 on the quantized x (what the kernel computes: f32 rounding only) and on the
    /// original x (the quantization's own error, bounded by dx/2 · Σ|w| per block).
    #[test]
    fn integer_linear_matches_f64_within_the_rounding_of_x() {
        for (dtype, levels) in
            [(DType::Q4_1, 127.0), (DType::Q8_0, 127.0), (DType::Q4_1, 32767.0), (DType::Q8_0, 32767.0)]
        {
            for (m, k, n) in [(1, 64, 5), (2, 64, 5), (33, 96, 7), (4, 128, 300)] {
                let w: Vec<u8> = noise(n * k, 1 + n as u64)
                    .chunks_exact(k)
                    .flat_map(|r| if dtype == DType::Q4_1 { quantize_row_q4_1(r) } else { quantize_row_q8_0(r) })
                    .collect();
                let x = noise(m * k, 7);
                let got = linear(&x, &w, dtype, None, (m, k, n), levels, false);
                let xq = quantize_rows(&x, levels);
                let rb = w.len() / n;
                for j in 0..n {
                    let wr = dequant_f64(dtype, &w[j * rb..(j + 1) * rb]);
                    for i in 0..m {
                        let (mut exact, mut abs, mut bound) = (0.0f64, 0.0f64, 0.0f64);
                        for c in 0..k {
                            let xv = x[i * k + c] as f64;
                            exact += wr[c] * xv;
                            abs += (wr[c] * xv).abs();
                            // |x − dx·xq| ≤ dx/2 per value (the Q4_1 minimum's share, m·Σx,
                            // uses x itself: this bounds it generously).
                            bound += wr[c].abs() * xq.d[(i * k + c) / QK] as f64 / 2.0;
                        }
                        let g = got[i * n + j] as f64;
                        assert!(
                            (g - exact).abs() <= bound + 1e-5 * abs + 1e-6,
                            "{dtype:?} {m}x{k}x{n} [{i},{j}]: {g} vs {exact} (bound {bound})"
                        );
                    }
                }
            }
        }
    }
}
