//! Shape buckets for executors that compile per static shape (WebNN): sizes are rounded up so a
//! few graphs serve every request, inputs are zero-padded (masks pad with 0, so padding is
//! inert) and outputs cropped back. Pure functions, unit-tested natively.

/// Sequence lengths are rounded up to one of these (then to a multiple of 64).
const SEQ_BUCKETS: [u32; 10] = [8, 16, 24, 32, 48, 64, 96, 128, 192, 256];

pub fn seq_bucket(s: u32) -> u32 {
    SEQ_BUCKETS.iter().copied().find(|&b| b >= s).unwrap_or_else(|| s.div_ceil(64) * 64)
}

/// Batches are rounded up to a power of two (then to a multiple of 32).
pub fn batch_bucket(b: u32) -> u32 {
    if b <= 32 { b.next_power_of_two() } else { b.div_ceil(32) * 32 }
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
        assert_eq!(
            (seq_bucket(1), seq_bucket(16), seq_bucket(17), seq_bucket(256), seq_bucket(300)),
            (8, 16, 24, 256, 320)
        );
        assert_eq!((batch_bucket(1), batch_bucket(3), batch_bucket(32), batch_bucket(33)), (1, 4, 32, 64));
    }

    #[test]
    fn pad_then_crop_is_identity() {
        let v: Vec<u8> = (0..2 * 3 * 4).flat_map(|i: u32| i.to_le_bytes()).collect();
        let padded = pad(&v, &[2, 3], &[4, 8]);
        assert_eq!(padded.len(), 4 * 8 * 4);
        // Row 0 keeps its 3 values then zeros; rows 2 and 3 are all zeros.
        assert_eq!(&padded[0..12], &v[0..12]);
        assert!(padded[12..32].iter().all(|&b| b == 0));
        assert!(padded[2 * 32..].iter().all(|&b| b == 0));
        assert_eq!(crop(&padded, &[4, 8], &[2, 3]), v);
    }
}
