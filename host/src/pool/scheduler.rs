//! Admission, batching and dispatch for one model.
//!
//! `submit` tokenises on the caller's task (bad input fails there, alone), then admits the
//! request to the model's queue or refuses it as busy. One batcher task per model closes a batch
//! by `policy::batching`, picks a replica by `policy::routing::dispatch` (the free replica that
//! finishes soonest, unless a busy faster one would; ties by routing rank), and runs it on its own
//! task. A tab that fails mid-batch gives its requests back to the front of the queue
//! (bounded attempts) for another replica; every request gets exactly one answer.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::state::{Job, ModelEntry, Replica, Shared};
use super::{MAX_TEXTS_PER_REQUEST, PoolError, Served};
use crate::TabError;
use crate::models::minilm;
use crate::policy::batching::{self, Take};
use crate::policy::routing::{self, Candidate, History, ReplicaLoad};

/// Queued requests fail after this long without any replica (all tabs lost and none replaced).
const NO_REPLICA_WAIT: Duration = Duration::from_secs(120);

pub(crate) async fn submit(
    shared: &Arc<Shared>,
    m: &Arc<ModelEntry>,
    texts: &[&str],
    deadline: Option<Duration>,
) -> Result<Served, PoolError> {
    if shared.closed.load(Ordering::SeqCst) {
        return Err(PoolError::ShutDown);
    }
    if texts.is_empty() {
        return Err(PoolError::BadInput("no texts to embed".into()));
    }
    if texts.len() > MAX_TEXTS_PER_REQUEST {
        return Err(PoolError::BadInput(format!(
            "{} texts in one request; the limit is {MAX_TEXTS_PER_REQUEST} (split it)",
            texts.len()
        )));
    }
    let (ids, truncated) = m.model.tokenize(texts).map_err(|e| PoolError::BadInput(format!("{e:#}")))?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let now = Instant::now();
    {
        let mut q = m.queue.lock().expect("queue");
        if q.len() >= shared.cfg.max_queue {
            m.busy.fetch_add(1, Ordering::Relaxed);
            return Err(PoolError::Busy { model: m.name.clone(), queued: q.len(), limit: shared.cfg.max_queue });
        }
        q.push_back(Job { ids, truncated, enqueued: now, deadline: deadline.map(|d| now + d), attempts: 0, reply: tx });
    }
    m.wake.notify_one();
    let answer = match deadline {
        Some(d) => match tokio::time::timeout(d, rx).await {
            Ok(a) => a,
            Err(_) => return Err(PoolError::Deadline { after: d }),
        },
        None => rx.await,
    };
    answer.unwrap_or(Err(PoolError::ShutDown))
}

/// The batcher of one model; runs until the pool shuts down.
pub(crate) async fn run(shared: Arc<Shared>, m: Arc<ModelEntry>) {
    let budget = Duration::from_millis(shared.cfg.batch_wait_ms);
    loop {
        if shared.closed.load(Ordering::SeqCst) {
            return;
        }
        expire(&m);
        let (rows, oldest) = {
            let q = m.queue.lock().expect("queue");
            (q.iter().map(|j| j.ids.len()).collect::<Vec<_>>(), q.front().map(|j| j.enqueued.elapsed()))
        };
        let Some(oldest) = oldest else {
            // Idle; wake for new work, and now and then to expire deadlines.
            let _ = tokio::time::timeout(Duration::from_secs(1), m.wake.notified()).await;
            continue;
        };
        let n = match batching::decide(&rows, shared.cfg.max_batch, oldest, budget) {
            Take::Idle => continue,
            Take::Wait(d) => {
                let _ = tokio::time::timeout(d, m.wake.notified()).await;
                continue;
            }
            Take::Now(n) => n,
        };
        if oldest > NO_REPLICA_WAIT && m.replicas.lock().expect("replicas").iter().all(|r| !r.slot.usable()) {
            let jobs: Vec<Job> = m.queue.lock().expect("queue").drain(..).collect();
            for job in jobs {
                m.failed.fetch_add(1, Ordering::Relaxed);
                let message = format!("no tab could take {} for {NO_REPLICA_WAIT:?}", m.name);
                let _ = job.reply.send(Err(PoolError::Failed { attempts: job.attempts, message }));
            }
            continue;
        }
        let batch_rows: usize = rows.iter().take(n).sum();
        let Some(replica) = reserve(&shared, &m, batch_rows, rows.iter().sum()) else {
            // Every replica busy (or none yet): requests keep queueing, so the next batch is fuller.
            let _ = tokio::time::timeout(Duration::from_millis(50), m.wake.notified()).await;
            continue;
        };
        let jobs: Vec<Job> = {
            let mut q = m.queue.lock().expect("queue");
            let n = n.min(q.len());
            q.drain(..n).collect()
        };
        if jobs.is_empty() {
            replica.slot.release();
            continue;
        }
        {
            let mut waits = shared.waits.lock().expect("waits");
            for j in &jobs {
                waits.push_back((Instant::now(), j.enqueued.elapsed()));
            }
        }
        tokio::spawn(execute(shared.clone(), m.clone(), replica, jobs));
    }
}

/// Answer requests whose deadline passed while queued; they are never run.
fn expire(m: &ModelEntry) {
    let now = Instant::now();
    let mut q = m.queue.lock().expect("queue");
    let mut kept = std::collections::VecDeque::with_capacity(q.len());
    for job in q.drain(..) {
        match job.deadline {
            Some(d) if d <= now => {
                let after = d - job.enqueued;
                let _ = job.reply.send(Err(PoolError::Deadline { after }));
            }
            _ => kept.push_back(job),
        }
    }
    *q = kept;
}

