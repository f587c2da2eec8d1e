//! Shape buckets for executors that compile per static shape (WebNN): sizes are rounded up so a
//! few graphs serve every request, inputs are zero-padded (masks pad with 0, so padding is
//! inert) and outputs cropped back. Pure functions, unit-tested natively.

/// Sequence lengths round up to a multiple of 4 up to 32, of 8 up to 64, of 16 up to 128, then
/// of 32: padding stays under ~12 % (static-shape backends compute every padded position) while
/// typical sentences share a handful of graphs.
pub fn seq_bucket(s: u32) -> u32 {
    let step = match s {
        0..=32 => 4,
        33..=64 => 8,
        65..=128 => 16,
        _ => 32,
    };
    s.max(1).div_ceil(step) * step
}

/// Batches are rounded up to a power of two (then to a multiple of 32).
pub fn batch_bucket(b: u32) -> u32 {
    if b <= 32 { b.next_power_of_two() } else { b.div_ceil(32) * 32 }
}

/// Peak bytes of intermediate values alive at once when `g` runs with every value shaped as in
/// `shapes` (from `shapes::graph_shapes`): values are born at their node and die after their last
/// use; outputs live to the end. A fused attention node also holds its `[B, heads, S, S]` scores
/// and probabilities, which backends composing it from primitives (WebNN) materialise. A backend
/// that compiles a graph per shape keeps about this much per compiled graph, so it is what a cache
/// of compiled graphs is budgeted by. Elements are counted as 4 bytes (the executors' f32/i32).
pub fn activation_bytes(g: &shared_proto::Graph, shapes: &[Vec<u32>]) -> u64 {
    use shared_proto::{Op, ValueRef};
    let bytes = |v: usize| shapes[v].iter().map(|&d| d as u64).product::<u64>() * 4;
    let end = g.nodes.len();
    let mut last_use = vec![0usize; g.value_count()];
    for (ni, n) in g.nodes.iter().enumerate() {
        for &a in &n.args {
            last_use[a as usize] = ni;
        }
    }
    for &o in &g.outputs {
        last_use[o as usize] = end;
    }
    let (mut live, mut peak) = (0u64, 0u64);
    for (ni, n) in g.nodes.iter().enumerate() {
        let v = g.node_value(ni) as usize;
        let scratch = match (&n.op, n.args.first()) {
            (Op::Attention { heads }, Some(&q)) => {
                let s = &shapes[q as usize];
                let (b, seq) = (s.first().copied().unwrap_or(1) as u64, s.get(1).copied().unwrap_or(1) as u64);
                2 * b * *heads as u64 * seq * seq * 4
            }
            _ => 0,
        };
        live += bytes(v);
        peak = peak.max(live + scratch);
        let mut args: Vec<u32> = n.args.clone();
        args.sort_unstable();
        args.dedup();
        for a in args {
            if matches!(g.value(a), ValueRef::Node(_)) && last_use[a as usize] == ni {
                live -= bytes(a as usize);
            }
        }
        if last_use[v] == 0 {
            // Never used (a node's value can only be used by a later node): dead at once.
            live -= bytes(v);
        }
    }
    peak
}

fn strides(shape: &[u32]) -> Vec<usize> {
    let mut s = vec![1usize; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1] as usize;
    }
    s
}

/// Copy 4-byte elements of a `from`-shaped tensor into the leading corner of a zeroed `to` shape.
pub fn pad(bytes: &[u8], from: &[u32], to: &[u32]) -> Vec<u8> {
    if from == to {
        return bytes.to_vec();
    }
    let mut out = vec![0u8; to.iter().product::<u32>() as usize * 4];
    copy_region(bytes, from, &mut out, to, from);
    out
}

/// The leading `to`-shaped corner of a `from`-shaped tensor.
pub fn crop(bytes: &[u8], from: &[u32], to: &[u32]) -> Vec<u8> {
    if from == to {
        return bytes.to_vec();
    }
    let mut out = vec![0u8; to.iter().product::<u32>() as usize * 4];
    copy_region(bytes, from, &mut out, to, to);
    out
}

