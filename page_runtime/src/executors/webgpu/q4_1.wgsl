// Q4_1 blocks read from `w: array<u32>` (20 bytes = 5 words per block, so every block is
// word-aligned): word 0 holds f16 d (low half) and f16 m (high half); words 1..4 hold 16 bytes
// whose low nibbles are weights 0..15 and high nibbles weights 16..31. w = d·q + m.

// (d, m) of block `blk`.
fn q_head(blk: u32) -> vec2<f32> {
    return unpack2x16float(w[blk * 5u]);
}

// Weights 4c..4c+3 (c < 8) of block `blk`, given its head.
fn q_quad(blk: u32, c: u32, h: vec2<f32>) -> vec4<f32> {
    let q = w[blk * 5u + 1u + (c & 3u)] >> ((c >> 2u) * 4u);
    let v = vec4<f32>(f32(q & 0xfu), f32((q >> 8u) & 0xfu), f32((q >> 16u) & 0xfu), f32((q >> 24u) & 0xfu));
    return v * h.x + h.y;
}

// Weight j (< 32) of block `blk`.
fn q_one(blk: u32, j: u32) -> f32 {
    let h = q_head(blk);
    let word = w[blk * 5u + 1u + ((j & 15u) >> 2u)];
    let q = (word >> ((j & 3u) * 8u + (j >> 4u) * 4u)) & 0xfu;
    return f32(q) * h.x + h.y;
}
