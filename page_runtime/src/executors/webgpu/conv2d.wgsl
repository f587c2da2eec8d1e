// y[N,O,Ho,Wo] = conv(x[N,C,H,W], w[O,C/groups,kh,kw]) (+ bias[O]), NCHW, zero padding, any
// stride and groups (depthwise: groups == C == O). One invocation per output element and no
// workgroup memory (software adapters pay heavily for barriers). The flat output index wraps
// into y past the 65535-workgroup limit. {{BIAS_AT}} and {{ACT}} are substituted by conv.rs
// (the fused Conv2d → Clamp epilogue).

struct P {
    len: u32, row_stride: u32, c: u32, h: u32,
    w: u32, o: u32, kh: u32, kw: u32,
    ho: u32, wo: u32, sh: u32, sw: u32,
    pt: u32, pl: u32, cg: u32, og: u32,
    lo: f32, hi: f32, pad0: u32, pad1: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> wt: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> p: P;
{{BIAS_BINDING}}

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    let i = g.y * p.row_stride + g.x;
    if (i >= p.len) {
        return;
    }
    let ox = i % p.wo;
    let t = i / p.wo;
    let oy = t % p.ho;
    let t2 = t / p.ho;
    let oc = t2 % p.o;
    let n = t2 / p.o;
    let grp = oc / p.og;
    let iy0 = i32(oy * p.sh) - i32(p.pt);
    let ix0 = i32(ox * p.sw) - i32(p.pl);
    // Kernel rows/columns that fall inside the input (the rest read zeros).
    let ky0 = u32(max(-iy0, 0));
    let ky1 = u32(clamp(i32(p.h) - iy0, 0, i32(p.kh)));
    let kx0 = u32(max(-ix0, 0));
    let kx1 = u32(clamp(i32(p.w) - ix0, 0, i32(p.kw)));
    var acc = 0.0;
    for (var ic = 0u; ic < p.cg; ic++) {
        let xb = (n * p.c + grp * p.cg + ic) * p.h;
        let wb = (oc * p.cg + ic) * p.kh;
        for (var ky = ky0; ky < ky1; ky++) {
            let xr = (xb + u32(iy0 + i32(ky))) * p.w;
            let wr = (wb + ky) * p.kw;
            for (var kx = kx0; kx < kx1; kx++) {
                acc += x[xr + u32(ix0 + i32(kx))] * wt[wr + kx];
            }
        }
    }
    let v = acc + {{BIAS_AT}};
    y[i] = {{ACT}};
}
