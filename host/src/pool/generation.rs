//! Generation streams through the pool.
//!
//! A request becomes one session on one replica's decoder (continuous batching happens there:
//! every session on a replica advances in one step). This module admits the request, places it
//! on the least-loaded replica its breakers admit, streams tokens back, books the outcome in the
//! breakers, routing history and the history database, and — when the replica is lost
//! mid-stream — replays the session (prompt + the tokens streamed so far) on another replica,
//! so the client sees one uninterrupted stream. Greedy decoding gives the same tokens after a
//! replay; seeded sampling too, because a draw is a function of (seed, position) only.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use shared_proto::ErrorKind;
use tokio::sync::mpsc;

use super::state::{Family, ModelEntry, Replica, Runner, Shared};
use super::{PoolError, breakers, hedge, lending};
use crate::exec::{Finish, GenEvent, GenFailure, GenParams};
use crate::policy::breaker::Outcome;
use crate::policy::prefix_routing;
use crate::policy::recovery::Category;
use crate::store::Record;

/// Streams fail after this long without any usable replica (all tabs lost and none replaced).
pub(crate) const NO_REPLICA_WAIT: Duration = Duration::from_secs(120);
/// How often a waiting stream looks again even without a wake-up (a breaker half-opening).
const RECHECK: Duration = Duration::from_millis(250);

/// A generation request: token ids to continue (chat template already applied) and how.
#[derive(Debug, Clone)]
pub struct GenRequest {
    pub prompt: Vec<u32>,
    pub params: GenParams,
}

/// What a stream carries, in order: `Placed`, then tokens (with another `Placed` after a
/// replay), then exactly one `Done` or `Failed`.
#[derive(Debug)]
pub enum StreamEvent {
    /// The session runs on this replica now (again after a replay).
    Placed {
        tab: u64,
        kind: String,
        backend: String,
        replay: u32,
    },
    Token(u32),
    Done(GenSummary),
    Failed(PoolError),
}

/// How a finished stream went.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GenSummary {
    pub finish: Finish,
    pub prompt_tokens: usize,
    /// Prompt tokens the replica's prefix cache gave (its last leg's), not prefilled again.
    pub cached_tokens: usize,
    pub generated: usize,
    /// Replicas lost mid-stream and replayed elsewhere.
    pub replays: u32,
    /// Admission → placed on the replica that started it.
    pub queue_ms: f64,
    /// Admission → first token.
    pub ttft_ms: Option<f64>,
    /// Tokens after the first per second after the first.
    pub decode_tok_s: Option<f64>,
    pub tab: u64,
    pub kind: String,
    pub backend: String,
}

/// Check a request against the model and the pool's limits, then start its stream.
pub(crate) fn start(
    shared: &Arc<Shared>,
    m: &Arc<ModelEntry>,
    req: GenRequest,
) -> Result<mpsc::UnboundedReceiver<StreamEvent>, PoolError> {
    if shared.closed.load(Ordering::SeqCst) {
        return Err(PoolError::ShutDown);
    }
    let Family::Generation(g) = &m.family else {
        return Err(PoolError::BadInput(format!("{} does not generate text", m.name)));
    };
    if req.prompt.is_empty() {
        return Err(PoolError::BadInput("an empty prompt: there is nothing to continue".into()));
    }
    let vocab = g.model.vocab();
    if let Some(bad) = req.prompt.iter().find(|&&t| t as usize >= vocab) {
        return Err(PoolError::BadInput(format!("token id {bad} is outside the vocabulary of {vocab}")));
    }
    if req.params.max_tokens == 0 {
        return Err(PoolError::BadInput("max_tokens must be at least 1".into()));
    }
    let limit = shared.cfg.generation.context_limit.min(g.model.context_length()) as usize;
    if req.prompt.len() + req.params.max_tokens as usize > limit {
        return Err(PoolError::TooLarge(format!(
            "the prompt ({} tokens) plus max_tokens {} exceeds the context limit of {limit} tokens",
            req.prompt.len(),
            req.params.max_tokens
        )));
    }
    let waiting = m.waiting.fetch_add(1, Ordering::SeqCst);
    if waiting >= shared.cfg.generation.max_waiting {
        m.waiting.fetch_sub(1, Ordering::SeqCst);
        m.busy.fetch_add(1, Ordering::Relaxed);
        return Err(PoolError::Busy {
            model: m.name.clone(),
            queued: waiting,
            limit: shared.cfg.generation.max_waiting,
        });
    }
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(supervise(shared.clone(), m.clone(), req, tx));
    Ok(rx)
}

