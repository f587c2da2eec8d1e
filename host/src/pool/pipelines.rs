//! Sharded generation replicas. With `[generation] shards = N` a replica of a generation model is
//! a pipeline of N stage tabs (`exec::Pipeline`): the replica's own slot (the lead) holds stage 0
//! and is what routing, hedging and replay see; the pool reserves one more slot per further
//! stage. Each stage tab loads only its own share of the weights.
//!
//! Per stage: every stage call takes that stage tab's breaker as it starts and books its
//! outcome (or hands a probe back) as it ends, through the same `breakers::acquire_all` /
//! `book_all` replicas use — so a stage breaker lives the same closed → open → half-open →
//! closed life (the lead's is taken per stream, as for any replica). A replica whose stage
//! breaker refuses takes no new stream; its streams already running still step through the
//! stage, booked only while the breaker admits them (closed, or as a half-open probe). A stage tab lost mid-generation is replaced by the pool — a free tab, or a new
//! one while below `max_tabs`, or the lost tab itself once the pool's recovery has reloaded it —
//! and the pipeline replays its sessions' inputs through the new stage (see `exec::pipeline`).
//! A lost lead is a lost replica: its streams are replayed on another one, and the lead's
//! recovery builds a new pipeline on free tabs.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::future::BoxFuture;
use shared_proto::{Graph, Tensor};

use super::breakers;
use super::state::{Generator, ModelEntry, Replica, Runner, Shared, Slot};
use crate::exec::pipeline::StageCall;
use crate::exec::{Decoder, Pipeline, Replacer, StageObserver, StepLimits, Stepper};
use crate::family::{KvLimits, SessionModel};
use crate::policy::backend_choice;
use crate::policy::breaker::{self, Breaker, Outcome};
use crate::policy::recovery::Category;
use crate::policy::sharding::{self, Part, Strategy};

/// How long a lost stage waits for a tab to load into (a free one, a new one, or the lost one
/// reloaded by the pool's recovery) before its pipeline gives up on it.
const REPLACE_WAIT: Duration = Duration::from_secs(60);

/// One stage of a sharded model: its graph and weights, built once at load.
pub struct StageSpec {
    pub graph: Graph,
    pub weights: Vec<Tensor>,
}

/// A generation model split for the pool's pipelines: stages in model order, each on one of
/// `tabs` tabs (a tab may hold several stages: component and attention-ffn splits come back to
/// a tab they left).
pub struct Sharded {
    pub strategy: Strategy,
    pub micro_batches: usize,
    pub stages: Vec<StageSpec>,
    /// The tab (0-based, 0 the lead) each stage runs on.
    pub stage_tab: Vec<usize>,
    /// Per tab, its parts in short (`label`).
    pub tab_labels: Vec<String>,
}

impl Sharded {
    /// `model` split into `shards` stages by `strategy` on equal tabs (the pool has no measured
    /// speeds yet when it loads), each stage's graph with a KV cache of `limits`.
    pub fn build(
        model: &dyn SessionModel,
        limits: KvLimits,
        shards: u32,
        strategy: Strategy,
    ) -> anyhow::Result<Sharded> {
        let (layout, micro_batches) = sharding::layout(strategy, &model.part_costs()?, None, shards as usize)?;
        let tabs = layout.iter().map(|(t, _)| t + 1).max().unwrap_or(1);
        let tab_labels = (0..tabs)
            .map(|t| {
                let parts: Vec<Part> = layout.iter().filter(|(s, _)| *s == t).flat_map(|(_, p)| p.clone()).collect();
                label(&parts)
            })
            .collect();
        let stage_tab = layout.iter().map(|(t, _)| *t).collect();
        let stages = layout
            .into_iter()
            .map(|(_, parts)| {
                let (graph, weights) = model.stage_graph(limits, &parts)?;
                Ok(StageSpec { graph, weights })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Sharded { strategy, micro_batches, stages, stage_tab, tab_labels })
    }
}

/// The tabs of one pipeline replica (0: the lead, the replica's own slot).
pub(crate) struct StageSlots {
    pub slots: Mutex<Vec<Arc<Slot>>>,
    /// The tab each stage runs on (index into `slots`).
    pub stage_tab: Vec<usize>,
    /// The slot (serial) each stage was loaded on: a stage whose tab's slot differs was left
    /// behind when another stage of that tab moved.
    pub loaded_on: Mutex<Vec<u64>>,
    /// Per tab, its parts in short.
    pub labels: Vec<String>,
    pub strategy: Strategy,
    /// The pipeline (for its recovery figures), set once it is built.
    pub stepper: OnceLock<Arc<Stepper>>,
}

impl StageSlots {
    pub fn slots(&self) -> Vec<Arc<Slot>> {
        self.slots.lock().expect("stages").clone()
    }

