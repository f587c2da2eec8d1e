//! Rotary position embedding, interleaved pairs (GGUF's layout, ggml "normal" mode).

/// `x[T, heads·d]`, `pos[T]`: pair `(2i, 2i+1)` of every head of row `t` rotated by
/// `pos[t] · base^(-2i/d)`. Angles are computed in f64: at positions in the thousands an f32
/// angle is already off by ~1e-4 rad.
pub fn rope(x: &[f32], pos: &[i32], heads: usize, base: f32) -> Vec<f32> {
    let t = pos.len();
    let w = x.len() / t.max(1);
    let d = w / heads;
    let mut out = x.to_vec();
    let inv_freq: Vec<f64> = (0..d / 2).map(|i| (base as f64).powf(-2.0 * i as f64 / d as f64)).collect();
    let mut cs = vec![(0.0f32, 0.0f32); d / 2];
    for (row, &p) in out.chunks_exact_mut(w).zip(pos) {
        // One sin/cos per pair index, shared by every head of the row.
        for (c, &f) in cs.iter_mut().zip(&inv_freq) {
            let (s, co) = (p as f64 * f).sin_cos();
            *c = (co as f32, s as f32);
        }
        for head in row.chunks_exact_mut(d) {
            for (pair, &(c, s)) in head.chunks_exact_mut(2).zip(&cs) {
                let (a, b) = (pair[0], pair[1]);
                pair[0] = a * c - b * s;
                pair[1] = a * s + b * c;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_matches_f64_rotation() {
        let (heads, d, base) = (3, 8, 10000.0f32);
        let pos = [0, 1, 7, 1000];
        let x: Vec<f32> = (0..pos.len() * heads * d).map(|i| ((i * 7919 % 101) as f32 - 50.0) / 25.0).collect();
        let got = rope(&x, &pos, heads, base);
        for (t, &p) in pos.iter().enumerate() {
            for h in 0..heads {
                for i in 0..d / 2 {
                    let at = t * heads * d + h * d + 2 * i;
                    let theta = p as f64 / (base as f64).powf((2 * i) as f64 / d as f64);
                    // As a complex product (a + ib)·e^{iθ}.
                    let (a, b) = (x[at] as f64, x[at + 1] as f64);
                    let want = (a * theta.cos() - b * theta.sin(), a * theta.sin() + b * theta.cos());
                    for (g, w) in [(got[at], want.0), (got[at + 1], want.1)] {
                        assert!((g as f64 - w).abs() <= 1e-6 + 1e-6 * w.abs(), "t {t} h {h} i {i}: {g} vs {w}");
                    }
                }
            }
        }
        assert_eq!(&got[..heads * d], &x[..heads * d], "position 0 is the identity");
    }

    #[test]
    fn rotated_dot_products_depend_on_relative_position_only() {
        let d = 16;
        let q: Vec<f32> = (0..d).map(|i| (i as f32 * 0.37).sin()).collect();
        let k: Vec<f32> = (0..d).map(|i| (i as f32 * 0.91).cos()).collect();
        let dot = |pq: i32, pk: i32| -> f64 {
            let a = rope(&q, &[pq], 1, 10000.0);
            let b = rope(&k, &[pk], 1, 10000.0);
            a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum()
        };
        let base = dot(5, 2);
        for shift in [0, 10, 300] {
            let s = dot(5 + shift, 2 + shift);
            assert!((s - base).abs() <= 1e-5 * (1.0 + base.abs()), "shift {shift}: {s} vs {base}");
        }
        assert!((dot(5, 2) - dot(2, 5)).abs() > 1e-3, "the sign of the offset matters");
    }
}
