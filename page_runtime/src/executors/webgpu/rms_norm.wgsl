// y = x / sqrt(mean(x²) + eps) · gamma over the last axis; one invocation per row, no barriers
// (as layer_norm.wgsl: rows are a few thousand wide at most).

struct Params { rows: u32, h: u32, eps_bits: u32, pad: u32 }

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> gamma: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> params: Params;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    let row = g.x;
    if (row >= params.rows) {
        return;
    }
    let base = row * params.h;
    var s = 0.0;
    for (var i = 0u; i < params.h; i++) {
        let v = x[base + i];
        s += v * v;
    }
    let inv = inverseSqrt(s / f32(params.h) + bitcast<f32>(params.eps_bits));
    for (var i = 0u; i < params.h; i++) {
        y[base + i] = x[base + i] * inv * gamma[i];
    }
}
