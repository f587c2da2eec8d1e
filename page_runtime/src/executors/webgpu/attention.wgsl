// Multi-head self-attention core: out = softmax(q·kᵀ·scale, masked keys excluded) · v.
// One invocation per (batch row, head, query position), one pass over the keys with an online
// softmax (running max and sum, rescaling the accumulator), so there is no workgroup memory and
// no barrier — barriers are what software adapters pay most for. Head width d ≤ 128.

// q, k, v rows have stride `ld` and start at column q_off / k_off / v_off (a packed q|k|v
// projection uses ld = 3h); the output is [B, S, h].
struct Params {
    s: u32, h: u32, d: u32, scale_bits: u32,
    heads: u32, rows: u32, ld: u32, pad0: u32,
    q_off: u32, k_off: u32, v_off: u32, pad1: u32,
}

@group(0) @binding(0) var<storage, read> q: array<f32>;
@group(0) @binding(1) var<storage, read> k: array<f32>;
@group(0) @binding(2) var<storage, read> v: array<f32>;
@group(0) @binding(3) var<storage, read> mask: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<uniform> params: Params;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    let id = g.x;
    if (id >= params.rows) {
        return;
    }
    let s = params.s;
    let h = params.h;
    let d = params.d;
    let i = id % s;
    let head = (id / s) % params.heads;
    let b = id / (s * params.heads);
    let scale = bitcast<f32>(params.scale_bits);
    let q_base = (b * s + i) * params.ld + params.q_off + head * d;
    let o_base = (b * s + i) * h + head * d;

    var acc: array<f32, 128>;
    var m = -3.4e38;
    var l = 0.0;
    for (var j = 0u; j < s; j++) {
        if (mask[b * s + j] == 0.0) {
            continue;
        }
        let row = (b * s + j) * params.ld + head * d;
        let kb = row + params.k_off;
        let vb = row + params.v_off;
        var sc = 0.0;
        for (var t = 0u; t < d; t++) {
            sc += q[q_base + t] * k[kb + t];
        }
        sc *= scale;
        let m_new = max(m, sc);
        let correction = exp(m - m_new);
        let p = exp(sc - m_new);
        l = l * correction + p;
        for (var t = 0u; t < d; t++) {
            acc[t] = acc[t] * correction + p * v[vb + t];
        }
        m = m_new;
    }
    for (var t = 0u; t < d; t++) {
        var o = 0.0;
        if (l > 0.0) {
            o = acc[t] / l;
        }
        out[o_base + t] = o;
    }
}
