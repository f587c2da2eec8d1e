//! Generation sessions of one stateful model in a tab: which rows of the model's KV cache each
//! session owns, how long it is, and how a `Step` becomes the graph's inputs. Pure (no browser),
//! so the policy is unit-tested natively; the executors own the cache memory itself.
//!
//! Each session owns one contiguous range of cache rows, reserved at open for its whole capacity
//! (prompt plus everything it may generate), so a step never allocates and a full cache refuses
//! at open — with a typed `Capacity` error — rather than mid-stream.

use std::collections::BTreeMap;

use shared_proto::{DType, ErrorKind, KvDecl, RemoteError, Sampling, StepRow, Tensor};

use crate::prefix_cache::{PrefixCache, PrefixStats};

#[derive(Debug, Clone, PartialEq, Eq)]
struct Session {
    start: u32,
    capacity: u32,
    len: u32,
    /// The tokens of rows `start..start + len`, kept only for a session opened with its prompt
    /// (`open_reusing`): at close its rows become a prefix-cache entry.
    tokens: Option<Vec<u32>>,
}

#[derive(Debug)]
pub struct Sessions {
    kv: KvDecl,
    open: BTreeMap<u64, Session>,
    /// `None`: the model's executor cannot copy KV rows, so nothing is kept.
    prefixes: Option<PrefixCache>,
}

/// Rows to copy inside the KV cache (every layer) before a session's first step: a cached
/// prefix, from an entry's rows to the new session's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowCopy {
    pub from: u32,
    pub to: u32,
    pub rows: u32,
}

/// An opened session: the KV bytes it reserved, and the rows to copy for its cached prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    pub kv_bytes: u64,
    pub copy: Option<RowCopy>,
}

/// A planned step: the graph inputs (in `STEP_INPUTS` order) and what to commit once it ran.
pub struct StepPlan {
    pub inputs: Vec<Tensor>,
    /// Per session, how many tokens its row appends, and which (only for a session whose
    /// tokens are kept for the prefix cache: no copy per decode step otherwise).
    advance: Vec<(u64, u32, Option<Vec<u32>>)>,
}

fn capacity(msg: String) -> RemoteError {
    RemoteError::new(ErrorKind::Capacity, msg)
}

fn bad(msg: String) -> RemoteError {
    RemoteError::new(ErrorKind::BadInput, msg)
}

impl Sessions {
    pub fn new(kv: KvDecl) -> Sessions {
        Sessions { kv, open: BTreeMap::new(), prefixes: None }
    }

    /// Keep closed sessions' rows as a prefix cache of up to half the KV cache (what an
    /// executor that can copy rows between sessions, `copy_kv_rows`, turns on).
    pub fn with_prefix_cache(mut self) -> Sessions {
        self.prefixes = Some(PrefixCache::new(self.kv.max_tokens / 2));
        self
    }

    /// The prefix cache's counters (`None` without one).
    pub fn prefix_stats(&self) -> Option<(PrefixStats, usize, u32)> {
        self.prefixes.as_ref().map(|p| (p.stats, p.len(), p.rows()))
    }