/// Why one replica's part of a stream ended.
enum Leg {
    Finished(Finish),
    Cancelled,
    ShutDown,
    Failed(GenFailure),
}

/// Why a whole stream ended without finishing.
enum Ended {
    Cancelled,
    Error(PoolError),
}

/// Drive one stream to its end: place, stream, replay on loss.
async fn supervise(shared: Arc<Shared>, m: Arc<ModelEntry>, req: GenRequest, tx: mpsc::UnboundedSender<StreamEvent>) {
    let t0 = Instant::now();
    let mut out: Vec<u32> = Vec::new();
    let (mut first, mut last) = (None::<Instant>, t0);
    // The largest gap between two tokens of one leg: how late a next token must be to count as
    // stalled. `rehedged`: the gap just ended was a stall (not a measure of the replica).
    let (mut largest_gap, mut rehedged) = (Duration::ZERO, false);
    let mut replays = 0u32;
    let mut avoid: Vec<u64> = Vec::new();
    let mut queue_ms = None::<f64>;
    let mut place_of: Option<(String, String, u64)> = None;
    let mut waiting = true;
    let mut cached = 0usize;
    let mut abandoned = shared.abandon.subscribe();
    let ended: Result<Finish, Ended> = 'stream: loop {
        let so_far = [req.prompt.as_slice(), out.as_slice()].concat();
        let placed = tokio::select! {
            r = place(&shared, &m, &avoid, &so_far) => r,
            () = tx.closed() => break Err(Ended::Cancelled),
            _ = abandoned.wait_for(|a| *a) => break Err(Ended::Error(PoolError::ShutDown)),
        };
        let r = match placed {
            Ok(r) => r,
            Err(e) => break Err(Ended::Error(e)),
        };
        if std::mem::take(&mut waiting) {
            m.waiting.fetch_sub(1, Ordering::SeqCst);
            let waited = t0.elapsed();
            queue_ms = Some(waited.as_secs_f64() * 1e3);
            shared.telemetry.observe(
                "tabpool_queue_duration_seconds",
                &[("model", m.name.as_str())],
                waited.as_secs_f64(),
            );
            shared.waits.lock().expect("waits").push_back((Instant::now(), waited));
        }
        place_of = Some((r.slot.kind.name.clone(), r.backend.clone(), r.slot.id));
        let _ = tx.send(StreamEvent::Placed {
            tab: r.slot.id,
            kind: r.slot.kind.name.clone(),
            backend: r.backend.clone(),
            replay: replays,
        });
        let Runner::Sessions { decoder, .. } = &r.run else { unreachable!("place() only returns generation replicas") };
        let mut prompt = req.prompt.clone();
        prompt.extend(&out);
        let params = GenParams { max_tokens: req.params.max_tokens - out.len() as u32, ..req.params.clone() };
        let started = Instant::now();
        let had = out.len();
        let prompt_len = prompt.len();
        let mut events = decoder.generate(prompt.clone(), params.clone());
        // The first event may come from a hedged copy on another replica (then `r` is that one).
        let mut r = r;
        let mut pending: Option<Option<GenEvent>> = None;
        if let Some(after) = hedge_delay(&shared, &m, prompt_len) {
            let raced = tokio::select! {
                raced = hedge_first(&shared, &m, r.clone(), events, after, (&prompt, &params)) => Some(raced),
                () = tx.closed() => None,
                _ = abandoned.wait_for(|a| *a) => None,
            };
            let Some((winner, winner_events, first_event)) = raced else {
                // Gone or shutting down while racing: the copies were dropped with the race.
                leave(&m, &r);
                book(&shared, &m, &r, None);
                break if tx.is_closed() { Err(Ended::Cancelled) } else { Err(Ended::Error(PoolError::ShutDown)) };
            };
            if !Arc::ptr_eq(&winner, &r) {
                place_of = Some((winner.slot.kind.name.clone(), winner.backend.clone(), winner.slot.id));
                let _ = tx.send(StreamEvent::Placed {
                    tab: winner.slot.id,
                    kind: winner.slot.kind.name.clone(),
                    backend: winner.backend.clone(),
                    replay: replays,
                });
            }
            (r, events, pending) = (winner, winner_events, first_event);
        }
        if lending::check_due(&shared, &r) {
            // A lent tab's stream, checked: the same session runs on a trusted replica and a
            // token goes out only when both produced it.
            let trusted = tokio::select! {
                t = place_where(&shared, &m, &[], &prompt, |x| x.slot.lent.is_none()) => t,
                () = tx.closed() => Err(PoolError::ShutDown),
                _ = abandoned.wait_for(|a| *a) => Err(PoolError::ShutDown),
            };
            match trusted {
                Ok(t) => {
                    let Runner::Sessions { decoder: check, .. } = &t.run else { unreachable!("a generation replica") };
                    let copy = check.generate(prompt.clone(), params.clone());
                    events = shadow(&shared, &m, (r.clone(), events, pending.take()), (t, copy));
                }
                Err(e) => {
                    drop(events);
                    leave(&m, &r);
                    book(&shared, &m, &r, None);
                    break if tx.is_closed() { Err(Ended::Cancelled) } else { Err(Ended::Error(e)) };
                }
            }
        }
        let leg = loop {
            let ev = match pending.take() {
                Some(ev) => ev,
                None => {
                    // Mid-leg, a next token later than the stream's own rhythm allows: an
                    // unplugged machine (no reset, only silence) or a stuck tab. Copy the stream
                    // from here to another replica; the first to answer goes on, the tab's fate
                    // is the heartbeats' call.
                    // A pipeline repairs a lost stage itself and replays its sessions there.
                    let stall = if out.len() > had && r.stages.is_none() {
                        crate::policy::recovery::stall_after(largest_gap, shared.cfg.hedging())
                    } else {
                        None
                    };
                    let next = tokio::select! {
                        ev = events.recv() => Some(ev),
                        () = tx.closed() => break Leg::Cancelled,
                        _ = abandoned.wait_for(|a| *a) => break Leg::ShutDown,
                        () = sleep_or_never(stall) => None,
                    };
                    match next {
                        Some(ev) => ev,
                        None => {
                            let mut rest = req.prompt.clone();
                            rest.extend(&out);
                            let params = GenParams {
                                max_tokens: req.params.max_tokens - out.len() as u32,
                                ..req.params.clone()
                            };
                            tracing::info!(model = m.name, tab = r.slot.id, "a stream's next token is {stall:?} late");
                            let raced = tokio::select! {
                                raced = hedge_first(&shared, &m, r.clone(), events, Duration::ZERO, (&rest, &params)) => Some(raced),
                                () = tx.closed() => None,
                                _ = abandoned.wait_for(|a| *a) => None,
                            };
                            let Some((winner, winner_events, first_event)) = raced else {
                                leave(&m, &r);
                                book(&shared, &m, &r, None);
                                break 'stream if tx.is_closed() {
                                    Err(Ended::Cancelled)
                                } else {
                                    Err(Ended::Error(PoolError::ShutDown))
                                };
                            };
                            if !Arc::ptr_eq(&winner, &r) {
                                place_of =
                                    Some((winner.slot.kind.name.clone(), winner.backend.clone(), winner.slot.id));
                                let _ = tx.send(StreamEvent::Placed {
                                    tab: winner.slot.id,
                                    kind: winner.slot.kind.name.clone(),
                                    backend: winner.backend.clone(),
                                    replay: replays,
                                });
                            }
                            (r, events, pending, rehedged) = (winner, winner_events, first_event, true);
                            continue;
                        }
                    }
                }
            };
            if matches!(ev, Some(GenEvent::Token(_))) && out.len() == had {
                note_first_token(&m, started.elapsed(), prompt_len);
            }
            match ev {
                Some(GenEvent::Token(t)) => {
                    let now = Instant::now();
                    let model = [("model", m.name.as_str())];
                    match first {
                        None => shared.telemetry.observe(
                            "tabpool_time_to_first_token_seconds",
                            &model,
                            (now - t0).as_secs_f64(),
                        ),
                        Some(_) => shared.telemetry.observe(
                            "tabpool_inter_token_latency_seconds",
                            &model,
                            (now - last).as_secs_f64(),
                        ),
                    }
                    if out.len() > had && !std::mem::take(&mut rehedged) {
                        largest_gap = largest_gap.max(now - last);
                    }
                    first.get_or_insert(now);
                    last = now;
                    out.push(t);
                    let _ = tx.send(StreamEvent::Token(t));
                }
                Some(GenEvent::Done { finish, cached: c, .. }) => {
                    cached = c;
                    break Leg::Finished(finish);
                }
                Some(GenEvent::Failed(f)) => break Leg::Failed(f),
                None => {
                    break Leg::Failed(GenFailure {
                        category: Category::ModelError,
                        remote: None,
                        message: "the replica's decoder stopped".into(),
                    });
                }
            }
        };
        // Dropping the events cancels the session on the replica (its KV rows are freed, or kept
        // as a cached prefix: remembered for routing the next turn there).
        drop(events);
        if matches!(leg, Leg::Finished(_) | Leg::Cancelled)
            && r.stages.is_none()
            && let Runner::Sessions { prefixes, .. } = &r.run
        {
            prefixes.lock().expect("prefixes").remember([req.prompt.as_slice(), out.as_slice()].concat());
        }
        leave(&m, &r);
        match leg {
            Leg::Finished(finish) => {
                // Per generated token: a long stream is not a slow call.
                let tokens = (out.len() - had).max(1);
                let per_token = started.elapsed() / tokens as u32;
                book(&shared, &m, &r, Some(Outcome::Success { took: per_token }));
                shared.record(&m.name, &r.slot.kind.name, &r.backend, true, per_token.as_secs_f64() * 1e3);
                break Ok(finish);
            }
            Leg::Cancelled => {
                book(&shared, &m, &r, None);
                break Err(Ended::Cancelled);
            }
            Leg::ShutDown => {
                book(&shared, &m, &r, None);
                break Err(Ended::Error(PoolError::ShutDown));
            }
            Leg::Failed(f) if f.category == Category::BadInput => {
                book(&shared, &m, &r, None);
                break Err(Ended::Error(PoolError::BadInput(f.message)));
            }
            Leg::Failed(f) if f.remote == Some(ErrorKind::Capacity) => {
                // The tab's KV cache had no room (fragmented first-fit rows): not a fault; wait
                // for a stream to end, here or on another replica.
                book(&shared, &m, &r, None);
                tracing::debug!(model = m.name, tab = r.slot.id, "no KV room: {}", f.message);
                let _ = tokio::time::timeout(RECHECK, m.wake.notified()).await;
            }
            Leg::Failed(f) => {
                book(&shared, &m, &r, Some(Outcome::Failure));
                shared.count_failure(f.category);
                shared.record(&m.name, &r.slot.kind.name, &r.backend, false, 0.0);
                recover(&shared, &m, &r, &f);
                replays += 1;
                if shared.closed.load(Ordering::SeqCst) {
                    break Err(Ended::Error(PoolError::ShutDown));
                }
                if replays > shared.cfg.retries {
                    break Err(Ended::Error(PoolError::Failed { attempts: replays, message: f.message }));
                }
                m.retried.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    model = m.name,
                    tab = r.slot.id,
                    "a stream lost its replica after {} tokens; replaying it elsewhere: {}",
                    out.len(),
                    f.message
                );
                avoid.push(r.slot.serial);
            }
        }
    };
    if waiting {
        m.waiting.fetch_sub(1, Ordering::SeqCst);
    }
    m.wake.notify_waiters();
    let ttft_ms = first.map(|f| (f - t0).as_secs_f64() * 1e3);
    let decode_tok_s =
        first.filter(|f| out.len() > 1 && last > *f).map(|f| (out.len() - 1) as f64 / (last - f).as_secs_f64());
    let (finish_name, error) = match &ended {
        Ok(Finish::Stop) => ("stop", None),
        Ok(Finish::Length) => ("length", None),
        Err(Ended::Cancelled) => ("cancelled", None),
        Err(Ended::Error(e)) => ("failed", Some(e.kind().to_string())),
    };
    let model = [("model", m.name.as_str())];
    shared.telemetry.count("tabpool_prompt_tokens_total", &model, req.prompt.len() as u64);
    shared.telemetry.count("tabpool_generation_tokens_total", &model, out.len() as u64);
    if ended.is_ok() {
        let hit = if cached > 0 { "hit" } else { "miss" };
        shared.telemetry.count("tabpool_prefix_cache_queries_total", &[("model", m.name.as_str()), ("result", hit)], 1);
        shared.telemetry.count("tabpool_prefix_cache_tokens_total", &model, cached as u64);
    }
    if let Some(q) = queue_ms {
        shared.telemetry.observe("tabpool_inference_duration_seconds", &model, t0.elapsed().as_secs_f64() - q / 1e3);
    }
    shared.keep(Record::Generation {
        model: m.name.clone(),
        place: place_of.clone(),
        prompt_tokens: req.prompt.len() as u32,
        generated: out.len() as u32,
        queue_ms: queue_ms.unwrap_or(t0.elapsed().as_secs_f64() * 1e3),
        ttft_ms,
        decode_tok_s,
        finish: finish_name.into(),
        replays,
        error,
        cached_tokens: cached as u32,
    });
    match ended {
        Ok(finish) => {
            m.served.fetch_add(1, Ordering::Relaxed);
            let (kind, backend, tab) = place_of.unwrap_or_default();
            let _ = tx.send(StreamEvent::Done(GenSummary {
                finish,
                prompt_tokens: req.prompt.len(),
                cached_tokens: cached,
                generated: out.len(),
                replays,
                queue_ms: queue_ms.unwrap_or_default(),
                ttft_ms,
                decode_tok_s,
                tab,
                kind,
                backend,
            }));
        }
        Err(Ended::Cancelled) => {}
        Err(Ended::Error(e)) => {
            m.failed.fetch_add(1, Ordering::Relaxed);
            let _ = tx.send(StreamEvent::Failed(e));
        }
    }
}