/// Copy the `region` corner between two row-major layouts, one innermost row at a time.
fn copy_region(src: &[u8], src_shape: &[u32], dst: &mut [u8], dst_shape: &[u32], region: &[u32]) {
    let rank = region.len();
    if rank == 0 || region.contains(&0) {
        return;
    }
    let (ss, ds) = (strides(src_shape), strides(dst_shape));
    let row = region[rank - 1] as usize * 4;
    let rows: usize = region[..rank - 1].iter().map(|&d| d as usize).product();
    let mut idx = vec![0usize; rank - 1];
    for _ in 0..rows {
        let so: usize = idx.iter().zip(&ss).map(|(i, s)| i * s).sum::<usize>() * 4;
        let dof: usize = idx.iter().zip(&ds).map(|(i, s)| i * s).sum::<usize>() * 4;
        dst[dof..dof + row].copy_from_slice(&src[so..so + row]);
        for d in (0..rank - 1).rev() {
            idx[d] += 1;
            if idx[d] < region[d] as usize {
                break;
            }
            idx[d] = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_round_up() {
        let seq: Vec<u32> = [1, 16, 17, 33, 65, 256, 257].iter().map(|&s| seq_bucket(s)).collect();
        assert_eq!(seq, [4, 16, 20, 40, 80, 256, 288]);
        let batch: Vec<u32> = [1, 3, 32, 33].iter().map(|&b| batch_bucket(b)).collect();
        assert_eq!(batch, [1, 4, 32, 64]);
    }

    #[test]
    fn activation_peak_follows_liveness() {
        use shared_proto::{DType, Dim, Graph, InputDecl, Node, Op};
        // x[B, S, 8] → gelu → a; a + x → b; gelu(b) → c (output). At node 1, x, a and b are
        // alive (x and a die there); the peak is 3 values of B·S·8 floats.
        let input = InputDecl { name: "x".into(), dtype: DType::F32, dims: vec![Dim::Batch, Dim::Seq, Dim::Fixed(8)] };
        let node = |op, args: Vec<u32>| Node { op, args };
        let g = Graph {
            inputs: vec![input],
            weights: vec![],
            nodes: vec![node(Op::Gelu, vec![0]), node(Op::Add, vec![1, 0]), node(Op::Gelu, vec![2])],
            outputs: vec![3],
            kv: None,
        };
        let shapes = crate::executors::shapes::graph_shapes(&g, &[vec![2, 4, 8]]).unwrap();
        let one = 2 * 4 * 8 * 4;
        // The input is not counted (its tensor is not the graph's): a, then a + b, then b + c.
        assert_eq!(activation_bytes(&g, &shapes), 2 * one);
        // Attention adds its [B, heads, S, S] scores and probabilities while it runs.
        let q = InputDecl { name: "q".into(), dtype: DType::F32, dims: vec![Dim::Batch, Dim::Seq, Dim::Fixed(8)] };
        let m = InputDecl { name: "m".into(), dtype: DType::F32, dims: vec![Dim::Batch, Dim::Seq] };
        let g = Graph {
            inputs: vec![q, m],
            weights: vec![],
            nodes: vec![node(Op::Attention { heads: 2 }, vec![0, 0, 0, 1])],
            outputs: vec![2],
            kv: None,
        };
        let shapes = crate::executors::shapes::graph_shapes(&g, &[vec![2, 4, 8], vec![2, 4]]).unwrap();
        assert_eq!(activation_bytes(&g, &shapes), one + 2 * 2 * 2 * 4 * 4 * 4);
    }

    #[test]
    fn pad_then_crop_is_identity() {
        let v: Vec<u8> = (1..=6u32).flat_map(|i| i.to_le_bytes()).collect(); // [2, 3]
        let padded = pad(&v, &[2, 3], &[4, 8]);
        assert_eq!(padded.len(), 4 * 8 * 4);
        // Each row keeps its 3 values then zeros (rows are 8 × 4 = 32 bytes); rows 2, 3 are zeros.
        assert_eq!(&padded[0..12], &v[0..12]);
        assert!(padded[12..32].iter().all(|&b| b == 0));
        assert_eq!(&padded[32..44], &v[12..24]);
        assert!(padded[2 * 32..].iter().all(|&b| b == 0));
        assert_eq!(crop(&padded, &[4, 8], &[2, 3]), v);
    }
}
