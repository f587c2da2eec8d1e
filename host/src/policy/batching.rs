//! Dynamic batching: how many queued requests to send as one batch now, or how long to wait for
//! more. A batch closes when it is full (`max_rows` texts) or when its oldest request has waited
//! the budget; a request larger than `max_rows` travels alone rather than never.

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

/// `rows`: texts per queued request, oldest first. `oldest_waited`: how long the first one has
/// been queued.
pub fn decide(rows: &[usize], max_rows: usize, oldest_waited: Duration, budget: Duration) -> Take {
    if rows.is_empty() {
        return Take::Idle;
    }
    let max_rows = max_rows.max(1);
    let mut n = 0;
    let mut total = 0;
    for &r in rows {
        if n > 0 && total + r > max_rows {
            // The next request does not fit: the batch is as full as it can get.
            return Take::Now(n);
        }
        n += 1;
        total += r;
        if total >= max_rows {
            return Take::Now(n);
        }
    }
    if oldest_waited >= budget { Take::Now(n) } else { Take::Wait(budget - oldest_waited) }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn nothing_queued_is_idle() {
        assert_eq!(decide(&[], 32, Duration::ZERO, 5 * MS), Take::Idle);
    }

    #[test]
    fn a_full_batch_goes_at_once() {
        assert_eq!(decide(&[1; 40], 32, Duration::ZERO, 5 * MS), Take::Now(32));
        assert_eq!(decide(&[16, 16, 1], 32, Duration::ZERO, 5 * MS), Take::Now(2));
    }

    #[test]
    fn a_partial_batch_waits_for_the_budget_then_goes() {
        assert_eq!(decide(&[1, 1, 1], 32, 2 * MS, 5 * MS), Take::Wait(3 * MS));
        assert_eq!(decide(&[1, 1, 1], 32, 5 * MS, 5 * MS), Take::Now(3));
        assert_eq!(decide(&[1], 32, Duration::ZERO, Duration::ZERO), Take::Now(1));
    }

    #[test]
    fn never_splits_a_request_and_oversized_ones_go_alone() {
        assert_eq!(decide(&[20, 20], 32, Duration::ZERO, 5 * MS), Take::Now(1));
        assert_eq!(decide(&[100, 1], 32, Duration::ZERO, 5 * MS), Take::Now(1));
        assert_eq!(decide(&[1, 100], 32, Duration::ZERO, 5 * MS), Take::Now(1));
    }
}
