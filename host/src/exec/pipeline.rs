//! A model sharded into a pipeline of stages, each a [`Stepper`] holding some of its parts (in
//! its own tab, or on the host): a session is open on every stage, and a step runs the stages in
//! order, each stage's hidden state passing through the host to the next.
//!
//! Recovery (Petals' approach): the host keeps, per session, what each stage has been given —
//! the token ids for the first stage, the hidden rows for the others (2.3 KB per token per stage
//! at width 576). A stage lost mid-step (its tab closed, crashed or timed out) is replaced by
//! the pipeline's [`Replacer`] (a spare tab or a new one, the stage's weights loaded), every open
//! session is re-opened on it and its inputs replayed through it alone — which rebuilds exactly
//! the KV cache the lost stage had — and the step goes on from that stage. The other stages keep
//! their caches, and the stream sees the same tokens it would have without the fault.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, bail};
use futures_util::future::BoxFuture;
use shared_proto::{Sampling, StepRow, Tensor};

use super::stepper::{StepOut, Stepper};
use crate::policy::recovery;
use crate::tab::TabError;

/// Makes a new stepper for stage `i` (its weights loaded), in place of a lost one.
pub type Replacer = Arc<dyn Fn(usize) -> BoxFuture<'static, anyhow::Result<Stepper>> + Send + Sync>;

/// When a lost stage cannot be replaced: new stages for the whole model on the tabs left (a new
/// plan, its weights loaded), in model order. Called with the lost stage's index.
pub type Replanner = Arc<dyn Fn(usize) -> BoxFuture<'static, anyhow::Result<Vec<Stepper>>> + Send + Sync>;

/// Told of each stage call as it starts (`stage`); the [`StageCall`] it gives back (none: nothing
/// to book) is ended with the call's outcome. The pool takes the stage tab's breaker there — a
/// probe when it is half-open — and books the outcome, so breakers and health apply per stage.
pub type StageObserver = Arc<dyn Fn(usize) -> Option<StageCall> + Send + Sync>;

/// A stage call under way, from [`StageObserver`]: [`StageCall::end`] reports how it went —
/// `Ok(device ms)` or `Err(lost)`, `lost` when the stage's tab went
/// (`policy::recovery::stage_lost`). Dropped without an outcome (the step was cancelled
/// mid-call), it reports `None`: whatever its start took (a half-open probe) is handed back.
pub struct StageCall(Option<OnEnd>);

/// What a [`StageCall`] does when it ends: told the call's outcome, `None` if it had none.
type OnEnd = Box<dyn FnOnce(Option<Result<f64, bool>>) + Send>;

impl StageCall {
    pub fn new(on_end: impl FnOnce(Option<Result<f64, bool>>) + Send + 'static) -> StageCall {
        StageCall(Some(Box::new(on_end)))
    }

    pub fn end(mut self, outcome: Result<f64, bool>) {
        if let Some(f) = self.0.take() {
            f(Some(outcome));
        }
    }
}

impl Drop for StageCall {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f(None);
        }
    }
}

/// Tokens replayed per step when a replacement rebuilds a session's KV cache (the decoder's
/// step size: one step's worth of prefill).
const REPLAY_CHUNK: usize = 256;

/// Replacements tried for one stage within one step before the step fails.
const MAX_REPLACEMENTS: usize = 2;

pub struct Pipeline {
    stages: Mutex<Vec<Arc<Stepper>>>,
    /// One turn per stage: a stage runs one call at a time (a tab refuses a second step of a
    /// model while one runs), and a replacement holds the turn while it rebuilds the stage.
    turns: Mutex<Vec<Arc<tokio::sync::Mutex<()>>>>,
    /// Groups a step's rows are split into, each going through the stages behind the one before
    /// (1: the whole step goes stage by stage; more: stages work at once on different sessions).
    micro_batches: usize,
    /// Per open session: its capacity and the inputs each stage committed.
    history: Mutex<HashMap<u64, History>>,
    replacer: Option<Replacer>,
    replanner: Option<Replanner>,
    observer: Option<StageObserver>,
    /// Width of the hidden state between stages.
    width: u32,
    pub stats: PipelineStats,
}

#[derive(Default)]
pub struct PipelineStats {
    /// Stages replaced after a loss.
    pub recoveries: AtomicU64,
    /// Loss seen → replacement loaded, sessions re-opened and replayed (ms), one per recovery.
    pub recovery_ms: Mutex<Vec<f64>>,
    /// Tokens replayed into replacements.
    pub replayed_tokens: AtomicU64,
    /// New plans made on the tabs left, after a stage could not be replaced.
    pub replans: AtomicU64,
}

