// A 1×1 convolution (stride 1, no padding, one group) is a matmul over channels per image:
// y[n, o, q] = Σ_c w[o, c] · x[n, c, q] (+ bias[o]), q over H·W. Register-blocked like the
// linear kernel, without workgroup memory: each invocation owns {{OB}} output channels × 4
// positions (vec4 accumulators along q), per channel it loads 4 x values and {{OB}} weights.
// Blocks are numbered flat (positions fastest, so neighbours read neighbouring x), wrapping into
// y past the 65535-workgroup limit. Edge positions/channels are clamped on load, skipped on store.

struct P {
    blocks: u32, row_stride: u32, c: u32, o: u32,
    q: u32, qb: u32, ob: u32, pad0: u32,
    lo: f32, hi: f32, pad1: u32, pad2: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> wt: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> p: P;
{{BIAS_BINDING}}

fn act(v: f32) -> f32 {
    return {{ACT}};
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    let bi = g.y * p.row_stride + g.x;
    if (bi >= p.blocks) {
        return;
    }
    let qi = bi % p.qb;
    let t = bi / p.qb;
    let obi = t % p.ob;
    let n = t / p.ob;
    let q0 = qi * 4u;
    let o0 = obi * {{OB}}u;
    let xb = n * p.c * p.q;
    let i0 = min(q0, p.q - 1u);
    let i1 = min(q0 + 1u, p.q - 1u);
    let i2 = min(q0 + 2u, p.q - 1u);
    let i3 = min(q0 + 3u, p.q - 1u);
{{W_ROWS}}{{ACCUMULATORS}}    for (var c = 0u; c < p.c; c++) {
        let xr = xb + c * p.q;
        let xv = vec4<f32>(x[xr + i0], x[xr + i1], x[xr + i2], x[xr + i3]);
{{BODY}}    }
    let yb = n * p.o * p.q;
{{STORE}}}
