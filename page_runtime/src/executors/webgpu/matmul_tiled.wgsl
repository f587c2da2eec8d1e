// C[m,n] = A[m,k] · B(k,n) (+ bias[n]), row-major f32. B is read through {{B_AT}}: either a
// [K, N] matrix (MatMul) or a [N, K] weight used transposed (Linear).
// A 16×16 workgroup computes a 64×64 output tile; each invocation owns a 4×4 block of it.
// K advances in steps of 16 through workgroup-shared tiles of A (stored k-major) and B.

struct Dims { m: u32, k: u32, n: u32, pad: u32 }

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> c: array<f32>;
@group(0) @binding(3) var<uniform> dims: Dims;
@group(0) @binding(4) var<storage, read> bias: array<f32>;

const TILE: u32 = 64u;
const BK: u32 = 16u;

var<workgroup> a_tile: array<f32, 1024>; // [BK][TILE]: a_tile[kk * TILE + row]
var<workgroup> b_tile: array<f32, 1024>; // [BK][TILE]: b_tile[kk * TILE + col]

fn b_at(kk: u32, col: u32) -> f32 {
    return {{B_AT}};
}

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row0 = wg.y * TILE;
    let col0 = wg.x * TILE;
    let tid = lid.y * 16u + lid.x;
    var acc: array<f32, 16>;
    for (var k0 = 0u; k0 < dims.k; k0 += BK) {
        // 256 invocations load 1024 elements of each tile, 4 each; out-of-range reads are zero.
        for (var i = 0u; i < 4u; i++) {
            let idx = tid + i * 256u;
            let ar = idx / BK;
            let ak = idx % BK;
            var av = 0.0;
            if (row0 + ar < dims.m && k0 + ak < dims.k) {
                av = a[(row0 + ar) * dims.k + k0 + ak];
            }
            a_tile[ak * TILE + ar] = av;
            let bk = idx / TILE;
            let bc = idx % TILE;
            var bv = 0.0;
            if (k0 + bk < dims.k && col0 + bc < dims.n) {
                bv = b_at(k0 + bk, col0 + bc);
            }
            b_tile[bk * TILE + bc] = bv;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            var ar: array<f32, 4>;
            var br: array<f32, 4>;
            for (var i = 0u; i < 4u; i++) {
                ar[i] = a_tile[kk * TILE + lid.y * 4u + i];
                br[i] = b_tile[kk * TILE + lid.x * 4u + i];
            }
            for (var i = 0u; i < 4u; i++) {
                for (var j = 0u; j < 4u; j++) {
                    acc[i * 4u + j] += ar[i] * br[j];
                }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let row = row0 + lid.y * 4u + i;
        for (var j = 0u; j < 4u; j++) {
            let col = col0 + lid.x * 4u + j;
            if (row < dims.m && col < dims.n) {
                c[row * dims.n + col] = acc[i * 4u + j]{{EPILOGUE}};
            }
        }
    }
}
