//! Fused multi-head self-attention core on the CPU.

use super::matmul::dot;

/// Batch, sequence, hidden width and head count of an attention call.
#[derive(Debug, Clone, Copy)]
pub struct AttnDims {
    pub b: usize,
    pub s: usize,
    pub h: usize,
    pub heads: usize,
}

/// `q, k, v [B,S,H]`, `mask [B,S]` → `[B,S,H]`; head `h` uses columns `h·d..(h+1)·d`, d = H/heads.
/// Masked keys get no weight (not merely a large negative bias).
pub fn attention(q: &[f32], k: &[f32], v: &[f32], mask: &[f32], dims: AttnDims) -> Vec<f32> {
    let AttnDims { b, s, h, .. } = dims;
    let mut out = vec![0.0f32; b * s * h];
    if out.is_empty() {
        return out;
    }
    // Over threads by batch rows: each writes its own [S, H] block.
    super::par::rows(&mut out, s * h, b * s * s * h * 2, |bi, out_b| {
        one_row(q, k, v, mask, dims, bi, out_b);
    });
    out
}

/// Batch row `bi` of [`attention`] into `out_b` (`[S, H]`).
fn one_row(q: &[f32], k: &[f32], v: &[f32], mask: &[f32], dims: AttnDims, bi: usize, out_b: &mut [f32]) {
    let AttnDims { s, h, heads, .. } = dims;
    let d = h / heads;
    let scale = 1.0 / (d as f32).sqrt();
    let mut kh = vec![0.0f32; s * d];
    let mut scores = vec![0.0f64; s];
    let mut acc = vec![0.0f64; d];
    let keep: Vec<bool> = mask[bi * s..(bi + 1) * s].iter().map(|&m| m != 0.0).collect();
    for hi in 0..heads {
        for j in 0..s {
            let src = (bi * s + j) * h + hi * d;
            kh[j * d..(j + 1) * d].copy_from_slice(&k[src..src + d]);
        }
        for i in 0..s {
            let qi = &q[(bi * s + i) * h + hi * d..][..d];
            let mut max = f64::NEG_INFINITY;
            for j in 0..s {
                scores[j] = if keep[j] { (dot(qi, &kh[j * d..(j + 1) * d]) * scale) as f64 } else { f64::NEG_INFINITY };
                max = max.max(scores[j]);
            }
            let o = &mut out_b[i * h + hi * d..][..d];
            if max == f64::NEG_INFINITY {
                continue; // every key masked: zeros
            }
            let mut sum = 0.0f64;
            for sc in scores.iter_mut() {
                *sc = (*sc - max).exp();
                sum += *sc;
            }
            acc.fill(0.0);
            for j in 0..s {
                if scores[j] != 0.0 {
                    let p = scores[j] / sum;
                    for (a, &vv) in acc.iter_mut().zip(&v[(bi * s + j) * h + hi * d..][..d]) {
                        *a += p * vv as f64;
                    }
                }
            }
            for (oo, a) in o.iter_mut().zip(&acc) {
                *oo = *a as f32;
            }
        }
    }
}