    pub fn len(&self) -> usize {
        self.open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// Bytes of KV cache one token row takes (keys and values of every layer).
    pub fn bytes_per_token(&self) -> u64 {
        self.kv.bytes() / self.kv.max_tokens as u64
    }

    /// Reserve `capacity` rows for `id` (first fit); returns the KV bytes reserved.
    pub fn open(&mut self, id: u64, capacity_tokens: u32) -> Result<u64, RemoteError> {
        Ok(self.open_reusing(id, capacity_tokens, &[])?.kv_bytes)
    }

    /// [`Sessions::open`] for a session that will start with `prompt` (empty: unknown). With a
    /// prefix cache, the entry sharing the longest prefix with it is found, the session starts
    /// that many tokens long, and the caller copies the rows (`Opened::copy`) before stepping it
    /// — or calls [`Sessions::rewind`] if the copy failed. Entries are evicted least recently
    /// used first when the new session finds no room otherwise; the one it copies from last.
    pub fn open_reusing(&mut self, id: u64, capacity_tokens: u32, prompt: &[u32]) -> Result<Opened, RemoteError> {
        if self.open.contains_key(&id) {
            return Err(bad(format!("session {id} is already open")));
        }
        if capacity_tokens == 0 {
            return Err(bad("a session needs a capacity of at least one token".into()));
        }
        if self.open.len() >= self.kv.max_sessions as usize {
            return Err(capacity(format!("{} sessions open, the limit of this model", self.open.len())));
        }
        if capacity_tokens > self.kv.max_tokens {
            return Err(capacity(format!(
                "a session of {capacity_tokens} tokens exceeds the KV cache of {} tokens",
                self.kv.max_tokens
            )));
        }
        let caching = !prompt.is_empty() && self.prefixes.is_some();
        let mut hit = self.prefixes.as_ref().filter(|_| caching).and_then(|p| p.best(prompt));
        let at = loop {
            if let Some(at) = self.fit(capacity_tokens) {
                break Some(at);
            }
            // No room: cached prefixes give way, the one this session would copy last.
            let Some(p) = self.prefixes.as_mut() else { break None };
            if !p.evict_lru(hit.map(|h| h.0)) {
                if hit.is_some() && p.evict_lru(None) {
                    hit = None;
                    continue;
                }
                break None;
            }
        };
        let Some(at) = at else {
            let used: u32 = self.open.values().map(|s| s.capacity).sum();
            return Err(capacity(format!(
                "no room for {capacity_tokens} tokens in the KV cache ({used} of {} tokens reserved)",
                self.kv.max_tokens
            )));
        };
        // A prefix longer than the session is worth nothing (it could not hold the rows).
        let hit = hit.filter(|&(_, n)| n < capacity_tokens);
        if caching && let Some(p) = self.prefixes.as_mut() {
            p.record(hit);
        }
        let reused = hit.map_or(0, |h| h.1);
        let tokens = caching.then(|| prompt[..reused as usize].to_vec());
        self.open.insert(id, Session { start: at, capacity: capacity_tokens, len: reused, tokens });
        Ok(Opened {
            kv_bytes: capacity_tokens as u64 * self.bytes_per_token(),
            copy: hit.map(|(from, rows)| RowCopy { from, to: at, rows }),
        })
    }

    /// The first row of a free range of `n` rows (first fit among sessions and cached prefixes).
    fn fit(&self, n: u32) -> Option<u32> {
        let mut ranges: Vec<(u32, u32)> = self.open.values().map(|s| (s.start, s.start + s.capacity)).collect();
        if let Some(p) = &self.prefixes {
            ranges.extend(p.ranges());
        }
        ranges.sort_unstable();
        let mut at = 0u32;
        for (start, end) in ranges {
            if start.saturating_sub(at) >= n {
                break;
            }
            at = at.max(end);
        }
        (self.kv.max_tokens - at >= n).then_some(at)
    }

    /// Start session `id` empty again: its cached prefix could not be copied.
    pub fn rewind(&mut self, id: u64) {
        if let Some(s) = self.open.get_mut(&id) {
            s.len = 0;
            if let Some(t) = &mut s.tokens {
                t.clear();
            }
        }
    }

    /// Free `id`'s rows — or keep them as a cached prefix when it was opened with its prompt;
    /// false if it was not open.
    pub fn close(&mut self, id: u64) -> bool {
        let Some(s) = self.open.remove(&id) else { return false };
        if let (Some(p), Some(tokens)) = (self.prefixes.as_mut(), s.tokens) {
            p.keep(s.start, tokens);
        }
        true
    }

    /// Forget every cached prefix (the cache's memory was replaced).
    pub fn clear_prefixes(&mut self) {
        if let Some(p) = self.prefixes.as_mut() {
            p.clear();
        }
    }

    /// The graph inputs for `rows` (each an open session, each at most once, with tokens that fit
    /// its capacity and ids below `vocab`). Nothing changes until [`Sessions::commit`].
    pub fn plan(&self, rows: &[StepRow], vocab: u32) -> Result<StepPlan, RemoteError> {
        if rows.is_empty() {
            return Err(bad("a step needs at least one row".into()));
        }
        let (mut ids, mut pos, mut start, mut last, mut params) = (vec![], vec![], vec![], vec![], vec![]);
        let mut advance = Vec::with_capacity(rows.len());
        for r in rows {
            let s = self.open.get(&r.session).ok_or_else(|| bad(format!("session {} is not open", r.session)))?;
            if advance.iter().any(|(id, _, _)| *id == r.session) {
                return Err(bad(format!("session {} appears twice in one step", r.session)));
            }
            let n = r.tokens.len() as u32;
            if n == 0 {
                return Err(bad(format!("session {}: a row needs at least one token", r.session)));
            }
            if s.len + n > s.capacity {
                return Err(capacity(format!(
                    "session {}: {} + {n} tokens exceed its capacity of {}",
                    r.session, s.len, s.capacity
                )));
            }
            if let Some(t) = r.tokens.iter().find(|&&t| t >= vocab) {
                return Err(bad(format!("session {}: token {t} is outside the vocabulary of {vocab}", r.session)));
            }
            for (i, &t) in r.tokens.iter().enumerate() {
                ids.push(t as i32);
                pos.push((s.len + i as u32) as i32);
                start.push(s.start as i32);
            }
            last.push(ids.len() as i32 - 1);
            // The sampled token takes position len + n: its draw depends on that and the seed only.
            params.extend(sampling_params(r.sampling, s.len + n));
            advance.push((r.session, n, s.tokens.as_ref().map(|_| r.tokens.clone())));
        }
        let (t, r) = (ids.len() as u32, rows.len() as u32);
        let i32s = |shape: Vec<u32>, v: &[i32]| Tensor {
            dtype: DType::I32,
            shape,
            data: v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>().into(),
        };
        let inputs = vec![
            i32s(vec![t], &ids),
            i32s(vec![t], &pos),
            i32s(vec![t], &start),
            i32s(vec![r], &last),
            Tensor::from_f32(vec![r, 4], &params),
        ];
        Ok(StepPlan { inputs, advance })
    }

    /// Plan a step of a stage of a sharded model (`StepPlan::inputs[0]` as the graph declares
    /// it): a stage that starts with the embedding takes the rows' token ids; any other takes
    /// `hidden`, the previous stage's output for the same rows, `[T, width]` f32 — the rows'
    /// tokens still give each session's positions.
    pub fn plan_stage(
        &self,
        g: &shared_proto::Graph,
        rows: &[StepRow],
        vocab: u32,
        hidden: Vec<Tensor>,
    ) -> Result<StepPlan, RemoteError> {
        let mut plan = self.plan(rows, vocab)?;
        let decl = &g.inputs[0];
        if (decl.name.as_str(), decl.dtype) != shared_proto::STAGE_INPUT {
            if !hidden.is_empty() {
                return Err(bad(format!("a step of a graph that embeds ids takes no tensors, got {}", hidden.len())));
            }
            return Ok(plan);
        }
        let t = plan.inputs[0].shape[0];
        let width = match decl.dims.get(1) {
            Some(shared_proto::Dim::Fixed(w)) => *w,
            _ => return Err(bad("a stage's hidden input must be [Seq, width]".into())),
        };
        let [h]: [Tensor; 1] = hidden
            .try_into()
            .map_err(|v: Vec<Tensor>| bad(format!("a stage step takes one hidden-state tensor, got {}", v.len())))?;
        if h.dtype != DType::F32 || h.shape != [t, width] {
            return Err(bad(format!(
                "hidden state is {:?} {:?}, the step's {t} tokens need F32 [{t}, {width}]",
                h.dtype, h.shape
            )));
        }
        plan.inputs[0] = h;
        Ok(plan)
    }

    /// Record that a planned step ran: each session grew by its row's tokens.
    pub fn commit(&mut self, plan: &StepPlan) {
        for (id, n, tokens) in &plan.advance {
            if let Some(s) = self.open.get_mut(id) {
                s.len += n;
                if let (Some(t), Some(new)) = (&mut s.tokens, tokens) {
                    t.extend(new);
                }
            }
        }
    }

    /// Tokens session `id` holds, if open.
    pub fn length(&self, id: u64) -> Option<u32> {
        self.open.get(&id).map(|s| s.len)
    }

    /// The first KV row of session `id`'s range and its capacity, if open.
    pub fn range(&self, id: u64) -> Option<(u32, u32)> {
        self.open.get(&id).map(|s| (s.start, s.capacity))
    }
}

/// The vocabulary of a stateful graph: rows of the table its token ids (input 0) are gathered
/// from. `u32::MAX` if the graph gathers them otherwise (the executors still bound-check ids).
pub fn vocab(g: &shared_proto::Graph) -> u32 {
    g.nodes
        .iter()
        .find(|n| matches!(n.op, shared_proto::Op::Gather) && n.args[1] == 0)
        .and_then(|n| match g.value(n.args[0]) {
            shared_proto::ValueRef::Weight(w) => g.weights[w].shape.first().copied(),
            _ => None,
        })
        .unwrap_or(u32::MAX)
}

/// `(temperature, top_k, top_p, u)` for `Op::Sample`.
fn sampling_params(s: Sampling, position: u32) -> [f32; 4] {
    match s {
        Sampling::Greedy => [0.0, 0.0, 1.0, 0.0],
        Sampling::TopKP { temperature, top_k, top_p, seed } => {
            [temperature, top_k as f32, top_p, uniform(seed, position)]
        }
    }
}

/// A uniform draw in [0, 1) from `(seed, position)` (splitmix64): the same on every tab and
/// every replay.
pub fn uniform(seed: u64, position: u32) -> f32 {
    let mut z = seed ^ (position as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    // 24 bits: exactly representable in f32, so the value is < 1.
    (z >> 40) as f32 / (1u64 << 24) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(max_tokens: u32, max_sessions: u32) -> KvDecl {
        KvDecl { layers: 2, kv_heads: 1, head_dim: 4, max_tokens, max_sessions }
    }

    fn row(session: u64, tokens: &[u32]) -> StepRow {
        StepRow { session, tokens: tokens.to_vec(), sampling: Sampling::Greedy }
    }

    fn i32s(t: &Tensor) -> Vec<i32> {
        t.data.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap())).collect()
    }

