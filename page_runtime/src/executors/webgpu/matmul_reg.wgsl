// C[m,n] = A[m,k] · B[k,n] for k and n divisible by 4, without workgroup memory: each
// invocation owns a 4×4 output block; per step of 4 along k it loads 4 vec4s of A and 4 vec4s of
// B and does 64 multiply-adds. Edge rows are clamped on load and skipped on store.

struct Dims { m: u32, k: u32, n: u32, pad: u32 }

@group(0) @binding(0) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> b: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> c: array<vec4<f32>>;
@group(0) @binding(3) var<uniform> dims: Dims;

@compute @workgroup_size(16, 4)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    let n4 = dims.n / 4u;
    let k4 = dims.k / 4u;
    let cv = g.x;
    let r0 = g.y * 4u;
    if (cv >= n4 || r0 >= dims.m) {
        return;
    }
    var rows: array<u32, 4>;
    for (var i = 0u; i < 4u; i++) {
        rows[i] = min(r0 + i, dims.m - 1u) * k4;
    }
    var acc: array<vec4<f32>, 4>;
    for (var t = 0u; t < k4; t++) {
        let b0 = b[(4u * t) * n4 + cv];
        let b1 = b[(4u * t + 1u) * n4 + cv];
        let b2 = b[(4u * t + 2u) * n4 + cv];
        let b3 = b[(4u * t + 3u) * n4 + cv];
        for (var i = 0u; i < 4u; i++) {
            let av = a[rows[i] + t];
            acc[i] += av.x * b0 + av.y * b1 + av.z * b2 + av.w * b3;
        }
    }
    for (var i = 0u; i < 4u; i++) {
        if (r0 + i < dims.m) {
            c[(r0 + i) * n4 + cv] = acc[i];
        }
    }
}
