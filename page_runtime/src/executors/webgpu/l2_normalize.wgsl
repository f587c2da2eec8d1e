// y = x / max(‖x‖₂, eps) over the last axis; one invocation per row, no barriers.

struct Params { rows: u32, h: u32, eps_bits: u32, pad: u32 }

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<uniform> params: Params;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    let row = g.x;
    if (row >= params.rows) {
        return;
    }
    let base = row * params.h;
    var s = 0.0;
    for (var i = 0u; i < params.h; i++) {
        s += x[base + i] * x[base + i];
    }
    let scale = 1.0 / max(sqrt(s), bitcast<f32>(params.eps_bits));
    for (var i = 0u; i < params.h; i++) {
        y[base + i] = x[base + i] * scale;
    }
}
