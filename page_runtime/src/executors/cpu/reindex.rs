//! Reindex family: gather (embedding lookup) and transpose. Reshape moves no data.

use shared_proto::{ErrorKind, RemoteError};

/// Rows of `table[V,H]` picked by `ids`; an id outside `0..V` is a bad input, not a crash.
pub fn gather(table: &[f32], h: usize, ids: &[i32]) -> Result<Vec<f32>, RemoteError> {
    let v = table.len() / h;
    let mut out = Vec::with_capacity(ids.len() * h);
    for &id in ids {
        if id < 0 || id as usize >= v {
            return Err(RemoteError::new(ErrorKind::BadInput, format!("gather: id {id} outside 0..{v}")));
        }
        out.extend_from_slice(&table[id as usize * h..(id as usize + 1) * h]);
    }
    Ok(out)
}

/// Permute the axes of a row-major tensor of `shape`.
pub fn transpose<T: Copy>(x: &[T], shape: &[u32], perm: &[u8]) -> Vec<T> {
    let rank = shape.len();
    let mut in_strides = vec![1usize; rank];
    for i in (0..rank.saturating_sub(1)).rev() {
        in_strides[i] = in_strides[i + 1] * shape[i + 1] as usize;
    }
    let out_shape: Vec<usize> = perm.iter().map(|&p| shape[p as usize] as usize).collect();
    let mut out = Vec::with_capacity(x.len());
    let mut idx = vec![0usize; rank];
    for _ in 0..x.len() {
        let src: usize = idx.iter().zip(perm).map(|(&i, &p)| i * in_strides[p as usize]).sum();
        out.push(x[src]);
        for d in (0..rank).rev() {
            idx[d] += 1;
            if idx[d] < out_shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_2d_and_3d() {
        assert_eq!(transpose(&[1, 2, 3, 4, 5, 6], &[2, 3], &[1, 0]), vec![1, 4, 2, 5, 3, 6]);
        // [2,1,3] -> perm [2,0,1] -> [3,2,1]
        assert_eq!(transpose(&[1, 2, 3, 4, 5, 6], &[2, 1, 3], &[2, 0, 1]), vec![1, 4, 2, 5, 3, 6]);
    }

    #[test]
    fn gather_rejects_out_of_range_ids() {
        let t = [0.0, 1.0, 2.0, 3.0];
        assert_eq!(gather(&t, 2, &[1, 0]).unwrap(), vec![2.0, 3.0, 0.0, 1.0]);
        assert!(gather(&t, 2, &[2]).is_err());
        assert!(gather(&t, 2, &[-1]).is_err());
    }
}