    /// Whether every stage after the lead may take a call now (the lead's breakers are asked
    /// per stream, as for any replica).
    pub fn admit(&self, now: Instant) -> bool {
        self.slots().iter().skip(1).all(|s| s.breaker.lock().expect("breaker").would_admit(now))
    }

    /// The pipeline's recovery figures: stages replaced, tokens replayed, re-plans.
    pub fn recoveries(&self) -> (u64, u64) {
        match self.stepper.get().map(|s| &**s) {
            Some(Stepper::Pipeline(p)) => {
                (p.stats.recoveries.load(Ordering::Relaxed), p.stats.replayed_tokens.load(Ordering::Relaxed))
            }
            _ => (0, 0),
        }
    }
}

/// A stage's parts in short: `embed, L0-14` · `L15-29, head` · `attn 0-29` · `ffn 0-29`.
pub fn label(parts: &[Part]) -> String {
    let mut items: Vec<(&str, u32)> = Vec::new();
    let mut out: Vec<String> = Vec::new();
    let has = |p: Part| parts.contains(&p);
    for p in parts {
        match *p {
            Part::Embed => out.push("embed".into()),
            Part::Head => {
                flush(&mut items, &mut out);
                out.push("head".into());
            }
            Part::Attention(l) if has(Part::Ffn(l)) => items.push(("L", l)),
            Part::Attention(l) => items.push(("attn ", l)),
            Part::Ffn(l) if has(Part::Attention(l)) => {}
            Part::Ffn(l) => items.push(("ffn ", l)),
        }
    }
    flush(&mut items, &mut out);
    return out.join(", ");

    // Runs of one kind over consecutive layers become ranges.
    fn flush(items: &mut Vec<(&str, u32)>, out: &mut Vec<String>) {
        let mut i = 0;
        while i < items.len() {
            let (kind, first) = items[i];
            let mut j = i;
            while j + 1 < items.len() && items[j + 1].0 == kind && items[j + 1].1 == items[j].1 + 1 {
                j += 1;
            }
            let last = items[j].1;
            out.push(if last == first { format!("{kind}{first}") } else { format!("{kind}{first}-{last}") });
            i = j + 1;
        }
        items.clear();
    }
}

impl Shared {
    /// Serials of the slots `m`'s replicas use: their own slots and every pipeline stage's —
    /// also of replicas taken out that a running request still holds (`ModelEntry::leaving`).
    pub(crate) fn slots_in_use(m: &ModelEntry) -> HashSet<u64> {
        let mut used = HashSet::new();
        let leaving: Vec<Arc<Replica>> =
            m.leaving.lock().expect("leaving").iter().filter_map(|w| w.upgrade()).collect();
        for r in m.replicas.lock().expect("replicas").iter().chain(&leaving) {
            used.insert(r.slot.serial);
            if let Some(st) = &r.stages {
                used.extend(st.slots().iter().map(|s| s.serial));
            }
        }
        used
    }

    /// Usable tabs `m` may use that none of its replicas uses, other than `not`.
    pub(crate) fn free_for(&self, m: &ModelEntry, not: u64) -> Vec<Arc<Slot>> {
        let used = Self::slots_in_use(m);
        self.slots()
            .into_iter()
            .filter(|s| {
                s.usable() && s.lent.is_none() && s.serial != not && !used.contains(&s.serial) && m.allows(&s.kind.name)
            })
            .collect()
    }

