//! Block-quantized weight formats, byte-compatible with GGUF/ggml, so a weight travels from the
//! file to a tab's device unchanged and is dequantized inside the kernels.
//!
//! Each block holds [`QK`] consecutive weights of a row (the last axis). Sizes are checked at
//! compile time: a layout drift here would silently scramble every weight.

/// Weights per block, for every block format here.
pub const QK: usize = 32;

/// Q4_1: `w = d · q + m` with 4-bit `q` in 0..16. Byte `j` of `qs` holds weight `j` in its low
/// nibble and weight `j + 16` in its high nibble (ggml's layout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct BlockQ4_1 {
    /// Scale, IEEE f16 bits.
    pub d: u16,
    /// Minimum, IEEE f16 bits.
    pub m: u16,
    pub qs: [u8; QK / 2],
}

impl BlockQ4_1 {
    pub const BYTES: usize = 4 + QK / 2;

    /// The block at the start of `b` (at least [`Self::BYTES`] bytes, little-endian).
    pub fn read(b: &[u8]) -> BlockQ4_1 {
        let mut qs = [0u8; QK / 2];
        qs.copy_from_slice(&b[4..Self::BYTES]);
        BlockQ4_1 { d: u16::from_le_bytes([b[0], b[1]]), m: u16::from_le_bytes([b[2], b[3]]), qs }
    }

    pub fn dequantize(&self, out: &mut [f32; QK]) {
        let (d, m) = (f16_to_f32(self.d), f16_to_f32(self.m));
        for (j, &q) in self.qs.iter().enumerate() {
            out[j] = d * (q & 0x0f) as f32 + m;
            out[j + QK / 2] = d * (q >> 4) as f32 + m;
        }
    }
}

/// Q8_0: `w = d · q` with signed 8-bit `q`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct BlockQ8_0 {
    /// Scale, IEEE f16 bits.
    pub d: u16,
    pub qs: [i8; QK],
}

impl BlockQ8_0 {
    pub const BYTES: usize = 2 + QK;

    pub fn read(b: &[u8]) -> BlockQ8_0 {
        let mut qs = [0i8; QK];
        for (q, &x) in qs.iter_mut().zip(&b[2..Self::BYTES]) {
            *q = x as i8;
        }
        BlockQ8_0 { d: u16::from_le_bytes([b[0], b[1]]), qs }
    }

    pub fn dequantize(&self, out: &mut [f32; QK]) {
        let d = f16_to_f32(self.d);
        for (o, &q) in out.iter_mut().zip(&self.qs) {
            *o = d * q as f32;
        }
    }
}

// ggml's sizes: sizeof(block_q4_1) == 20, sizeof(block_q8_0) == 34.
const _: () = assert!(BlockQ4_1::BYTES == 20 && std::mem::size_of::<BlockQ4_1>() == 20);
const _: () = assert!(BlockQ8_0::BYTES == 34 && std::mem::size_of::<BlockQ8_0>() == 34);

/// Widen a whole row of a packed dtype to f32: `bytes` holds exactly `out.len() / QK` blocks,
/// or `out.len()` halves for f16.
pub fn dequantize_row(dtype: crate::DType, bytes: &[u8], out: &mut [f32]) {
    let mut tmp = [0f32; QK];
    match dtype {
        crate::DType::F16 => {
            for (c, o) in bytes.chunks_exact(2).zip(out.iter_mut()) {
                *o = f16_to_f32(u16::from_le_bytes([c[0], c[1]]));
            }
        }
        crate::DType::Q4_1 => {
            for (b, o) in bytes.chunks_exact(BlockQ4_1::BYTES).zip(out.chunks_exact_mut(QK)) {
                BlockQ4_1::read(b).dequantize(&mut tmp);
                o.copy_from_slice(&tmp);
            }
        }
        crate::DType::Q8_0 => {
            for (b, o) in bytes.chunks_exact(BlockQ8_0::BYTES).zip(out.chunks_exact_mut(QK)) {
                BlockQ8_0::read(b).dequantize(&mut tmp);
                o.copy_from_slice(&tmp);
            }
        }
        other => panic!("{other:?} is not a packed dtype"),
    }
}

/// IEEE half → single (exact; subnormals and infinities included).
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let man = (h & 0x3ff) as u32;
    let bits = match (exp, man) {
        (0, 0) => sign,
        (0, _) => {
            // Subnormal: renormalise.
            let shift = man.leading_zeros() - 21;
            sign | ((113 - shift) << 23) | (((man << shift) & 0x3ff) << 13)
        }
        (31, _) => sign | 0x7f80_0000 | (man << 13),
        _ => sign | ((exp + 112) << 23) | (man << 13),
    };
    f32::from_bits(bits)
}