/// How long a leg's first token may take before a copy is started on another replica: the
/// model's expected time to first token for this prompt (measured) × `hedge_factor`, at least
/// `hedge_floor_ms`. `None` without a measurement yet, or with hedging off.
fn hedge_delay(shared: &Shared, m: &ModelEntry, prompt_len: usize) -> Option<Duration> {
    let per_token = *m.ttft_ms_per_token.lock().expect("ttft");
    let expected = per_token.map(|ms| Duration::from_secs_f64(ms * prompt_len.max(1) as f64 / 1e3));
    crate::policy::recovery::hedge_after(expected, shared.cfg.hedging())
}

/// Learn the time to first token per prompt token (a moving average over the model's streams).
fn note_first_token(m: &ModelEntry, took: Duration, prompt_len: usize) {
    let ms = took.as_secs_f64() * 1e3 / prompt_len.max(1) as f64;
    let mut t = m.ttft_ms_per_token.lock().expect("ttft");
    *t = Some(match *t {
        Some(old) => 0.8 * old + 0.2 * ms,
        None => ms,
    });
}

type Events = mpsc::UnboundedReceiver<GenEvent>;

/// Sleep for `d`; never wake without one.
async fn sleep_or_never(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// The first event of a leg on `r`, hedged: if none came within `after` and another replica has
/// a free place, the same session starts there too, and the first copy to produce a token (or
/// finish) goes on while the other is cancelled — both would stream the same tokens (greedy, or
/// draws by (seed, position)). A copy that fails first leaves the race to the other. Returns the
/// replica that goes on (whose place and breakers the caller then owns), its events, and its
/// first event if the race read it (`None`: read it from the events).
async fn hedge_first(
    shared: &Arc<Shared>,
    m: &Arc<ModelEntry>,
    r: Arc<Replica>,
    events: Events,
    after: Duration,
    (prompt, params): (&[u32], &GenParams),
) -> (Arc<Replica>, Events, Option<Option<GenEvent>>) {
    // Until the race is decided the hedge's place is this function's: dropped with it (the
    // client left), the guard gives it back.
    let mut guard: Option<HedgeGuard> = None;
    let raced = hedge::race(NextEvent(events), Some(after), || {
        let h = try_place(shared, m, r.slot.serial)?;
        let Runner::Sessions { decoder, .. } = &h.run else {
            unreachable!("try_place() only returns generation replicas")
        };
        shared.hedged.fetch_add(1, Ordering::Relaxed);
        tracing::info!(model = m.name, slow = r.slot.id, hedge = h.slot.id, "hedging a stream's late first token");
        let copy = decoder.generate(prompt.to_vec(), params.clone());
        guard = Some(HedgeGuard { shared: shared.clone(), m: m.clone(), h: Some(h) });
        Some(NextEvent(copy))
    })
    .await;
    let failed = |ev: &Option<GenEvent>| matches!(ev, Some(GenEvent::Failed(_)) | None);
    let (first, ev, answered, other) = match raced {
        hedge::Raced::Alone { answer, call } => return (r, call.0, Some(answer)),
        hedge::Raced::Both { first, answer, answered, other } => (first, answer, answered, other),
    };
    let h = guard.expect("a copy ran").disarm();
    match (first, failed(&ev)) {
        (hedge::Side::Primary, false) => {
            // The copy is dropped: its session is cancelled when its replica next steps.
            drop(other);
            leave(m, &h);
            book(shared, m, &h, None);
            (r, answered.0, Some(ev))
        }
        (hedge::Side::Primary, true) => {
            // The first copy failed before the hedge answered: the hedge goes on alone.
            settle_failed(shared, m, &r, &ev);
            leave(m, &r);
            (h, other.0, None)
        }
        (hedge::Side::Backup, false) => {
            // The slow copy is dropped: its session is cancelled when its replica next steps.
            drop(other);
            leave(m, &r);
            book(shared, m, &r, None);
            (h, answered.0, Some(ev))
        }
        (hedge::Side::Backup, true) => {
            settle_failed(shared, m, &h, &ev);
            leave(m, &h);
            (r, other.0, None)
        }
    }
}

/// A stream's next event as a future that keeps the stream: the hedge race reads one event
/// from each copy and hands back the receivers unconsumed.
struct NextEvent(Events);

impl std::future::Future for NextEvent {
    type Output = Option<GenEvent>;
    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        self.0.poll_recv(cx)
    }
}

