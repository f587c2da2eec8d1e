// y[r, c] = dequant(table)[ids[r], c] from a Q4_1/Q8_0 table held as raw block bytes (the format file
// supplies q_one). Ids are range-checked on the CPU before upload; the clamp only keeps a bad id
// from reading outside the table.

struct Params { len: u32, row_stride: u32, h: u32, vocab: u32 }

@group(0) @binding(0) var<storage, read> w: array<u32>;
@group(0) @binding(1) var<storage, read> ids: array<i32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> params: Params;

{{FORMAT}}

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    let i = g.y * params.row_stride + g.x;
    if (i >= params.len) {
        return;
    }
    let row = i / params.h;
    let col = i % params.h;
    let id = u32(clamp(ids[row], 0, i32(params.vocab) - 1));
    y[i] = q_one(id * (params.h / 32u) + col / 32u, col % 32u);
}
