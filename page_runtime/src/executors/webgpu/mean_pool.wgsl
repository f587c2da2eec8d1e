// x[B,S,H], mask[B,S] → y[B,H]: mean over positions with a non-zero mask (zeros if none).

struct Params { b: u32, s: u32, h: u32, pad: u32 }

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> mask: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> params: Params;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    let col = g.x;
    let bi = g.y;
    if (col >= params.h || bi >= params.b) {
        return;
    }
    var acc = 0.0;
    var count = 0.0;
    for (var j = 0u; j < params.s; j++) {
        let m = mask[bi * params.s + j];
        if (m != 0.0) {
            acc += m * x[(bi * params.s + j) * params.h + col];
            count += m;
        }
    }
    y[bi * params.h + col] = acc / max(count, 1e-9);
}
