//! Checks a run's inputs against the graph's declarations (count, dtype, rank, fixed dims, and
//! one consistent batch and sequence length), for every executor.

use shared_proto::{Dim, ErrorKind, Graph, RemoteError, Tensor};

pub fn check(g: &Graph, inputs: &[Tensor]) -> Result<(), RemoteError> {
    let bad = |m: String| Err(RemoteError::new(ErrorKind::BadInput, m));
    if inputs.len() != g.inputs.len() {
        return bad(format!("graph takes {} inputs, got {}", g.inputs.len(), inputs.len()));
    }
    let (mut batch, mut seq) = (None, None);
    for (decl, t) in g.inputs.iter().zip(inputs) {
        if t.dtype != decl.dtype || t.shape.len() != decl.dims.len() {
            return bad(format!(
                "input {}: want {:?} {:?}, got {:?} {:?}",
                decl.name, decl.dtype, decl.dims, t.dtype, t.shape
            ));
        }
        for (d, &n) in decl.dims.iter().zip(&t.shape) {
            let slot = match d {
                Dim::Fixed(f) if *f != n => return bad(format!("input {}: dim {n} where {f} is fixed", decl.name)),
                Dim::Fixed(_) => continue,
                Dim::Batch => &mut batch,
                Dim::Seq => &mut seq,
            };
            if n == 0 {
                return bad(format!("input {}: empty batch or sequence", decl.name));
            }
            match slot {
                Some(prev) if *prev != n => {
                    return bad(format!("input {}: {d:?} is {n} here but {prev} in another input", decl.name));
                }
                _ => *slot = Some(n),
            }
        }
    }
    Ok(())
}

/// A weight arriving for slot `idx` must match its declaration: dtype, shape and content hash.
/// How much of a weight's check its bytes still need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Bytes from the host: dtype, shape and content hash.
    Hash,
    /// Bytes this runtime has verified before — read back from its own weight cache, which
    /// stores a weight only after it passed its hash (`weight_cache.rs`), or the very bytes a
    /// page hashed to declare them (`api.rs`): dtype and shape only. Hashing MiniLM's 86 MiB
    /// again took a third of a replacement tab's load.
    Known,
}

pub fn check_weight(g: &Graph, idx: usize, t: &Tensor, check: Check) -> Result<(), RemoteError> {
    let bad = |m: String| Err(RemoteError::new(ErrorKind::BadInput, m));
    let Some(decl) = g.weights.get(idx) else { return bad(format!("weight index {idx} out of range")) };
    if t.dtype != decl.dtype || t.shape != decl.shape {
        return bad(format!(
            "weight {}: got {:?} {:?}, declared {:?} {:?}",
            decl.name, t.dtype, t.shape, decl.dtype, decl.shape
        ));
    }
    if check == Check::Hash && shared_proto::content_hash(&t.data) != decl.hash {
        return bad(format!("weight {}: content hash mismatch", decl.name));
    }
    Ok(())
}

/// The smallest valid inputs for `g`: batch 1, sequence 1, zeros, masks (inputs named "*mask*")
/// of ones. Used to compile a model's kernels at load.
pub fn minimal(g: &Graph) -> Vec<Tensor> {
    g.inputs
        .iter()
        .map(|d| {
            let shape: Vec<u32> = d.dims.iter().map(|x| if let Dim::Fixed(n) = x { *n } else { 1 }).collect();
            // `Graph::validate` bounds declared inputs, so this product cannot overflow.
            let n = shape.iter().map(|&x| x as usize).product::<usize>();
            let data: Vec<u8> = if d.dtype == shared_proto::DType::F32 && d.name.contains("mask") {
                (0..n).flat_map(|_| 1.0f32.to_le_bytes()).collect()
            } else {
                // Zeros of the dtype's own width (f16 and u8 inputs are not 4 bytes an element).
                vec![0u8; n * d.dtype.size()]
            };
            Tensor { dtype: d.dtype, shape, data: data.into() }
        })
        .collect()
}

/// Ids feeding a Gather straight from a graph input must index the weight table: kernels cannot
/// report a bad id (WebGPU clamps, WebNN is implementation-defined), so it is refused here.
pub fn check_gather_ids(g: &Graph, inputs: &[Tensor]) -> Result<(), RemoteError> {
    for node in g.nodes.iter().filter(|n| n.op == shared_proto::Op::Gather) {
        if let (shared_proto::ValueRef::Weight(w), shared_proto::ValueRef::Input(i)) =
            (g.value(node.args[0]), g.value(node.args[1]))
        {
            let vocab = g.weights[w].shape[0] as i64;
            let t = &inputs[i];
            if let Some(id) = t
                .data
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                .find(|&id| id < 0 || id >= vocab)
            {
                return Err(RemoteError::new(
                    ErrorKind::BadInput,
                    format!("gather: id {id} outside 0..{vocab} in input {}", g.inputs[i].name),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use shared_proto::{DType, Dim, Graph, InputDecl};

    #[test]
    fn minimal_inputs_have_their_dtype_width() {
        let decl = |name: &str, dtype| InputDecl { name: name.into(), dtype, dims: vec![Dim::Batch, Dim::Fixed(3)] };
        let g = Graph {
            inputs: vec![decl("ids", DType::I32), decl("mask", DType::F32), decl("half", DType::F16)],
            weights: vec![],
            nodes: vec![],
            outputs: vec![],
            kv: None,
        };
        let m = super::minimal(&g);
        assert_eq!(m.iter().map(|t| t.data.len()).collect::<Vec<_>>(), [12, 12, 6], "f16 is 2 bytes an element");
        assert_eq!(m[1].to_f32().unwrap(), vec![1.0; 3], "masks are ones");
    }
}
