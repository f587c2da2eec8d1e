// Element-wise y[i] = {{expr}} with x = a[i]. `{{expr}}` is substituted per op; `lo`/`hi` are
// its two f32 parameters when it has any (clamp).

struct Params { len: u32, row_stride: u32, lo: f32, hi: f32 }

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read_write> c: array<f32>;
@group(0) @binding(2) var<uniform> params: Params;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    let i = g.y * params.row_stride + g.x;
    if (i >= params.len) {
        return;
    }
    let x = a[i];
    let lo = params.lo;
    let hi = params.hi;
    c[i] = {{expr}};
}
