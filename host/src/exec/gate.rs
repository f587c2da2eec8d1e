//! Who goes first when tabs share a machine's cores: short requests (a batch of embeddings or
//! images) before the next call of a long stream (a generation step, a transcription's encoder
//! window or decoder step). A stream awaits `yield_to_pending` before each call; while any short
//! request is queued or running it waits — at most `max_defer` per call, so a stream is slowed
//! under a flood of short requests but never stopped. Without it the CPU is shared call by call
//! and an embedding in a busy mix waited for many stream calls (measured by `bench multimodal`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

pub struct Gate {
    pending: AtomicUsize,
    idle: Notify,
    max_defer: Duration,
}

/// A short request in the pool; dropping it ends its claim to go first.
pub struct Ticket(Arc<Gate>);

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.0.pending.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Gate {
    pub fn new(max_defer: Duration) -> Arc<Gate> {
        Arc::new(Gate { pending: AtomicUsize::new(0), idle: Notify::new(), max_defer })
    }

    /// A short request is pending until the ticket drops.
    pub fn enter(self: &Arc<Self>) -> Ticket {
        self.pending.fetch_add(1, Ordering::SeqCst);
        Ticket(self.clone())
    }

    /// Short requests pending now.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::SeqCst)
    }

    /// Before a long stream's call: wait while short requests are pending, at most `max_defer`.
    pub async fn yield_to_pending(&self) {
        let until = Instant::now() + self.max_defer;
        while self.pending() > 0 {
            let idle = self.idle.notified();
            if self.pending() == 0 {
                return;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() || tokio::time::timeout(left, idle).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_stream_waits_for_short_requests_but_never_longer_than_the_bound() {
        let g = Gate::new(Duration::from_millis(250));
        let t0 = tokio::time::Instant::now();
        g.yield_to_pending().await;
        assert_eq!(t0.elapsed(), Duration::ZERO, "nothing pending: no wait");
        let ticket = g.enter();
        let g2 = g.clone();
        let released = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            drop(ticket);
            let _ = &g2;
        });
        g.yield_to_pending().await;
        assert_eq!(t0.elapsed(), Duration::from_millis(100), "released when the short request ends");
        released.await.unwrap();
        let _held = g.enter();
        let t1 = tokio::time::Instant::now();
        g.yield_to_pending().await;
        assert_eq!(t1.elapsed(), Duration::from_millis(250), "a request that never ends: the bound");
    }
}
