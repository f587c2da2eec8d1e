//! Admission, batching and dispatch for one model.
//!
//! `submit` tokenises on the caller's task (bad input fails there, alone), then admits the
//! request to the model's queue or refuses it as busy. One batcher task per model closes a batch
//! by `policy::batching`, picks a replica by `policy::routing::dispatch` (the free replica that
//! finishes soonest, unless a busy faster one would; ties by routing rank), and runs it on its own
//! task. A tab that fails mid-batch gives its requests back to the front of the queue
//! (bounded attempts) for another replica; every request gets exactly one answer.

use std::sync::Arc;

use anyhow::Context;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::breakers;
use super::hedge;
use super::lending;
use super::state::{Job, ModelEntry, Replica, Shared};
use super::{MAX_TEXTS_PER_REQUEST, PoolError, Served};
use crate::TabError;
use crate::family::{self, Input, PrepareError, Prepared};
use crate::policy::batching::{self, Take};
use crate::policy::breaker::Outcome;
use crate::policy::recovery::{self, Category, RequestStep, TabStep};
use crate::policy::routing::{self, Candidate, History, ReplicaLoad};
use crate::store::Record;
use shared_proto::Tensor;

/// Queued requests fail after this long without any replica (all tabs lost and none replaced).
const NO_REPLICA_WAIT: Duration = Duration::from_secs(120);

pub(crate) async fn submit(
    shared: &Arc<Shared>,
    m: &Arc<ModelEntry>,
    input: Input,
    deadline: Option<Duration>,
    group: Option<u64>,
) -> Result<Served, PoolError> {
    if shared.closed.load(Ordering::SeqCst) {
        return Err(PoolError::ShutDown);
    }
    if input.is_empty() {
        return Err(PoolError::BadInput("no inputs in the request".into()));
    }
    check_count(input.len())?;
    let model = m.batch_model()?.clone();
    // Preparing (tokenising up to 2 MiB of text, decoding images) takes a while: on a blocking
    // thread, so the runtime's workers keep serving tab sockets (heartbeats) and other clients.
    let prepared = tokio::task::spawn_blocking(move || model.prepare(input))
        .await
        .map_err(|e| PoolError::Failed { attempts: 0, message: format!("preparing the input failed: {e}") })?
        .map_err(|e| match e {
            PrepareError::BadInput(m) => PoolError::BadInput(m),
            PrepareError::TooLarge(m) => PoolError::TooLarge(m),
        })?;
    submit_rows(shared, m, prepared, deadline, group).await
}

/// Refuse a request with more inputs than one request may carry.
pub(crate) fn check_count(n: usize) -> Result<(), PoolError> {
    if n > MAX_TEXTS_PER_REQUEST {
        return Err(PoolError::TooLarge(format!(
            "{n} texts in one request; the limit is {MAX_TEXTS_PER_REQUEST} texts (split the request)"
        )));
    }
    Ok(())
}