/// A hedge's place and breaker call, given back unless the hedge went on (or was settled).
struct HedgeGuard {
    shared: Arc<Shared>,
    m: Arc<ModelEntry>,
    h: Option<Arc<Replica>>,
}

impl HedgeGuard {
    /// The hedge's replica, now the caller's to settle.
    fn disarm(mut self) -> Arc<Replica> {
        self.h.take().expect("armed")
    }
}

impl Drop for HedgeGuard {
    fn drop(&mut self) {
        if let Some(h) = self.h.take() {
            leave(&self.m, &h);
            book(&self.shared, &self.m, &h, None);
        }
    }
}

/// A hedged copy that failed: its breakers and recovery, as for any failed leg.
fn settle_failed(shared: &Arc<Shared>, m: &Arc<ModelEntry>, r: &Arc<Replica>, ev: &Option<GenEvent>) {
    let f = match ev {
        Some(GenEvent::Failed(f)) => f.clone(),
        _ => {
            GenFailure { category: Category::ModelError, remote: None, message: "the replica's decoder stopped".into() }
        }
    };
    book(shared, m, r, Some(Outcome::Failure));
    shared.count_failure(f.category);
    recover(shared, m, r, &f);
}

/// A replica other than `not` with a free session place whose breakers admit a call, now or
/// never (a hedge does not wait).
fn try_place(shared: &Arc<Shared>, m: &Arc<ModelEntry>, not: u64) -> Option<Arc<Replica>> {
    let per_tab = shared.cfg.generation.sessions_per_tab as usize;
    let mut usable: Vec<Arc<Replica>> = m
        .replicas
        .lock()
        .expect("replicas")
        .iter()
        // A copy never goes to a lent tab: nothing would check it.
        .filter(|r| r.slot.serial != not && r.slot.usable() && r.slot.lent.is_none())
        .filter(|r| matches!(r.run, Runner::Sessions { .. }))
        .filter(|r| stages_admit(r))
        .cloned()
        .collect();
    usable.sort_by_key(|r| (r.streams(), r.slot.id));
    let h = usable.into_iter().find(|r| r.streams() < per_tab && breakers::acquire(shared, m, r))?;
    enter(&h);
    Some(h)
}

