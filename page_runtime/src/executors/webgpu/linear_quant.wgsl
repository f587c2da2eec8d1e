// y[m,n] = x[m,k] · dequant(w)[n,k]ᵀ (+ bias[n]) with w as raw Q4_1/Q8_0 block bytes (the format
// file supplies q_block). Each invocation owns a {{ROWS}}×{{COLS}} output block: it decodes each of
// its {{COLS}} weight blocks once (into registers: the 8 quads are unrolled) and applies it to {{ROWS}} rows of x. No workgroup memory and no
// barrier (software adapters pay most for those): for decode (M ≤ 4) an invocation is one output
// column over every row, so each weight block is read exactly once per step.

struct Dims { m: u32, k: u32, n: u32, pad: u32 }

@group(0) @binding(0) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> dims: Dims;
@group(0) @binding(4) var<storage, read> bias: array<f32>;

{{FORMAT}}

fn bias_at(col: u32) -> f32 {
    return {{BIAS_AT}};
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    let c0 = g.x * {{COLS}}u;
    let r0 = g.y * {{ROWS}}u;
    if (c0 >= dims.n || r0 >= dims.m) {
        return;
    }
    let nb = dims.k / 32u;
    let k4 = dims.k / 4u;
{{INDICES}}{{ACCUMULATORS}}    for (var b = 0u; b < nb; b++) {
        let t = b * 8u;
{{BODY}}    }
{{STORE}}}