/// As `submit`, for rows already prepared.
async fn submit_rows(
    shared: &Arc<Shared>,
    m: &Arc<ModelEntry>,
    prepared: Prepared,
    deadline: Option<Duration>,
    group: Option<u64>,
) -> Result<Served, PoolError> {
    let Prepared { rows, lens, truncated } = prepared;
    if rows.is_empty() {
        return Err(PoolError::BadInput("no inputs in the request".into()));
    }
    check_count(rows.len())?;
    // A request bigger than one batch travels as several (each within max_batch rows and
    // max_batch_tokens padded tokens), admitted together and answered as one.
    let parts = batching::split(&lens, batch_limits(shared));
    if parts.len() > shared.cfg.max_queue {
        // More batches than the queue ever holds: waiting cannot help (429 would invite retries).
        return Err(PoolError::TooLarge(format!(
            "this request needs {} batches (max_batch {}, max_batch_tokens {}); the queue holds at most {} \
             (max_queue): split it",
            parts.len(),
            shared.cfg.max_batch,
            shared.cfg.max_batch_tokens,
            shared.cfg.max_queue
        )));
    }
    let now = Instant::now();
    let mut answers = Vec::with_capacity(parts.len());
    {
        let mut q = m.queue.lock().expect("queue");
        // Under the queue's lock: shutdown sets `closed` before it drains, so this request is
        // either drained (and answered) or refused here; it is never left in a dead queue.
        if shared.closed.load(Ordering::SeqCst) {
            return Err(PoolError::ShutDown);
        }
        if q.len() + parts.len() > shared.cfg.max_queue {
            m.busy.fetch_add(1, Ordering::Relaxed);
            return Err(PoolError::Busy { model: m.name.clone(), queued: q.len(), limit: shared.cfg.max_queue });
        }
        for part in parts {
            let (tx, rx) = tokio::sync::oneshot::channel();
            q.push_back(Job {
                rows: rows[part.clone()].to_vec(),
                lens: lens[part.clone()].to_vec(),
                truncated: truncated[part].to_vec(),
                enqueued: now,
                deadline: deadline.map(|d| now + d),
                attempts: 0,
                avoid: vec![],
                pin: None,
                group,
                reply: tx,
            });
            answers.push(rx);
        }
    }
    m.wake.notify_one();
    // Until answered, this request goes before long streams' next calls.
    let _first = shared.gate.enter();
    let all = futures_util::future::join_all(answers.into_iter().map(|rx| async {
        // A dropped sender means the pool went away with the job.
        rx.await.unwrap_or(Err(PoolError::ShutDown))
    }));
    let mut abandoned = shared.abandon.subscribe();
    let gave_up = async move {
        let _ = abandoned.wait_for(|a| *a).await;
    };
    let results = tokio::select! {
        r = async {
            match deadline {
                Some(d) => tokio::time::timeout(d, all).await.map_err(|_| PoolError::Deadline { after: d }),
                None => Ok(all.await),
            }
        } => r?,
        // Shutdown stopped waiting for running batches: answer now rather than never.
        () = gave_up => return Err(PoolError::ShutDown),
    };
    merge(results)
}

/// One answer from the answers of a request's parts (in order); the first failure fails it.
fn merge(results: Vec<Result<Served, PoolError>>) -> Result<Served, PoolError> {
    let mut parts = results.into_iter();
    let mut out = parts.next().expect("a request has at least one part")?;
    out.parts = 1;
    for p in parts {
        let p = p?;
        out.vectors.extend(p.vectors);
        out.extra.extend(p.extra);
        out.lengths.extend(p.lengths);
        out.truncated.extend(p.truncated);
        out.batch_rows += p.batch_rows;
        out.queue_ms = out.queue_ms.max(p.queue_ms);
        out.run_ms += p.run_ms;
        out.device_ms += p.device_ms;
        out.attempts = out.attempts.max(p.attempts);
        out.parts += 1;
    }
    Ok(out)
}

fn batch_limits(shared: &Shared) -> batching::Limits {
    batching::Limits { max_rows: shared.cfg.max_batch, max_tokens: shared.cfg.max_batch_tokens }
}