/// The replica to run a session on: among usable replicas with a free session place whose
/// breakers admit a call, the one running fewest streams (then the one not failed before).
/// Waits while all are busy; fails when no replica is usable for [`NO_REPLICA_WAIT`].
async fn place(
    shared: &Arc<Shared>,
    m: &Arc<ModelEntry>,
    avoid: &[u64],
    prompt: &[u32],
) -> Result<Arc<Replica>, PoolError> {
    // A lent tab works only while a trusted tab could check it.
    place_where(shared, m, avoid, prompt, |r| lending::checkable(m, r)).await
}

/// [`place`] among the replicas `pick` accepts; a replica in `avoid` only when no other is usable.
/// Among the others, the one likely to hold the longest start of `prompt` in its prefix cache
/// unless it is much busier (`policy::prefix_routing`), then the least loaded.
async fn place_where(
    shared: &Arc<Shared>,
    m: &Arc<ModelEntry>,
    avoid: &[u64],
    prompt: &[u32],
    pick: impl Fn(&Replica) -> bool,
) -> Result<Arc<Replica>, PoolError> {
    let mut no_replica_since: Option<Instant> = None;
    let per_tab = shared.cfg.generation.sessions_per_tab as usize;
    loop {
        if shared.closed.load(Ordering::SeqCst) {
            return Err(PoolError::ShutDown);
        }
        let mut usable: Vec<Arc<Replica>> = m
            .replicas
            .lock()
            .expect("replicas")
            .iter()
            .filter(|r| r.slot.usable() && matches!(r.run, Runner::Sessions { .. }) && stages_admit(r))
            .cloned()
            .collect();
        // Outside the replicas' lock: `pick` may look at the replicas itself.
        usable.retain(|r| pick(r));
        let least = usable.iter().map(|r| r.streams()).min().unwrap_or(0);
        usable.sort_by_cached_key(|r| {
            let hinted = match &r.run {
                Runner::Sessions { prefixes, .. } => prefixes.lock().expect("prefixes").longest(prompt),
                _ => 0,
            };
            let credit = prefix_routing::credit(hinted, r.streams(), least);
            (avoid.contains(&r.slot.serial), std::cmp::Reverse(credit), r.streams(), r.slot.id)
        });
        for r in &usable {
            if r.streams() < per_tab && breakers::acquire(shared, m, r) {
                enter(r);
                return Ok(r.clone());
            }
        }
        if usable.is_empty() {
            let since = *no_replica_since.get_or_insert_with(Instant::now);
            if since.elapsed() > NO_REPLICA_WAIT {
                return Err(PoolError::Failed {
                    attempts: 0,
                    message: format!("no replica of {} was usable for {NO_REPLICA_WAIT:?}", m.name),
                });
            }
        } else {
            no_replica_since = None;
        }
        let _ = tokio::time::timeout(RECHECK, m.wake.notified()).await;
    }
}

