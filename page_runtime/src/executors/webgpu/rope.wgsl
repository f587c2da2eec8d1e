// Rotary embedding on interleaved pairs: one invocation per pair (2i, 2i+1) of one head of one
// row, rotated by pos·base^(-2i/d).

struct Params { len: u32, row_stride: u32, width: u32, d: u32, base: f32, pad0: u32, pad1: u32, pad2: u32 }

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> pos: array<i32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> params: Params;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    let p = g.y * params.row_stride + g.x;
    if (p >= params.len) {
        return;
    }
    let half_w = params.width / 2u;
    let t = p / half_w;
    let i = (p % half_w) % (params.d / 2u);
    let at = t * params.width + 2u * (p % half_w);
    let theta = pow(params.base, -f32(2u * i) / f32(params.d));
    // Reduced to [-π, π] first (2π split in two so the product by n stays exact for n < 2^16):
    // WGSL only bounds sin/cos error inside that range.
    let raw = f32(pos[t]) * theta;
    let n = round(raw * 0.15915494);
    let angle = (raw - n * 6.28125) - n * 0.0019353072;
    let c = cos(angle);
    let s = sin(angle);
    let x0 = x[at];
    let x1 = x[at + 1u];
    y[at] = x0 * c - x1 * s;
    y[at + 1u] = x0 * s + x1 * c;
}
