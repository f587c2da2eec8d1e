//! Speech to text in the pool. A speech replica is one tab holding both parts (the encoder,
//! calibrated like a batch model, and the decoder with its sessions); a request holds one
//! replica for all its windows, in order, each conditioned on the text before it.
//!
//! Fairness with the other families: a transcription holds no execution place on its tab (it
//! counts as a stream there, like a generation). The tab handles one call at a time — an encoder
//! window (~0.1 s on WebNN here) or a decoder step (a few ms) — and batches of other models
//! dispatched to it meanwhile run between those calls, so a long file delays an embedding or an
//! image by at most one encoder window, never by the whole file. Transcriptions queue per model
//! for a free replica (bounded by `max_queue`, then 429), first come first served.
//!
//! Recovery: a request whose tab fails is run again from its first window on another replica
//! (greedy decoding is deterministic: the transcript is the one an undisturbed run gives); the
//! failed tab goes to the pool's recovery, which reloads both parts into it.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::PoolError;
use super::breakers;
use super::generation::NO_REPLICA_WAIT;
use super::state::{ModelEntry, Replica, Runner, Shared};
use crate::exec::transcriber::Transcript;
use crate::models::whisper::audio::Mel;
use crate::policy::breaker::Outcome;
use crate::policy::recovery::Category;
use crate::store::Record;
use crate::tab::TabError;

/// Attempts per request, each on a different replica when there is one.
const MAX_ATTEMPTS: u32 = 3;

/// What to transcribe.
pub enum Audio {
    /// 16 kHz mono samples.
    Samples(Arc<Vec<f32>>),
    /// Log-mel windows already made (`(first frame, window)`), and the audio's length in s.
    Windows(Vec<(usize, Mel)>, f64),
}

/// A transcription and where it ran.
#[derive(Debug, Clone)]
pub struct Transcribed {
    pub model: String,
    pub transcript: Transcript,
    pub tab: u64,
    pub kind: String,
    pub backend: String,
    pub queue_ms: f64,
    pub attempts: u32,
}

