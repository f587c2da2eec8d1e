// Rotary embedding on interleaved pairs: one invocation per pair (2i, 2i+1) of one head of one
// row, rotated by pos·θ_i. θ_i = base^(-2i/d) comes from the CPU in f64, split as hi + lo with hi
// of ≤ 11 significant bits, so pos·hi is exact for pos < 2^13. Sine and cosine are computed here
// (Cody–Waite reduction by π/2, then cephes' sinf/cosf polynomials, ~1 ulp): the WGSL built-ins
// only promise 2^-11 absolute error, and SwiftShader's reach it.

struct Params { len: u32, row_stride: u32, width: u32, d: u32 }

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> pos: array<i32>;
@group(0) @binding(2) var<storage, read> theta: array<vec2<f32>>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<uniform> params: Params;

// (cos a, sin a) for a = hi + lo.
fn cos_sin(hi: f32, lo: f32) -> vec2<f32> {
    let k = round((hi + lo) * 0.63661977);
    let r = ((hi - k * 1.5703125) - k * 4.837512969970703e-4) + lo - k * 7.549789954891882e-8;
    let z = r * r;
    let s = r + r * z * (-1.6666654611e-1 + z * (8.3321608736e-3 + z * -1.9515295891e-4));
    let c = 1.0 - 0.5 * z + z * z * (4.166664568298827e-2 + z * (-1.388731625493765e-3 + z * 2.443315711809948e-5));
    let q = i32(k) & 3;
    if (q == 0) {
        return vec2<f32>(c, s);
    }
    if (q == 1) {
        return vec2<f32>(-s, c);
    }
    if (q == 2) {
        return vec2<f32>(-c, -s);
    }
    return vec2<f32>(s, -c);
}

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
    let th = theta[i];
    let n = f32(pos[t]);
    let cs = cos_sin(n * th.x, n * th.y);
    let x0 = x[at];
    let x1 = x[at + 1u];
    y[at] = x0 * cs.x - x1 * cs.y;
    y[at + 1u] = x0 * cs.y + x1 * cs.x;
}
