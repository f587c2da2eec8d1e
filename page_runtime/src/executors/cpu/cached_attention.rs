//! The KV cache of a stateful model and causal grouped-query attention over it.

use shared_proto::{ErrorKind, KvDecl, RemoteError};

use super::{expf, matmul::dot, par};

/// Keys and values of every layer: rows of `kv_heads · head_dim` f32, up to `max_tokens` rows.
/// Storage grows as rows are first written, so a model declared with a large cache costs only
/// what its sessions have used.
pub struct KvCache {
    width: usize,
    max_tokens: usize,
    /// Per layer: (keys, values), each `rows · width` long.
    layers: Vec<(Vec<f32>, Vec<f32>)>,
}

impl KvCache {
    pub fn new(kv: &KvDecl) -> KvCache {
        KvCache {
            width: (kv.kv_heads * kv.head_dim) as usize,
            max_tokens: kv.max_tokens as usize,
            layers: (0..kv.layers).map(|_| (Vec::new(), Vec::new())).collect(),
        }
    }

    /// Rows currently backed by memory in `layer`.
    pub fn rows(&self, layer: usize) -> usize {
        self.layers[layer].0.len() / self.width
    }

    /// Make rows `..end` of `layer` backed (zeros), growing geometrically up to the cache size.
    fn reserve(&mut self, layer: usize, end: usize) {
        let (w, max_tokens) = (self.width, self.max_tokens);
        let (keys, values) = &mut self.layers[layer];
        let need = end * w;
        if keys.len() < need {
            // Grow geometrically (capped at the declared cache) so a long decode reallocates rarely.
            let target = need.max((keys.len() * 2).min(max_tokens * w));
            keys.reserve_exact(target - keys.len());
            values.reserve_exact(target - values.len());
            keys.resize(need, 0.0);
            values.resize(need, 0.0);
        }
    }

    /// Write a fixed memory `[layers, 2, rows, width]` (keys then values per layer, `data` its
    /// little-endian f32 bytes, as the tensor arrived) into layers `first_layer..` at rows
    /// `start..start + rows` (`Request::PutMemory`). Read straight from the bytes: an f32 copy
    /// of a window's memory (18 MB for Whisper tiny) would raise the wasm heap's high-water mark,
    /// which never comes down.
    pub fn put_memory(
        &mut self,
        first_layer: usize,
        start: usize,
        shape: &[u32],
        data: &[u8],
    ) -> Result<(), RemoteError> {
        let w = self.width;
        let bad = |m: String| RemoteError::new(ErrorKind::BadInput, m);
        let &[layers, two, rows, width] = shape else {
            return Err(bad(format!("a memory is [layers, 2, rows, width], got {shape:?}")));
        };
        let (layers, rows) = (layers as usize, rows as usize);
        if two != 2 || width as usize != w || data.len() != 4 * layers * 2 * rows * w {
            return Err(bad(format!("a memory {shape:?} does not fit cache rows of {w} values")));
        }
        let parts: Vec<&[u8]> = data.chunks_exact(4 * rows * w).collect();
        self.put_memory_parts(first_layer, start, rows, &parts)
    }

