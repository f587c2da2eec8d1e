// Q4_1 blocks read from `w: array<u32>` (20 bytes = 5 words per block, so every block is
// word-aligned): word 0 holds f16 d (low half) and f16 m (high half); words 1..4 hold 16 bytes
// whose low nibbles are weights 0..15 and high nibbles weights 16..31. w = d·q + m.

// (d, m) of block `blk`.
fn q_head(blk: u32) -> vec2<f32> {
    return unpack2x16float(w[blk * 5u]);
}

// All 32 weights of block `blk`, as 8 quads (quad c holds weights 4c..4c+3).
fn q_block(blk: u32) -> array<vec4<f32>, 8> {
    let h = q_head(blk);
    var r: array<vec4<f32>, 8>;
    for (var c = 0u; c < 4u; c++) {
        let q = w[blk * 5u + 1u + c];
        let lo = vec4<f32>(f32(q & 0xfu), f32((q >> 8u) & 0xfu), f32((q >> 16u) & 0xfu), f32((q >> 24u) & 0xfu));
        let hi = vec4<f32>(f32((q >> 4u) & 0xfu), f32((q >> 12u) & 0xfu), f32((q >> 20u) & 0xfu), f32(q >> 28u));
        r[c] = lo * h.x + h.y;
        r[c + 4u] = hi * h.x + h.y;
    }
    return r;
}

// Weight j (< 32) of block `blk`.
fn q_one(blk: u32, j: u32) -> f32 {
    let h = q_head(blk);
    let word = w[blk * 5u + 1u + ((j & 15u) >> 2u)];
    let q = (word >> ((j & 3u) * 8u + (j >> 4u) * 4u)) & 0xfu;
    return f32(q) * h.x + h.y;
}
