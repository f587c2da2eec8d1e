// Multi-head self-attention core: out = softmax(q·kᵀ·scale, masked keys excluded) · v.
// One workgroup per (query position, head, batch row); scores live in workgroup memory, so the
// sequence is at most MAX_S (the host truncates texts to 256 tokens).

struct Params { s: u32, h: u32, d: u32, scale_bits: u32 }

@group(0) @binding(0) var<storage, read> q: array<f32>;
@group(0) @binding(1) var<storage, read> k: array<f32>;
@group(0) @binding(2) var<storage, read> v: array<f32>;
@group(0) @binding(3) var<storage, read> mask: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<uniform> params: Params;

const MAX_S: u32 = 256u;
var<workgroup> p: array<f32, 256>;
var<workgroup> red: array<f32, 64>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let s = params.s;
    let h = params.h;
    let d = params.d;
    let i = wg.x;
    let head = wg.y;
    let b = wg.z;
    let scale = bitcast<f32>(params.scale_bits);
    let q_base = (b * s + i) * h + head * d;

    var m = -3.4e38;
    for (var j = lid.x; j < s; j += 64u) {
        var sc = -3.4e38;
        if (mask[b * s + j] != 0.0) {
            let k_base = (b * s + j) * h + head * d;
            var acc = 0.0;
            for (var t = 0u; t < d; t++) {
                acc += q[q_base + t] * k[k_base + t];
            }
            sc = acc * scale;
        }
        p[j] = sc;
        m = max(m, sc);
    }
    red[lid.x] = m;
    workgroupBarrier();
    for (var off = 32u; off > 0u; off >>= 1u) {
        if (lid.x < off) {
            red[lid.x] = max(red[lid.x], red[lid.x + off]);
        }
        workgroupBarrier();
    }
    let mx = red[0];
    workgroupBarrier();

    var sum = 0.0;
    for (var j = lid.x; j < s; j += 64u) {
        var e = 0.0;
        if (mask[b * s + j] != 0.0) {
            e = exp(p[j] - mx);
        }
        p[j] = e;
        sum += e;
    }
    red[lid.x] = sum;
    workgroupBarrier();
    for (var off = 32u; off > 0u; off >>= 1u) {
        if (lid.x < off) {
            red[lid.x] += red[lid.x + off];
        }
        workgroupBarrier();
    }
    let total = red[0];

    for (var t = lid.x; t < d; t += 64u) {
        var acc = 0.0;
        for (var j = 0u; j < s; j++) {
            acc += p[j] * v[(b * s + j) * h + head * d + t];
        }
        var o = 0.0;
        if (total > 0.0) {
            o = acc / total;
        }
        out[q_base + t] = o;
    }
}
