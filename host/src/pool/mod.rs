//! A pool of MiniLM replicas, each in its own tab (any browser kind), with a bounded number of
//! requests in the system: past `max_pending` a request is refused as busy at once instead of
//! queueing without bound. Each request goes to the least-loaded replica and may carry a deadline.
//!
//! Groundwork for issue 5: no adaptive scaling, history-based routing or config file yet.

use std::sync::atomic::{AtomicUsize, Ordering};

use thiserror::Error;

use crate::Host;
use crate::browser::BrowserKind;
use crate::exec::{Backend, Embedder, Embeddings};
use crate::policy::routing::least_loaded;

#[derive(Debug, Error)]
pub enum PoolError {
    #[error("busy: {pending} requests pending (limit {limit}); retry later")]
    Busy { pending: usize, limit: usize },
    #[error("deadline of {after:?} passed before the result arrived")]
    Deadline { after: std::time::Duration },
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

struct Replica {
    embedder: Embedder,
    in_flight: AtomicUsize,
}

pub struct EmbedPool {
    replicas: Vec<Replica>,
    pending: AtomicUsize,
    max_pending: usize,
}

/// Counts a request as pending until dropped, whatever way the request ends.
struct Ticket<'a>(&'a AtomicUsize);

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl EmbedPool {
    /// One replica per entry of `tabs`: a tab of that browser kind running that backend.
    pub async fn start(
        host: &mut Host,
        tabs: &[(BrowserKind, Backend)],
        max_pending: usize,
    ) -> anyhow::Result<EmbedPool> {
        anyhow::ensure!(!tabs.is_empty(), "a pool needs at least one tab");
        let mut replicas = Vec::with_capacity(tabs.len());
        for &(kind, backend) in tabs {
            let embedder = Embedder::load_in(host, kind, backend, &()).await?;
            replicas.push(Replica { embedder, in_flight: AtomicUsize::new(0) });
        }
        Ok(EmbedPool { replicas, pending: AtomicUsize::new(0), max_pending: max_pending.max(1) })
    }

    pub fn replicas(&self) -> usize {
        self.replicas.len()
    }

    /// (browser kind, backend) of each replica.
    pub fn placement(&self) -> Vec<(Option<BrowserKind>, String)> {
        self.replicas.iter().map(|r| (r.embedder.load.browser, r.embedder.load.backend.clone())).collect()
    }

    /// Embed `texts` on the least-loaded replica, or refuse at once when the pool is full.
    pub async fn embed(&self, texts: &[&str]) -> Result<Embeddings, PoolError> {
        let pending = self.pending.fetch_add(1, Ordering::SeqCst);
        let _ticket = Ticket(&self.pending);
        if pending >= self.max_pending {
            return Err(PoolError::Busy { pending, limit: self.max_pending });
        }
        let loads: Vec<usize> = self.replicas.iter().map(|r| r.in_flight.load(Ordering::SeqCst)).collect();
        let r = &self.replicas[least_loaded(&loads)];
        r.in_flight.fetch_add(1, Ordering::SeqCst);
        let _busy = Ticket(&r.in_flight);
        Ok(r.embedder.embed(texts).await?)
    }

    /// As [`Self::embed`], failing with `Deadline` if no result arrives within `deadline`. The tab
    /// may still finish the work; its late reply is dropped and never reaches another request.
    pub async fn embed_within(&self, texts: &[&str], deadline: std::time::Duration) -> Result<Embeddings, PoolError> {
        tokio::time::timeout(deadline, self.embed(texts)).await.unwrap_or(Err(PoolError::Deadline { after: deadline }))
    }

    /// Run every request at once across the pool; results come back in request order.
    pub async fn execute_concurrent(&self, requests: &[Vec<&str>]) -> Vec<Result<Embeddings, PoolError>> {
        futures_util::future::join_all(requests.iter().map(|texts| self.embed(texts))).await
    }
}
