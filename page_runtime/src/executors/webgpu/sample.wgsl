// Op::Sample, one workgroup of 256 per row: temperature ≤ 0 is argmax; otherwise p = exp((l − max)
// / temperature), candidates ordered by p (equivalently by logit) descending then by index, cut to
// the top_k, then to the smallest prefix whose mass reaches top_p of theirs, and the token where
// the cumulative mass first exceeds u·mass (the CPU executor's sample.rs, in f32 here).
//
// No sort: every cut is a prefix of that order, written (κ, ι) = {key > κ} ∪ {key = κ, index ≤ ι}
// with key the logit's order-preserving u32. A cut is found by bisecting κ (32 rounds of a
// workgroup sum), then walking the ties of κ in index order (each invocation owns a contiguous
// chunk of the row, so chunk order is index order).

struct Params { rows: u32, v: u32, pad0: u32, pad1: u32 }

@group(0) @binding(0) var<storage, read> logits: array<f32>;
@group(0) @binding(1) var<storage, read> sampling: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> out: array<i32>;
@group(0) @binding(3) var<uniform> params: Params;

var<workgroup> red: array<f32, 256>;
var<workgroup> red_i: array<u32, 256>;
var<workgroup> shared_f: f32;
var<workgroup> shared_u: u32;
var<workgroup> shared_p: vec4<f32>;

var<private> lid: u32;
var<private> row_base: u32;
var<private> first: u32;
var<private> last: u32;
var<private> row_max: f32;
var<private> temp: f32;

fn key_of(x: f32) -> u32 {
    let b = bitcast<u32>(x);
    return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}

fn logit_of(key: u32) -> f32 {
    return bitcast<f32>(select(~key, key & 0x7fffffffu, (key & 0x80000000u) != 0u));
}

fn prob(x: f32) -> f32 {
    return exp((x - row_max) / temp);
}

fn in_cut(key: u32, idx: u32, ck: u32, ci: u32) -> bool {
    return key > ck || (key == ck && idx <= ci);
}

fn crosses(m: f32, bound: f32, strict: bool) -> bool {
    return select(m >= bound, m > bound, strict);
}

// Workgroup sum of one value per invocation (uniform result).
fn sum_all(v: f32) -> f32 {
    red[lid] = v;
    for (var s = 128u; s > 0u; s >>= 1u) {
        workgroupBarrier();
        if (lid < s) {
            red[lid] += red[lid + s];
        }
    }
    workgroupBarrier();
    if (lid == 0u) {
        shared_f = red[0];
    }
    return workgroupUniformLoad(&shared_f);
}

// Count (or mass) of the elements of cut (ck, ci) whose key is ≥ k (> k when `above`).
fn measure(ck: u32, ci: u32, k: u32, above: bool, count: bool) -> f32 {
    var s = 0.0;
    for (var j = first; j < last; j++) {
        let x = logits[row_base + j];
        let key = key_of(x);
        if (in_cut(key, j, ck, ci) && (key > k || (!above && key == k))) {
            s += select(prob(x), 1.0, count);
        }
    }
    return sum_all(s);
}

