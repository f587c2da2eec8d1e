// y[m,n] = x[m,k] · w[n,k]ᵀ (+ bias[n]) for k divisible by 4, without workgroup memory.
// Each invocation owns a {{ROWS}}×{{COLS}} output block and streams {{ROWS}} rows of x and {{COLS}} rows of w as
// vec4s. Software adapters (SwiftShader, lavapipe) pay heavily for barriers, so this beats the
// shared-memory tiled kernel there. Rows and columns past the edge are clamped on load and skipped
// on store. The {{…}} slots are unrolled by matmul.rs (WGSL has no generics).

struct Dims { m: u32, k: u32, n: u32, pad: u32 }

@group(0) @binding(0) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> w: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> dims: Dims;
@group(0) @binding(4) var<storage, read> bias: array<f32>;

fn bias_at(col: u32) -> f32 {
    return {{BIAS_AT}};
}

fn act(x: f32) -> f32 {
    return {{ACT}};
}

@compute @workgroup_size(16, 4)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    let c0 = g.x * {{COLS}}u;
    let r0 = g.y * {{ROWS}}u;
    if (c0 >= dims.n || r0 >= dims.m) {
        return;
    }
    let k4 = dims.k / 4u;
{{INDICES}}{{ACCUMULATORS}}    for (var t = 0u; t < k4; t++) {
{{BODY}}    }
{{STORE}}}
