// out[r] = index of the largest logits[r, :] (the first among equals). One workgroup per row:
// each invocation scans a strided slice, then a tree reduction in workgroup memory (8 barriers
// per row; V = 49152 is too long for one invocation).

struct Params { rows: u32, v: u32, pad0: u32, pad1: u32 }

@group(0) @binding(0) var<storage, read> logits: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<i32>;
@group(0) @binding(2) var<uniform> params: Params;

var<workgroup> best_v: array<f32, 256>;
var<workgroup> best_i: array<u32, 256>;

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let row = wg.x;
    let base = row * params.v;
    var bv = -3.4e38;
    var bi = 0xffffffffu;
    for (var j = lid; j < params.v; j += 256u) {
        let v = logits[base + j];
        // Strided: a later j of this invocation never wins a tie.
        if (v > bv || bi == 0xffffffffu) {
            bv = v;
            bi = j;
        }
    }
    best_v[lid] = bv;
    best_i[lid] = bi;
    for (var s = 128u; s > 0u; s >>= 1u) {
        workgroupBarrier();
        if (lid < s) {
            let ov = best_v[lid + s];
            let oi = best_i[lid + s];
            if (oi != 0xffffffffu && (ov > best_v[lid] || (ov == best_v[lid] && oi < best_i[lid]) || best_i[lid] == 0xffffffffu)) {
                best_v[lid] = ov;
                best_i[lid] = oi;
            }
        }
    }
    if (lid == 0u) {
        out[row] = i32(best_i[0]);
    }
}
