// f16 weights read from `w: array<u32>` in blocks of 32 halves (16 words, two halves a word, the
// lower one first), so the kernels written for Q4_1/Q8_0 blocks read them alike.
// unpack2x16float widens exactly and needs no `shader-f16` (which SwiftShader lacks).

// All 32 weights of block `blk`, as 8 quads (quad c holds weights 4c..4c+3).
fn q_block(blk: u32) -> array<vec4<f32>, 8> {
    var r: array<vec4<f32>, 8>;
    for (var c = 0u; c < 8u; c++) {
        let i = blk * 16u + 2u * c;
        r[c] = vec4<f32>(unpack2x16float(w[i]), unpack2x16float(w[i + 1u]));
    }
    return r;
}

// Weight j (< 32) of block `blk`.
fn q_one(blk: u32, j: u32) -> f32 {
    let h = unpack2x16float(w[blk * 16u + (j >> 1u)]);
    return select(h.x, h.y, (j & 1u) == 1u);
}
