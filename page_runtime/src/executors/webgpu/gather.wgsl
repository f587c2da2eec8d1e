// y[r, c] = table[ids[r], c]: embedding lookup. Ids are range-checked on the CPU before upload;
// the clamp only keeps a bad id from reading outside the table.

struct Params { len: u32, row_stride: u32, h: u32, vocab: u32 }

@group(0) @binding(0) var<storage, read> table: array<f32>;
@group(0) @binding(1) var<storage, read> ids: array<i32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> params: Params;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    let i = g.y * params.row_stride + g.x;
    if (i >= params.len) {
        return;
    }
    let row = i / params.h;
    let col = i % params.h;
    let id = u32(clamp(ids[row], 0, i32(params.vocab) - 1));
    y[i] = table[id * params.h + col];
}
