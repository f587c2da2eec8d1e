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
