// Writes this step's k and v rows into the layer's cache: row t goes to cache row
// kv_start[t] + pos[t] (rows checked against the cache size on the CPU before the run).

struct Params { len: u32, row_stride: u32, width: u32, pad: u32 }

@group(0) @binding(0) var<storage, read> k: array<f32>;
@group(0) @binding(1) var<storage, read> v: array<f32>;
@group(0) @binding(2) var<storage, read> pos: array<i32>;
@group(0) @binding(3) var<storage, read> kv_start: array<i32>;
@group(0) @binding(4) var<storage, read_write> k_cache: array<f32>;
@group(0) @binding(5) var<storage, read_write> v_cache: array<f32>;
@group(0) @binding(6) var<uniform> params: Params;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    let i = g.y * params.row_stride + g.x;
    if (i >= params.len) {
        return;
    }
    let t = i / params.width;
    let c = i % params.width;
    let row = u32(kv_start[t] + pos[t]);
    k_cache[row * params.width + c] = k[i];
    v_cache[row * params.width + c] = v[i];
}
