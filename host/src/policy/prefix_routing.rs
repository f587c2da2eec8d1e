//! Prefix-aware placement of generation streams: a stream goes to the replica whose prefix cache
//! most likely holds the longest start of its prompt (a chat's earlier turns, a shared system
//! prompt), unless that replica is busier than the least loaded by more than [`SLACK`] streams —
//! then load wins (the rule of SGLang's cache-aware router: a prefix saves one prefill, a queue
//! costs every token).
//!
//! What a replica holds is remembered here from what the pool ran there ([`PrefixHints`]): a
//! hint, not a promise — the tab evicts on its own, and its answer to `OpenSession` says what it
//! really reused.

use std::collections::VecDeque;

use page_runtime::prefix_cache::common_prefix;

/// A hint shorter than this is no reason to prefer a replica (the tab keeps no shorter prefix).
pub const MIN_PREFIX: usize = 16;
/// How many more streams than the least loaded replica a prefix may outweigh.
pub const SLACK: usize = 2;
/// Sequences remembered per replica.
const REMEMBERED: usize = 64;

/// The token sequences a replica's sessions held when they ended, most recent last.
#[derive(Debug, Default)]
pub struct PrefixHints {
    seqs: VecDeque<Vec<u32>>,
}

impl PrefixHints {
    /// A session on this replica ended holding `tokens` (its prompt and what it generated).
    pub fn remember(&mut self, tokens: Vec<u32>) {
        if tokens.len() < MIN_PREFIX {
            return;
        }
        // An earlier turn of the same conversation is covered by this one.
        self.seqs.retain(|s| !tokens.starts_with(s));
        if self.seqs.iter().any(|s| s.starts_with(&tokens)) {
            return;
        }
        self.seqs.push_back(tokens);
        while self.seqs.len() > REMEMBERED {
            self.seqs.pop_front();
        }
    }

    /// The longest start of `prompt` this replica was seen holding.
    pub fn longest(&self, prompt: &[u32]) -> usize {
        self.seqs.iter().map(|s| common_prefix(s, prompt)).max().unwrap_or(0)
    }
}

/// The prefix a replica is credited with for routing: its hinted prefix length, or 0 when it
/// is under [`MIN_PREFIX`] or the replica runs more than [`SLACK`] streams beyond `least` (the
/// fewest any candidate runs). Candidates sort by (credit descending, streams ascending).
pub fn credit(hinted: usize, streams: usize, least: usize) -> usize {
    if hinted >= MIN_PREFIX && streams <= least + SLACK { hinted } else { 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(from: u32, n: usize) -> Vec<u32> {
        (from..from + n as u32).collect()
    }

    #[test]
    fn hints_keep_the_latest_turn_and_measure_the_shared_start() {
        let mut h = PrefixHints::default();
        h.remember(seq(0, 30));
        h.remember(seq(0, 50));
        h.remember(seq(0, 40));
        h.remember(seq(100, 5));
        assert_eq!(h.seqs.len(), 1, "turns of one chat fold into the longest; short ones are not kept");
        let mut prompt = seq(0, 45);
        prompt.push(9);
        assert_eq!(h.longest(&prompt), 45);
        assert_eq!(h.longest(&seq(1, 45)), 0);
        for i in 0..100 {
            h.remember(seq(1000 * (i + 1), 20));
        }
        assert_eq!(h.seqs.len(), REMEMBERED);
        assert_eq!(h.longest(&prompt), 0, "the oldest were forgotten");
    }

    #[test]
    fn a_prefix_wins_only_within_the_load_slack() {
        let order = |c: &[(usize, usize)]| {
            let least = c.iter().map(|x| x.1).min().unwrap();
            let mut idx: Vec<usize> = (0..c.len()).collect();
            idx.sort_by_key(|&i| (std::cmp::Reverse(credit(c[i].0, c[i].1, least)), c[i].1));
            idx
        };
        // (hinted prefix, streams)
        assert_eq!(order(&[(0, 0), (150, 1)]), vec![1, 0], "the chat's replica, one stream busier");
        assert_eq!(order(&[(0, 0), (150, 3)]), vec![0, 1], "three busier: load wins");
        assert_eq!(order(&[(10, 1), (0, 0)]), vec![1, 0], "too short to matter");
        assert_eq!(order(&[(40, 2), (150, 2), (0, 0)]), vec![1, 0, 2], "the longest first");
    }
}
