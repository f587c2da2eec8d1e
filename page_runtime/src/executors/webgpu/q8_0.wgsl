// Q8_0 blocks read from `w: array<u32>`: 34 bytes per block (f16 d, then 32 i8), so a block
// starts on a 2-byte boundary and its fields may straddle words. w = d·q.

// The 4 bytes at even byte offset `b`.
fn q_word(b: u32) -> u32 {
    let i = b >> 2u;
    if ((b & 2u) == 0u) {
        return w[i];
    }
    return (w[i] >> 16u) | (w[i + 1u] << 16u);
}

// (d, 0) of block `blk` (same shape as Q4_1's (d, m)).
fn q_head(blk: u32) -> vec2<f32> {
    return vec2<f32>(unpack2x16float(q_word(blk * 34u)).x, 0.0);
}

// Weights 4c..4c+3 (c < 8) of block `blk`, given its head.
fn q_quad(blk: u32, c: u32, h: vec2<f32>) -> vec4<f32> {
    let q = i32(q_word(blk * 34u + 2u + 4u * c));
    let v = vec4<f32>(
        f32(extractBits(q, 0u, 8u)),
        f32(extractBits(q, 8u, 8u)),
        f32(extractBits(q, 16u, 8u)),
        f32(extractBits(q, 24u, 8u)),
    );
    return v * h.x;
}

// Weight j (< 32) of block `blk`.
fn q_one(blk: u32, j: u32) -> f32 {
    let b = blk * 34u + 2u + j;
    let q = extractBits(i32(w[b >> 2u]), (b & 3u) * 8u, 8u);
    return f32(q) * q_head(blk).x;
}
