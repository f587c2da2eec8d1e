//! Data parallelism for the heavy kernels: rayon on native hosts; in a tab, the worker pool of
//! the threaded build (`pool.rs`: wasm atomics, a cross-origin isolated page), else one thread.
//! Every split gives each output to exactly one task computing it as the serial code would, so
//! results do not depend on the thread count.

/// Below this many multiply-adds a fork costs more than it saves (rayon's fork-join is a few
/// microseconds; a 64×64 matvec is one; waking the tab's pool costs about as much).
const MIN_PARALLEL_WORK: usize = 1 << 16;

/// Threads a kernel may spread over.
pub fn threads() -> usize {
    #[cfg(not(target_arch = "wasm32"))]
    return rayon::current_num_threads();
    #[cfg(all(target_arch = "wasm32", target_feature = "atomics"))]
    return super::pool::threads();
    #[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
    1
}

/// Call `f(p)` for every part `p < parts`, over threads when `work` (a rough count of
/// multiply-adds for all parts) pays for it.
pub fn parts(parts: usize, work: usize, f: impl Fn(usize) + Sync + Send) {
    if threads() <= 1 || work < MIN_PARALLEL_WORK || parts <= 1 {
        (0..parts).for_each(f);
        return;
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        use rayon::prelude::*;
        (0..parts).into_par_iter().for_each(f);
    }
    #[cfg(all(target_arch = "wasm32", target_feature = "atomics"))]
    super::pool::run(parts, &f);
    #[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
    (0..parts).for_each(f);
}

/// A pointer tasks share to write disjoint pieces of one buffer.
struct Shared<T>(*mut T);

impl<T> Shared<T> {
    /// The element `i` places in (a method, so closures capture the `Sync` wrapper, not the
    /// raw pointer field).
    fn at(&self, i: usize) -> *mut T {
        self.0.wrapping_add(i)
    }
}

// SAFETY: every task writes only the piece it was given (disjoint ranges, checked by the
// callers' arithmetic), and the buffer outlives the tasks (`parts` returns after them).
unsafe impl<T: Send> Sync for Shared<T> {}
unsafe impl<T: Send> Send for Shared<T> {}

/// Call `f(i, row)` for every `row_len`-sized row `i` of `out`, spread over threads when `work`
/// (a rough count of multiply-adds for all rows) pays for it.
pub fn rows<T: Send>(out: &mut [T], row_len: usize, work: usize, f: impl Fn(usize, &mut [T]) + Sync + Send) {
    assert!(row_len > 0 && out.len().is_multiple_of(row_len), "whole rows");
    let n = out.len() / row_len;
    // A few chunks per thread so uneven rows (causal attention) still balance.
    let per = n.div_ceil(threads() * 4).max(1);
    let base = Shared(out.as_mut_ptr());
    parts(n.div_ceil(per), work, |c| {
        let (r0, r1) = (c * per, ((c + 1) * per).min(n));
        // SAFETY: chunk c covers rows r0..r1 of `out`, disjoint from every other chunk's.
        let chunk = unsafe { std::slice::from_raw_parts_mut(base.at(r0 * row_len), (r1 - r0) * row_len) };
        for (r, row) in chunk.chunks_exact_mut(row_len).enumerate() {
            f(r0 + r, row);
        }
    });
}

/// Call `f(first_row, block)` for blocks of whole `row_len`-sized rows of `out` (each about
/// `rows / (2 · threads)` rows, a multiple of `align`), spread over threads when `work` pays for
/// it: for kernels that want many rows at once (a GEMM packs its operand once per block).
pub fn row_blocks<T: Send>(
    out: &mut [T],
    row_len: usize,
    align: usize,
    work: usize,
    f: impl Fn(usize, &mut [T]) + Sync + Send,
) {
    assert!(row_len > 0 && out.len().is_multiple_of(row_len), "whole rows");
    let n = out.len() / row_len;
    let per = n.div_ceil(2 * threads()).div_ceil(align.max(1)) * align.max(1);
    let base = Shared(out.as_mut_ptr());
    parts(n.div_ceil(per.max(1)), work, |c| {
        let (r0, r1) = (c * per, ((c + 1) * per).min(n));
        // SAFETY: block c covers rows r0..r1 of `out`, disjoint from every other block's.
        let block = unsafe { std::slice::from_raw_parts_mut(base.at(r0 * row_len), (r1 - r0) * row_len) };
        f(r0, block);
    });
}

/// `Y [m, n]` computed by ranges of columns: `f(j0, j1)` gives `Y[:, j0..j1]` (row-major,
/// `m × (j1 − j0)`); ranges start at multiples of `align`. A linear layer's rows of W are its
/// columns of Y, so each task streams its own part of the weights.
pub fn columns(
    m: usize,
    n: usize,
    align: usize,
    work: usize,
    f: impl Fn(usize, usize) -> Vec<f32> + Sync + Send,
) -> Vec<f32> {
    let t = threads();
    if t <= 1 || work < MIN_PARALLEL_WORK || n < 2 * align {
        return f(0, n);
    }
    // Two ranges per thread: one delayed thread (the main thread also serves the page) does
    // not hold the others up for long.
    let per = n.div_ceil(2 * t).div_ceil(align) * align;
    let ranges = n.div_ceil(per);
    let done: Vec<std::sync::OnceLock<Vec<f32>>> = (0..ranges).map(|_| std::sync::OnceLock::new()).collect();
    parts(ranges, work, |p| {
        let (j0, j1) = (p * per, ((p + 1) * per).min(n));
        let _ = done[p].set(f(j0, j1));
    });
    let mut y = vec![0.0f32; m * n];
    for (p, part) in done.into_iter().enumerate() {
        let (j0, j1) = (p * per, ((p + 1) * per).min(n));
        let part = part.into_inner().expect("every range ran");
        for (i, row) in part.chunks_exact(j1 - j0).enumerate() {
            y[i * n + j0..i * n + j1].copy_from_slice(row);
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_assemble_every_range_in_place() {
        let (m, n) = (3, 1001);
        let want: Vec<f32> = (0..m * n).map(|i| i as f32).collect();
        let got = columns(m, n, 4, usize::MAX, |j0, j1| {
            assert_eq!(j0 % 4, 0, "ranges start aligned");
            (0..m).flat_map(|i| (j0..j1).map(move |j| (i * n + j) as f32)).collect()
        });
        assert_eq!(got, want);
    }

    #[test]
    fn row_blocks_cover_each_row_once_in_aligned_blocks() {
        let mut out = vec![0u32; 37 * 2];
        row_blocks(&mut out, 2, 8, usize::MAX, |r0, block| {
            assert_eq!(r0 % 8, 0, "blocks start aligned");
            for (r, row) in block.chunks_exact_mut(2).enumerate() {
                row.iter_mut().for_each(|v| *v += (r0 + r) as u32 + 1);
            }
        });
        let want: Vec<u32> = (0..37).flat_map(|i| [i + 1; 2]).collect();
        assert_eq!(out, want);
    }

    #[test]
    fn rows_visit_each_row_once() {
        let mut out = vec![0u32; 7 * 3];
        rows(&mut out, 3, usize::MAX, |i, row| row.iter_mut().for_each(|v| *v += i as u32 + 1));
        let want: Vec<u32> = (0..7).flat_map(|i| [i + 1; 3]).collect();
        assert_eq!(out, want);
    }
}