struct History {
    capacity: u32,
    /// Every token stage 0 committed, in order (stage i has committed a prefix of them).
    tokens: Vec<u32>,
    /// For stage i ≥ 1 (index i − 1): the hidden rows it committed, `width` floats each.
    hidden: Vec<Vec<f32>>,
}

impl Pipeline {
    /// `stages` in model order; hidden states of `width` floats pass between them; a step's rows
    /// go through in up to `micro_batches` groups.
    pub fn new(
        stages: Vec<Stepper>,
        width: u32,
        micro_batches: usize,
        replacer: Option<Replacer>,
    ) -> anyhow::Result<Pipeline> {
        if stages.is_empty() {
            bail!("a pipeline needs at least one stage");
        }
        Ok(Pipeline {
            turns: Mutex::new(stages.iter().map(|_| Arc::new(tokio::sync::Mutex::new(()))).collect()),
            micro_batches: micro_batches.max(1),
            stages: Mutex::new(stages.into_iter().map(Arc::new).collect()),
            history: Mutex::new(HashMap::new()),
            replacer,
            replanner: None,
            observer: None,
            width,
            stats: PipelineStats::default(),
        })
    }

    /// Re-plan on the tabs left when a lost stage cannot be replaced. Only for pipelines without
    /// micro-batches: a re-plan swaps every stage, which no step in flight may see.
    pub fn with_replanner(mut self, replanner: Replanner) -> Pipeline {
        if self.micro_batches == 1 {
            self.replanner = Some(replanner);
        }
        self
    }

    /// Tell `observer` of every stage call, as it starts and as it ends.
    pub fn with_observer(mut self, observer: StageObserver) -> Pipeline {
        self.observer = Some(observer);
        self
    }

    /// Stage `i` is called now: what the observer needs to book the call's outcome.
    fn begin(&self, i: usize) -> Option<StageCall> {
        self.observer.as_ref().and_then(|o| o(i))
    }

    fn turn(&self, i: usize) -> Arc<tokio::sync::Mutex<()>> {
        self.turns.lock().expect("turns")[i].clone()
    }

    fn len(&self) -> usize {
        self.stages.lock().expect("stages").len()
    }

    /// The stages as of now (a replacement swaps one).
    pub fn stages(&self) -> Vec<Arc<Stepper>> {
        self.stages.lock().expect("stages").clone()
    }

    fn stage(&self, i: usize) -> Arc<Stepper> {
        self.stages.lock().expect("stages")[i].clone()
    }

    /// Open `session` on every stage (a lost stage is replaced first); the KV bytes reserved
    /// in all. A stage that refuses closes it on the ones opened.
    pub async fn open(&self, session: u64, capacity: u32) -> anyhow::Result<u64> {
        let n = self.len();
        let mut total = 0;
        for i in 0..n {
            let mut replaced = 0;
            let turn = self.turn(i);
            let _turn = turn.lock().await;
            loop {
                match self.stage(i).open(session, capacity).await {
                    Ok(b) => {
                        total += b;
                        break;
                    }
                    Err(e) => {
                        if let Some(replacer) = self.replacer_for(&e, replaced) {
                            replaced += 1;
                            self.replace(i, replacer)
                                .await
                                .with_context(|| format!("replacing stage {i} after: {e:#}"))?;
                            continue;
                        }
                        for (j, s) in self.stages()[..i].iter().enumerate() {
                            let turn = self.turn(j);
                            let _turn = turn.lock().await;
                            let _ = s.close(session).await;
                        }
                        return Err(e.context(format!("opening session {session} on stage {i} of {n}")));
                    }
                }
            }
        }
        let hidden = vec![Vec::new(); n - 1];
        self.history.lock().expect("history").insert(session, History { capacity, tokens: Vec::new(), hidden });
        Ok(total)
    }