/// Single → half, rounding to nearest even (for tests and tools that build blocks).
pub fn f32_to_f16(x: f32) -> u16 {
    let b = x.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let exp = ((b >> 23) & 0xff) as i32;
    let man = b & 0x7f_ffff;
    if exp == 255 {
        return sign | 0x7c00 | if man != 0 { 0x200 } else { 0 };
    }
    let e = exp - 127 + 15;
    if e >= 31 {
        return sign | 0x7c00;
    }
    if e <= 0 {
        if e < -10 {
            return sign;
        }
        let m = man | 0x80_0000;
        let shift = (14 - e) as u32;
        let half = 1u32 << (shift - 1);
        let rest = m & ((1 << shift) - 1);
        let mut r = m >> shift;
        if rest > half || (rest == half && r & 1 == 1) {
            r += 1;
        }
        return sign | r as u16;
    }
    let mut r = ((e as u32) << 10) | (man >> 13);
    let rest = man & 0x1fff;
    if rest > 0x1000 || (rest == 0x1000 && r & 1 == 1) {
        r += 1;
    }
    sign | r as u16
}

/// Quantize a row to Q4_1 blocks as ggml does (min and scale per block): for tests that need
/// quantized weights of known values.
pub fn quantize_row_q4_1(x: &[f32]) -> Vec<u8> {
    assert_eq!(x.len() % QK, 0, "a row of whole blocks");
    let mut out = Vec::with_capacity(x.len() / QK * BlockQ4_1::BYTES);
    for blk in x.chunks_exact(QK) {
        let min = blk.iter().copied().fold(f32::INFINITY, f32::min);
        let max = blk.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f32_to_f16(d).to_le_bytes());
        out.extend_from_slice(&f32_to_f16(min).to_le_bytes());
        for j in 0..QK / 2 {
            let q0 = (((blk[j] - min) * id + 0.5) as u8).min(15);
            let q1 = (((blk[j + QK / 2] - min) * id + 0.5) as u8).min(15);
            out.push(q0 | (q1 << 4));
        }
    }
    out
}

/// Quantize a row to Q8_0 blocks as ggml does.
pub fn quantize_row_q8_0(x: &[f32]) -> Vec<u8> {
    assert_eq!(x.len() % QK, 0, "a row of whole blocks");
    let mut out = Vec::with_capacity(x.len() / QK * BlockQ8_0::BYTES);
    for blk in x.chunks_exact(QK) {
        let amax = blk.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f32_to_f16(d).to_le_bytes());
        for &v in blk {
            out.push((v * id).round() as i8 as u8);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_round_trips_every_finite_half() {
        for h in 0..=u16::MAX {
            let x = f16_to_f32(h);
            if x.is_nan() {
                continue;
            }
            assert_eq!(f32_to_f16(x), h, "{h:#06x} → {x}");
        }
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
    }

    #[test]
    fn q4_1_dequantizes_ggml_layout() {
        // d = 0.5, m = -1: low nibble j → weight j, high nibble → weight j + 16.
        let mut b = vec![];
        b.extend_from_slice(&f32_to_f16(0.5).to_le_bytes());
        b.extend_from_slice(&f32_to_f16(-1.0).to_le_bytes());
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let mut out = [0f32; QK];
        BlockQ4_1::read(&b).dequantize(&mut out);
        for j in 0..16 {
            assert_eq!(out[j], 0.5 * j as f32 - 1.0);
            assert_eq!(out[j + 16], 0.5 * (15 - j) as f32 - 1.0);
        }
    }

    #[test]
    fn quantize_then_dequantize_is_within_half_a_step() {
        let x: Vec<f32> = (0..64).map(|i| ((i * 37 % 64) as f32 - 30.0) / 7.0).collect();
        let mut y = vec![0f32; 64];
        dequantize_row(crate::DType::Q4_1, &quantize_row_q4_1(&x), &mut y);
        for (blk_x, blk_y) in x.chunks(QK).zip(y.chunks(QK)) {
            let range = blk_x.iter().copied().fold(f32::MIN, f32::max) - blk_x.iter().copied().fold(f32::MAX, f32::min);
            for (a, b) in blk_x.iter().zip(blk_y) {
                assert!((a - b).abs() <= range / 15.0 * 0.5 + 1e-2, "{a} vs {b}");
            }
        }
        dequantize_row(crate::DType::Q8_0, &quantize_row_q8_0(&x), &mut y);
        for (a, b) in x.iter().zip(&y) {
            assert!((a - b).abs() <= 4.3 / 127.0, "{a} vs {b}");
        }
    }
}