/// The batcher of one model; runs until the pool shuts down.
pub(crate) async fn run(shared: Arc<Shared>, m: Arc<ModelEntry>) {
    let budget = Duration::from_millis(shared.cfg.batch_wait_ms);
    loop {
        if shared.closed.load(Ordering::SeqCst) {
            return;
        }
        expire(&m);
        let (queued, oldest) = {
            let q = m.queue.lock().expect("queue");
            let queued: Vec<(usize, usize)> =
                q.iter().map(|j| (j.rows.len(), j.lens.iter().copied().max().unwrap_or(0))).collect();
            (queued, q.front().map(|j| j.enqueued.elapsed()))
        };
        let rows: Vec<usize> = queued.iter().map(|(r, _)| *r).collect();
        let Some(oldest) = oldest else {
            // Idle; wake for new work, and now and then to expire deadlines.
            let _ = tokio::time::timeout(Duration::from_secs(1), m.wake.notified()).await;
            continue;
        };
        let n = match batching::decide(&queued, batch_limits(&shared), oldest, budget) {
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
        let route = {
            let q = m.queue.lock().expect("queue");
            Route {
                avoid: q.iter().take(n).flat_map(|j| j.avoid.iter().copied()).collect(),
                pin: q.front().and_then(|j| j.pin),
            }
        };
        let Some(replica) = reserve(&shared, &m, batch_rows, rows.iter().sum(), &route) else {
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
            // The queue emptied under us (deadlines): hand back the slot and the breakers'
            // probes, or a half-open breaker would wait for a call that never comes.
            unreserve(&shared, &m, &replica);
            continue;
        }
        {
            let mut waits = shared.waits.lock().expect("waits");
            for j in &jobs {
                waits.push_back((Instant::now(), j.enqueued.elapsed()));
            }
        }
        shared.running_batches.fetch_add(1, Ordering::SeqCst);
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

/// Where a batch may go: not to slots that failed its requests; only to `pin` when set.
pub(crate) struct Route {
    pub avoid: Vec<u64>,
    pub pin: Option<u64>,
}

/// Replicas of `m` a batch may use now: usable, breakers admitting, honouring `route` (unless
/// that leaves none while others exist: a request is never starved by its own history).
fn eligible(m: &ModelEntry, route: &Route) -> Vec<Arc<Replica>> {
    let now = Instant::now();
    let usable: Vec<Arc<Replica>> =
        m.replicas.lock().expect("replicas").iter().filter(|r| r.slot.usable()).cloned().collect();
    // A lent tab works only while a trusted tab could check it.
    let usable: Vec<Arc<Replica>> = usable.into_iter().filter(|r| lending::checkable(m, r)).collect();
    // A pin holds only while its slot can still serve: a tab that died during the in-place
    // reload comes back (if at all) as a new slot with a new serial, so a pin to the old one
    // would hold the queue's front, and everything behind it, for ever.
    let pinned = route.pin.filter(|pin| usable.iter().any(|r| r.slot.serial == *pin));
    let admitted: Vec<Arc<Replica>> = usable
        .into_iter()
        .filter(|r| r.slot.breaker.lock().expect("breaker").would_admit(now))
        .filter(|r| r.breaker.lock().expect("breaker").would_admit(now))
        .collect();
    if let Some(pin) = pinned {
        return admitted.into_iter().filter(|r| r.slot.serial == pin).collect();
    }
    let preferred: Vec<Arc<Replica>> =
        admitted.iter().filter(|r| !route.avoid.contains(&r.slot.serial)).cloned().collect();
    if preferred.is_empty() { admitted } else { preferred }
}

/// A replica of `m` for a batch of `rows` texts (`queued_rows` waiting in all), reserved; `None`
/// when none is free or a busy one would finish sooner (`policy::routing::dispatch`). Costs per
/// text come from measured history, else from the replica's calibration.
fn reserve(shared: &Shared, m: &ModelEntry, rows: usize, queued_rows: usize, route: &Route) -> Option<Arc<Replica>> {
    let replicas = eligible(m, route);
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
                let ms_per_text = expected_ms_per_text(r, h);
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
    take(shared, m, chosen, rows).then(|| chosen.clone())
}

/// Measured ms per text of `r`, else its calibration figure.
fn expected_ms_per_text(r: &Replica, h: &History) -> Option<f64> {
    if h.successes > 0 {
        Some(h.mean_latency_ms)
    } else {
        r.calibration.iter().find(|c| c.backend == r.backend).and_then(|c| c.median_ms)
    }
}

/// Reserve `r` for a batch: an execution place on its tab and a call through both breakers.
fn take(shared: &Shared, m: &ModelEntry, r: &Replica, rows: usize) -> bool {
    if !r.slot.try_reserve(shared.cfg.in_flight_per_tab) {
        return false; // another model's batcher took it first; look again
    }
    if !breakers::acquire(shared, m, r) {
        r.slot.release();
        return false;
    }
    *r.slot.running.lock().expect("slot") = Some((Instant::now(), rows));
    true
}

/// Undo `take` for a batch that will not run: the slot's place and both breakers' calls.
fn unreserve(shared: &Shared, m: &ModelEntry, r: &Replica) {
    *r.slot.running.lock().expect("slot") = None;
    r.slot.release();
    breakers::book(shared, m, r, None, Instant::now());
}

/// The failure category of a batch error.
fn categorise(e: &anyhow::Error) -> Category {
    TabError::category(e)
}

/// Per row, one vector per graph output.
/// Per row its outputs, and the tab's own time for the batch (submit to results read, in the tab).
type RunResult = anyhow::Result<(Vec<Vec<Vec<f32>>>, f64)>;

async fn run_on(shared: &Shared, m: &ModelEntry, r: &Replica, inputs: Vec<Tensor>, rows: usize) -> RunResult {
    let timeout = Duration::from_secs_f64(shared.cfg.call_timeout_s.max(0.001));
    let tm = r.batches().context("a generation replica got a batch")?;
    let widths = m.batch_model()?.output_widths();
    let (outputs, device_ms) = tm.run_within(inputs, timeout).await?;
    Ok((family::split_rows(&outputs, rows, &widths)?, device_ms))
}

/// What the history keeps of a batch besides its outcome.
#[derive(Clone, Copy)]
struct BatchInfo {
    rows: usize,
    tokens: usize,
    queue_ms: f64,
}

/// Book the outcome of a run on `r`: breakers, history (in memory and in the database), latency
/// baseline, the slot's place. `hedge`: this run is the duplicate of a hedged batch.
fn settle(shared: &Shared, m: &ModelEntry, r: &Replica, b: BatchInfo, hedge: bool, took: Duration, result: &RunResult) {
    let rows = b.rows;
    shared.keep(Record::Execution {
        model: m.name.clone(),
        kind: r.slot.kind.name.clone(),
        backend: r.backend.clone(),
        tab: r.slot.id,
        batch_rows: rows as u32,
        tokens: b.tokens as u32,
        latency_ms: took.as_secs_f64() * 1e3,
        queue_ms: b.queue_ms,
        error: result.as_ref().err().map(|e| categorise(e).name().to_string()),
        hedge,
    });
    r.slot.release();
    r.slot.batches.fetch_add(1, Ordering::Relaxed);
    let now = Instant::now();
    let outcome = match result {
        Ok(_) => Some(Outcome::Success { took }),
        Err(e) if categorise(e) == Category::BadInput => None,
        Err(_) => Some(Outcome::Failure),
    };
    // Bad input says nothing about the tab: no outcome, but the call's probe goes back.
    breakers::book(shared, m, r, outcome, now);
    let ms_per_text = took.as_secs_f64() * 1e3 / rows.max(1) as f64;
    match result {
        Ok(_) => {
            r.slot.rows.fetch_add(rows as u64, Ordering::Relaxed);
            r.slot.latency.lock().expect("latency").record(ms_per_text);
            shared.record(&m.name, &r.slot.kind.name, &r.backend, true, ms_per_text);
        }
        Err(e) => {
            shared.count_failure(categorise(e));
            shared.record(&m.name, &r.slot.kind.name, &r.backend, false, 0.0);
        }
    }
}

/// A run on `r` that owns what it needs, so a hedged batch's loser can finish on its own.
fn run_owned(shared: &Arc<Shared>, m: &Arc<ModelEntry>, r: &Arc<Replica>, inputs: Vec<Tensor>, rows: usize) -> Running {
    let (shared, m, r) = (shared.clone(), m.clone(), r.clone());
    Box::pin(async move { run_on(&shared, &m, &r, inputs, rows).await })
}

type Running = std::pin::Pin<Box<dyn std::future::Future<Output = RunResult> + Send>>;

/// The loser of a hedged batch: its answer is not used, but its tab stays busy until it really
/// finishes (a tab cannot abort a dispatched run), and its real latency and outcome are booked so
/// routing and the breakers learn how slow it was.
fn finish_loser(
    shared: &Arc<Shared>,
    m: &Arc<ModelEntry>,
    r: &Arc<Replica>,
    b: BatchInfo,
    hedge: bool,
    started: Instant,
    run: Running,
) {
    let (shared, m, r) = (shared.clone(), m.clone(), r.clone());
    r.slot.draining.store(true, Ordering::SeqCst);
    tokio::spawn(async move {
        let res = run.await;
        r.slot.draining.store(false, Ordering::SeqCst);
        settle(&shared, &m, &r, b, hedge, started.elapsed(), &res);
        shared.wake_all();
    });
}

/// Run a batch on `r`; if it runs past the hedge point and another replica is free, run it there
/// too: the first success answers, the loser runs out in the background (parallel recovery).
async fn execute(shared: Arc<Shared>, m: Arc<ModelEntry>, r: Arc<Replica>, jobs: Vec<Job>) {
    let all: Vec<&Tensor> = jobs.iter().flat_map(|j| &j.rows).collect();
    let rows = all.len();
    let inputs = match m.batch_model().map_err(anyhow::Error::from).and_then(|b| b.inputs(&all)) {
        Ok(inputs) => inputs,
        Err(e) => {
            // Rows that passed `prepare` but make no batch: a defect, answered, never hung.
            for job in jobs {
                let _ = job.reply.send(Err(PoolError::Failed { attempts: job.attempts, message: format!("{e:#}") }));
            }
            r.slot.release();
            shared.running_batches.fetch_sub(1, Ordering::SeqCst);
            shared.wake_all();
            return;
        }
    };
    let t = Instant::now();
    let info = BatchInfo {
        rows,
        tokens: jobs.iter().flat_map(|j| &j.lens).sum(),
        queue_ms: jobs.iter().map(|j| (t - j.enqueued).as_secs_f64() * 1e3).sum::<f64>() / jobs.len().max(1) as f64,
    };
    let expected = {
        let h = shared.history.lock().expect("history");
        let h = h.get(&(m.name.clone(), r.slot.kind.name.clone(), r.backend.clone())).copied().unwrap_or_default();
        expected_ms_per_text(&r, &h).map(|ms| Duration::from_secs_f64(ms * rows as f64 / 1e3))
    };
    let hedge_at = recovery::hedge_after(expected, shared.cfg.hedging());
    let primary = run_owned(&shared, &m, &r, inputs.clone(), rows);
    // Kept only when a lent tab may answer: its result may need a trusted re-run.
    let inputs_for_check =
        m.replicas.lock().expect("replicas").iter().any(|x| x.slot.lent.is_some()).then(|| inputs.clone());
    // The copy, if one starts: its replica and when it started.
    let mut hedge: Option<(Arc<Replica>, Instant)> = None;
    let raced = hedge::race(primary, hedge_at, || {
        let route = Route { avoid: vec![r.slot.serial], pin: None };
        let h = eligible(&m, &route).into_iter().find(|x| {
            x.slot.serial != r.slot.serial
                && x.slot.in_flight.load(Ordering::SeqCst) < shared.cfg.in_flight_per_tab
                && take(&shared, &m, x, rows)
        })?;
        shared.hedged.fetch_add(1, Ordering::Relaxed);
        tracing::info!(model = m.name, slow = r.slot.id, hedge = h.slot.id, "hedging a slow batch of {rows}");
        hedge = Some((h.clone(), Instant::now()));
        Some(run_owned(&shared, &m, &h, inputs, rows))
    })
    .await;
    let (result, winner) = match raced {
        hedge::Raced::Alone { answer: res, .. } => {
            settle(&shared, &m, &r, info, false, t.elapsed(), &res);
            (res, r.clone())
        }
        hedge::Raced::Both { first, answer, other, .. } => {
            let (h, th) = hedge.expect("a copy ran");
            // Each copy booked as it ends: (replica, is the copy, started).
            let (done, rest) = match first {
                hedge::Side::Primary => ((r.clone(), false, t), (h, true, th)),
                hedge::Side::Backup => ((h, true, th), (r.clone(), false, t)),
            };
            settle(&shared, &m, &done.0, info, done.1, done.2.elapsed(), &answer);
            if answer.is_ok() {
                // First success wins; the other runs out in the background, still booked.
                finish_loser(&shared, &m, &rest.0, info, rest.1, rest.2, other);
                (answer, done.0)
            } else {
                let res = other.await;
                settle(&shared, &m, &rest.0, info, rest.1, rest.2.elapsed(), &res);
                (res, rest.0)
            }
        }
    };
    // A lent tab's result, when due, is answered only after a trusted tab agreed with it —
    // else the trusted result answers and the lent tab is quarantined.
    let (result, winner) = match result {
        Ok(res) if lending::check_due(&shared, &winner) => {
            check_lent(&shared, &m, &winner, inputs_for_check, res).await
        }
        other => (other, winner),
    };
    let run_ms = t.elapsed().as_secs_f64() * 1e3;
    match result {
        Ok((per_row, device_ms)) => {
            let tm = &shared.telemetry;
            let model = [("model", m.name.as_str())];
            tm.observe("tabpool_batch_size", &model, rows as f64);
            tm.observe("tabpool_inference_duration_seconds", &model, run_ms / 1e3);
            for job in &jobs {
                tm.observe("tabpool_queue_duration_seconds", &model, (t - job.enqueued).as_secs_f64());
            }
            let mut per_row = per_row.into_iter();
            for job in jobs {
                let (vectors, extra) = per_row.by_ref().take(job.rows.len()).map(first_and_rest).unzip();
                let served = Served {
                    model: m.name.clone(),
                    vectors,
                    extra,
                    lengths: job.lens,
                    truncated: job.truncated,
                    tab: winner.slot.id,
                    kind: winner.slot.kind.name.clone(),
                    backend: winner.backend.clone(),
                    batch_rows: rows,
                    queue_ms: (t - job.enqueued).as_secs_f64() * 1e3,
                    run_ms,
                    device_ms,
                    attempts: job.attempts + 1,
                    parts: 1,
                };
                m.served.fetch_add(1, Ordering::Relaxed);
                let _ = job.reply.send(Ok(served));
            }
        }
        Err(e) => fail_batch(&shared, &m, &winner, jobs, e).await,
    }
    shared.running_batches.fetch_sub(1, Ordering::SeqCst);
    shared.wake_all();
}

/// Re-run a lent tab's batch on a trusted replica and compare row by row
/// (`policy::verification::rows_agree`): agreeing, the lent result answers; disagreeing, the
/// trusted one does and the lent tab is quarantined. A check that cannot run (no trusted replica
/// left, or it failed) answers with the trusted side's error, so the batch is retried: an
/// unchecked result that was due a check never reaches a client.
async fn check_lent(
    shared: &Arc<Shared>,
    m: &Arc<ModelEntry>,
    lent: &Arc<Replica>,
    inputs: Option<Vec<Tensor>>,
    res: (Vec<Vec<Vec<f32>>>, f64),
) -> (RunResult, Arc<Replica>) {
    let rows = res.0.len();
    let (Some(inputs), Some(trusted)) = (inputs, lending::trusted_replica(m, lent.slot.serial)) else {
        return (Err(anyhow::anyhow!("no trusted tab to check a lent tab's batch")), lent.clone());
    };
    trusted.slot.in_flight.fetch_add(1, Ordering::SeqCst);
    let t = Instant::now();
    let checked = run_on(shared, m, &trusted, inputs, rows).await;
    let info = BatchInfo { rows, tokens: 0, queue_ms: 0.0 };
    settle(shared, m, &trusted, info, false, t.elapsed(), &checked);
    let want = match checked {
        Ok(w) => w,
        Err(e) => return (Err(e.context("checking a lent tab's batch")), trusted),
    };
    let tolerance = shared.cfg.lending.tolerance;
    let verdict = res.0.iter().zip(&want.0).enumerate().try_for_each(|(i, (got, want))| {
        if got.len() != want.len() {
            return Err(format!("row {i}: {} outputs where {} were expected", got.len(), want.len()));
        }
        got.iter()
            .zip(want)
            .try_for_each(|(g, w)| crate::policy::verification::rows_agree(g, w, tolerance))
            .map_err(|e| format!("row {i}: {e}"))
    });
    let agreed = verdict.is_ok();
    lending::checked(shared, m, &lent.slot, verdict);
    if agreed { (Ok(res), lent.clone()) } else { (Ok(want), trusted) }
}

/// A row's first output, and the rest.
fn first_and_rest(mut outputs: Vec<Vec<f32>>) -> (Vec<f32>, Vec<Vec<f32>>) {
    let rest = outputs.split_off(1.min(outputs.len()));
    (outputs.pop().unwrap_or_default(), rest)
}

/// A failed batch: each request is retried per `policy::recovery::request_step` or answered with
/// the error; the tab is left to the watchdog (lost socket, missed heartbeats) or reloads its
/// model in place (lost device).
async fn fail_batch(shared: &Arc<Shared>, m: &Arc<ModelEntry>, r: &Arc<Replica>, jobs: Vec<Job>, e: anyhow::Error) {
    let category = categorise(&e);
    let message = format!("{category:?}: {e:#}");
    tracing::warn!(model = m.name, tab = r.slot.id, "batch of {} failed: {message}", jobs.len());
    if !r.slot.tab.is_connected() {
        // Routing stops using it at once; the watchdog reloads the page or restarts the browser.
        let (shared, slot) = (shared.clone(), r.slot.clone());
        let detail = format!("socket closed during a batch: {e:#}");
        let s = shared.clone();
        s.spawn_background(async move { shared.recover(slot, Category::Connection, &detail).await });
    } else if recovery::tab_step(category, true, true, 0) == TabStep::ReloadModel {
        // Simple recovery: loading the model again makes the tab request a new device; the
        // requests retry in place after it.
        let t = std::time::Instant::now();
        let ok = shared.add_replica(m, &r.slot).await;
        shared.note_recovery(&r.slot, category, "reload_model", ok, t, &message);
    }
    let infra = matches!(category, Category::Connection | Category::Crash | Category::Timeout);
    let mut groups: Vec<u64> = jobs.iter().filter_map(|j| j.group).collect();
    groups.sort_unstable();
    groups.dedup();
    if infra && !groups.is_empty() {
        // Coordinated: the other queued shards of the same multi-tab jobs are kept away from the
        // failed tab too, so the job resumes as a whole on healthy tabs.
        let mut moved = 0;
        for job in m.queue.lock().expect("queue").iter_mut() {
            if job.group.is_some_and(|g| groups.contains(&g)) && !job.avoid.contains(&r.slot.serial) {
                job.avoid.push(r.slot.serial);
                moved += 1;
            }
        }
        shared.coordinated.fetch_add(1, Ordering::Relaxed);
        let reason = format!(
            "{category:?} on tab {} during multi-tab job(s) {groups:?}: {} failed shard(s) reassigned, {moved} queued shard(s) kept off it",
            r.slot.id,
            jobs.iter().filter(|j| j.group.is_some()).count()
        );
        shared.log("coordinated", Some(&r.slot.kind.name), Some(r.slot.id), &reason);
    }
    let mut again: Vec<(Job, Duration)> = Vec::new();
    let closing = shared.closed.load(Ordering::SeqCst);
    for mut job in jobs {
        job.attempts += 1;
        if closing {
            // Nothing serves the queues any more: a retry would wait for ever.
            let _ = job.reply.send(Err(PoolError::ShutDown));
            continue;
        }
        match recovery::request_step(category, job.attempts, shared.cfg.retries) {
            RequestStep::RetrySameTab { backoff } => {
                job.pin = Some(r.slot.serial);
                again.push((job, backoff));
            }
            RequestStep::RetryElsewhere { backoff } => {
                job.pin = None;
                job.avoid.push(r.slot.serial);
                again.push((job, backoff));
            }
            RequestStep::Fail => {
                m.failed.fetch_add(1, Ordering::Relaxed);
                let _ = job.reply.send(Err(PoolError::Failed { attempts: job.attempts, message: message.clone() }));
            }
        }
    }
    if again.is_empty() {
        return;
    }
    m.retried.fetch_add(again.len() as u64, Ordering::Relaxed);
    let backoff = again.iter().map(|(_, b)| *b).max().unwrap_or_default();
    let (m, shared) = (m.clone(), shared.clone());
    tokio::spawn(async move {
        tokio::time::sleep(backoff).await;
        let mut q = m.queue.lock().expect("queue");
        for (job, _) in again.into_iter().rev() {
            // Same rule as `submit`: checked under the queue lock that shutdown drains.
            if shared.closed.load(Ordering::SeqCst) {
                let _ = job.reply.send(Err(PoolError::ShutDown));
            } else {
                q.push_front(job);
            }
        }
        drop(q);
        m.wake.notify_one();
    });
}
