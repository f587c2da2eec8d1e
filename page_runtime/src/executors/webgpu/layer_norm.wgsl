// y = (x - mean) / sqrt(var + eps) * gamma + beta over the last axis; one workgroup per row.

struct Params { rows: u32, h: u32, eps_bits: u32, pad: u32 }

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> gamma: array<f32>;
@group(0) @binding(2) var<storage, read> beta: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<uniform> params: Params;

var<workgroup> red: array<f32, 64>;

fn reduce_sum(lane: u32, v: f32) -> f32 {
    red[lane] = v;
    workgroupBarrier();
    for (var off = 32u; off > 0u; off >>= 1u) {
        if (lane < off) {
            red[lane] += red[lane + off];
        }
        workgroupBarrier();
    }
    let total = red[0];
    workgroupBarrier();
    return total;
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let base = wg.x * params.h;
    let n = f32(params.h);
    var s = 0.0;
    for (var i = lid.x; i < params.h; i += 64u) {
        s += x[base + i];
    }
    let mean = reduce_sum(lid.x, s) / n;
    var v = 0.0;
    for (var i = lid.x; i < params.h; i += 64u) {
        let d = x[base + i] - mean;
        v += d * d;
    }
    let inv = inverseSqrt(reduce_sum(lid.x, v) / n + bitcast<f32>(params.eps_bits));
    for (var i = lid.x; i < params.h; i += 64u) {
        y[base + i] = (x[base + i] - mean) * inv * gamma[i] + beta[i];
    }
}