    /// [`Self::put_memory`] from separate pieces: keys, values, keys, … of `rows` rows each (an
    /// encoder's outputs as they come, `Request::EncodeIntoMemory`): no whole memory assembled.
    pub fn put_memory_parts(
        &mut self,
        first_layer: usize,
        start: usize,
        rows: usize,
        parts: &[&[u8]],
    ) -> Result<(), RemoteError> {
        let w = self.width;
        let bad = |m: String| RemoteError::new(ErrorKind::BadInput, m);
        let layers = parts.len() / 2;
        if !parts.len().is_multiple_of(2) || parts.iter().any(|p| p.len() != 4 * rows * w) {
            return Err(bad(format!("a memory comes as keys and values of {rows} rows × {w} values per layer")));
        }
        if first_layer + layers > self.layers.len() || start + rows > self.max_tokens {
            return Err(bad(format!(
                "a memory of {layers} layers × {rows} rows at layer {first_layer}, row {start} is outside the cache ({} layers × {} rows)",
                self.layers.len(),
                self.max_tokens
            )));
        }
        for l in 0..layers {
            self.reserve(first_layer + l, start + rows);
            let (keys, values) = &mut self.layers[first_layer + l];
            let read = |dst: &mut [f32], src: &[u8]| {
                for (d, c) in dst.iter_mut().zip(src.chunks_exact(4)) {
                    *d = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            };
            read(&mut keys[start * w..(start + rows) * w], parts[2 * l]);
            read(&mut values[start * w..(start + rows) * w], parts[2 * l + 1]);
        }
        Ok(())
    }
}

impl KvCache {
    /// Copy rows `from..from + rows` to `to..to + rows` in every layer (a cached prefix into a
    /// new session's range, `Sessions::open_reusing`). Rows never written read as zeros.
    pub fn copy_rows(&mut self, from: usize, to: usize, rows: usize) -> Result<(), RemoteError> {
        let w = self.width;
        if from.max(to) + rows > self.max_tokens || (from < to + rows && to < from + rows) {
            return Err(RemoteError::new(
                ErrorKind::BadInput,
                format!(
                    "a copy of rows {from}.. to {to}.. ({rows} rows) overlaps or leaves the cache of {}",
                    self.max_tokens
                ),
            ));
        }
        for l in 0..self.layers.len() {
            self.reserve(l, from.max(to) + rows);
            let (keys, values) = &mut self.layers[l];
            keys.copy_within(from * w..(from + rows) * w, to * w);
            values.copy_within(from * w..(from + rows) * w, to * w);
        }
        Ok(())
    }
}

thread_local! {
    /// Attention scores of one (token, head) at a time, per thread.
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `q[T, heads·d]`, `kv_start[T]` → `[T, heads·d]`: each row attends over cache rows
/// `kv_start[t] .. kv_start[t] + rows` of `layer`, unmasked (see `Op::CrossAttention`).
pub fn cross_attention(
    cache: &mut KvCache,
    layer: usize,
    heads: usize,
    rows: usize,
    q: &[f32],
    kv_start: &[i32],
) -> Result<Vec<f32>, RemoteError> {
    let w = cache.width;
    let t = kv_start.len();
    let d = w / heads;
    if q.len() != t * w || d * heads != w {
        return Err(RemoteError::new(
            ErrorKind::BadInput,
            format!("cross attention: q rows of {} values do not fit a cache of {heads}×{d}", q.len() / t.max(1)),
        ));
    }
    for &s in kv_start {
        if s < 0 || s as usize + rows > cache.max_tokens {
            return Err(RemoteError::new(
                ErrorKind::BadInput,
                format!("cross attention: rows {s}..{s}+{rows} are outside the cache of {} rows", cache.max_tokens),
            ));
        }
        // Rows no PutMemory wrote read as zeros: the warm-up run at load has no memory yet.
        cache.reserve(layer, s as usize + rows);
    }
    let (keys, values) = (&cache.layers[layer].0[..], &cache.layers[layer].1[..]);
    let scale = 1.0 / (d as f32).sqrt();
    let mut out = vec![0.0f32; t * w];
    par::rows(&mut out, d, t * heads * rows * 2 * d, |th, o| {
        let (ti, h) = (th / heads, th % heads);
        let first = kv_start[ti] as usize;
        let qh = &q[ti * w + h * d..ti * w + (h + 1) * d];
        let mut scores: Vec<f32> =
            (first..first + rows).map(|r| dot(qh, &keys[r * w + h * d..r * w + (h + 1) * d]) * scale).collect();
        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0f32;
        for s in scores.iter_mut() {
            *s = expf::exp(*s - max);
            sum += *s;
        }
        let inv = 1.0 / sum;
        for (r, &p) in (first..first + rows).zip(&scores) {
            let p = p * inv;
            for (a, &x) in o.iter_mut().zip(&values[r * w + h * d..r * w + (h + 1) * d]) {
                *a += p * x;
            }
        }
    });
    Ok(out)
}

/// Shape of one `CachedAttention` call.
#[derive(Clone, Copy, Debug)]
pub struct CachedDims {
    pub layer: usize,
    pub heads: usize,
    pub kv_heads: usize,
}

/// `q[T, heads·d]`, `k, v[T, kv_heads·d]`, `pos[T]`, `kv_start[T]` → `[T, heads·d]` (see
/// `Op::CachedAttention`). Every row's k, v are written first, so a prefill of T tokens attends
/// to the rows written in the same call.
#[allow(clippy::too_many_arguments)]
pub fn cached_attention(
    cache: &mut KvCache,
    dims: CachedDims,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    pos: &[i32],
    kv_start: &[i32],
) -> Result<Vec<f32>, RemoteError> {
    let CachedDims { layer, heads, kv_heads } = dims;
    let (w, max_tokens) = (cache.width, cache.max_tokens);
    let t = pos.len();
    let d = w / kv_heads;
    // The shape rules tie q to k but not k to the cache: a graph may declare other head sizes.
    if k.len() != t * w || v.len() != t * w || q.len() != t * heads * d {
        return Err(RemoteError::new(
            ErrorKind::BadInput,
            format!(
                "cached attention: k, v rows of {} values and q rows of {} do not fit a cache of {kv_heads}×{d}",
                k.len() / t.max(1),
                q.len() / t.max(1)
            ),
        ));
    }
    let mut rows = Vec::with_capacity(t);
    for (&p, &s) in pos.iter().zip(kv_start) {
        let row = s as i64 + p as i64;
        if p < 0 || s < 0 || row >= max_tokens as i64 {
            return Err(RemoteError::new(
                ErrorKind::BadInput,
                format!("cached attention: kv_start {s} + pos {p} outside the cache of {max_tokens} rows"),
            ));
        }
        rows.push(row as usize);
    }
    cache.reserve(layer, rows.iter().max().copied().unwrap_or(0) + 1);
    let (keys, values) = &mut cache.layers[layer];
    for (i, &r) in rows.iter().enumerate() {
        keys[r * w..(r + 1) * w].copy_from_slice(&k[i * w..(i + 1) * w]);
        values[r * w..(r + 1) * w].copy_from_slice(&v[i * w..(i + 1) * w]);
    }
    let (keys, values) = (&keys[..], &values[..]);
    let group = heads / kv_heads;
    let scale = 1.0 / (d as f32).sqrt();
    let mut out = vec![0.0f32; t * heads * d];
    let work: usize = pos.iter().map(|&p| (p as usize + 1) * 2 * d * heads).sum();
    par::rows(&mut out, d, work, |th, o| {
        let (ti, h) = (th / heads, th % heads);
        let kvh = h / group;
        let first = kv_start[ti] as usize;
        let last = rows[ti];
        let qh = &q[ti * heads * d + h * d..ti * heads * d + (h + 1) * d];
        // A buffer per thread, not per (token, head): allocating takes the allocator's lock,
        // which the threaded wasm build's workers contend for.
        SCORES.with_borrow_mut(|scores| {
            scores.clear();
            scores.extend((first..=last).map(|r| dot(qh, &keys[r * w + kvh * d..r * w + (kvh + 1) * d]) * scale));
            let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0f32;
            for s in scores.iter_mut() {
                *s = expf::exp(*s - max);
                sum += *s;
            }
            let inv = 1.0 / sum;
            for (r, &p) in (first..=last).zip(scores.iter()) {
                let p = p * inv;
                for (a, &x) in o.iter_mut().zip(&values[r * w + kvh * d..r * w + (kvh + 1) * d]) {
                    *a += p * x;
                }
            }
        });
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| (((i as u32).wrapping_mul(2_654_435_761) ^ seed.wrapping_mul(40503)) % 2000) as f32 / 1000.0 - 1.0)
            .collect()
    }

    /// Per session: the key rows and the value rows written so far.
    type History = (Vec<Vec<f32>>, Vec<Vec<f32>>);

    /// Causal GQA over explicit per-row key/value histories, in f64.
    fn reference(
        q: &[f32],
        keys: &[Vec<f32>],
        values: &[Vec<f32>],
        heads: usize,
        kv_heads: usize,
        d: usize,
    ) -> Vec<f64> {
        let mut out = vec![0.0f64; heads * d];
        for h in 0..heads {
            let kvh = h / (heads / kv_heads);
            let s: Vec<f64> = keys
                .iter()
                .map(|kr| (0..d).map(|i| q[h * d + i] as f64 * kr[kvh * d + i] as f64).sum::<f64>() / (d as f64).sqrt())
                .collect();
            let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
            let z: f64 = e.iter().sum();
            for (p, vr) in e.iter().zip(values) {
                for i in 0..d {
                    out[h * d + i] += p / z * vr[kvh * d + i] as f64;
                }
            }
        }
        out
    }

    #[test]
    fn prefill_then_decode_of_two_sessions_matches_f64() {
        let (heads, kv_heads, d, layers) = (4, 2, 8, 2);
        let w = kv_heads * d;
        let decl = KvDecl {
            layers: layers as u32,
            kv_heads: kv_heads as u32,
            head_dim: d as u32,
            max_tokens: 64,
            max_sessions: 2,
        };
        let mut cache = KvCache::new(&decl);
        assert_eq!(cache.rows(1), 0, "nothing allocated before use");
        let dims = CachedDims { layer: 1, heads, kv_heads };
        // Session A at rows 0.., session B at rows 32..; step 1 prefills A (3) and B (2) together,
        // step 2 decodes one token of each.
        let steps: [(&[i32], &[i32]); 2] = [(&[0, 1, 2, 0, 1], &[0, 0, 0, 32, 32]), (&[3, 2], &[0, 32])];
        let mut hist: [History; 2] = Default::default();
        for (si, (pos, start)) in steps.iter().enumerate() {
            let t = pos.len();
            let q = noise(t * heads * d, 10 + si as u32);
            let k = noise(t * w, 20 + si as u32);
            let v = noise(t * w, 30 + si as u32);
            let got = cached_attention(&mut cache, dims, &q, &k, &v, pos, start).unwrap();
            for ti in 0..t {
                let sess = (start[ti] == 32) as usize;
                hist[sess].0.push(k[ti * w..(ti + 1) * w].to_vec());
                hist[sess].1.push(v[ti * w..(ti + 1) * w].to_vec());
            }
            for ti in 0..t {
                let sess = (start[ti] == 32) as usize;
                let n = pos[ti] as usize + 1;
                let want = reference(
                    &q[ti * heads * d..(ti + 1) * heads * d],
                    &hist[sess].0[..n],
                    &hist[sess].1[..n],
                    heads,
                    kv_heads,
                    d,
                );
                for (g, w) in got[ti * heads * d..(ti + 1) * heads * d].iter().zip(&want) {
                    assert!((*g as f64 - w).abs() <= 1e-5 + 1e-5 * w.abs(), "step {si} row {ti}: {g} vs {w}");
                }
            }
        }
        assert_eq!(cache.rows(1), 35, "grown to the highest row written (B's row 32 + 2)");
        assert_eq!(cache.rows(0), 0, "other layers untouched");
    }

    /// Cross attention of two sessions' rows over the memories `PutMemory` wrote for each (layer 1
    /// of 2), against f64 over the same rows: every memory row, no mask, per head.
    #[test]
    fn cross_attention_over_put_memories_matches_f64() {
        let (heads, d, rows) = (3, 8, 5);
        let w = heads * d;
        let decl = KvDecl { layers: 2, kv_heads: heads as u32, head_dim: d as u32, max_tokens: 16, max_sessions: 2 };
        let mut cache = KvCache::new(&decl);
        // One memory per session, for both layers ([layers, 2, rows, width]), at rows 0 and 8.
        let memories = [noise(2 * 2 * rows * w, 41), noise(2 * 2 * rows * w, 42)];
        for (m, start) in memories.iter().zip([0, 8]) {
            let bytes: Vec<u8> = m.iter().flat_map(|x| x.to_le_bytes()).collect();
            cache.put_memory(0, start, &[2, 2, rows as u32, w as u32], &bytes).unwrap();
        }
        // Three query rows: two of session 0, one of session 1.
        let starts = [0, 0, 8];
        let q = noise(starts.len() * w, 43);
        let got = cross_attention(&mut cache, 1, heads, rows, &q, &starts).unwrap();
        let mut worst = 0f64;
        for (ti, &s) in starts.iter().enumerate() {
            let m = &memories[(s == 8) as usize];
            // Layer 1's keys and values in the memory's layout.
            let layer = &m[2 * rows * w..];
            let keys: Vec<Vec<f32>> = (0..rows).map(|r| layer[r * w..(r + 1) * w].to_vec()).collect();
            let values: Vec<Vec<f32>> = (0..rows).map(|r| layer[(rows + r) * w..(rows + r + 1) * w].to_vec()).collect();
            let want = reference(&q[ti * w..(ti + 1) * w], &keys, &values, heads, heads, d);
            for (g, w) in got[ti * w..(ti + 1) * w].iter().zip(&want) {
                worst = worst.max((*g as f64 - w).abs());
                assert!((*g as f64 - w).abs() <= 1e-5 + 1e-5 * w.abs(), "row {ti}: {g} vs {w}");
            }
        }
        eprintln!("cross attention: max |Δ| against f64 {worst:.1e}");
        // Rows past the cache are refused, not read.
        let e = cross_attention(&mut cache, 1, heads, rows, &q[..w], &[12]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadInput);
    }

    #[test]
    fn rows_outside_the_cache_are_refused() {
        let decl = KvDecl { layers: 1, kv_heads: 1, head_dim: 4, max_tokens: 8, max_sessions: 1 };
        let mut cache = KvCache::new(&decl);
        let dims = CachedDims { layer: 0, heads: 1, kv_heads: 1 };
        let x = [0.5f32; 4];
        let e = cached_attention(&mut cache, dims, &x, &x, &x, &[3], &[5]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadInput);
        assert!(cached_attention(&mut cache, dims, &x, &x, &x, &[-1], &[0]).is_err());
        assert!(cached_attention(&mut cache, dims, &x, &x, &x, &[2], &[5]).is_ok());
        let wide = [0.5f32; 8];
        let e = cached_attention(&mut cache, dims, &wide, &wide, &wide, &[0], &[0]).unwrap_err();
        assert!(e.message.contains("do not fit"), "{}", e.message);
    }
}
