//! Convolution family (NCHW): 2-D convolution with stride, groups and asymmetric padding, and
//! global average pooling.

use super::{matmul, par};

/// The sizes of one `Conv2d` (`pad` = [top, left, bottom, right]).
#[derive(Debug, Clone, Copy)]
pub struct ConvDims {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub o: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: [usize; 2],
    pub pad: [usize; 4],
    pub groups: usize,
}

impl ConvDims {
    pub fn out_hw(&self) -> (usize, usize) {
        let ho = (self.h + self.pad[0] + self.pad[2] - self.kh) / self.stride[0] + 1;
        let wo = (self.w + self.pad[1] + self.pad[3] - self.kw) / self.stride[1] + 1;
        (ho, wo)
    }
}

/// `x[N, C, H, W]`, `w[O, C/groups, kh, kw]`, `bias[O]` → `[N, O, Ho, Wo]`; padding reads zeros.
/// Output planes are computed independently (over threads natively, `par::rows`), each summing
/// in the order (input channel, ky, kx) and adding the bias last, as the definition reads.
pub fn conv2d(x: &[f32], w: &[f32], bias: Option<&[f32]>, d: &ConvDims) -> Vec<f32> {
    let (ho, wo) = d.out_hw();
    let (cg, og) = (d.c / d.groups, d.o / d.groups);
    let mut out = vec![0f32; d.n * d.o * ho * wo];
    if out.is_empty() {
        return out;
    }
    let pointwise = d.kh == 1 && d.kw == 1 && d.stride == [1, 1] && d.pad == [0; 4] && d.groups == 1;
    if pointwise {
        for n in 0..d.n {
            let xn = &x[n * d.c * d.h * d.w..][..d.c * d.h * d.w];
            // A 1×1 convolution is w[O, C] · x[C, H·W]: the matmul kernel.
            out[n * d.o * ho * wo..][..d.o * ho * wo].copy_from_slice(&matmul::matmul(w, xn, d.o, d.c, ho * wo));
        }
    } else {
        // Per kx, the output columns whose input column lies inside the row: [lo, hi).
        let cols: Vec<(usize, usize)> = (0..d.kw)
            .map(|kx| {
                let (pl, sw) = (d.pad[1], d.stride[1]);
                let lo = pl.saturating_sub(kx).div_ceil(sw);
                let hi = if d.w + pl > kx { ((d.w + pl - kx - 1) / sw + 1).min(wo) } else { 0 };
                (lo, hi.max(lo))
            })
            .collect();
        let work = d.n * d.o * ho * wo * cg * d.kh * d.kw;
        par::rows(&mut out, ho * wo, work, |i, plane| {
            let (n, oc) = (i / d.o, i % d.o);
            let g = oc / og;
            let xn = &x[n * d.c * d.h * d.w..][..d.c * d.h * d.w];
            for ic in 0..cg {
                let xc = &xn[(g * cg + ic) * d.h * d.w..][..d.h * d.w];
                let wk = &w[(oc * cg + ic) * d.kh * d.kw..][..d.kh * d.kw];
                for oy in 0..ho {
                    let out_row = &mut plane[oy * wo..][..wo];
                    for ky in 0..d.kh {
                        let iy = (oy * d.stride[0] + ky) as isize - d.pad[0] as isize;
                        if iy < 0 || iy >= d.h as isize {
                            continue;
                        }
                        let row = &xc[iy as usize * d.w..][..d.w];
                        for (kx, &(lo, hi)) in cols.iter().enumerate() {
                            let wv = wk[ky * d.kw + kx];
                            for (ox, o) in out_row.iter_mut().enumerate().take(hi).skip(lo) {
                                *o += wv * row[ox * d.stride[1] + kx - d.pad[1]];
                            }
                        }
                    }
                }
            }
        });
    }
    if let Some(b) = bias {
        for (i, plane) in out.chunks_exact_mut(ho * wo).enumerate() {
            let bv = b[i % d.o];
            plane.iter_mut().for_each(|v| *v += bv);
        }
    }
    out
}

