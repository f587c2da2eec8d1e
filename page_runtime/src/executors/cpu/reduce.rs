//! Reduce family (over the last axis): layer norm, softmax, masked mean pooling, L2 normalise.
//! Statistics accumulate in f64: the CPU executor is the reference the GPU is tested against.

use super::expf;

pub fn layer_norm(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32) -> Vec<f32> {
    let h = gamma.len();
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks_exact(h) {
        let mean = row.iter().map(|&v| v as f64).sum::<f64>() / h as f64;
        let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / h as f64;
        let inv = 1.0 / (var + eps as f64).sqrt();
        out.extend(row.iter().zip(gamma).zip(beta).map(|((&v, &g), &b)| ((v as f64 - mean) * inv) as f32 * g + b));
    }
    out
}

/// Each row's exponentials in f32 (within 2 ulp, [`expf`]), summed in f64.
pub fn softmax(x: &[f32], h: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; x.len()];
    for (row, o) in x.chunks_exact(h).zip(out.chunks_exact_mut(h)) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        for (e, &v) in o.iter_mut().zip(row) {
            *e = expf::exp(v - max);
        }
        let inv = (1.0 / o.iter().map(|&e| e as f64).sum::<f64>()) as f32;
        for e in o.iter_mut() {
            *e *= inv;
        }
    }
    out
}

/// `x[B,S,H]`, `mask[B,S]` → `[B,H]`: mean over positions whose mask is non-zero.
pub fn mean_pool(x: &[f32], mask: &[f32], b: usize, s: usize, h: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; b * h];
    for bi in 0..b {
        let mut acc = vec![0.0f64; h];
        let mut count = 0.0f64;
        for si in 0..s {
            let m = mask[bi * s + si] as f64;
            if m != 0.0 {
                count += m;
                for (a, &v) in acc.iter_mut().zip(&x[(bi * s + si) * h..(bi * s + si + 1) * h]) {
                    *a += m * v as f64;
                }
            }
        }
        // An all-padding row pools to zeros rather than NaN.
        let denom = count.max(1e-9);
        for (o, a) in out[bi * h..(bi + 1) * h].iter_mut().zip(&acc) {
            *o = (a / denom) as f32;
        }
    }
    out
}

pub fn l2_normalize(x: &[f32], h: usize, eps: f32) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks_exact(h) {
        let norm = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt().max(eps as f64);
        out.extend(row.iter().map(|&v| (v as f64 / norm) as f32));
    }
    out
}

/// `x / sqrt(mean(x²) + eps) · gamma` per row of `gamma.len()`.
pub fn rms_norm(x: &[f32], gamma: &[f32], eps: f32) -> Vec<f32> {
    let h = gamma.len();
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks_exact(h) {
        let ms = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / h as f64;
        let inv = (1.0 / (ms + eps as f64).sqrt()) as f32;
        out.extend(row.iter().zip(gamma).map(|(&v, &g)| v * inv * g));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_matches_f64() {
        let x = [3.0f32, -4.0, 0.5, 1e-3, 2.0, 2.0];
        let gamma = [1.0f32, 0.5, -2.0];
        let got = rms_norm(&x, &gamma, 1e-5);
        for (r, row) in x.chunks(3).enumerate() {
            let ms = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / 3.0;
            for c in 0..3 {
                let want = row[c] as f64 / (ms + 1e-5).sqrt() * gamma[c] as f64;
                let g = got[r * 3 + c] as f64;
                assert!((g - want).abs() <= 1e-6 + 1e-6 * want.abs(), "{g} vs {want}");
            }
        }
    }
}