    /// A pipeline replica of `g` led by `lead`: stage 0 there, the other stages on free tabs
    /// (claimed under `m.claiming`, so two loads never take the same tab), all loading at once.
    /// `Ok(None)`: too few free tabs — `lead` stays free for a later pipeline.
    pub(crate) async fn load_pipeline(
        self: &Arc<Self>,
        m: &Arc<ModelEntry>,
        g: &Arc<Generator>,
        lead: &Arc<Slot>,
        progress: &dyn crate::exec::WeightUpload,
    ) -> Result<Option<(Runner, String, Arc<StageSlots>)>, (String, anyhow::Error)> {
        let sharded = g.sharded.as_ref().expect("a sharded model");
        let (n, tabs) = (sharded.stages.len(), sharded.tab_labels.len());
        let _claim = m.claiming.lock().await;
        let free = self.free_for(m, lead.serial);
        if free.len() + 1 < tabs {
            return Ok(None);
        }
        // Stages on machines (Grid nodes) the pipeline has no stage on yet first: stages on one
        // node share its cores, and the loss of one node should take as few as possible.
        let mut slots = vec![lead.clone()];
        slots.extend(free);
        let nodes: Vec<Option<String>> = slots.iter().map(|s| s.node_id()).collect();
        let order = crate::policy::placement::spread(&nodes.iter().map(Option::as_deref).collect::<Vec<_>>());
        let slots: Vec<Arc<Slot>> = order.into_iter().take(tabs).map(|i| slots[i].clone()).collect();
        let loads = (0..n).map(|i| self.load_stage(m, g, i, &slots[sharded.stage_tab[i]], progress));
        let mut steppers = Vec::with_capacity(n);
        for (i, r) in futures_util::future::join_all(loads).await.into_iter().enumerate() {
            steppers.push(r.map_err(|e| (format!("stage {i}"), e))?);
        }
        let backend = steppers[0].backend();
        let loaded_on = sharded.stage_tab.iter().map(|&t| slots[t].serial).collect();
        let stages = Arc::new(StageSlots {
            slots: Mutex::new(slots),
            stage_tab: sharded.stage_tab.clone(),
            loaded_on: Mutex::new(loaded_on),
            labels: sharded.tab_labels.clone(),
            strategy: sharded.strategy,
            stepper: OnceLock::new(),
        });
        let pipeline =
            Pipeline::new(steppers, g.model.hidden() as u32, sharded.micro_batches, Some(self.replacer(m, g, &stages)))
                .map_err(|e| (backend.clone(), e))?
                .with_observer(self.observer(m, &stages));
        let stepper = Arc::new(Stepper::Pipeline(pipeline));
        let _ = stages.stepper.set(stepper.clone());
        let gen_cfg = &self.cfg.generation;
        let limits = StepLimits { max_tokens: gen_cfg.step_tokens, max_rows: gen_cfg.sessions_per_tab as usize };
        let run = Runner::Sessions {
            decoder: Decoder::start(stepper, limits, Some(self.gate.clone())),
            streams: Default::default(),
            // A pipeline reuses no prefix (see `Stepper::open_reusing`): nothing is remembered.
            prefixes: Default::default(),
        };
        let ids: Vec<String> = stages.slots().iter().map(|s| s.id.to_string()).collect();
        self.log(
            "pipeline",
            Some(&lead.kind.name),
            Some(lead.id),
            &format!("{} as {n} {} stages on tabs {}", m.name, sharded.strategy.name(), ids.join(", ")),
        );
        Ok(Some((run, format!("{backend} ×{tabs} {}", sharded.strategy.name()), stages)))
    }

    /// Stage `i` of `g` loaded into `slot` on the backend its kind (or the pool) asks for.
    async fn load_stage(
        &self,
        m: &ModelEntry,
        g: &Generator,
        i: usize,
        slot: &Slot,
        progress: &dyn crate::exec::WeightUpload,
    ) -> anyhow::Result<Stepper> {
        let stage = &g.sharded.as_ref().context("not a sharded model")?.stages[i];
        let wanted = slot.kind.backend.unwrap_or(self.cfg.backend);
        let exec = backend_choice::for_generation(wanted, slot.tab.caps())?;
        let name = format!("{}/stage {i}", m.name);
        Stepper::in_tab(&slot.tab, &name, &stage.graph, &stage.weights, exec.clone(), progress)
            .await
            .with_context(|| format!("loading {name} on {exec} in tab {}", slot.id))
    }

