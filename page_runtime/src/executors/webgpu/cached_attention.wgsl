// Causal grouped-query attention over the KV cache: one invocation per (token row t, query head),
// attending over cache rows kv_start[t] ..= kv_start[t] + pos[t] with an online softmax (as
// attention.wgsl: no workgroup memory, no barrier). Query head h reads kv head h / group.
// With `fixed_rows` > 0 it is cross-attention (`Op::CrossAttention`): every row attends, unmasked,
// over the session's kept memory, rows kv_start[t] .. kv_start[t] + fixed_rows (`pos` unread).

struct Params { rows: u32, heads: u32, d: u32, scale_bits: u32, group: u32, kv_width: u32, fixed_rows: u32, pad1: u32 }

@group(0) @binding(0) var<storage, read> q: array<f32>;
@group(0) @binding(1) var<storage, read> pos: array<i32>;
@group(0) @binding(2) var<storage, read> kv_start: array<i32>;
@group(0) @binding(3) var<storage, read> k_cache: array<f32>;
@group(0) @binding(4) var<storage, read> v_cache: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
@group(0) @binding(6) var<uniform> params: Params;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    let id = g.x;
    if (id >= params.rows) {
        return;
    }
    let d = params.d;
    let t = id / params.heads;
    let head = id % params.heads;
    let scale = bitcast<f32>(params.scale_bits);
    let q_base = (t * params.heads + head) * d;
    let kv_col = (head / params.group) * d;
    let first = u32(kv_start[t]);
    var last = first + u32(pos[t]);
    if (params.fixed_rows > 0u) {
        last = first + params.fixed_rows - 1u;
    }

    var acc: array<f32, 128>;
    var m = -3.4e38;
    var l = 0.0;
    for (var j = first; j <= last; j++) {
        let kb = j * params.kv_width + kv_col;
        var sc = 0.0;
        for (var c = 0u; c < d; c++) {
            sc += q[q_base + c] * k_cache[kb + c];
        }
        sc *= scale;
        let m_new = max(m, sc);
        let correction = exp(m - m_new);
        let p = exp(sc - m_new);
        l = l * correction + p;
        for (var c = 0u; c < d; c++) {
            acc[c] = acc[c] * correction + p * v_cache[kb + c];
        }
        m = m_new;
    }
    for (var c = 0u; c < d; c++) {
        out[q_base + c] = acc[c] / l;
    }
}
