// y = (x - mean) / sqrt(var + eps) * gamma + beta over the last axis; one invocation per row,
// no workgroup memory or barriers (cheap on software adapters; rows are short, ≤ a few thousand).
// {{X}} reads the input: x alone, or x + r for a fused residual `Add → LayerNorm`.

struct Params { rows: u32, h: u32, eps_bits: u32, pad: u32 }

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> gamma: array<f32>;
@group(0) @binding(2) var<storage, read> beta: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<uniform> params: Params;
{{R_BINDING}}
fn at(i: u32) -> f32 {
    return {{X}};
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    let row = g.x;
    if (row >= params.rows) {
        return;
    }
    let base = row * params.h;
    let n = f32(params.h);
    var s = 0.0;
    for (var i = 0u; i < params.h; i++) {
        s += at(base + i);
    }
    let mean = s / n;
    var v = 0.0;
    for (var i = 0u; i < params.h; i++) {
        let d = at(base + i) - mean;
        v += d * d;
    }
    let inv = inverseSqrt(v / n + bitcast<f32>(params.eps_bits));
    for (var i = 0u; i < params.h; i++) {
        y[base + i] = (at(base + i) - mean) * inv * gamma[i] + beta[i];
    }
}
