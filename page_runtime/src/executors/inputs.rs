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