/// A replica of `m` for a batch of `rows` texts (`queued_rows` waiting in all), reserved; `None`
/// when none is free or a busy one would finish sooner (`policy::routing::dispatch`). Costs per
/// text come from measured history, else from the replica's calibration.
fn reserve(shared: &Shared, m: &ModelEntry, rows: usize, queued_rows: usize) -> Option<Arc<Replica>> {
    let replicas: Vec<Arc<Replica>> =
        m.replicas.lock().expect("replicas").iter().filter(|r| r.slot.usable()).cloned().collect();
    if replicas.is_empty() {
        return None;
    }
    let limit = shared.cfg.in_flight_per_tab;
    let (rank, loads) = {
        let history = shared.history.lock().expect("history");
        let measured: Vec<History> = replicas
            .iter()
            .map(|r| {
                history.get(&(m.name.clone(), r.slot.kind.name.clone(), r.backend.clone())).copied().unwrap_or_default()
            })
            .collect();
        let candidates: Vec<Candidate> = replicas
            .iter()
            .zip(&measured)
            .map(|(r, h)| Candidate {
                kind: r.slot.kind.browser.name().into(),
                backend: r.backend.clone(),
                history: *h,
            })
            .collect();
        let rank = routing::rank(m.model_type, &candidates, shared.cfg.min_samples);
        let loads: Vec<ReplicaLoad> = replicas
            .iter()
            .zip(&measured)
            .map(|(r, h)| {
                let ms_per_text = if h.successes > 0 {
                    Some(h.mean_latency_ms)
                } else {
                    r.calibration.iter().find(|c| c.backend == r.backend).and_then(|c| c.median_ms)
                };
                let busy_remaining_ms = match *r.slot.running.lock().expect("slot") {
                    Some((since, n)) => {
                        (n as f64 * ms_per_text.unwrap_or(0.0) - since.elapsed().as_secs_f64() * 1e3).max(0.0)
                    }
                    None => 0.0,
                };
                ReplicaLoad { free: r.slot.in_flight.load(Ordering::SeqCst) < limit, ms_per_text, busy_remaining_ms }
            })
            .collect();
        (rank, loads)
    };
    let chosen = &replicas[routing::dispatch(&loads, &rank, rows, queued_rows)?];
    if !chosen.slot.try_reserve(limit) {
        return None; // another model's batcher took it first; look again
    }
    *chosen.slot.running.lock().expect("slot") = Some((Instant::now(), rows));
    Some(chosen.clone())
}

async fn execute(shared: Arc<Shared>, m: Arc<ModelEntry>, r: Arc<Replica>, jobs: Vec<Job>) {
    let ids: Vec<Vec<u32>> = jobs.iter().flat_map(|j| j.ids.iter().cloned()).collect();
    let rows = ids.len();
    let inputs = minilm::inputs_from_ids(&ids);
    let t = Instant::now();
    let result = r.tm.run(inputs).await.and_then(|(outputs, _)| {
        let flat =
            outputs.first().and_then(|t| t.to_f32()).ok_or_else(|| anyhow::anyhow!("model returned no f32 output"))?;
        anyhow::ensure!(flat.len() == rows * m.model.hidden, "model returned {} values for {rows} texts", flat.len());
        Ok(flat)
    });
    let run_ms = t.elapsed().as_secs_f64() * 1e3;
    r.slot.release();
    r.slot.batches.fetch_add(1, Ordering::Relaxed);
    match result {
        Ok(flat) => {
            r.slot.rows.fetch_add(rows as u64, Ordering::Relaxed);
            shared.record(&m.name, &r.slot.kind.name, &r.backend, true, run_ms / rows as f64);
            let mut vectors = flat.chunks_exact(m.model.hidden).map(<[f32]>::to_vec);
            for job in jobs {
                let n = job.ids.len();
                let served = Served {
                    model: m.name.clone(),
                    vectors: vectors.by_ref().take(n).collect(),
                    lengths: job.ids.iter().map(Vec::len).collect(),
                    truncated: job.truncated,
                    tab: r.slot.id,
                    kind: r.slot.kind.name.clone(),
                    backend: r.backend.clone(),
                    batch_rows: rows,
                    queue_ms: (t - job.enqueued).as_secs_f64() * 1e3,
                    run_ms,
                    attempts: job.attempts + 1,
                };
                m.served.fetch_add(1, Ordering::Relaxed);
                let _ = job.reply.send(Ok(served));
            }
        }
        Err(e) => {
            shared.record(&m.name, &r.slot.kind.name, &r.backend, false, 0.0);
            let tab_lost = matches!(e.downcast_ref::<TabError>(), Some(TabError::Closed(_) | TabError::Timeout { .. }))
                || !r.slot.tab.is_connected();
            if tab_lost {
                // Routing stops using it at once; the scaler closes it and refills to min_tabs.
                m.replicas.lock().expect("replicas").retain(|x| !Arc::ptr_eq(x, &r));
            }
            let message = format!("{e:#}");
            tracing::warn!(model = m.name, tab = r.slot.id, "batch of {rows} failed: {message}");
            let mut again = Vec::new();
            for mut job in jobs {
                job.attempts += 1;
                if tab_lost && job.attempts <= shared.cfg.retries {
                    m.retried.fetch_add(1, Ordering::Relaxed);
                    again.push(job);
                } else {
                    m.failed.fetch_add(1, Ordering::Relaxed);
                    let _ = job.reply.send(Err(PoolError::Failed { attempts: job.attempts, message: message.clone() }));
                }
            }
            let mut q = m.queue.lock().expect("queue");
            for job in again.into_iter().rev() {
                q.push_front(job);
            }
        }
    }
    shared.wake_all();
}
