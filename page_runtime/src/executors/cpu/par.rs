//! Data parallelism for the heavy kernels: rayon on native hosts, a plain loop on wasm32 (a tab
//! runs its executor on one thread).

/// Below this many multiply-adds a fork costs more than it saves (rayon's fork-join is a few
/// microseconds; a 64×64 matvec is one).
#[cfg(not(target_arch = "wasm32"))]
const MIN_PARALLEL_WORK: usize = 1 << 16;

/// Call `f(i, row)` for every `row_len`-sized row `i` of `out`, spread over threads when `work`
/// (a rough count of multiply-adds for all rows) pays for it.
pub fn rows<T: Send>(out: &mut [T], row_len: usize, work: usize, f: impl Fn(usize, &mut [T]) + Sync + Send) {
    assert!(row_len > 0 && out.len().is_multiple_of(row_len), "whole rows");
    #[cfg(not(target_arch = "wasm32"))]
    {
        use rayon::prelude::*;
        let n = out.len() / row_len;
        let threads = rayon::current_num_threads();
        if threads > 1 && work >= MIN_PARALLEL_WORK && n > 1 {
            // A few chunks per thread so uneven rows (causal attention) still balance.
            let per = n.div_ceil(threads * 4).max(1);
            out.par_chunks_mut(per * row_len).enumerate().for_each(|(c, chunk)| {
                for (r, row) in chunk.chunks_exact_mut(row_len).enumerate() {
                    f(c * per + r, row);
                }
            });
            return;
        }
    }
    #[cfg(target_arch = "wasm32")]
    let _ = work;
    for (i, row) in out.chunks_exact_mut(row_len).enumerate() {
        f(i, row);
    }
}
