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
//! Split (`[generation] shards = 2`, strategy component; `serve --shards 2 --strategy
//! component`): a replica is two tabs, the encoder in its own slot (the lead, calibrated there)
//! and the decoder in a second one claimed from the free tabs (`StageSlots`, shown in the status
//! like a pipeline's stages). A window's encoder output crosses to the decoder's tab once; the
//! decoder's steps never leave it.
//!
//! Recovery: a lost decoder tab of a split replica is replaced while the request runs (a free
//! tab, a new one, or the lost one once the pool's recovery has reloaded it) and the window's
//! session replayed there — its memory sent again, prompt and ids so far re-run. Any other lost
//! tab (one holding both parts, or a split's encoder) loses the replica: the request is run again
//! from its first window on another replica. Either way the transcript is the one an undisturbed
//! run gives (greedy decoding is deterministic), and the failed tab goes to the pool's recovery,
//! which loads a replica into it again.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use std::sync::{Mutex, OnceLock};

use futures_util::future::BoxFuture;

use super::PoolError;
use super::breakers;
use super::generation::NO_REPLICA_WAIT;
use super::pipelines::StageSlots;
use super::state::{ModelEntry, Replica, Runner, Shared, Slot};
use crate::exec::transcriber::{SpeechParts, Transcript};
use crate::exec::{Replacer, Stepper, WeightUpload};
use crate::models::whisper::audio::Mel;
use crate::policy::backend_choice::Measured;
use crate::policy::breaker::Outcome;
use crate::policy::recovery::Category;
use crate::policy::sharding::Strategy;
use crate::store::Record;
use crate::tab::TabError;

/// Attempts per request, each on a different replica when there is one.
const MAX_ATTEMPTS: u32 = 3;

/// How long a split replica's load waits for a lost replica's request to let go of a tab.
const DECODER_TAB_WAIT: Duration = Duration::from_secs(60);

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
        // A split's other tab is busy too (the scaler must not take it for idle).
        let tabs: Vec<Arc<Slot>> = match &r.stages {
            Some(st) => st.slots(),
            None => vec![r.slot.clone()],
        };
        tabs.iter().for_each(|s| _ = s.streams.fetch_add(1, Ordering::SeqCst));
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
        for s in &tabs {
            s.streams.fetch_sub(1, Ordering::SeqCst);
            *s.last_active.lock().expect("slot") = Instant::now();
        }
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
        .filter(|r| r.stages.as_ref().is_none_or(|st| st.admit(now)))
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

/// A loaded speech replica: its runner, backend label, calibration, and its tabs when split.
type Loaded = (Runner, String, Vec<Measured>, Option<Arc<StageSlots>>);

