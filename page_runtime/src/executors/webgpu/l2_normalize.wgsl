// y = x / max(‖x‖₂, eps) over the last axis; one workgroup per row.

struct Params { rows: u32, h: u32, eps_bits: u32, pad: u32 }

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<uniform> params: Params;

var<workgroup> red: array<f32, 64>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let base = wg.x * params.h;
    var s = 0.0;
    for (var i = lid.x; i < params.h; i += 64u) {
        s += x[base + i] * x[base + i];
    }
    red[lid.x] = s;
    workgroupBarrier();
    for (var off = 32u; off > 0u; off >>= 1u) {
        if (lid.x < off) {
            red[lid.x] += red[lid.x + off];
        }
        workgroupBarrier();
    }
    let scale = 1.0 / max(sqrt(red[0]), bitcast<f32>(params.eps_bits));
    for (var i = lid.x; i < params.h; i += 64u) {
        y[base + i] = x[base + i] * scale;
    }
}