    /// Free `session` on every stage (all tried; the first error returned).
    pub async fn close(&self, session: u64) -> anyhow::Result<()> {
        self.history.lock().expect("history").remove(&session);
        let mut first_err = None;
        for (i, stage) in self.stages().iter().enumerate() {
            let turn = self.turn(i);
            let _turn = turn.lock().await;
            if let Err(e) = stage.close(session).await {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// One step through every stage: the sampled ids of `rows` in order and the stages' time.
    /// With micro-batches the rows go through in groups, a group entering a stage as the one
    /// before it leaves, so the stages (tabs) compute at once.
    pub async fn step(&self, rows: Vec<StepRow>) -> anyhow::Result<(StepOut, f64)> {
        let groups = self.micro_batches.min(rows.len()).max(1);
        if groups == 1 {
            return self.step_group(rows).await;
        }
        let size = rows.len().div_ceil(groups);
        let parts = rows.chunks(size).map(|g| self.step_group(g.to_vec()));
        let (mut ids, mut total) = (Vec::with_capacity(rows.len()), 0.0);
        for r in futures_util::future::join_all(parts).await {
            match r? {
                (StepOut::Tokens(t), ms) => {
                    ids.extend(t);
                    total += ms;
                }
                (other, _) => bail!("a pipeline's last stage gave {other:?}"),
            }
        }
        Ok((StepOut::Tokens(ids), total))
    }

    /// `rows` through every stage; a lost stage is replaced and the rows go on from it, or —
    /// when it cannot be — the model is re-planned on the tabs left and the rows run again.
    async fn step_group(&self, rows: Vec<StepRow>) -> anyhow::Result<(StepOut, f64)> {
        let mut replanned = false;
        'plan: loop {
            let n = self.len();
            let (mut hidden, mut total) = (Vec::new(), 0.0);
            for i in 0..n {
                let turn = self.turn(i);
                let guard = turn.lock().await;
                let (mut replaced, mut lost) = (0, false);
                let t_stage = Instant::now();
                let result = loop {
                    let call = self.begin(i);
                    let stepped = self.stage(i).step_with(rows.clone(), hidden.clone()).await;
                    match stepped {
                        Ok(r) => {
                            if let Some(c) = call {
                                c.end(Ok(r.1));
                            }
                            break Ok(r);
                        }
                        Err(e) => {
                            let gone = recovery::stage_lost(TabError::category(&e));
                            if let Some(c) = call {
                                c.end(Err(gone));
                            }
                            lost |= gone;
                            let Some(replacer) = self.replacer_for(&e, replaced) else {
                                break Err(e.context(format!("stage {i} of {n}")));
                            };
                            replaced += 1;
                            tracing::warn!("stage {i} of {n} lost ({e:#}): replacing it and replaying its sessions");
                            if let Err(re) = self.replace(i, replacer).await {
                                break Err(re.context(format!("replacing stage {i} of {n} after: {e:#}")));
                            }
                        }
                    }
                };
                let (out, ms) = match result {
                    Ok(r) => r,
                    Err(e) => {
                        drop(guard);
                        let Some(replanner) = self.replanner.as_ref().filter(|_| lost && !replanned) else {
                            return Err(e);
                        };
                        replanned = true;
                        tracing::warn!("stage {i} of {n} could not be replaced ({e:#}): re-planning on the tabs left");
                        self.replan(i, replanner, &rows).await.with_context(|| format!("re-planning after: {e:#}"))?;
                        continue 'plan;
                    }
                };
                total += ms;
                tracing::debug!(
                    stage = i,
                    rows = rows.len(),
                    device_ms = ms,
                    wall_ms = t_stage.elapsed().as_secs_f64() * 1e3,
                    "stage stepped"
                );
                self.commit(i, &rows, &hidden);
                drop(guard);
                match out {
                    StepOut::Hidden(h) if i + 1 < n => hidden = vec![h],
                    out if i + 1 == n => return Ok((out, total)),
                    other => bail!("stage {i} of {n} gave {other:?}"),
                }
            }
            bail!("a pipeline without stages")
        }
    }

    /// New stages from `replanner` in place of every stage, the open sessions re-opened on them
    /// and their tokens — all but this step's `rows`, which run again afterwards — replayed
    /// through the new pipeline.
    async fn replan(&self, lost: usize, replanner: &Replanner, rows: &[StepRow]) -> anyhow::Result<()> {
        let t0 = Instant::now();
        let fresh = replanner(lost).await?;
        anyhow::ensure!(!fresh.is_empty(), "a re-plan without stages");
        let n = fresh.len();
        let sessions: Vec<(u64, u32, Vec<u32>)> = {
            let mut history = self.history.lock().expect("history");
            history
                .iter_mut()
                .map(|(&id, h)| {
                    let mut tokens = std::mem::take(&mut h.tokens);
                    // Stage 0 committed this step's tokens when a later stage failed: they run again.
                    if lost > 0
                        && let Some(r) = rows.iter().find(|r| r.session == id)
                    {
                        tokens.truncate(tokens.len().saturating_sub(r.tokens.len()));
                    }
                    h.hidden = vec![Vec::new(); n - 1];
                    (id, h.capacity, tokens)
                })
                .collect()
        };
        *self.stages.lock().expect("stages") = fresh.into_iter().map(Arc::new).collect();
        *self.turns.lock().expect("turns") = (0..n).map(|_| Arc::new(tokio::sync::Mutex::new(()))).collect();
        let mut replayed = 0;
        for (id, capacity, tokens) in sessions {
            for stage in self.stages() {
                stage.open(id, capacity).await.with_context(|| format!("re-opening session {id}"))?;
            }
            for chunk in tokens.chunks(REPLAY_CHUNK) {
                let row = StepRow { session: id, tokens: chunk.to_vec(), sampling: Sampling::Greedy };
                Box::pin(self.step_group(vec![row])).await.with_context(|| format!("replaying session {id}"))?;
                replayed += chunk.len();
            }
        }
        self.stats.replans.fetch_add(1, Ordering::Relaxed);
        self.stats.replayed_tokens.fetch_add(replayed as u64, Ordering::Relaxed);
        self.stats.recovery_ms.lock().expect("stats").push(t0.elapsed().as_secs_f64() * 1e3);
        tracing::info!("re-planned into {n} stages in {:?}, {replayed} tokens replayed", t0.elapsed());
        Ok(())
    }

    /// The replacer, when `e` lost a stage (`policy::recovery::stage_lost`) and fewer than
    /// `MAX_REPLACEMENTS` were tried for it.
    fn replacer_for(&self, e: &anyhow::Error, replaced: usize) -> Option<&Replacer> {
        let lost = recovery::stage_lost(TabError::category(e));
        self.replacer.as_ref().filter(|_| lost && replaced < MAX_REPLACEMENTS)
    }

    /// Record what stage `i` committed: `rows`' tokens (stage 0) or `hidden`'s rows.
    fn commit(&self, i: usize, rows: &[StepRow], hidden: &[Tensor]) {
        let mut history = self.history.lock().expect("history");
        let w = self.width as usize;
        let floats = hidden.first().and_then(Tensor::to_f32).unwrap_or_default();
        let mut at = 0;
        for r in rows {
            let n = r.tokens.len();
            if let Some(h) = history.get_mut(&r.session) {
                if i == 0 {
                    h.tokens.extend(&r.tokens);
                } else if let Some(part) = floats.get(at * w..(at + n) * w) {
                    h.hidden[i - 1].extend_from_slice(part);
                }
            }
            at += n;
        }
    }

    /// Put a new stepper in place of stage `i` and rebuild every open session's KV cache on it.
    async fn replace(&self, i: usize, replacer: &Replacer) -> anyhow::Result<()> {
        let t0 = Instant::now();
        let fresh = replacer(i).await?;
        let sessions: Vec<(u64, u32, Vec<u32>, Vec<f32>)> = {
            let history = self.history.lock().expect("history");
            history
                .iter()
                .map(|(&id, h)| {
                    let hidden = if i == 0 { Vec::new() } else { h.hidden[i - 1].clone() };
                    // Stage i committed every token stage 0 did, or (its own step failing) one
                    // step fewer: its own inputs say how many.
                    let done = if i == 0 { h.tokens.len() } else { hidden.len() / self.width as usize };
                    (id, h.capacity, h.tokens[..done].to_vec(), hidden)
                })
                .collect()
        };
        let mut replayed = 0;
        for (id, capacity, tokens, hidden) in sessions {
            fresh.open(id, capacity).await.with_context(|| format!("re-opening session {id}"))?;
            let w = self.width as usize;
            for (c, chunk) in tokens.chunks(REPLAY_CHUNK).enumerate() {
                let row = StepRow { session: id, tokens: chunk.to_vec(), sampling: Sampling::Greedy };
                let input = if i == 0 {
                    Vec::new()
                } else {
                    let rows = &hidden[c * REPLAY_CHUNK * w..(c * REPLAY_CHUNK + chunk.len()) * w];
                    vec![Tensor::from_f32(vec![chunk.len() as u32, self.width], rows)]
                };
                // The replayed step's output (a hidden state or a sampled id) was already used.
                fresh.step_with(vec![row], input).await.with_context(|| format!("replaying session {id}"))?;
                replayed += chunk.len();
            }
        }
        self.stages.lock().expect("stages")[i] = Arc::new(fresh);
        self.stats.recoveries.fetch_add(1, Ordering::Relaxed);
        self.stats.replayed_tokens.fetch_add(replayed as u64, Ordering::Relaxed);
        self.stats.recovery_ms.lock().expect("stats").push(t0.elapsed().as_secs_f64() * 1e3);
        tracing::info!("stage {i} replaced in {:?}, {replayed} tokens replayed", t0.elapsed());
        Ok(())
    }
}