/// A sharded replica takes streams while every stage tab's breaker admits calls.
fn stages_admit(r: &Replica) -> bool {
    r.stages.as_ref().is_none_or(|st| st.admit(Instant::now()))
}

/// The tabs a stream on `r` keeps busy: its own, and a pipeline's stage tabs.
fn busy_slots(r: &Replica) -> Vec<Arc<super::state::Slot>> {
    match &r.stages {
        Some(st) => st.slots(),
        None => vec![r.slot.clone()],
    }
}

fn enter(r: &Replica) {
    if let Runner::Sessions { streams, .. } = &r.run {
        streams.fetch_add(1, Ordering::SeqCst);
    }
    for s in busy_slots(r) {
        s.streams.fetch_add(1, Ordering::SeqCst);
    }
}

fn leave(m: &ModelEntry, r: &Replica) {
    if let Runner::Sessions { streams, .. } = &r.run {
        streams.fetch_sub(1, Ordering::SeqCst);
    }
    for s in busy_slots(r) {
        // A stage tab replaced mid-stream was never counted: never below zero.
        let _ = s.streams.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        *s.last_active.lock().expect("slot") = Instant::now();
    }
    m.wake.notify_waiters();
}

/// Book a leg's outcome in the breakers; `None` (a cancelled stream says nothing about the
/// tab) only hands the call's probe back.
fn book(shared: &Shared, m: &ModelEntry, r: &Replica, outcome: Option<Outcome>) {
    breakers::book(shared, m, r, outcome, Instant::now());
}

