// y[m,n] = x[m,k] · w[n,k]ᵀ (+ bias[n]) for k divisible by 4, without workgroup memory.
// Each invocation owns a 4×4 output block and streams 4 rows of x and 4 rows of w as vec4s:
// 16 dot products per 8 loads. Software adapters (SwiftShader, lavapipe) pay heavily for
// barriers, so this beats the shared-memory tiled kernel there; rows and columns past the edge
// are clamped on load and skipped on store.

struct Dims { m: u32, k: u32, n: u32, pad: u32 }

@group(0) @binding(0) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> w: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> dims: Dims;
@group(0) @binding(4) var<storage, read> bias: array<f32>;

fn bias_at(col: u32) -> f32 {
    return {{BIAS_AT}};
}

@compute @workgroup_size(16, 4)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    let c0 = g.x * 4u;
    let r0 = g.y * 4u;
    if (c0 >= dims.n || r0 >= dims.m) {
        return;
    }
    let k4 = dims.k / 4u;
    let x0 = min(r0, dims.m - 1u) * k4;
    let x1 = min(r0 + 1u, dims.m - 1u) * k4;
    let x2 = min(r0 + 2u, dims.m - 1u) * k4;
    let x3 = min(r0 + 3u, dims.m - 1u) * k4;
    let w0 = min(c0, dims.n - 1u) * k4;
    let w1 = min(c0 + 1u, dims.n - 1u) * k4;
    let w2 = min(c0 + 2u, dims.n - 1u) * k4;
    let w3 = min(c0 + 3u, dims.n - 1u) * k4;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var t = 0u; t < k4; t++) {
        let b0 = w[w0 + t];
        let b1 = w[w1 + t];
        let b2 = w[w2 + t];
        let b3 = w[w3 + t];
        let a0 = x[x0 + t];
        acc0 += vec4<f32>(dot(a0, b0), dot(a0, b1), dot(a0, b2), dot(a0, b3));
        let a1 = x[x1 + t];
        acc1 += vec4<f32>(dot(a1, b0), dot(a1, b1), dot(a1, b2), dot(a1, b3));
        let a2 = x[x2 + t];
        acc2 += vec4<f32>(dot(a2, b0), dot(a2, b1), dot(a2, b2), dot(a2, b3));
        let a3 = x[x3 + t];
        acc3 += vec4<f32>(dot(a3, b0), dot(a3, b1), dot(a3, b2), dot(a3, b3));
    }
    let accs = array<vec4<f32>, 4>(acc0, acc1, acc2, acc3);
    for (var i = 0u; i < 4u; i++) {
        let row = r0 + i;
        if (row < dims.m) {
            for (var j = 0u; j < 4u; j++) {
                let col = c0 + j;
                if (col < dims.n) {
                    y[row * dims.n + col] = accs[i][j] + bias_at(col);
                }
            }
        }
    }
}
