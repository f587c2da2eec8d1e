//! The prefix cache of one stateful model in a tab: KV rows of closed sessions, kept so that a
//! new session whose prompt starts with the same tokens (a system prompt, a chat's history)
//! copies them instead of computing them again — vLLM's automatic prefix caching, with the
//! whole-session granularity this tab's allocator has (one contiguous range per session).
//!
//! Pure bookkeeping (which rows hold which tokens, which entry to evict); `Sessions` owns the
//! row allocator and the executors copy the rows. Entries are matched by exact token comparison
//! (longest common prefix), not by a hash of it: there are few entries, a comparison is a
//! memcmp, and a hash collision would silently serve another prompt's keys.

/// Prefixes shorter than this are not worth a copy (and not kept).
pub const MIN_PREFIX: usize = 16;
/// Entries kept at most, whatever their rows.
pub const MAX_ENTRIES: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    /// First KV row; the entry holds rows `start..start + tokens.len()`.
    start: u32,
    tokens: Vec<u32>,
    /// Logical clock of the last use (kept or copied from): least recently used goes first.
    used: u64,
}

/// What the cache did so far (for the tab's status and tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrefixStats {
    pub hits: u64,
    pub misses: u64,
    pub tokens_reused: u64,
    pub evictions: u64,
}

#[derive(Debug)]
pub struct PrefixCache {
    entries: Vec<Entry>,
    /// Rows all entries may hold together (a share of the model's KV cache).
    budget_rows: u32,
    clock: u64,
    pub stats: PrefixStats,
}

impl PrefixCache {
    pub fn new(budget_rows: u32) -> PrefixCache {
        PrefixCache { entries: Vec::new(), budget_rows, clock: 0, stats: PrefixStats::default() }
    }

    /// Row ranges `(start, end)` the entries occupy: not free for new sessions.
    pub fn ranges(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.entries.iter().map(|e| (e.start, e.start + e.tokens.len() as u32))
    }

    pub fn rows(&self) -> u32 {
        self.entries.iter().map(|e| e.tokens.len() as u32).sum()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry sharing the longest prefix with `prompt`: `(its first row, tokens to reuse)`.
    /// At most `prompt.len() − 1` tokens are reused — the last prompt token must still be
    /// stepped, since its logits give the first sampled token — and at least [`MIN_PREFIX`].
    pub fn best(&self, prompt: &[u32]) -> Option<(u32, u32)> {
        let cap = prompt.len().saturating_sub(1);
        self.entries
            .iter()
            .map(|e| (common_prefix(&e.tokens, prompt).min(cap), e.used, e.start))
            .filter(|&(n, _, _)| n >= MIN_PREFIX)
            // Longest first; among equals the most recently used (it will stay longest).
            .max_by_key(|&(n, used, _)| (n, used))
            .map(|(n, _, start)| (start, n as u32))
    }

    /// Count a lookup; on a hit, mark the entry at `start` used.
    pub fn record(&mut self, hit: Option<(u32, u32)>) {
        match hit {
            Some((start, n)) => {
                self.stats.hits += 1;
                self.stats.tokens_reused += n as u64;
                self.clock += 1;
                let clock = self.clock;
                if let Some(e) = self.entries.iter_mut().find(|e| e.start == start) {
                    e.used = clock;
                }
            }
            None => self.stats.misses += 1,
        }
    }

    /// Keep rows `start..start + tokens.len()` (a closing session's) as an entry. False when they
    /// are not worth keeping — too short, covered by an entry already, or over the budget alone —
    /// and the caller frees the rows. An entry the new one covers (a prefix of it: the previous
    /// turn of the same chat) is dropped, its rows freed; so are the least recently used beyond
    /// the budget.
    pub fn keep(&mut self, start: u32, tokens: Vec<u32>) -> bool {
        if tokens.len() < MIN_PREFIX || tokens.len() as u32 > self.budget_rows {
            return false;
        }
        if self.entries.iter().any(|e| common_prefix(&e.tokens, &tokens) == tokens.len()) {
            return false;
        }
        self.entries.retain(|e| common_prefix(&e.tokens, &tokens) < e.tokens.len());
        self.clock += 1;
        self.entries.push(Entry { start, tokens, used: self.clock });
        while self.rows() > self.budget_rows || self.entries.len() > MAX_ENTRIES {
            self.evict_lru(None);
        }
        true
    }

    /// Drop the least recently used entry other than the one at `keep`; false if none is left.
    pub fn evict_lru(&mut self, keep: Option<u32>) -> bool {
        let lru = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| Some(e.start) != keep)
            .min_by_key(|(_, e)| e.used)
            .map(|(i, _)| i);
        match lru {
            Some(i) => {
                self.entries.swap_remove(i);
                self.stats.evictions += 1;
                true
            }
            None => false,
        }
    }

    /// Forget every entry (the model's cache memory was lost or replaced).
    pub fn clear(&mut self) {
        self.entries.clear();
    }
}

/// Length of the longest common prefix of `a` and `b`.
pub fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(from: u32, n: usize) -> Vec<u32> {
        (from..from + n as u32).collect()
    }

    #[test]
    fn the_longest_shared_prefix_wins_and_the_last_prompt_token_is_always_stepped() {
        let mut c = PrefixCache::new(1000);
        assert!(c.keep(0, seq(0, 40)));
        let mut other = seq(0, 20);
        other.extend(seq(500, 30));
        assert!(c.keep(100, other));
        let mut prompt = seq(0, 30);
        prompt.push(7);
        assert_eq!(c.best(&prompt), Some((0, 30)), "30 tokens shared with the first, 20 with the second");
        assert_eq!(c.best(&seq(0, 40)), Some((0, 39)), "a prompt equal to an entry still steps its last token");
        assert_eq!(c.best(&seq(0, 10)), None, "below MIN_PREFIX");
        assert_eq!(c.best(&seq(1, 40)), None);
    }

    #[test]
    fn a_later_turn_replaces_the_earlier_one_and_duplicates_are_not_kept() {
        let mut c = PrefixCache::new(1000);
        assert!(c.keep(0, seq(0, 20)));
        assert!(c.keep(50, seq(0, 35)), "the next turn of the same chat");
        assert_eq!(c.ranges().collect::<Vec<_>>(), vec![(50, 85)], "its first turn is covered and dropped");
        assert!(!c.keep(200, seq(0, 30)), "covered by the entry at 50");
        assert!(!c.keep(200, seq(0, 5)), "too short");
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn entries_beyond_the_budget_go_least_recently_used_first() {
        let mut c = PrefixCache::new(100);
        assert!(c.keep(0, seq(0, 40)));
        assert!(c.keep(40, seq(1000, 40)));
        c.record(c.best(&seq(0, 41)));
        assert!(c.keep(80, seq(2000, 40)), "over the budget: one must go");
        let starts: Vec<u32> = c.ranges().map(|r| r.0).collect();
        assert!(starts.contains(&0) && starts.contains(&80) && !starts.contains(&40), "{starts:?}");
        assert!(!c.keep(200, seq(3000, 101)), "larger than the whole budget");
        assert_eq!(c.stats, PrefixStats { hits: 1, misses: 0, tokens_reused: 40, evictions: 1 });
        assert!(c.evict_lru(Some(0)));
        assert_eq!(c.ranges().collect::<Vec<_>>(), vec![(0, 40)]);
        assert!(!c.evict_lru(Some(0)), "the protected entry stays");
    }
}
