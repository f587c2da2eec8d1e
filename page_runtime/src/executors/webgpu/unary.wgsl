// Element-wise y[i] = {{expr}} with x = a[i]. `{{expr}}` is substituted per op.

struct Params { len: u32, row_stride: u32, pad0: u32, pad1: u32 }

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read_write> c: array<f32>;
@group(0) @binding(2) var<uniform> params: Params;

// Abramowitz & Stegun 7.1.26: |erf error| ≤ 1.5e-7, well inside f32 tolerance of the GELU.
fn erf_approx(v: f32) -> f32 {
    let s = sign(v);
    let a = abs(v);
    let t = 1.0 / (1.0 + 0.3275911 * a);
    let poly = ((((1.061405429 * t - 1.453152027) * t + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t;
    return s * (1.0 - poly * exp(-a * a));
}

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    let i = g.y * params.row_stride + g.x;
    if (i >= params.len) {
        return;
    }
    let x = a[i];
    c[i] = {{expr}};
}