    /// The pool's replacement of a lost stage (`exec::Replacer`), holding only weak references:
    /// the pipeline lives inside the model entry and the pool.
    fn replacer(self: &Arc<Self>, m: &Arc<ModelEntry>, g: &Arc<Generator>, stages: &Arc<StageSlots>) -> Replacer {
        let (shared, m, g, stages) =
            (Arc::downgrade(self), Arc::downgrade(m), Arc::downgrade(g), Arc::downgrade(stages));
        Arc::new(move |i: usize| {
            let (shared, m, g, stages) = (shared.clone(), m.clone(), g.clone(), stages.clone());
            Box::pin(async move {
                let gone = || anyhow::anyhow!("the pool or the model is gone");
                let (shared, m) = (shared.upgrade().ok_or_else(gone)?, m.upgrade().ok_or_else(gone)?);
                let (g, stages) = (g.upgrade().ok_or_else(gone)?, stages.upgrade().ok_or_else(gone)?);
                shared.replace_stage(&m, &g, &stages, i).await
            }) as BoxFuture<'static, anyhow::Result<Stepper>>
        })
    }

    /// A tab for lost stage `i` ([`Self::claim_replacement`]), and the stage loaded into it.
    async fn replace_stage(
        self: &Arc<Self>,
        m: &Arc<ModelEntry>,
        g: &Generator,
        stages: &StageSlots,
        i: usize,
    ) -> anyhow::Result<Stepper> {
        let tab = stages.stage_tab[i];
        anyhow::ensure!(
            tab > 0,
            "stage {i} of {} is on the replica's own tab: its streams are replayed on another replica",
            m.name
        );
        let t = Instant::now();
        let old = stages.slots()[tab].clone();
        let was_on = stages.loaded_on.lock().expect("stages")[i];
        if old.serial != was_on && old.usable() {
            // Another stage of the same lost tab has moved already: this one follows it.
            let stepper = self.load_stage(m, g, i, &old, &()).await?;
            stages.loaded_on.lock().expect("stages")[i] = old.serial;
            return Ok(stepper);
        }
        let what = format!("stage {i} of {}", m.name);
        let slot =
            self.claim_replacement(m, &old, &what, |s| stages.slots.lock().expect("stages")[tab] = s.clone()).await?;
        let loaded = self.load_stage(m, g, i, &slot, &()).await;
        if loaded.is_ok() {
            stages.loaded_on.lock().expect("stages")[i] = slot.serial;
        }
        let detail = format!("stage {i} of {} moved from tab {} to tab {}", m.name, old.id, slot.id);
        match &loaded {
            Ok(_) => self.note_recovery(&slot, Category::Connection, "replace_stage", true, t, &detail),
            Err(e) => {
                self.note_recovery(&slot, Category::Connection, "replace_stage", false, t, &format!("{detail}: {e:#}"))
            }
        }
        loaded
    }