impl Shared {
    /// A speech replica led by `slot`: the encoder there (calibrated like a batch model, per kind
    /// once) and the decoder there too, or — split — in a free tab claimed under `m.claiming`.
    /// `Ok(None)`: split, and no free tab for the decoder; `slot` stays free for a later replica.
    pub(super) async fn load_speech(
        self: &Arc<Self>,
        m: &Arc<ModelEntry>,
        parts: &Arc<SpeechParts>,
        slot: &Arc<Slot>,
        progress: &dyn WeightUpload,
    ) -> Result<Option<Loaded>, (String, anyhow::Error)> {
        let (backend, known) = self.backend_for(m, slot);
        let err = |e: anyhow::Error| (backend.to_string(), e);
        let (t, measured, stages) = if self.speech_split() {
            // A free tab for the decoder. One a lost replica's running request still holds (its
            // decoder, when the lead was lost) comes free when that request ends: waited for.
            let t0 = Instant::now();
            let (_claim, dec) = loop {
                let claim = m.claiming.lock().await;
                if let Some(dec) = self.free_for(m, slot.serial).into_iter().next() {
                    break (claim, dec);
                }
                drop(claim);
                let held = m.leaving.lock().expect("leaving").iter().any(|w| w.strong_count() > 0);
                if !held || t0.elapsed() > DECODER_TAB_WAIT || self.closed.load(Ordering::SeqCst) {
                    return Ok(None);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            let (t, measured) = parts.load_in_tabs(&slot.tab, &dec.tab, backend, progress).await.map_err(err)?;
            let stages = Arc::new(StageSlots {
                slots: Mutex::new(vec![slot.clone(), dec.clone()]),
                stage_tab: vec![0, 1],
                loaded_on: Mutex::new(vec![slot.serial, dec.serial]),
                labels: vec!["encoder".into(), "decoder".into()],
                strategy: Strategy::Component,
                stepper: OnceLock::new(),
            });
            self.log(
                "split",
                Some(&slot.kind.name),
                Some(slot.id),
                &format!("{}: encoder in tab {}, decoder in tab {}", m.name, slot.id, dec.id),
            );
            let t = t.with_decoder_replacer(self.decoder_replacer(m, parts, &stages));
            (t, measured, Some(stages))
        } else {
            let (t, measured) = parts.load_in_tab(&slot.tab, backend, progress).await.map_err(err)?;
            (t, measured, None)
        };
        let calibration = Self::remember_calibration(m, slot, known, t.encoder_backend().as_ref(), measured);
        let label = match stages {
            Some(_) => format!("{} ×2 component", t.backend()),
            None => t.backend(),
        };
        let run = Runner::Speech(Box::new(tokio::sync::Mutex::new(t.with_gate(self.gate.clone()))));
        Ok(Some((run, label, calibration, stages)))
    }

    /// The pool's replacement of a split replica's lost decoder tab, holding only weak
    /// references (the transcriber lives inside the model entry and the pool).
    fn decoder_replacer(
        self: &Arc<Self>,
        m: &Arc<ModelEntry>,
        parts: &Arc<SpeechParts>,
        stages: &Arc<StageSlots>,
    ) -> Replacer {
        let (shared, m, parts, stages) =
            (Arc::downgrade(self), Arc::downgrade(m), Arc::downgrade(parts), Arc::downgrade(stages));
        Arc::new(move |_| {
            let (shared, m, parts, stages) = (shared.clone(), m.clone(), parts.clone(), stages.clone());
            Box::pin(async move {
                let gone = || anyhow::anyhow!("the pool or the model is gone");
                let (shared, m) = (shared.upgrade().ok_or_else(gone)?, m.upgrade().ok_or_else(gone)?);
                let (parts, stages) = (parts.upgrade().ok_or_else(gone)?, stages.upgrade().ok_or_else(gone)?);
                shared.replace_decoder(&m, &parts, &stages).await
            }) as BoxFuture<'static, anyhow::Result<Stepper>>
        })
    }

    /// A tab for a split replica's lost decoder ([`Shared::claim_replacement`]), the decoder
    /// loaded into it.
    async fn replace_decoder(
        self: &Arc<Self>,
        m: &Arc<ModelEntry>,
        parts: &SpeechParts,
        stages: &StageSlots,
    ) -> anyhow::Result<Stepper> {
        let t = Instant::now();
        let old = stages.slots()[1].clone();
        let what = format!("the decoder of {}", m.name);
        let slot =
            self.claim_replacement(m, &old, &what, |s| stages.slots.lock().expect("stages")[1] = s.clone()).await?;
        let loaded = parts.load_decoder(&slot.tab, &()).await;
        let detail = format!("{what} moved from tab {} to tab {}", old.id, slot.id);
        match &loaded {
            Ok(_) => {
                stages.loaded_on.lock().expect("stages")[1] = slot.serial;
                self.note_recovery(&slot, Category::Connection, "replace_stage", true, t, &detail)
            }
            Err(e) => {
                self.note_recovery(&slot, Category::Connection, "replace_stage", false, t, &format!("{detail}: {e:#}"))
            }
        }
        loaded
    }
}

/// Decrements a counter when dropped (the request left the queue, however it ended).
struct Dec<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for Dec<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
