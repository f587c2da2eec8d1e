//! Linear and Gather over block-quantized weights (Q4_1, Q8_0, ggml layouts). The blocks stay as
//! they came; each is dequantized inside the kernel when read, so no f32 copy of a quantized
//! weight ever exists. A block of `w = d·q + m` dotted with `x` is `d·Σq·x + m·Σx`: the kernels
//! unpack `q` once per block and reuse it for every row of `x`, so one decode step (one row)
//! reads each weight block once.

use shared_proto::quant::{BlockQ4_1, BlockQ8_0, QK, dequantize_row, f16_to_f32};
use shared_proto::{DType, ErrorKind, RemoteError};

use super::par;

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

/// A 32-wide dot product in 8 lanes (vectorises; fixed summation order).
#[inline(always)]
fn dot32(a: &[f32; QK], b: &[f32]) -> f32 {
    let b: &[f32; QK] = b.try_into().expect("a block of x");
    let mut acc = [0.0f32; 8];
    for c in 0..QK / 8 {
        for l in 0..8 {
            acc[l] += a[c * 8 + l] * b[c * 8 + l];
        }
    }
    (acc[0] + acc[4]) + (acc[1] + acc[5]) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}

/// `Y[m,n] = X[m,k] · W[n,k]ᵀ (+ bias[n])` with `W` given as `n` rows of `k / 32` blocks.
pub fn linear(x: &[f32], w: &[u8], dtype: DType, bias: Option<&[f32]>, m: usize, k: usize, n: usize) -> Vec<f32> {
    let bb = block_bytes(dtype);
    let nb = k / QK;
    assert!(k.is_multiple_of(QK), "K = {k} is not whole blocks");
    assert_eq!(x.len(), m * k, "X is not {m}x{k}");
    assert_eq!(w.len(), n * nb * bb, "W is not {n}x{k} of {dtype:?}");
    // Σx per block of each row: the `m` term of every Q4_1 block dot.
    let xsum: Vec<f32> = x.chunks_exact(QK).map(|c| c.iter().sum()).collect();
    // Output rows of W are the parallel unit; results land transposed ([n][m]) so each task
    // owns a contiguous piece.
    let mut yt = vec![0.0f32; n * m];
    par::rows(&mut yt, m, n * k * m, |j, acc| {
        let row = &w[j * nb * bb..(j + 1) * nb * bb];
        let mut q = [0.0f32; QK];
        for (b, blk) in row.chunks_exact(bb).enumerate() {
            let (d, mn) = unpack(dtype, blk, &mut q);
            for (i, a) in acc.iter_mut().enumerate() {
                let xb = &x[i * k + b * QK..i * k + (b + 1) * QK];
                *a += d * dot32(&q, xb) + mn * xsum[i * nb + b];
            }
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
    let mut y = vec![0.0f32; m * n];
    for (j, col) in yt.chunks_exact(m).enumerate() {
        for (i, &v) in col.iter().enumerate() {
            y[i * n + j] = v;
        }
    }
    y
}

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
mod tests {
    use super::*;
    use shared_proto::quant::{quantize_row_q4_1, quantize_row_q8_0};

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

    /// The ggml formulas, block by block, in f64.
    fn dequant_f64(dtype: DType, row: &[u8]) -> Vec<f64> {
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
                let got = linear(&x, &w, dtype, Some(&bias), m, k, n);
                let rb = w.len() / n;
                for i in 0..m {
                    for j in 0..n {
                        let wr = dequant_f64(dtype, &w[j * rb..(j + 1) * rb]);
                        let want: f64 = bias[j] as f64
                            + wr.iter().zip(&x[i * k..(i + 1) * k]).map(|(a, &b)| a * b as f64).sum::<f64>();
                        let g = got[i * n + j] as f64;
                        assert!(
                            (g - want).abs() <= 1e-5 + 1e-5 * want.abs(),
                            "{dtype:?} {m}x{k}x{n} [{i},{j}]: {g} vs {want}"
                        );
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