    /// A tab to replace `old` (lost) for `what` of `m`: a free one, else a new one below
    /// `max_tabs`, else wait (up to [`REPLACE_WAIT`]) for one to come free, as the lost tab does
    /// once the pool's recovery has reloaded it. `take` records it as used while `m`'s claim is
    /// held, so no other load gets it.
    pub(crate) async fn claim_replacement(
        self: &Arc<Self>,
        m: &Arc<ModelEntry>,
        old: &Arc<Slot>,
        what: &str,
        take: impl Fn(&Arc<Slot>),
    ) -> anyhow::Result<Arc<Slot>> {
        let t = Instant::now();
        if !old.tab.is_connected() {
            let (s, slot, why) = (self.clone(), old.clone(), format!("the tab of {what} was lost"));
            self.spawn_background(async move { s.recover(slot, Category::Connection, &why).await });
        }
        loop {
            anyhow::ensure!(!self.closed.load(Ordering::SeqCst), "the pool is shutting down");
            let claim = m.claiming.lock().await;
            let found = match self.free_for(m, old.serial).into_iter().next() {
                Some(s) => Some(s),
                None if self.live_tabs() < self.cfg.max_tabs => {
                    let order: Vec<_> = self.kind_order(Some((&m.name, m.model_type)));
                    let order: Vec<_> = order.into_iter().filter(|k| m.allows(&k.name)).collect();
                    match self.launch_first(&order, Some(m)).await {
                        Ok(s) => {
                            s.recovering.store(false, Ordering::SeqCst);
                            self.log("grow", Some(&s.kind.name), Some(s.id), &format!("to replace {what}"));
                            Some(s)
                        }
                        Err(e) => {
                            tracing::warn!("no new tab for {what}: {e:#}");
                            None
                        }
                    }
                }
                None => None,
            };
            if let Some(s) = found {
                take(&s);
                return Ok(s);
            }
            drop(claim);
            if t.elapsed() > REPLACE_WAIT {
                self.note_recovery(old, Category::Connection, "replace_stage", false, t, "no free tab came");
                anyhow::bail!("no tab came free within {REPLACE_WAIT:?} to replace {what}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Takes and books each stage call (after the lead) in that stage tab's breaker and latency
    /// (`stage_begin` / `stage_end`).
    fn observer(self: &Arc<Self>, m: &Arc<ModelEntry>, stages: &Arc<StageSlots>) -> StageObserver {
        let (shared, name, stages): (Weak<Shared>, String, Weak<StageSlots>) =
            (Arc::downgrade(self), m.name.clone(), Arc::downgrade(stages));
        Arc::new(move |i| {
            let (shared, stages) = (shared.upgrade()?, stages.upgrade()?);
            let tab = stages.stage_tab.get(i).copied().unwrap_or(0);
            if tab == 0 {
                return None;
            }
            let slot = stages.slots().get(tab).cloned()?;
            let (name, at) = (name.clone(), slot.clone());
            let log = move |t: &breaker::Transition| log_stage_transition(&shared, &name, i, &at, t);
            let admitted = stage_begin(&slot.breaker, Instant::now(), &mut |_, t| log(t));
            Some(StageCall::new(move |outcome| {
                let now = Instant::now();
                let o = outcome.map(|r| match r {
                    Ok(ms) => {
                        slot.latency.lock().expect("latency").record(ms);
                        *slot.last_active.lock().expect("slot") = now;
                        Outcome::Success { took: Duration::from_secs_f64(ms.max(0.0) / 1e3) }
                    }
                    Err(_) => Outcome::Failure,
                });
                stage_end(&slot.breaker, admitted, o, now, &mut |_, t| log(t));
            }))
        })
    }
}

/// A stage call starts: ask its tab's breaker (`breakers::acquire_all`, as for a replica: in
/// HALF_OPEN it takes a probe, and an OPEN breaker whose wait has passed half-opens here). The
/// call runs whatever the answer — it carries streams already placed, and `StageSlots::admit`
/// keeps new ones off a stage whose breaker refuses — but only an admitted call is booked.
fn stage_begin(b: &Mutex<Breaker>, now: Instant, changed: &mut dyn FnMut(&str, &breaker::Transition)) -> bool {
    breakers::acquire_all(&[("tab", b)], now, changed)
}

/// A stage call ended (`None`: cancelled mid-call): an admitted call books its outcome or hands
/// its probe back (`breakers::book_all`); a refused one books nothing (a half-open breaker would
/// take its outcome for a probe's).
fn stage_end(
    b: &Mutex<Breaker>,
    admitted: bool,
    outcome: Option<Outcome>,
    now: Instant,
    changed: &mut dyn FnMut(&str, &breaker::Transition),
) {
    if admitted {
        breakers::book_all(&[("tab", b)], outcome, now, changed);
    }
}

fn log_stage_transition(shared: &Shared, model: &str, i: usize, slot: &Slot, t: &breaker::Transition) {
    shared.keep(crate::store::Record::Breaker {
        tab: slot.id,
        kind: slot.kind.name.clone(),
        scope: "tab".into(),
        from: format!("{:?}", t.from),
        to: format!("{:?}", t.to),
        reason: t.reason.to_string(),
    });
    shared.log(
        "breaker",
        Some(&slot.kind.name),
        Some(slot.id),
        &format!("tab {} (stage {i} of {model}): {:?} → {:?} ({})", slot.id, t.from, t.to, t.reason),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::breaker::{BreakerConfig, State};

    fn stage_breaker() -> Mutex<Breaker> {
        Mutex::new(Breaker::new(BreakerConfig {
            window: 10,
            min_calls: 2,
            failure_rate: 0.5,
            slow_call: Duration::from_secs(30),
            slow_rate: 0.8,
            open_wait: Duration::from_secs(5),
            half_open_probes: 2,
        }))
    }

    /// One stage call at `at` as the pipeline makes it: begun, run, ended with `outcome`.
    fn call(b: &Mutex<Breaker>, at: Instant, outcome: Outcome, seen: &mut Vec<(State, State)>) {
        let admitted = stage_begin(b, at, &mut |_, t| seen.push((t.from, t.to)));
        stage_end(b, admitted, Some(outcome), at, &mut |_, t| seen.push((t.from, t.to)));
    }

    const OK: Outcome = Outcome::Success { took: Duration::from_millis(20) };

    #[test]
    fn a_stage_that_fails_then_heals_ends_closed_and_serving() {
        let (b, t0, mut seen) = (stage_breaker(), Instant::now(), Vec::new());
        let state = |b: &Mutex<Breaker>| b.lock().unwrap().state();
        // The stage fails: its breaker opens, and no new stream is placed on its pipeline.
        call(&b, t0, Outcome::Failure, &mut seen);
        call(&b, t0, Outcome::Failure, &mut seen);
        assert_eq!(state(&b), State::Open);
        assert!(!b.lock().unwrap().would_admit(t0 + Duration::from_secs(1)), "admit() refuses new streams");
        // Streams already placed keep stepping through it during the wait: those calls run
        // but say nothing to the breaker.
        call(&b, t0 + Duration::from_secs(1), OK, &mut seen);
        assert_eq!(state(&b), State::Open);
        // The wait passes and the stage has healed: its next calls are the half-open probes,
        // and once both are back the breaker closes.
        let later = t0 + Duration::from_secs(6);
        assert!(b.lock().unwrap().would_admit(later), "admit() lets a stream try it");
        call(&b, later, OK, &mut seen);
        assert_eq!(state(&b), State::HalfOpen, "a stage breaker half-opens like any other: {seen:?}");
        call(&b, later, OK, &mut seen);
        assert_eq!(state(&b), State::Closed, "{seen:?}");
        assert_eq!(
            seen,
            [(State::Closed, State::Open), (State::Open, State::HalfOpen), (State::HalfOpen, State::Closed)]
        );
        // And serving: closed calls count in a fresh window again (one failure of two opens
        // it again, as before it had ever opened).
        call(&b, later, OK, &mut seen);
        call(&b, later, OK, &mut seen);
        assert_eq!(state(&b), State::Closed);
        assert_eq!(b.lock().unwrap().rates().0, 0.0);
    }

    #[test]
    fn only_a_stage_call_its_breaker_admitted_is_booked_and_a_cancelled_probe_comes_back() {
        let (b, t0, mut seen) = (stage_breaker(), Instant::now(), Vec::new());
        call(&b, t0, Outcome::Failure, &mut seen);
        call(&b, t0, Outcome::Failure, &mut seen);
        let later = t0 + Duration::from_secs(6);
        // Three calls at once in the half-open breaker (micro-batches): two are probes, the
        // third runs unbooked — its failure is not taken for a probe's outcome.
        let mut none = |_: &str, _: &breaker::Transition| {};
        let p1 = stage_begin(&b, later, &mut none);
        let p2 = stage_begin(&b, later, &mut none);
        let extra = stage_begin(&b, later, &mut none);
        assert_eq!((p1, p2, extra), (true, true, false));
        stage_end(&b, extra, Some(Outcome::Failure), later, &mut none);
        assert_eq!(b.lock().unwrap().state(), State::HalfOpen);
        // A probe whose call was cancelled is handed back: its place is taken again.
        stage_end(&b, p2, None, later, &mut none);
        let p3 = stage_begin(&b, later, &mut none);
        assert!(p3, "the cancelled probe's place");
        stage_end(&b, p1, Some(OK), later, &mut none);
        stage_end(&b, p3, Some(OK), later, &mut none);
        assert_eq!(b.lock().unwrap().state(), State::Closed);
    }

    #[test]
    fn labels_name_each_stage_in_short() {
        let mut first = vec![Part::Embed];
        for l in 0..15 {
            first.extend([Part::Attention(l), Part::Ffn(l)]);
        }
        assert_eq!(label(&first), "embed, L0-14");
        let mut last: Vec<Part> = (15..30).flat_map(|l| [Part::Attention(l), Part::Ffn(l)]).collect();
        last.push(Part::Head);
        assert_eq!(label(&last), "L15-29, head");
        let attn: Vec<Part> = std::iter::once(Part::Embed).chain((0..30).map(Part::Attention)).collect();
        assert_eq!(label(&attn), "embed, attn 0-29");
        let ffn: Vec<Part> = (0..30).map(Part::Ffn).chain([Part::Head]).collect();
        assert_eq!(label(&ffn), "ffn 0-29, head");
        assert_eq!(label(&[Part::Embed, Part::Head]), "embed, head");
        assert_eq!(label(&Part::whole_model(2)), "embed, L0-1, head");
    }
}