/// `x[rows, len]` → `[rows]`: each row's mean (`rows` = N·C, `len` = H·W).
pub fn global_avg_pool(x: &[f32], rows: usize, len: usize) -> Vec<f32> {
    (0..rows).map(|r| (x[r * len..][..len].iter().map(|&v| v as f64).sum::<f64>() / len as f64) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct definition in f64, for comparison.
    fn reference(x: &[f32], w: &[f32], b: &[f32], d: &ConvDims) -> Vec<f64> {
        let (ho, wo) = d.out_hw();
        let (cg, og) = (d.c / d.groups, d.o / d.groups);
        let mut out = vec![0f64; d.n * d.o * ho * wo];
        for n in 0..d.n {
            for o in 0..d.o {
                for oy in 0..ho {
                    for ox in 0..wo {
                        let mut s = b[o] as f64;
                        for ic in 0..cg {
                            let c = (o / og) * cg + ic;
                            for ky in 0..d.kh {
                                for kx in 0..d.kw {
                                    let iy = (oy * d.stride[0] + ky) as isize - d.pad[0] as isize;
                                    let ix = (ox * d.stride[1] + kx) as isize - d.pad[1] as isize;
                                    if iy >= 0 && ix >= 0 && (iy as usize) < d.h && (ix as usize) < d.w {
                                        s += x[((n * d.c + c) * d.h + iy as usize) * d.w + ix as usize] as f64
                                            * w[((o * cg + ic) * d.kh + ky) * d.kw + kx] as f64;
                                    }
                                }
                            }
                        }
                        out[((n * d.o + o) * ho + oy) * wo + ox] = s;
                    }
                }
            }
        }
        out
    }

    fn seq(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    #[test]
    fn conv2d_matches_the_definition_for_stride_groups_and_same_padding() {
        let cases = [
            // full 3×3 stride 2 with TF SAME's asymmetric pad (0 before, 1 after)
            ConvDims { n: 2, c: 3, h: 8, w: 8, o: 4, kh: 3, kw: 3, stride: [2, 2], pad: [0, 0, 1, 1], groups: 1 },
            // depthwise 5×5 stride 2 (pad 1/2)
            ConvDims { n: 1, c: 6, h: 9, w: 7, o: 6, kh: 5, kw: 5, stride: [2, 2], pad: [1, 1, 2, 2], groups: 6 },
            // depthwise 3×3 stride 1 pad 1
            ConvDims { n: 1, c: 4, h: 5, w: 5, o: 4, kh: 3, kw: 3, stride: [1, 1], pad: [1, 1, 1, 1], groups: 4 },
            // pointwise
            ConvDims { n: 2, c: 5, h: 3, w: 4, o: 7, kh: 1, kw: 1, stride: [1, 1], pad: [0; 4], groups: 1 },
            // grouped, 2 groups
            ConvDims { n: 1, c: 4, h: 4, w: 4, o: 6, kh: 3, kw: 3, stride: [1, 2], pad: [1, 0, 1, 2], groups: 2 },
        ];
        for d in cases {
            let x = seq(d.n * d.c * d.h * d.w, 1);
            let w = seq(d.o * (d.c / d.groups) * d.kh * d.kw, 2);
            let b = seq(d.o, 3);
            let got = conv2d(&x, &w, Some(&b), &d);
            let want = reference(&x, &w, &b, &d);
            assert_eq!(got.len(), want.len(), "{d:?}");
            for (g, w) in got.iter().zip(&want) {
                assert!((*g as f64 - w).abs() <= 1e-5 + 1e-5 * w.abs(), "{d:?}: {g} vs {w}");
            }
        }
    }

    /// The loop the kernel was first written as (one thread, bounds checked per element).
    fn plain_loops(x: &[f32], w: &[f32], b: &[f32], d: &ConvDims) -> Vec<f32> {
        let (ho, wo) = d.out_hw();
        let (cg, og) = (d.c / d.groups, d.o / d.groups);
        let mut out = vec![0f32; d.n * d.o * ho * wo];
        for n in 0..d.n {
            let xn = &x[n * d.c * d.h * d.w..][..d.c * d.h * d.w];
            let on = &mut out[n * d.o * ho * wo..][..d.o * ho * wo];
            for oc in 0..d.o {
                let g = oc / og;
                let plane = &mut on[oc * ho * wo..][..ho * wo];
                for ic in 0..cg {
                    let xc = &xn[(g * cg + ic) * d.h * d.w..][..d.h * d.w];
                    let wk = &w[(oc * cg + ic) * d.kh * d.kw..][..d.kh * d.kw];
                    for oy in 0..ho {
                        for ky in 0..d.kh {
                            let iy = (oy * d.stride[0] + ky) as isize - d.pad[0] as isize;
                            if iy < 0 || iy >= d.h as isize {
                                continue;
                            }
                            for kx in 0..d.kw {
                                for ox in 0..wo {
                                    let ix = (ox * d.stride[1] + kx) as isize - d.pad[1] as isize;
                                    if ix >= 0 && ix < d.w as isize {
                                        plane[oy * wo + ox] += wk[ky * d.kw + kx] * xc[iy as usize * d.w + ix as usize];
                                    }
                                }
                            }
                        }
                    }
                }
            }
            for (oc, plane) in on.chunks_exact_mut(ho * wo).enumerate() {
                plane.iter_mut().for_each(|v| *v += b[oc]);
            }
        }
        out
    }

    #[test]
    fn threaded_kernel_gives_the_plain_loops_bits() {
        let cases = [
            // above the parallel threshold: depthwise 5×5/2 and a full 3×3/2 with SAME padding
            ConvDims { n: 2, c: 32, h: 40, w: 40, o: 32, kh: 5, kw: 5, stride: [2, 2], pad: [1, 1, 2, 2], groups: 32 },
            ConvDims { n: 1, c: 3, h: 64, w: 64, o: 16, kh: 3, kw: 3, stride: [2, 2], pad: [0, 0, 1, 1], groups: 1 },
            // padding wider than the kernel reach on one side, stride 3, groups 2
            ConvDims { n: 1, c: 4, h: 7, w: 9, o: 6, kh: 3, kw: 4, stride: [1, 3], pad: [2, 3, 0, 4], groups: 2 },
        ];
        for d in cases {
            let x = seq(d.n * d.c * d.h * d.w, 4);
            let w = seq(d.o * (d.c / d.groups) * d.kh * d.kw, 5);
            let b = seq(d.o, 6);
            let got = conv2d(&x, &w, Some(&b), &d);
            let want = plain_loops(&x, &w, &b, &d);
            assert!(got.iter().zip(&want).all(|(g, w)| g.to_bits() == w.to_bits()), "{d:?}");
        }
    }

    #[test]
    fn global_avg_pool_is_the_mean_of_each_plane() {
        assert_eq!(global_avg_pool(&[1.0, 2.0, 3.0, 4.0, 10.0, 10.0, 10.0, 10.0], 2, 4), vec![2.5, 10.0]);
    }
}