/// Run `audio` through a replica of `m`, with `context` (token ids) as the text before it.
pub(crate) async fn transcribe(
    shared: &Arc<Shared>,
    m: &Arc<ModelEntry>,
    audio: Audio,
    context: Vec<u32>,
    deadline: Option<Duration>,
) -> Result<Transcribed, PoolError> {
    if shared.closed.load(Ordering::SeqCst) {
        return Err(PoolError::ShutDown);
    }
    let limit = shared.cfg.max_queue;
    let waiting = m.waiting.fetch_add(1, Ordering::SeqCst);
    let _waiting = Dec(&m.waiting);
    if waiting >= limit {
        m.busy.fetch_add(1, Ordering::Relaxed);
        return Err(PoolError::Busy { model: m.name.clone(), queued: waiting, limit });
    }
    let started = Instant::now();
    let until = deadline.map(|d| started + d);
    let mut abandon = shared.abandon.subscribe();
    let (mut attempts, mut avoid) = (0u32, Vec::new());
    // Since when no replica has been usable at all (busy ones are waited for, like a queue).
    let mut none_usable: Option<Instant> = None;
    loop {
        if *abandon.borrow() || shared.closed.load(Ordering::SeqCst) {
            return Err(PoolError::ShutDown);
        }
        if until.is_some_and(|u| Instant::now() >= u) {
            return Err(PoolError::Deadline { after: deadline.unwrap_or_default() });
        }
        let Some(r) = pick(shared, m, &avoid) else {
            // Every replica lost: the pool's recovery may bring one back, as for generation
            // streams, but not waited for without end.
            if m.replicas.lock().expect("replicas").iter().any(|r| r.slot.usable()) {
                none_usable = None;
            } else if none_usable.get_or_insert_with(Instant::now).elapsed() > NO_REPLICA_WAIT {
                m.failed.fetch_add(1, Ordering::Relaxed);
                return Err(PoolError::Failed {
                    attempts,
                    message: format!("no replica of {} was usable for {NO_REPLICA_WAIT:?}", m.name),
                });
            }
            let wait = until.map_or(Duration::from_millis(200), |u| {
                u.saturating_duration_since(Instant::now()).min(Duration::from_millis(200))
            });
            tokio::select! {
                _ = m.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = abandon.changed() => {}
            }
            continue;
        };
        let Runner::Speech(lock) = &r.run else { unreachable!("pick() returns speech replicas") };
        let Ok(mut t) = lock.try_lock() else {
            breakers::book(shared, m, &r, None, Instant::now());
            continue;
        };
        attempts += 1;
        let queue_ms = started.elapsed().as_secs_f64() * 1e3;
        r.slot.streams.fetch_add(1, Ordering::SeqCst);
        // Counted as running: shutdown gives it the grace running batches get.
        shared.running_batches.fetch_add(1, Ordering::SeqCst);
        let t0 = Instant::now();
        let run = async {
            match &audio {
                Audio::Samples(s) => t.transcribe_after(s.clone(), &context).await,
                Audio::Windows(w, secs) => t.transcribe_windows(w.clone(), *secs, &context).await,
            }
        };
        let result = tokio::select! {
            r = run => Some(r),
            _ = abandon.changed() => None,
        };
        drop(t);
        shared.running_batches.fetch_sub(1, Ordering::SeqCst);
        r.slot.streams.fetch_sub(1, Ordering::SeqCst);
        *r.slot.last_active.lock().expect("slot") = Instant::now();
        m.wake.notify_one();
        let took = t0.elapsed();
        let Some(result) = result else {
            breakers::book(shared, m, &r, None, Instant::now());
            return Err(PoolError::ShutDown);
        };
        settle(shared, m, &r, &result, took, queue_ms);
        match result {
            Ok(transcript) => {
                m.served.fetch_add(1, Ordering::Relaxed);
                return Ok(Transcribed {
                    model: m.name.clone(),
                    transcript,
                    tab: r.slot.id,
                    kind: r.slot.kind.name.clone(),
                    backend: r.backend.clone(),
                    queue_ms,
                    attempts,
                });
            }
            Err(e) => {
                let category = TabError::category(&e);
                tracing::warn!(model = m.name, tab = r.slot.id, "transcription failed ({category:?}): {e:#}");
                if category == Category::BadInput {
                    m.failed.fetch_add(1, Ordering::Relaxed);
                    return Err(PoolError::BadInput(format!("{e:#}")));
                }
                if !r.slot.tab.is_connected() {
                    let (s, slot) = (shared.clone(), r.slot.clone());
                    let detail = format!("socket closed during a transcription: {e:#}");
                    shared.spawn_background(async move { s.recover(slot, Category::Connection, &detail).await });
                }
                avoid.push(r.slot.serial);
                if attempts >= MAX_ATTEMPTS {
                    m.failed.fetch_add(1, Ordering::Relaxed);
                    return Err(PoolError::Failed { attempts, message: format!("{e:#}") });
                }
                m.retried.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// A free speech replica: usable tab, breakers admitting (taken here), not one that failed this
/// request (unless no other is left), the least busy tab first, then the fastest calibration.
fn pick(shared: &Shared, m: &ModelEntry, avoid: &[u64]) -> Option<Arc<Replica>> {
    let now = Instant::now();
    let mut free: Vec<Arc<Replica>> = m
        .replicas
        .lock()
        .expect("replicas")
        .iter()
        .filter(|r| r.slot.usable())
        .filter(|r| matches!(&r.run, Runner::Speech(t) if t.try_lock().is_ok()))
        .filter(|r| r.slot.breaker.lock().expect("breaker").would_admit(now))
        .filter(|r| r.breaker.lock().expect("breaker").would_admit(now))
        .cloned()
        .collect();
    if free.iter().any(|r| !avoid.contains(&r.slot.serial)) {
        free.retain(|r| !avoid.contains(&r.slot.serial));
    }
    let encoder_ms = |r: &Replica| r.calibration.iter().filter_map(|c| c.median_ms).fold(f64::INFINITY, f64::min);
    free.sort_by(|a, b| {
        let busy = |r: &Replica| r.slot.in_flight.load(Ordering::SeqCst) + r.slot.streams.load(Ordering::SeqCst);
        busy(a).cmp(&busy(b)).then(encoder_ms(a).total_cmp(&encoder_ms(b)))
    });
    free.into_iter().find(|r| breakers::acquire(shared, m, r))
}

/// Book a run: breakers, the history (one execution row per request: its windows as rows, its
/// ids as tokens), the routing history in ms per window.
fn settle(
    shared: &Shared,
    m: &ModelEntry,
    r: &Replica,
    result: &anyhow::Result<Transcript>,
    took: Duration,
    queue_ms: f64,
) {
    let category = result.as_ref().err().map(TabError::category);
    let (windows, ids) = result.as_ref().map_or((0, 0), |t| (t.windows.len(), t.ids.len()));
    shared.keep(Record::Execution {
        model: m.name.clone(),
        kind: r.slot.kind.name.clone(),
        backend: r.backend.clone(),
        tab: r.slot.id,
        batch_rows: windows as u32,
        tokens: ids as u32,
        latency_ms: took.as_secs_f64() * 1e3,
        queue_ms,
        error: category.map(|c| c.name().to_string()),
        hedge: false,
    });
    let outcome = match category {
        None => Some(Outcome::Success { took }),
        Some(Category::BadInput) => None,
        Some(_) => Some(Outcome::Failure),
    };
    breakers::book(shared, m, r, outcome, Instant::now());
    r.slot.batches.fetch_add(1, Ordering::Relaxed);
    match category {
        None => {
            let ms_per_window = took.as_secs_f64() * 1e3 / windows.max(1) as f64;
            r.slot.rows.fetch_add(windows as u64, Ordering::Relaxed);
            shared.record(&m.name, &r.slot.kind.name, &r.backend, true, ms_per_window);
        }
        Some(c) => {
            shared.count_failure(c);
            shared.record(&m.name, &r.slot.kind.name, &r.backend, false, 0.0);
        }
    }
}

/// Decrements a counter when dropped (the request left the queue, however it ended).
struct Dec<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for Dec<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
