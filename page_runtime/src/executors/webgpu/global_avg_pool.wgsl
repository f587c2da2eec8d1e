// x[N·C, H·W] → y[N·C]: each plane's mean, one invocation per plane (no barriers). Rows wrap
// into y past the 65535-workgroup limit.

struct Params { rows: u32, len: u32, row_stride: u32, pad: u32 }

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<uniform> params: Params;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    let r = g.y * params.row_stride + g.x;
    if (r >= params.rows) {
        return;
    }
    let base = r * params.len;
    // Four partial sums: shorter dependency chains, and closer to the CPU's f64 sum.
    var s = vec4<f32>(0.0);
    let len4 = params.len / 4u;
    for (var j = 0u; j < len4; j++) {
        let k = base + 4u * j;
        s += vec4<f32>(x[k], x[k + 1u], x[k + 2u], x[k + 3u]);
    }
    var tail = 0.0;
    for (var k = len4 * 4u; k < params.len; k++) {
        tail += x[base + k];
    }
    y[r] = ((s.x + s.y) + (s.z + s.w) + tail) / f32(params.len);
}
