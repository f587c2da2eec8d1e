// Axis permutation for rank ≤ 4 (shapes left-padded with 1): each output element reads its
// source through the permuted input strides.

struct Params { len: u32, row_stride: u32, pad0: u32, pad1: u32, out_dims: vec4<u32>, src_strides: vec4<u32> }

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<uniform> params: Params;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    let i = g.y * params.row_stride + g.x;
    if (i >= params.len) {
        return;
    }
    var rest = i;
    var src = 0u;
    for (var d = 3i; d >= 0i; d--) {
        let dim = params.out_dims[d];
        src += (rest % dim) * params.src_strides[d];
        rest /= dim;
    }
    y[i] = x[src];
}