// The shortest prefix of cut (ck, ci) whose count (or mass) crosses `bound`; the whole cut if
// none does (float rounding).
fn search(ck: u32, ci: u32, bound: f32, strict: bool, count: bool) -> vec2<u32> {
    if (!crosses(measure(ck, ci, 0u, false, count), bound, strict)) {
        return vec2<u32>(ck, ci);
    }
    var lo = 0u;
    var hi = 0xffffffffu;
    for (var it = 0u; it < 33u; it++) {
        if (lo == hi) {
            break;
        }
        let mid = lo + ((hi - lo) >> 1u) + ((hi - lo) & 1u);
        if (crosses(measure(ck, ci, mid, false, count), bound, strict)) {
            lo = mid;
        } else {
            hi = mid - 1u;
        }
    }
    let k = lo;
    let base = measure(ck, ci, k, true, count);
    let unit = select(prob(logit_of(k)), 1.0, count);
    // Ties of k in index order: which chunk crosses, then where inside it.
    var n = 0u;
    for (var j = first; j < last; j++) {
        if (key_of(logits[row_base + j]) == k && in_cut(k, j, ck, ci)) {
            n += 1u;
        }
    }
    red[lid] = f32(n);
    workgroupBarrier();
    if (lid == 0u) {
        var b = base;
        var owner = 0xffffffffu;
        var last_owner = 0u;
        for (var t = 0u; t < 256u; t++) {
            if (red[t] > 0.0) {
                last_owner = t;
                if (owner == 0xffffffffu) {
                    if (crosses(b + red[t] * unit, bound, strict)) {
                        owner = t;
                    } else {
                        b += red[t] * unit;
                    }
                }
            }
        }
        if (owner == 0xffffffffu) {
            owner = last_owner;
        }
        shared_u = owner;
        shared_f = b;
    }
    let owner = workgroupUniformLoad(&shared_u);
    if (lid == owner) {
        var b = shared_f;
        var found = 0xffffffffu;
        var last_tie = 0u;
        for (var j = first; j < last; j++) {
            if (key_of(logits[row_base + j]) == k && in_cut(k, j, ck, ci)) {
                last_tie = j;
                b += unit;
                if (found == 0xffffffffu && crosses(b, bound, strict)) {
                    found = j;
                }
            }
        }
        shared_u = select(found, last_tie, found == 0xffffffffu);
    }
    return vec2<u32>(k, workgroupUniformLoad(&shared_u));
}

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) l: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    lid = l;
    let row = wg.x;
    let v = params.v;
    row_base = row * v;
    let chunk = (v + 255u) / 256u;
    first = min(lid * chunk, v);
    last = min(first + chunk, v);

    // Argmax (first of equals): the answer at temperature ≤ 0, and the row's max.
    var bv = -3.4e38;
    var bi = 0xffffffffu;
    for (var j = first; j < last; j++) {
        let x = logits[row_base + j];
        if (bi == 0xffffffffu || x > bv) {
            bv = x;
            bi = j;
        }
    }
    red[lid] = bv;
    red_i[lid] = bi;
    for (var s = 128u; s > 0u; s >>= 1u) {
        workgroupBarrier();
        if (lid < s) {
            let ov = red[lid + s];
            let oi = red_i[lid + s];
            if (oi != 0xffffffffu && (red_i[lid] == 0xffffffffu || ov > red[lid] || (ov == red[lid] && oi < red_i[lid]))) {
                red[lid] = ov;
                red_i[lid] = oi;
            }
        }
    }
    workgroupBarrier();
    if (lid == 0u) {
        shared_f = red[0];
        shared_u = red_i[0];
        shared_p = sampling[row];
    }
    row_max = workgroupUniformLoad(&shared_f);
    let best = workgroupUniformLoad(&shared_u);
    let p = workgroupUniformLoad(&shared_p);
    temp = p.x;
    if (!(p.x > 0.0)) {
        if (lid == 0u) {
            out[row] = i32(best);
        }
        return;
    }
    var ck = 0u;
    var ci = v - 1u;
    if (p.y >= 1.0 && u32(p.y) < v) {
        let c = search(ck, ci, f32(u32(p.y)), false, true);
        ck = c.x;
        ci = c.y;
    }
    if (p.z < 1.0) {
        let goal = p.z * measure(ck, ci, 0u, false, false);
        if (goal <= 0.0) {
            // The first candidate alone reaches it.
            ck = key_of(row_max);
            ci = best;
        } else {
            let c = search(ck, ci, goal, false, false);
            ck = c.x;
            ci = c.y;
        }
    }
    let draw = clamp(p.w, 0.0, 1.0) * measure(ck, ci, 0u, false, false);
    let c = search(ck, ci, draw, true, false);
    if (lid == 0u) {
        out[row] = i32(c.y);
    }
}
