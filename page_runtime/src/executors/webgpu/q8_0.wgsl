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

// Four i8 of `q` (little-endian) times d: sign-extended by vector shifts, one op per step.
fn q_bytes(q: u32, d: f32) -> vec4<f32> {
    let v = (vec4<i32>(bitcast<i32>(q)) << vec4<u32>(24u, 16u, 8u, 0u)) >> vec4<u32>(24u);
    return vec4<f32>(v) * d;
}

// All 32 weights of block `blk`, as 8 quads (quad c holds weights 4c..4c+3). The block spans
// words i..i+8; each word is loaded once (a half-word-aligned block splices neighbours).
fn q_block(blk: u32) -> array<vec4<f32>, 8> {
    let b = blk * 34u;
    let i = b >> 2u;
    var r: array<vec4<f32>, 8>;
    if ((b & 2u) != 0u) {
        let d = unpack2x16float(w[i] >> 16u).x;
        for (var c = 0u; c < 8u; c++) {
            r[c] = q_bytes(w[i + 1u + c], d);
        }
    } else {
        var prev = w[i];
        let d = unpack2x16float(prev).x;
        for (var c = 0u; c < 8u; c++) {
            let next = w[i + 1u + c];
            r[c] = q_bytes((prev >> 16u) | (next << 16u), d);
            prev = next;
        }
    }
    return r;
}

// Weight j (< 32) of block `blk`.
fn q_one(blk: u32, j: u32) -> f32 {
    let b = blk * 34u + 2u + j;
    let q = extractBits(i32(w[b >> 2u]), (b & 3u) * 8u, 8u);
    return f32(q) * q_head(blk).x;
}