/// A replica failed a stream: a lost socket sends its tab to recovery (page reload, browser
/// restart, models reloaded); a lost device reloads the model in place.
fn recover(shared: &Arc<Shared>, m: &Arc<ModelEntry>, r: &Arc<Replica>, f: &GenFailure) {
    // A pipeline's stage tabs are replaced by the pipeline itself: only its own tab's loss
    // sends it to recovery.
    let lost = matches!(f.category, Category::Connection | Category::Crash) && r.stages.is_none();
    if !r.slot.tab.is_connected() || lost {
        let (s, slot, detail) = (shared.clone(), r.slot.clone(), format!("lost during a generation step: {f}"));
        shared.spawn_background(async move { s.recover(slot, Category::Connection, &detail).await });
    } else if f.category == Category::DeviceLost {
        let (s, m, slot, detail) = (shared.clone(), m.clone(), r.slot.clone(), f.message.clone());
        shared.spawn_background(async move {
            let t = Instant::now();
            let ok = s.add_replica(&m, &slot).await;
            s.note_recovery(&slot, Category::DeviceLost, "reload_model", ok, t, &detail);
        });
    }
}

/// A lent replica's stream checked against a trusted copy of the same session: a token is
/// passed on only once both produced it at that position. At the first difference (or a
/// different length) the lent tab is quarantined and the stream goes on from the trusted copy,
/// so the client never sees a token the check refused; if the lent copy fails, the trusted one
/// simply goes on. The trusted copy's place and breaker call are given back when it ends.
fn shadow(
    shared: &Arc<Shared>,
    m: &Arc<ModelEntry>,
    (lent, mut lent_events, first): (Arc<Replica>, Events, Option<Option<GenEvent>>),
    (trusted, mut trusted_events): (Arc<Replica>, Events),
) -> Events {
    use std::collections::VecDeque;
    let (tx, rx) = mpsc::unbounded_channel();
    let (shared, m) = (shared.clone(), m.clone());
    tokio::spawn(async move {
        let (mut lq, mut tq) = (VecDeque::<u32>::new(), VecDeque::<u32>::new());
        let (mut lent_done, mut trusted_done) = (None::<GenEvent>, None::<GenEvent>);
        // After a disagreement, or once the lent copy failed: the trusted copy alone.
        let mut alone = false;
        let mut released = 0usize;
        let mut first = first;
        loop {
            enum From {
                Lent(Option<GenEvent>),
                Trusted(Option<GenEvent>),
            }
            let from = match first.take() {
                Some(ev) => From::Lent(ev),
                None => tokio::select! {
                    ev = lent_events.recv(), if !alone && lent_done.is_none() => From::Lent(ev),
                    ev = trusted_events.recv(), if trusted_done.is_none() => From::Trusted(ev),
                    () = tx.closed() => break,
                },
            };
            match from {
                From::Lent(Some(GenEvent::Token(t))) => lq.push_back(t),
                From::Lent(Some(done @ GenEvent::Done { .. })) => lent_done = Some(done),
                From::Lent(_) => {
                    // The lent copy failed or stopped: no verdict on it; the trusted one goes on.
                    alone = true;
                    lq.clear();
                }
                From::Trusted(Some(GenEvent::Token(t))) => tq.push_back(t),
                From::Trusted(Some(done @ GenEvent::Done { .. })) => trusted_done = Some(done),
                From::Trusted(ev) => {
                    // Without its check the stream cannot go on here: the supervisor replays it.
                    let why = match ev {
                        Some(GenEvent::Failed(f)) => f.message,
                        _ => "its decoder stopped".into(),
                    };
                    let _ = tx.send(GenEvent::Failed(GenFailure {
                        category: Category::ModelError,
                        remote: None,
                        message: format!("the trusted copy checking a lent tab's stream failed: {why}"),
                    }));
                    break;
                }
            }
            if !alone {
                while let (Some(&a), Some(&b)) = (lq.front(), tq.front()) {
                    if a != b {
                        lending::checked(
                            &shared,
                            &m,
                            &lent.slot,
                            Err(format!("token {released}: {a} where the trusted tab gave {b}")),
                        );
                        alone = true;
                        break;
                    }
                    lq.pop_front();
                    tq.pop_front();
                    released += 1;
                    let _ = tx.send(GenEvent::Token(a));
                }
                // One copy ended while the other still has (or had) tokens: they disagree.
                let longer = (lent_done.is_some() && !tq.is_empty()) || (trusted_done.is_some() && !lq.is_empty());
                if !alone && longer {
                    let why = format!("the streams differ in length after {released} tokens");
                    lending::checked(&shared, &m, &lent.slot, Err(why));
                    alone = true;
                }
                if !alone && lent_done.is_some() && trusted_done.is_some() {
                    lending::checked(&shared, &m, &lent.slot, Ok(()));
                    let _ = tx.send(lent_done.take().expect("checked above"));
                    break;
                }
            }
            if alone {
                // The trusted copy's tokens from the first one not yet released.
                for t in tq.drain(..) {
                    released += 1;
                    let _ = tx.send(GenEvent::Token(t));
                }
                if let Some(done) = trusted_done.take() {
                    let _ = tx.send(done);
                    break;
                }
            }
        }
        drop(lent_events);
        drop(trusted_events);
        leave(&m, &trusted);
        book(&shared, &m, &trusted, None);
    });
    rx
}