    #[test]
    fn sessions_get_disjoint_ranges_and_freed_ranges_are_reused() {
        let mut s = Sessions::new(kv(100, 4));
        assert_eq!(s.open(1, 40).unwrap(), 40 * 2 * 2 * 4 * 4);
        s.open(2, 40).unwrap();
        let e = s.open(3, 40).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Capacity, "{}", e.message);
        assert!(s.close(1));
        s.open(3, 30).unwrap();
        s.open(4, 10).unwrap();
        let p = s.plan(&[row(3, &[5]), row(4, &[6]), row(2, &[7])], 10).unwrap();
        assert_eq!(i32s(&p.inputs[2]), vec![0, 30, 40], "first fit: 3 and 4 in 1's old range");
        s.open(5, 1).unwrap();
        assert_eq!(s.open(6, 1).unwrap_err().kind, ErrorKind::Capacity, "4 sessions is the limit");
        assert_eq!(s.open(2, 1).unwrap_err().kind, ErrorKind::BadInput, "already open");
        assert_eq!(s.open(9, 101).unwrap_err().kind, ErrorKind::Capacity);
    }

    #[test]
    fn a_step_lays_out_prompts_and_decodes_in_one_batch() {
        let mut s = Sessions::new(kv(64, 4));
        s.open(7, 16).unwrap();
        s.open(8, 16).unwrap();
        let p = s.plan(&[row(7, &[1, 2, 3])], 10).unwrap();
        s.commit(&p);
        let p = s.plan(&[row(8, &[4, 5]), row(7, &[9])], 10).unwrap();
        assert_eq!(i32s(&p.inputs[0]), vec![4, 5, 9]);
        assert_eq!(i32s(&p.inputs[1]), vec![0, 1, 3], "session 7 continues at position 3");
        assert_eq!(i32s(&p.inputs[2]), vec![16, 16, 0]);
        assert_eq!(i32s(&p.inputs[3]), vec![1, 2], "each session samples after its last token");
        assert_eq!(p.inputs[4].shape, vec![2, 4]);
        s.commit(&p);
        assert_eq!((s.length(7), s.length(8)), (Some(4), Some(2)));
    }

    #[test]
    fn bad_steps_are_refused_and_change_nothing() {
        let mut s = Sessions::new(kv(64, 4));
        s.open(1, 4).unwrap();
        assert_eq!(s.plan(&[row(2, &[1])], 10).err().unwrap().kind, ErrorKind::BadInput, "not open");
        assert_eq!(s.plan(&[row(1, &[1]), row(1, &[2])], 10).err().unwrap().kind, ErrorKind::BadInput, "twice");
        assert_eq!(s.plan(&[row(1, &[])], 10).err().unwrap().kind, ErrorKind::BadInput, "empty row");
        assert_eq!(s.plan(&[row(1, &[10])], 10).err().unwrap().kind, ErrorKind::BadInput, "outside the vocabulary");
        assert_eq!(s.plan(&[row(1, &[1; 5])], 10).err().unwrap().kind, ErrorKind::Capacity, "past capacity");
        assert_eq!(s.plan(&[], 10).err().unwrap().kind, ErrorKind::BadInput);
        assert_eq!(s.length(1), Some(0));
    }

    #[test]
    fn a_closed_session_is_a_prefix_the_next_one_copies() {
        let mut s = Sessions::new(kv(200, 4)).with_prefix_cache();
        let prompt: Vec<u32> = (0..30).collect();
        let o = s.open_reusing(1, 40, &prompt).unwrap();
        assert_eq!(o.copy, None, "nothing cached yet");
        let p = s.plan(&[row(1, &prompt)], 100).unwrap();
        s.commit(&p);
        let p = s.plan(&[row(1, &[77])], 100).unwrap();
        s.commit(&p);
        assert!(s.close(1));
        // The next turn: the whole first session (prompt and the token it fed back) and more.
        let mut turn: Vec<u32> = prompt.clone();
        turn.extend([77, 5, 6]);
        let o = s.open_reusing(2, 50, &turn).unwrap();
        assert_eq!(
            o.copy,
            Some(RowCopy { from: 0, to: 31, rows: 31 }),
            "the entry keeps rows 0..31 only: first fit after them"
        );
        assert_eq!(s.length(2), Some(31));
        let p = s.plan(&[row(2, &turn[31..])], 100).unwrap();
        assert_eq!(i32s(&p.inputs[1]), vec![31, 32], "positions go on after the copied prefix");
        s.commit(&p);
        // A session opened without its prompt neither reuses nor is kept.
        s.open(3, 40).unwrap();
        assert_eq!(s.length(3), Some(0));
        s.close(3);
        assert!(s.close(2));
        let (stats, entries, rows) = s.prefix_stats().unwrap();
        assert_eq!((stats.hits, stats.misses, stats.tokens_reused), (1, 1, 31));
        assert_eq!((entries, rows), (1, 33), "the second turn replaced the first");
    }

    #[test]
    fn cached_prefixes_give_way_to_sessions_and_a_failed_copy_rewinds() {
        let mut s = Sessions::new(kv(100, 4)).with_prefix_cache();
        let a: Vec<u32> = (0..20).collect();
        let b: Vec<u32> = (50..70).collect();
        for (id, p) in [(1, &a), (2, &b)] {
            s.open_reusing(id, 20, p).unwrap();
            let plan = s.plan(&[row(id, p)], 100).unwrap();
            s.commit(&plan);
            s.close(id);
        }
        assert_eq!(s.prefix_stats().unwrap().1, 2);
        // 70 rows: only one entry may stay, and it is the one this prompt shares.
        let mut longer = a.clone();
        longer.push(3);
        let o = s.open_reusing(3, 70, &longer).unwrap();
        assert_eq!(o.copy, Some(RowCopy { from: 0, to: 20, rows: 20 }));
        assert_eq!(s.prefix_stats().unwrap().1, 1, "b's rows were evicted, a's kept for the copy");
        s.rewind(3);
        assert_eq!(s.length(3), Some(0));
        // 90 rows: even the entry goes, and nothing is reused.
        s.close(3);
        let o = s.open_reusing(4, 100, &longer).unwrap();
        assert_eq!((o.copy, s.length(4)), (None, Some(0)));
        assert_eq!(s.prefix_stats().unwrap().1, 0);
    }

    #[test]
    fn draws_are_uniform_and_depend_on_seed_and_position_only() {
        assert_eq!(uniform(42, 7), uniform(42, 7));
        assert_ne!(uniform(42, 7), uniform(42, 8));
        assert_ne!(uniform(42, 7), uniform(43, 7));
        let n = 100_000;
        let draws: Vec<f32> = (0..n).map(|i| uniform(1, i)).collect();
        assert!(draws.iter().all(|&u| (0.0..1.0).contains(&u)));
        let mean = draws.iter().map(|&u| u as f64).sum::<f64>() / n as f64;
        assert!((mean - 0.5).abs() < 0.01, "mean {mean}");
        let low = draws.iter().filter(|&&u| u < 0.1).count() as f64 / n as f64;
        assert!((low - 0.1).abs() < 0.01, "P(u < 0.1) = {low}");
    }
}
