//! Dynamic batching: how many queued requests to send as one batch now, or how long to wait for
//! more. A batch closes when it is full — `max_rows` texts, or `max_tokens` padded tokens (rows ×
//! the longest text: what the tab allocates, attention included) — or when its oldest request
//! has waited the budget. Requests bigger than one batch are cut into parts by [`split`] when
//! they are admitted, so no batch outgrows the limits (a WebNN tab fails to build attention past
//! 2 GiB; 700 texts of 256 tokens used to travel as one batch of 1 024 padded rows).

use std::ops::Range;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// Send the first `n` queued requests now.
    Now(usize),
    /// Nothing queued.
    Idle,
    /// Wait at most this long for more requests, then decide again.
    Wait(Duration),
}

/// How big one batch may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_rows: usize,
    /// Padded tokens: rows × the longest text's tokens.
    pub max_tokens: usize,
}

impl Limits {
    fn fits(&self, rows: usize, longest: usize) -> bool {
        rows <= self.max_rows.max(1) && rows * longest <= self.max_tokens
    }
}

/// `queued`: (texts, longest text in tokens) per queued request, oldest first. `oldest_waited`:
/// how long the first one has been queued.
pub fn decide(queued: &[(usize, usize)], limits: Limits, oldest_waited: Duration, budget: Duration) -> Take {
    if queued.is_empty() {
        return Take::Idle;
    }
    let (mut n, mut rows, mut longest) = (0, 0, 0);
    for &(r, l) in queued {
        if n > 0 && !limits.fits(rows + r, longest.max(l)) {
            // The next request does not fit: the batch is as full as it can get.
            return Take::Now(n);
        }
        n += 1;
        rows += r;
        longest = longest.max(l);
        if rows >= limits.max_rows.max(1) || rows * longest >= limits.max_tokens {
            return Take::Now(n);
        }
    }
    if oldest_waited >= budget { Take::Now(n) } else { Take::Wait(budget - oldest_waited) }
}

/// Cut one request's texts (token counts `lens`, in order) into consecutive parts that each fit
/// one batch. A single text longer than `max_tokens` forms a part alone (the pool refuses such a
/// configuration at load, see `PoolConfig::max_batch_tokens`).
pub fn split(lens: &[usize], limits: Limits) -> Vec<Range<usize>> {
    let mut parts = Vec::new();
    let (mut start, mut longest) = (0, 0);
    for (i, &l) in lens.iter().enumerate() {
        if i > start && !limits.fits(i - start + 1, longest.max(l)) {
            parts.push(start..i);
            (start, longest) = (i, 0);
        }
        longest = longest.max(l);
    }
    if start < lens.len() {
        parts.push(start..lens.len());
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const L: Limits = Limits { max_rows: 32, max_tokens: 8192 };

    fn short(rows: &[usize]) -> Vec<(usize, usize)> {
        rows.iter().map(|&r| (r, 16)).collect()
    }

    #[test]
    fn nothing_queued_is_idle() {
        assert_eq!(decide(&[], L, Duration::ZERO, 5 * MS), Take::Idle);
    }

    #[test]
    fn a_full_batch_goes_at_once() {
        assert_eq!(decide(&short(&[1; 40]), L, Duration::ZERO, 5 * MS), Take::Now(32));
        assert_eq!(decide(&short(&[16, 16, 1]), L, Duration::ZERO, 5 * MS), Take::Now(2));
    }

    #[test]
    fn a_partial_batch_waits_for_the_budget_then_goes() {
        assert_eq!(decide(&short(&[1, 1, 1]), L, 2 * MS, 5 * MS), Take::Wait(3 * MS));
        assert_eq!(decide(&short(&[1, 1, 1]), L, 5 * MS, 5 * MS), Take::Now(3));
        assert_eq!(decide(&short(&[1]), L, Duration::ZERO, Duration::ZERO), Take::Now(1));
    }

    #[test]
    fn never_splits_a_request_and_oversized_ones_go_alone() {
        assert_eq!(decide(&short(&[20, 20]), L, Duration::ZERO, 5 * MS), Take::Now(1));
        assert_eq!(decide(&short(&[100, 1]), L, Duration::ZERO, 5 * MS), Take::Now(1));
        assert_eq!(decide(&short(&[1, 100]), L, Duration::ZERO, 5 * MS), Take::Now(1));
    }

    #[test]
    fn padded_tokens_close_a_batch_too() {
        let l = Limits { max_rows: 128, max_tokens: 1024 };
        // 4 texts of 256 tokens fill 1024 padded tokens: full, go now.
        assert_eq!(decide(&[(2, 256), (2, 256), (1, 8)], l, Duration::ZERO, 5 * MS), Take::Now(2));
        // A long text joining short ones pads them all: 4 rows × 256 = 1024 still fits.
        assert_eq!(decide(&[(3, 8), (1, 256), (1, 8)], l, Duration::ZERO, 5 * MS), Take::Now(2));
        // 5 rows would pad to 5 × 256 = 1280 > 1024: the long one waits for the next batch.
        assert_eq!(decide(&[(5, 8), (1, 256)], l, Duration::ZERO, 5 * MS), Take::Now(1));
    }

    #[test]
    fn split_keeps_order_and_every_part_fits() {
        // 700 texts of 256 tokens (the request that took a WebNN tab down) at the defaults.
        let lens = vec![256; 700];
        let parts = split(&lens, L);
        assert_eq!(parts.len(), 22, "32 rows × 256 tokens = 8192 per part");
        assert_eq!(parts[0], 0..32);
        assert_eq!(parts[21], 672..700);
        assert!(parts.windows(2).all(|w| w[0].end == w[1].start));
        // Mixed lengths: each part within both limits, counted with its longest text.
        let lens: Vec<usize> = (0..500).map(|i| [4, 40, 256, 17, 128][i % 5]).collect();
        let l = Limits { max_rows: 64, max_tokens: 4096 };
        let parts = split(&lens, l);
        assert_eq!(parts.iter().map(|p| p.len()).sum::<usize>(), 500);
        for p in &parts {
            let longest = lens[p.clone()].iter().max().unwrap();
            assert!(p.len() <= 64 && p.len() * longest <= 4096, "{p:?}");
        }
        // Small requests stay whole; a text above the token limit goes alone.
        assert_eq!(split(&[10, 12], L), vec![0..2]);
        assert_eq!(split(&[10, 9000, 10], L), vec![0..1, 1..2, 2..3]);
        assert!(split(&[], L).is_empty());
    }
}
