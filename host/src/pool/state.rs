//! What the pool holds: tabs (slots), models with their replicas and queues, the measured
//! history, and the scaling log; plus the actions that change them (grow, retire, load).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use shared_proto::{Graph, Tensor};
use tokio::sync::Notify;

use super::config::PoolConfig;
use super::pipelines::{Sharded, StageSlots};
use super::{ModelSpec, PoolError, Served};
use crate::browser::KindSpec;
use crate::exec::gate::Gate;
use crate::exec::transcriber::{SpeechParts, Transcriber};
use crate::exec::{Backend, Decoder, StepLimits, Stepper, TabModel, load_in_tab};
use crate::family::BatchModel;
use crate::family::{KvLimits, SessionModel};
use crate::models::registry::Loaded;
use crate::policy::backend_choice::{self, Measured};
use crate::policy::breaker::Breaker;
use crate::policy::health;
use crate::policy::prefix_routing::PrefixHints;
use crate::policy::recovery::{self, Category, TabStep};
use crate::policy::routing::{self, Candidate, History, ModelType};
use crate::policy::sharding::Strategy;
use crate::policy::weight_form::Preference;
use crate::store::{Record, Recorder, Store};
use crate::{Host, Tab};

/// Longest a long stream's call waits for pending short requests (`exec::gate`): under a flood
/// of embeddings a generation still steps at least every quarter second.
const STREAM_DEFER: Duration = Duration::from_millis(250);

/// Live events a slow `/v1/events` listener may fall behind by before it is told how many it missed.
const LIVE_EVENTS_BUFFERED: usize = 1024;

/// One tab in the pool. A reloaded page is a new slot with the same tab id and a new serial.
pub(crate) struct Slot {
    /// Unique per slot (tab ids survive a page reload; serials do not).
    pub serial: u64,
    pub id: u64,
    pub kind: KindSpec,
    pub tab: Tab,
    pub started: Instant,
    pub in_flight: AtomicUsize,
    pub batches: AtomicU64,
    pub rows: AtomicU64,
    pub last_active: Mutex<Instant>,
    /// The batch running now (start, texts), for dispatch's finish estimate.
    pub running: Mutex<Option<(Instant, usize)>>,
    /// Leaving the pool: no new work is routed here.
    pub retired: AtomicBool,
    /// Being recovered (page reload / browser restart): no work, but still counted as a tab.
    pub recovering: AtomicBool,
    /// Finishing the losing copy of a hedged batch: busy, but no request waits on it.
    pub draining: AtomicBool,
    pub breaker: Mutex<Breaker>,
    pub missed_heartbeats: AtomicU32,
    pub pinging: AtomicBool,
    /// ms per text: (count, mean) of its first calls (the baseline), and a recent moving average.
    pub latency: Mutex<Latency>,
    /// Generation streams running here (they hold no execution place between steps, but the tab
    /// is not idle while they last).
    pub streams: AtomicUsize,
    /// A remote tab's WebDriver session and, on a Grid, its node.
    pub placement: Mutex<Option<Arc<super::grid::Placement>>>,
    /// A tab a page lent (`serve --join`): untrusted, its results checked (`lending`).
    pub lent: Option<super::lending::Lent>,
    /// Threads its CPU executor uses now: its share of the machine (`scaler::balance_threads`),
    /// at most what its page started with.
    pub threads: AtomicU32,
}

#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Latency {
    pub baseline_n: u32,
    pub baseline_ms: f64,
    pub recent_ms: f64,
}

impl Latency {
    const BASELINE_CALLS: u32 = 20;
    pub fn record(&mut self, ms_per_text: f64) {
        if self.baseline_n < Self::BASELINE_CALLS {
            self.baseline_n += 1;
            self.baseline_ms += (ms_per_text - self.baseline_ms) / self.baseline_n as f64;
            self.recent_ms = self.baseline_ms;
        } else {
            self.recent_ms = 0.8 * self.recent_ms + 0.2 * ms_per_text;
        }
    }
    pub fn ratio(&self) -> f64 {
        if self.baseline_n == 0 || self.baseline_ms <= 0.0 { 1.0 } else { self.recent_ms / self.baseline_ms }
    }
}

impl Slot {
    /// The Grid node this tab runs on, once known (`None`: this machine, or not resolved yet).
    pub fn node_id(&self) -> Option<String> {
        self.placement.lock().expect("placement").as_ref().and_then(|p| p.node()).map(|n| n.id)
    }

    pub fn usable(&self) -> bool {
        !self.retired.load(Ordering::SeqCst) && !self.recovering.load(Ordering::SeqCst) && self.tab.is_connected()
    }

    /// Still one of the pool's tabs (serving, or being recovered).
    pub fn counted(&self) -> bool {
        !self.retired.load(Ordering::SeqCst)
    }

    pub fn health(&self, free_memory: f64) -> u8 {
        let failure_rate = self.breaker.lock().expect("breaker").rates().0;
        health::score(&health::Signals {
            failure_rate,
            latency_ratio: self.latency.lock().expect("latency").ratio(),
            missed_heartbeats: self.missed_heartbeats.load(Ordering::SeqCst),
            free_memory,
        })
    }

    /// Take one of this tab's `limit` execution places, if one is free.
    pub fn try_reserve(&self, limit: usize) -> bool {
        self.in_flight.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < limit).then_some(n + 1)).is_ok()
    }

    pub fn release(&self) {
        *self.running.lock().expect("slot") = None;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        *self.last_active.lock().expect("slot") = Instant::now();
    }

    pub fn idle_for(&self) -> Duration {
        if self.in_flight.load(Ordering::SeqCst) > 0 || self.streams.load(Ordering::SeqCst) > 0 {
            Duration::ZERO
        } else {
            self.last_active.lock().expect("slot").elapsed()
        }
    }
}

/// A model loaded in one tab.
pub(crate) struct Replica {
    pub slot: Arc<Slot>,
    pub run: Runner,
    pub backend: String,
    pub calibration: Vec<Measured>,
    /// The (tab, model) breaker.
    pub breaker: Mutex<Breaker>,
    /// A sharded model's replica: its pipeline's stage tabs (`slot` is the first).
    pub stages: Option<Arc<StageSlots>>,
}

pub(crate) struct Job {
    /// One tensor per row, as the family prepared it.
    pub rows: Vec<Tensor>,
    /// Each row's cost for the batch limits (tokens; 1 per image).
    pub lens: Vec<usize>,
    pub truncated: Vec<bool>,
    pub enqueued: Instant,
    pub deadline: Option<Instant>,
    pub attempts: u32,
    /// Slots (serials) that failed this request: retries go elsewhere.
    pub avoid: Vec<u64>,
    /// Retry on this slot only (a lost device reloaded in place).
    pub pin: Option<u64>,
    /// The multi-tab job this request is a shard of (`Pool::embed_many`).
    pub group: Option<u64>,
    pub reply: tokio::sync::oneshot::Sender<Result<Served, PoolError>>,
}

/// How a replica runs requests; which one follows from the model's [`Family`].
pub(crate) enum Runner {
    /// Stateless batches sent whole (`scheduler`).
    Batches(TabModel),
    /// Sessions stepped together by the replica's decoder (`generation`); `streams`: how many
    /// run on it now, for routing and its session limit; `prefixes`: what its prefix cache was
    /// last seen holding (routing prefers the replica holding the longest start of a prompt).
    Sessions { decoder: Decoder, streams: AtomicUsize, prefixes: Mutex<PrefixHints> },
    /// Speech to text: the encoder and the decoder in this tab, one transcription at a time
    /// (`speech`); its lock is held for a whole request, windows in order.
    Speech(Box<tokio::sync::Mutex<Transcriber>>),
}

impl Replica {
    /// Generation streams running on it (0 for a batch replica).
    pub fn streams(&self) -> usize {
        match &self.run {
            Runner::Sessions { streams, .. } => streams.load(Ordering::SeqCst),
            Runner::Speech(t) => usize::from(t.try_lock().is_err()),
            Runner::Batches(_) => 0,
        }
    }

    /// The replica's model for stateless batches (`None` for a generation replica).
    pub fn batches(&self) -> Option<&TabModel> {
        match &self.run {
            Runner::Batches(tm) => Some(tm),
            Runner::Sessions { .. } | Runner::Speech(_) => None,
        }
    }
}

/// What kind of model an entry holds. Routing, breakers, recovery, scaling and the history are
/// the same for every family; only how a request is prepared, run and answered differs.
pub(crate) enum Family {
    /// Stateless batches (embeddings, image classification, …): prepared at admission, queued,
    /// batched by `scheduler`; the model is a plug-in (`family::BatchModel`).
    Batches(Arc<dyn BatchModel>),
    /// Prompt → streamed tokens: a session per request on one replica's decoder, routed and
    /// replayed by `generation`; the model is a plug-in (`family::SessionModel`).
    Generation(Arc<Generator>),
    /// Audio → text: a request holds one replica (encoder and decoder in its tab) while its
    /// windows run, queued and retried by `speech`; the model is loaded by the registry.
    Speech(Arc<SpeechParts>),
}

/// A generation model as the pool loads it into tabs: its graph and weights built once.
pub struct Generator {
    /// Tokenizer, chat template, stop ids, context length.
    pub model: Box<dyn SessionModel>,
    pub(crate) graph: Graph,
    pub(crate) weights: Vec<Tensor>,
    /// With `[generation] shards` above 1: the model split into stages; replicas are pipelines.
    pub(crate) sharded: Option<Sharded>,
}

pub(crate) struct ModelEntry {
    pub name: String,
    pub model_type: ModelType,
    pub family: Family,
    pub want_replicas: Option<usize>,
    /// Kinds its replicas may live on (`ModelSpec::on_kinds`); any when `None`.
    pub kinds: Option<Vec<String>>,
    pub replicas: Mutex<Vec<Arc<Replica>>>,
    /// Replicas taken out (a lost tab) that a running request may still hold: their other tabs
    /// stay theirs until it lets go (`Shared::slots_in_use`), so no new replica loads over a
    /// part still in use.
    pub leaving: Mutex<Vec<std::sync::Weak<Replica>>>,
    pub queue: Mutex<VecDeque<Job>>,
    /// A job arrived or a tab freed up: the batcher looks again.
    pub wake: Notify,
    /// Generation streams admitted and not yet on a replica (bounded by `generation.max_waiting`).
    pub waiting: AtomicUsize,
    /// Generation: measured ms to the first token per prompt token (moving average), from which
    /// a stream's first token is expected — and hedged when late.
    pub ttft_ms_per_token: Mutex<Option<f64>>,
    pub served: AtomicU64,
    pub failed: AtomicU64,
    pub busy: AtomicU64,
    pub retried: AtomicU64,
    /// Browser kind → the backend calibration chose there and the figures it chose by. Kept on
    /// the model, not on a replica, so it outlives every replica of that kind (recovery replaces
    /// them all in turn) and a replacement never pays a full calibration again.
    pub calibrated: Mutex<HashMap<String, (Backend, Vec<Measured>)>>,
    /// Full calibrations run for this model (for metrics).
    pub calibrations: AtomicU64,
    /// Held while a sharded model's pipeline claims its stage tabs (`pipelines`).
    pub claiming: tokio::sync::Mutex<()>,
}

impl ModelEntry {
    /// The batch model, or a clear refusal for a model that generates.
    pub fn batch_model(&self) -> Result<&Arc<dyn BatchModel>, PoolError> {
        match &self.family {
            Family::Batches(m) => Ok(m),
            Family::Generation(_) => Err(PoolError::BadInput(format!(
                "{} generates text; ask it for generation (chat or completions)",
                self.name
            ))),
            Family::Speech(_) => Err(PoolError::BadInput(format!(
                "{} transcribes speech; send it audio (/v1/audio/transcriptions)",
                self.name
            ))),
        }
    }

    /// Whether a replica may live on a tab of kind `kind`.
    pub fn allows(&self, kind: &str) -> bool {
        self.kinds.as_ref().is_none_or(|ks| ks.iter().any(|k| k == kind))
    }

    /// Whether `slot` may hold a replica: its kind is allowed, and a lent tab's token names
    /// this model (weights go to a lent tab only for the models its token allows).
    pub fn may_hold(&self, slot: &Slot) -> bool {
        self.allows(&slot.kind.name) && slot.lent.as_ref().is_none_or(|l| l.allows(&self.name))
    }
}

/// One scaling (or launch) decision, with its reason, for the log and `metrics()`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ScalingEvent {
    pub at_s: f64,
    /// grow | shrink | hold | replace | launch-failed | load-failed
    pub action: String,
    pub kind: Option<String>,
    pub tab: Option<u64>,
    pub tabs_after: usize,
    pub reason: String,
}

pub(crate) type HistKey = (String, String, String);

pub(crate) struct Shared {
    pub cfg: PoolConfig,
    pub kinds: Vec<KindSpec>,
    pub host: tokio::sync::Mutex<Option<Host>>,
    pub tabs: Mutex<Vec<Arc<Slot>>>,
    pub models: Mutex<Vec<Arc<ModelEntry>>>,
    /// (model, kind, backend) → measured outcomes; backend "launch" counts failed launches.
    pub history: Mutex<HashMap<HistKey, History>>,
    pub events: Mutex<VecDeque<ScalingEvent>>,
    /// Queue waits of dispatched requests, for the scaler's window.
    pub waits: Mutex<VecDeque<(Instant, Duration)>>,
    /// Busy fraction of tabs, sampled by the scaler.
    pub utilisation: Mutex<VecDeque<(Instant, f64)>>,
    pub batchers: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Recoveries and retirements running on their own tasks; shutdown aborts them, so one
    /// stuck in a hung WebDriver call (holding the host) cannot hold shutdown too.
    pub background: Mutex<Vec<tokio::task::AbortHandle>>,
    /// Batches dispatched and not yet answered (shutdown lets them finish, within a bound).
    pub running_batches: AtomicUsize,
    /// Short requests (batches) go before the next call of a long stream (`exec::gate`).
    pub gate: Arc<Gate>,
    /// Set once shutdown stops waiting: every request still waiting is answered `ShutDown`.
    pub abandon: tokio::sync::watch::Sender<bool>,
    pub closed: AtomicBool,
    /// The cores this machine's tabs share, when the pool gives each its share as tabs come and
    /// go (`None`: `--tab-threads` fixed every tab's threads).
    pub thread_budget: Option<usize>,
    pub started: Instant,
    pub next_serial: AtomicU64,
    /// Batches hedged to a second replica.
    pub hedged: AtomicU64,
    /// Models being loaded (not yet in `models`): a tab recovered or launched meanwhile gets
    /// them too, or a tab lost during a load would never hold the model.
    pub loading: Mutex<Vec<Arc<ModelEntry>>>,
    /// Selenium Grids behind remote kinds, and their latest views.
    pub grids: super::grid::Grids,
    /// Multi-tab jobs: ids, and coordinated recoveries done.
    pub next_group: AtomicU64,
    pub coordinated: AtomicU64,
    /// Failed batches by category.
    pub failures: Mutex<BTreeMap<Category, u64>>,
    /// Tab recoveries, latest last.
    pub recoveries: Mutex<VecDeque<RecoveryEvent>>,
    /// The history database and its writer, when the pool records (`history.path`).
    pub store: Option<Arc<Store>>,
    pub recorder: Option<Recorder>,
    /// Prometheus counters and histograms (`GET /metrics`).
    pub telemetry: super::telemetry::Telemetry,
    /// Live events (`GET /v1/events`): tab, breaker, scaling and recovery rows as they are kept,
    /// and model loads; JSON text, one per event.
    pub live: tokio::sync::broadcast::Sender<Arc<str>>,
}

/// One tab recovery, for the log, `metrics()` and `bench recovery`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RecoveryEvent {
    pub at_s: f64,
    pub tab: u64,
    pub kind: String,
    pub category: Category,
    /// reload_page | restart_browser | reload_model | retired
    pub step: String,
    pub ok: bool,
    /// From detection to the tab serving again with its models loaded.
    pub ms: f64,
    pub detail: String,
}

const EVENTS_KEPT: usize = 200;
/// How long shutdown lets running batches finish before answering their requests `ShutDown`.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long shutdown waits for the host once background work is aborted.
const HOST_LOCK_WAIT: Duration = Duration::from_secs(5);

impl Shared {
    /// `store`: the opened history database; its measured history seeds routing, and a
    /// recorder tagged with a new run id writes this pool's rows.
    pub fn new(host: Host, cfg: PoolConfig, kinds: Vec<KindSpec>, store: Option<Arc<Store>>) -> anyhow::Result<Shared> {
        let (history, recorder) = match &store {
            Some(st) => {
                let history = st.history(cfg.history.window_days)?;
                // Credentials in remote URLs serialize redacted (`redact::SecretUrl`).
                let run_id = st.start_run(&serde_json::to_string(&cfg).unwrap_or_default())?;
                tracing::info!(
                    path = %st.path().display(),
                    run_id,
                    "history: {} (model, kind, backend) records read back",
                    history.len()
                );
                (history, Some(Recorder::start(st, run_id)?))
            }
            None => (HashMap::new(), None),
        };
        Ok(Shared {
            grids: super::grid::Grids::new(&kinds),
            loading: Mutex::new(Vec::new()),
            cfg,
            kinds,
            host: tokio::sync::Mutex::new(Some(host)),
            tabs: Mutex::new(Vec::new()),
            models: Mutex::new(Vec::new()),
            history: Mutex::new(history),
            events: Mutex::new(VecDeque::new()),
            waits: Mutex::new(VecDeque::new()),
            utilisation: Mutex::new(VecDeque::new()),
            batchers: Mutex::new(Vec::new()),
            background: Mutex::new(Vec::new()),
            running_batches: AtomicUsize::new(0),
            gate: Gate::new(STREAM_DEFER),
            abandon: tokio::sync::watch::channel(false).0,
            closed: AtomicBool::new(false),
            thread_budget: None,
            started: Instant::now(),
            next_serial: AtomicU64::new(1),
            hedged: AtomicU64::new(0),
            next_group: AtomicU64::new(1),
            coordinated: AtomicU64::new(0),
            failures: Mutex::new(BTreeMap::new()),
            recoveries: Mutex::new(VecDeque::new()),
            store,
            recorder,
            telemetry: super::telemetry::Telemetry::new(),
            live: tokio::sync::broadcast::channel(LIVE_EVENTS_BUFFERED).0,
        })
    }

    /// Queue a row for the history database (no-op when the pool does not record).
    pub fn keep(&self, rec: Record) {
        // Serialised only when someone listens.
        if self.live.receiver_count() > 0
            && matches!(
                rec,
                Record::Tab { .. } | Record::Breaker { .. } | Record::Scaling { .. } | Record::Recovery { .. }
            )
            && let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(&rec)
        {
            self.emit(fields);
        }
        if let Some(r) = &self.recorder {
            r.record(rec);
        }
    }

    /// Send a live event (its `type` and fields) to every `GET /v1/events` listener, stamped with
    /// seconds since the pool started. Nobody listening costs nothing.
    pub fn emit(&self, mut fields: serde_json::Map<String, serde_json::Value>) {
        if self.live.receiver_count() == 0 {
            return;
        }
        fields.insert("at_s".into(), self.started.elapsed().as_secs_f64().into());
        let _ = self.live.send(serde_json::Value::Object(fields).to_string().into());
    }

    /// Tabs in the pool, serving or being recovered.
    pub fn live_tabs(&self) -> usize {
        self.tabs.lock().expect("tabs").iter().filter(|s| s.counted()).count()
    }

    pub fn slots(&self) -> Vec<Arc<Slot>> {
        self.tabs.lock().expect("tabs").clone()
    }

    /// The first model loaded of type `ty` (`None`: of any type).
    pub fn default_model(&self, ty: Option<ModelType>) -> Option<Arc<ModelEntry>> {
        let models = self.models.lock().expect("models");
        models.iter().find(|m| ty.is_none_or(|t| t == m.model_type)).cloned()
    }

    pub fn model(&self, name: &str) -> Option<Arc<ModelEntry>> {
        self.models.lock().expect("models").iter().find(|m| m.name == name).cloned()
    }

    pub fn record(&self, model: &str, kind: &str, backend: &str, ok: bool, ms_per_row: f64) {
        let key = (model.to_string(), kind.to_string(), backend.to_string());
        self.history.lock().expect("history").entry(key).or_default().record(ok, ms_per_row);
    }

    pub fn log(&self, action: &str, kind: Option<&str>, tab: Option<u64>, reason: &str) {
        // Reasons quote errors, and errors may quote a WebDriver URL with credentials.
        let reason = &crate::redact::text(reason);
        let ev = ScalingEvent {
            at_s: self.started.elapsed().as_secs_f64(),
            action: action.into(),
            kind: kind.map(str::to_string),
            tab,
            tabs_after: self.live_tabs(),
            reason: reason.into(),
        };
        tracing::info!(action, kind, tab, tabs = ev.tabs_after, "scaling: {reason}");
        // Breaker transitions and recoveries have tables of their own.
        if action != "breaker" && action != "recover" {
            self.keep(Record::Scaling {
                action: action.into(),
                kind: ev.kind.clone(),
                tab,
                tabs_after: ev.tabs_after as u32,
                reason: reason.into(),
            });
        }
        let mut events = self.events.lock().expect("events");
        events.push_back(ev);
        while events.len() > EVENTS_KEPT {
            events.pop_front();
        }
    }

    /// Wake every model's batcher: a tab freed up, joined or left.
    pub fn wake_all(&self) {
        for m in self.models.lock().expect("models").iter() {
            m.wake.notify_one();
            m.wake.notify_waiters();
        }
    }

    /// Kinds in the order to try for `model_type`/`model` (routing over measured history), only
    /// those below their cap.
    pub fn kind_order(&self, model: Option<(&str, ModelType)>) -> Vec<KindSpec> {
        let counts: HashMap<String, usize> =
            self.slots().iter().filter(|s| s.usable()).fold(HashMap::new(), |mut m, s| {
                *m.entry(s.kind.name.clone()).or_default() += 1;
                m
            });
        let open: Vec<&KindSpec> = self
            .kinds
            .iter()
            .filter(|k| counts.get(&k.name).copied().unwrap_or(0) < k.max_tabs.unwrap_or(self.cfg.max_tabs))
            .collect();
        let history = self.history.lock().expect("history");
        let (name, ty) = model.unwrap_or(("", ModelType::TextEmbedding));
        let candidates: Vec<Candidate> = open
            .iter()
            .map(|k| {
                // A kind's record for this model over all its backends (and failed launches).
                let h = history
                    .iter()
                    .filter(|((m, kind, _), _)| (name.is_empty() || m == name) && kind == &k.name)
                    .fold(History::default(), |acc, (_, h)| acc.merge(h));
                Candidate { kind: k.browser.name().into(), backend: k.name.clone(), history: h }
            })
            .collect();
        routing::rank(ty, &candidates, self.cfg.min_samples).into_iter().map(|i| open[i].clone()).collect()
    }

    /// Launch one tab (kinds in routing order for the most pressured model, falling back down the
    /// list), then load every model that wants a replica there.
    pub async fn grow(self: &Arc<Self>, pressured: Option<&Arc<ModelEntry>>, reason: &str) -> anyhow::Result<u64> {
        let focus = pressured.cloned().or_else(|| self.default_model(None));
        let mut order = self.kind_order(focus.as_ref().map(|m| (m.name.as_str(), m.model_type)));
        // A model kept to some kinds (`ModelSpec::on_kinds`) is only helped by a tab of those.
        order.retain(|k| pressured.is_none_or(|p| p.allows(&k.name)));
        anyhow::ensure!(!order.is_empty(), "every browser kind is at its max_tabs");
        let slot = self.launch_first(&order, focus.as_ref()).await?;
        let models: Vec<Arc<ModelEntry>> = self.models.lock().expect("models").clone();
        for m in models {
            let wanted = m.want_replicas.is_none_or(|n| m.replicas.lock().expect("replicas").len() < n);
            if m.may_hold(&slot) && (wanted || pressured.is_some_and(|p| Arc::ptr_eq(p, &m))) {
                self.add_replica(&m, &slot).await;
            }
        }
        for m in self.loading_for(&slot, &[]) {
            self.add_replica(&m, &slot).await;
        }
        // Idle time counts from when the tab is ready to serve, not from its launch.
        *slot.last_active.lock().expect("slot") = Instant::now();
        slot.recovering.store(false, Ordering::SeqCst);
        self.log("grow", Some(&slot.kind.name), Some(slot.id), reason);
        self.wake_all();
        Ok(slot.id)
    }

    /// Launch a tab of the first kind in `order` that starts; failures are recorded against the
    /// kind (routing reads them) and logged.
    pub(crate) async fn launch_first(
        &self,
        order: &[KindSpec],
        focus: Option<&Arc<ModelEntry>>,
    ) -> anyhow::Result<Arc<Slot>> {
        let mut errors = Vec::new();
        for kind in order {
            let launched = match super::grid::may_ask(self, kind).await {
                Ok(()) => {
                    let mut host = self.host.lock().await;
                    let host = host.as_mut().context("the pool is shutting down")?;
                    host.launch_spec(kind).await
                }
                Err(e) => Err(e),
            };
            // A remote tab's session and node; a Grid's wrong landing closes the tab.
            let launched = match launched {
                Ok(tab) => match super::grid::place(self, kind, tab.id(), tab.caps()).await {
                    Ok(p) => Ok((tab, p)),
                    Err(e) => {
                        if let Some(h) = self.host.lock().await.as_mut() {
                            h.close_tab(tab.id()).await;
                        }
                        Err(e)
                    }
                },
                Err(e) => Err(e),
            };
            match launched {
                Ok((tab, placement)) => {
                    self.keep(Record::Tab {
                        tab: Some(tab.id()),
                        kind: kind.name.clone(),
                        event: "launched".into(),
                        detail: format!(
                            "WebGPU: {}; WebNN: {}",
                            crate::tab::adapter_line(tab.caps()),
                            crate::tab::webnn_line(tab.caps())
                        ),
                        capabilities: serde_json::to_string(tab.caps()).ok(),
                    });
                    let slot = self.new_slot(tab, kind.clone());
                    *slot.placement.lock().expect("placement") = placement;
                    // Routable once the caller has loaded its models (grow / finish_recovery).
                    slot.recovering.store(true, Ordering::SeqCst);
                    self.tabs.lock().expect("tabs").push(slot.clone());
                    return Ok(slot);
                }
                Err(e) => {
                    let why = crate::redact::text(&format!("{e:#}"));
                    self.keep(Record::Tab {
                        tab: None,
                        kind: kind.name.clone(),
                        event: "launch_failed".into(),
                        detail: why.clone(),
                        capabilities: None,
                    });
                    if let Some(m) = focus {
                        self.record(&m.name, &kind.name, "launch", false, 0.0);
                    }
                    self.log("launch-failed", Some(&kind.name), None, &why);
                    errors.push(format!("{}: {why}", kind.name));
                }
            }
        }
        anyhow::bail!("no browser kind could launch a tab: {}", errors.join("; "))
    }

    pub(super) fn new_slot(&self, tab: Tab, kind: KindSpec) -> Arc<Slot> {
        self.new_slot_lent(tab, kind, None)
    }

    pub(super) fn new_slot_lent(&self, tab: Tab, kind: KindSpec, lent: Option<super::lending::Lent>) -> Arc<Slot> {
        let threads = AtomicU32::new(tab.caps().threads);
        Arc::new(Slot {
            serial: self.next_serial.fetch_add(1, Ordering::SeqCst),
            id: tab.id(),
            kind,
            tab,
            started: Instant::now(),
            in_flight: AtomicUsize::new(0),
            batches: AtomicU64::new(0),
            rows: AtomicU64::new(0),
            last_active: Mutex::new(Instant::now()),
            running: Mutex::new(None),
            retired: AtomicBool::new(false),
            recovering: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            breaker: Mutex::new(Breaker::new(self.cfg.health.breaker())),
            missed_heartbeats: AtomicU32::new(0),
            pinging: AtomicBool::new(false),
            latency: Mutex::new(Latency::default()),
            streams: AtomicUsize::new(0),
            placement: Mutex::new(None),
            threads,
            lent,
        })
    }

    /// Bring a failed tab back (progressive, per `policy::recovery::tab_step`): reload its page in
    /// the same browser, else restart the browser; then load the models it had. Requests queue
    /// meanwhile (or run on other replicas); the slot still counts as a tab so the scaler does
    /// not launch a second replacement.
    pub async fn recover(self: &Arc<Self>, old: Arc<Slot>, category: Category, detail: &str) {
        if old.retired.load(Ordering::SeqCst) || old.recovering.swap(true, Ordering::SeqCst) {
            return;
        }
        if old.lent.is_some() {
            // Nothing of a lent tab is ours to restart: it left (page closed, network gone) or
            // was sent away; its work is retried and its streams replayed on other tabs.
            return super::lending::leave(self, &old, &format!("{category:?}: {detail}"));
        }
        let t = Instant::now();
        self.keep(Record::Tab {
            tab: Some(old.id),
            kind: old.kind.name.clone(),
            event: "lost".into(),
            detail: format!("{category:?}: {detail}"),
            capabilities: None,
        });
        let mut had: Vec<Arc<ModelEntry>> = Vec::new();
        for m in self.models.lock().expect("models").iter() {
            let mut reps = m.replicas.lock().expect("replicas");
            if reps.iter().any(|r| Arc::ptr_eq(&r.slot, &old)) {
                had.push(m.clone());
            }
            let mut leaving = m.leaving.lock().expect("leaving");
            leaving.retain(|w| w.strong_count() > 0);
            leaving.extend(reps.iter().filter(|r| Arc::ptr_eq(&r.slot, &old)).map(Arc::downgrade));
            drop(leaving);
            reps.retain(|r| !Arc::ptr_eq(&r.slot, &old));
        }
        self.wake_all();
        if old.tab.is_connected() {
            old.tab.disconnect();
        }
        let procs = match self.host.lock().await.as_ref() {
            Some(h) => h.tab_processes(old.id),
            None => return,
        };
        let local = old.kind.browser != crate::browser::BrowserKind::Remote;
        let browser_alive = !local || procs.iter().any(|(_, renderer)| !renderer);
        let renderer_alive = !local || procs.iter().any(|(_, renderer)| *renderer);
        let category = match category {
            Category::Connection if !browser_alive || !renderer_alive => Category::Crash,
            c => c,
        };
        let mut step = recovery::tab_step(category, false, browser_alive, 0);
        let mut why = detail.to_string();
        if step == TabStep::ReloadPage {
            let reloaded = match self.host.lock().await.as_mut() {
                Some(h) => h.reload_tab(old.id).await,
                None => return,
            };
            match reloaded {
                Ok(tab) => {
                    self.keep(Record::Tab {
                        tab: Some(tab.id()),
                        kind: old.kind.name.clone(),
                        event: "reloaded".into(),
                        detail: detail.into(),
                        capabilities: serde_json::to_string(tab.caps()).ok(),
                    });
                    let slot = self.new_slot(tab, old.kind.clone());
                    // The same browser: the same WebDriver session and node.
                    *slot.placement.lock().expect("placement") = old.placement.lock().expect("placement").clone();
                    // Not routable until its models are loaded again, but counted as a tab.
                    slot.recovering.store(true, Ordering::SeqCst);
                    self.swap_slot(&old, Some(slot.clone()));
                    self.finish_recovery(&slot, &had, category, "reload_page", t, detail).await;
                    return;
                }
                Err(e) => {
                    why = format!("{detail}; page reload failed: {e:#}");
                    step = recovery::tab_step(category, false, browser_alive, 1);
                }
            }
        }
        debug_assert_eq!(step, TabStep::RestartBrowser);
        if let Some(h) = self.host.lock().await.as_mut() {
            // Its profile is kept for the replacement: the weights stay in its Cache Storage.
            h.close_tab_for_restart(old.id, &old.kind.name).await;
        }
        // The old slot stays counted until its replacement is in, so the scaler does not launch
        // a second replacement meanwhile.
        let launched = self.launch_first(std::slice::from_ref(&old.kind), had.first()).await;
        self.swap_slot(&old, None);
        match launched {
            Ok(slot) => self.finish_recovery(&slot, &had, category, "restart_browser", t, &why).await,
            Err(e) => {
                // The scaler refills to min_tabs with whatever kind can start.
                self.note_recovery(&old, category, "retired", false, t, &format!("{why}; restart failed: {e:#}"));
            }
        }
    }

    /// Replace `old` in the tab list by `new` (or drop it), marking it retired.
    fn swap_slot(&self, old: &Arc<Slot>, new: Option<Arc<Slot>>) {
        old.retired.store(true, Ordering::SeqCst);
        let mut tabs = self.tabs.lock().expect("tabs");
        tabs.retain(|s| !Arc::ptr_eq(s, old));
        if let Some(n) = new {
            tabs.push(n);
        }
    }

    async fn finish_recovery(
        self: &Arc<Self>,
        slot: &Arc<Slot>,
        had: &[Arc<ModelEntry>],
        category: Category,
        step: &str,
        t: Instant,
        detail: &str,
    ) {
        let mut ok = true;
        for m in had {
            ok &= self.add_replica(m, slot).await;
        }
        for m in self.loading_for(slot, had) {
            self.add_replica(&m, slot).await;
        }
        *slot.last_active.lock().expect("slot") = Instant::now();
        slot.recovering.store(false, Ordering::SeqCst);
        self.note_recovery(slot, category, step, ok, t, detail);
        self.wake_all();
    }

    pub fn note_recovery(&self, slot: &Slot, category: Category, step: &str, ok: bool, t: Instant, detail: &str) {
        let detail = &crate::redact::text(detail);
        let outcome = if ok { "ok" } else { "failed" };
        self.telemetry.count("tabpool_recoveries_total", &[("strategy", step), ("outcome", outcome)], 1);
        let ev = RecoveryEvent {
            at_s: self.started.elapsed().as_secs_f64(),
            tab: slot.id,
            kind: slot.kind.name.clone(),
            category,
            step: step.into(),
            ok,
            ms: t.elapsed().as_secs_f64() * 1e3,
            detail: detail.into(),
        };
        self.keep(Record::Recovery {
            tab: ev.tab,
            kind: ev.kind.clone(),
            category: category.name().into(),
            step: ev.step.clone(),
            ok,
            ms: ev.ms,
            detail: ev.detail.clone(),
        });
        self.log(
            "recover",
            Some(&slot.kind.name),
            Some(slot.id),
            &format!("{category:?} → {step} in {:.0} ms ({}): {detail}", ev.ms, if ok { "ok" } else { "failed" }),
        );
        let mut r = self.recoveries.lock().expect("recoveries");
        r.push_back(ev);
        while r.len() > EVENTS_KEPT {
            r.pop_front();
        }
    }

    /// Count a failed batch by category.
    pub fn count_failure(&self, c: Category) {
        *self.failures.lock().expect("failures").entry(c).or_default() += 1;
    }

    /// Load `m` into `slot`'s tab; a failure is logged and recorded, not fatal.
    pub async fn add_replica(self: &Arc<Self>, m: &Arc<ModelEntry>, slot: &Arc<Slot>) -> bool {
        let progress = LoadProgress::new(self, &m.name, slot);
        progress.phase("started", None);
        let mut stages = None;
        let loaded = match &m.family {
            Family::Batches(model) => self.load_batches(m, model.as_ref(), slot, &progress).await,
            Family::Generation(g) if g.sharded.is_some() => match self.load_pipeline(m, g, slot, &progress).await {
                Ok(Some((run, backend, st))) => {
                    stages = Some(st);
                    Ok((run, backend, vec![]))
                }
                Ok(None) => {
                    let n = g.sharded.as_ref().map_or(1, |s| s.tab_labels.len());
                    let why =
                        format!("{}: a pipeline needs {} more free tabs; this one waits as a spare", m.name, n - 1);
                    self.log("spare", Some(&slot.kind.name), Some(slot.id), &why);
                    progress.phase("spare", Some(&why));
                    return false;
                }
                Err(e) => Err(e),
            },
            Family::Generation(g) => self.load_generator(g, slot, &progress).await,
            Family::Speech(w) => match self.load_speech(m, w, slot, &progress).await {
                Ok(Some((run, backend, calibration, st))) => {
                    stages = st;
                    Ok((run, backend, calibration))
                }
                Ok(None) => {
                    let why = format!(
                        "{}: its encoder | decoder split needs 1 more free tab; this one waits as a spare",
                        m.name
                    );
                    self.log("spare", Some(&slot.kind.name), Some(slot.id), &why);
                    progress.phase("spare", Some(&why));
                    return false;
                }
                Err(e) => Err(e),
            },
        };
        match loaded {
            Ok((run, backend, calibration)) => {
                progress.phase("loaded", Some(&backend));
                tracing::info!(model = m.name, tab = slot.id, kind = slot.kind.name, backend, "replica loaded");
                let breaker = Mutex::new(Breaker::new(self.cfg.health.breaker()));
                let mut reps = m.replicas.lock().expect("replicas");
                // A reloaded model replaces the old replica on the same slot.
                reps.retain(|r| !Arc::ptr_eq(&r.slot, slot));
                reps.push(Arc::new(Replica { slot: slot.clone(), run, backend, calibration, breaker, stages }));
                drop(reps);
                m.wake.notify_waiters();
                m.wake.notify_one();
                true
            }
            Err((backend, e)) => {
                progress.phase("failed", Some(&format!("{backend}: {e:#}")));
                self.record(&m.name, &slot.kind.name, &backend, false, 0.0);
                self.log("load-failed", Some(&slot.kind.name), Some(slot.id), &format!("{}: {e:#}", m.name));
                false
            }
        }
    }

    /// Whether a replica of `family` spans more than one tab (a pipeline, or speech split into
    /// encoder | decoder): such replicas load one after another, each claiming its other tabs.
    pub(super) fn spans_tabs(&self, family: &Family) -> bool {
        match family {
            Family::Generation(g) => g.sharded.is_some(),
            Family::Speech(_) => self.speech_split(),
            Family::Batches(_) => false,
        }
    }

    /// Speech replicas are encoder | decoder over two tabs (`[generation] shards = 2`, strategy
    /// component; `load_model` refuses any other split for a speech model).
    pub(super) fn speech_split(&self) -> bool {
        self.cfg.generation.shards == 2 && self.cfg.generation.strategy == Strategy::Component
    }

    /// The backend to load `m` on in `slot`'s tab: the kind's or the pool's; for `Auto`, the
    /// answer a tab of this kind already calibrated (with its figures), rather than compiling
    /// every backend again (seconds on a software WebGPU adapter).
    pub(super) fn backend_for(&self, m: &ModelEntry, slot: &Slot) -> (Backend, Option<Vec<Measured>>) {
        let backend = slot.kind.backend.unwrap_or(self.cfg.backend);
        if backend == Backend::Auto
            && let Some((known, measured)) = m.calibrated.lock().expect("calibrated").get(&slot.kind.name).cloned()
        {
            return (known, Some(measured));
        }
        (backend, None)
    }

    /// The calibration a replica keeps: the known one, or the one just `measured` — which is
    /// remembered for the kind, as the backend `chosen`, when a calibration ran.
    pub(super) fn remember_calibration(
        m: &ModelEntry,
        slot: &Slot,
        known: Option<Vec<Measured>>,
        chosen: Option<&shared_proto::ExecBackend>,
        measured: Vec<Measured>,
    ) -> Vec<Measured> {
        known.unwrap_or_else(|| {
            if let (false, Some(exec)) = (measured.is_empty(), chosen) {
                m.calibrations.fetch_add(1, Ordering::Relaxed);
                let chosen = Backend::forcing(exec);
                m.calibrated.lock().expect("calibrated").insert(slot.kind.name.clone(), (chosen, measured.clone()));
            }
            measured
        })
    }

    async fn load_batches(
        &self,
        m: &ModelEntry,
        model: &dyn BatchModel,
        slot: &Slot,
        progress: &dyn crate::exec::WeightUpload,
    ) -> Result<(Runner, String, Vec<Measured>), (String, anyhow::Error)> {
        let (backend, known) = self.backend_for(m, slot);
        let (tm, measured) =
            load_in_tab(&slot.tab, model, backend, progress).await.map_err(|e| (backend.to_string(), e))?;
        let calibration = Self::remember_calibration(m, slot, known, Some(&tm.backend), measured);
        let backend = tm.backend.to_string();
        Ok((Runner::Batches(tm), backend, calibration))
    }

    /// A generation replica: the model in the tab (weights it already holds are not sent again)
    /// and a decoder stepping its sessions.
    async fn load_generator(
        &self,
        g: &Generator,
        slot: &Slot,
        progress: &dyn crate::exec::WeightUpload,
    ) -> Result<(Runner, String, Vec<Measured>), (String, anyhow::Error)> {
        let wanted = slot.kind.backend.unwrap_or(self.cfg.backend);
        let exec = backend_choice::for_generation(wanted, slot.tab.caps()).map_err(|e| (wanted.to_string(), e))?;
        let stepper = Stepper::in_tab(&slot.tab, g.model.name(), &g.graph, &g.weights, exec.clone(), progress)
            .await
            .map_err(|e| (exec.to_string(), e))?;
        let gen_cfg = &self.cfg.generation;
        let limits = StepLimits { max_tokens: gen_cfg.step_tokens, max_rows: gen_cfg.sessions_per_tab as usize };
        let decoder = Decoder::start(Arc::new(stepper), limits, Some(self.gate.clone()));
        let run = Runner::Sessions { decoder, streams: AtomicUsize::new(0), prefixes: Mutex::default() };
        Ok((run, exec.to_string(), vec![]))
    }

    /// Take `slot` out of the pool: no new work, wait (bounded) for what runs, close its browser.
    pub async fn retire(&self, slot: &Arc<Slot>, action: &str, reason: &str) {
        if slot.retired.swap(true, Ordering::SeqCst) {
            return;
        }
        for m in self.models.lock().expect("models").iter() {
            m.replicas.lock().expect("replicas").retain(|r| !Arc::ptr_eq(&r.slot, slot));
        }
        // Batches and streams running here finish first (a stream still running at the deadline
        // is replayed elsewhere when the tab goes).
        let deadline = Instant::now() + Duration::from_secs(30);
        let busy = || slot.in_flight.load(Ordering::SeqCst) > 0 || slot.streams.load(Ordering::SeqCst) > 0;
        while busy() && slot.tab.is_connected() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Some(host) = self.host.lock().await.as_mut() {
            host.close_tab(slot.id).await;
        }
        self.tabs.lock().expect("tabs").retain(|s| !Arc::ptr_eq(s, slot));
        self.keep(Record::Tab {
            tab: Some(slot.id),
            kind: slot.kind.name.clone(),
            event: "retired".into(),
            detail: format!("{action}: {reason}"),
            capabilities: None,
        });
        self.log(action, Some(&slot.kind.name), Some(slot.id), reason);
        self.wake_all();
    }

    /// Load a model on its replicas and add it to the pool; the caller starts its batcher.
    pub async fn load_model(self: &Arc<Self>, spec: ModelSpec) -> anyhow::Result<Arc<ModelEntry>> {
        let dir = spec.dir.clone();
        let g = &self.cfg.generation;
        let limits = KvLimits { max_tokens: g.context_limit * g.sessions_per_tab, max_sessions: g.sessions_per_tab };
        let (shards, strategy, ty) = (g.shards, g.strategy, spec.model_type);
        let decoder_weights = if self.cfg.speech.compact_decoder { Preference::Compact } else { Preference::Fastest };
        // The registry says which family a type is; the pool only knows the two ways to run one.
        let family = tokio::task::spawn_blocking(move || -> anyhow::Result<Family> {
            Ok(match crate::models::registry::load(ty, dir.as_deref())? {
                Loaded::Batches(m) => Family::Batches(m),
                Loaded::Speech(w) => {
                    // Whisper has two components: the pool's split, if any, is encoder | decoder.
                    anyhow::ensure!(
                        shards == 1 || (shards == 2 && strategy == Strategy::Component),
                        "{} splits by component only (encoder | decoder): shards 1, or 2 with strategy component, not {shards} by {}",
                        w.name,
                        strategy.name()
                    );
                    Family::Speech(Arc::new(SpeechParts::build(w, decoder_weights)?))
                }
                Loaded::Sessions(mut model) => {
                    let sharded = match shards {
                        1 => None,
                        n => Some(Sharded::build(model.as_ref(), limits, n, strategy)?),
                    };
                    // Replicas load from the graph's weights: the loader's copy goes.
                    let (graph, weights) = model.take_graph(limits)?;
                    Family::Generation(Arc::new(Generator { model, graph, weights, sharded }))
                }
            })
        })
        .await??;
        let own_name = match &family {
            Family::Batches(m) => m.name().to_string(),
            Family::Generation(g) => g.model.name().to_string(),
            Family::Speech(p) => p.model.name.clone(),
        };
        let name = spec.name.clone().unwrap_or(own_name);
        anyhow::ensure!(self.model(&name).is_none(), "a model named {name:?} is already loaded");
        for k in spec.kinds.iter().flatten() {
            anyhow::ensure!(self.kinds.iter().any(|c| c.name == *k), "{name}: no browser kind {k:?} in this pool");
        }
        let entry = Arc::new(ModelEntry {
            name: name.clone(),
            model_type: spec.model_type,
            family,
            want_replicas: spec.replicas,
            kinds: spec.kinds.clone(),
            replicas: Mutex::new(Vec::new()),
            leaving: Mutex::new(Vec::new()),
            queue: Mutex::new(VecDeque::new()),
            wake: Notify::new(),
            waiting: AtomicUsize::new(0),
            ttft_ms_per_token: Mutex::new(None),
            served: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            busy: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            calibrated: Mutex::new(HashMap::new()),
            calibrations: AtomicU64::new(0),
            claiming: tokio::sync::Mutex::new(()),
        });
        // Replicas on the tabs whose kinds rank best for this model, all loading at once.
        let order: Vec<String> = self.kind_order_all(&name, spec.model_type).into_iter().map(|k| k.name).collect();
        let mut slots: Vec<Arc<Slot>> = self.slots().into_iter().filter(|s| s.usable() && entry.may_hold(s)).collect();
        slots.sort_by_key(|s| order.iter().position(|k| *k == s.kind.name).unwrap_or(usize::MAX));
        // Then one per machine (Grid node) before any machine gets a second.
        let nodes: Vec<Option<String>> = slots.iter().map(|s| s.node_id()).collect();
        let spread = crate::policy::placement::spread(&nodes.iter().map(Option::as_deref).collect::<Vec<_>>());
        let mut slots: Vec<Arc<Slot>> = spread.into_iter().map(|i| slots[i].clone()).collect();
        self.loading.lock().expect("loading").push(entry.clone());
        let ok = if self.spans_tabs(&entry.family) {
            // Pipelines one after another: each claims its stage tabs from those left (its
            // stages load at once).
            let count = || entry.replicas.lock().expect("replicas").len();
            for s in &slots {
                if count() >= spec.replicas.unwrap_or(usize::MAX) {
                    break;
                }
                if Shared::slots_in_use(&entry).contains(&s.serial) {
                    continue;
                }
                if !self.add_replica(&entry, s).await && self.free_for(&entry, s.serial).is_empty() {
                    break;
                }
            }
            count()
        } else {
            slots.truncate(spec.replicas.unwrap_or(usize::MAX));
            let loaded = futures_util::future::join_all(slots.iter().map(|s| self.add_replica(&entry, s))).await;
            loaded.iter().filter(|b| **b).count()
        };
        self.loading.lock().expect("loading").retain(|m| !Arc::ptr_eq(m, &entry));
        anyhow::ensure!(
            ok > 0 || slots.is_empty(),
            "{name} loaded on none of {} tabs (see the scaling log: {:?})",
            slots.len(),
            self.events.lock().expect("events").back()
        );
        self.models.lock().expect("models").push(entry.clone());
        Ok(entry)
    }

    /// Models still loading that want a replica on `slot` (its kind allowed, short of their
    /// replica count, not among `done`).
    fn loading_for(&self, slot: &Arc<Slot>, done: &[Arc<ModelEntry>]) -> Vec<Arc<ModelEntry>> {
        self.loading
            .lock()
            .expect("loading")
            .iter()
            .filter(|m| !done.iter().any(|d| Arc::ptr_eq(d, m)) && m.may_hold(slot) && !self.spans_tabs(&m.family))
            .filter(|m| m.want_replicas.is_none_or(|n| m.replicas.lock().expect("replicas").len() < n))
            .cloned()
            .collect()
    }

    /// Every configured kind in routing order for `model` (caps ignored).
    fn kind_order_all(&self, model: &str, ty: ModelType) -> Vec<KindSpec> {
        let mut order = self.kind_order(Some((model, ty)));
        for k in &self.kinds {
            if !order.iter().any(|o| o.name == k.name) {
                order.push(k.clone());
            }
        }
        order
    }

    /// Run `work` on its own task, aborted by shutdown (recoveries, retirements).
    pub fn spawn_background(&self, work: impl std::future::Future<Output = ()> + Send + 'static) {
        let handle = tokio::spawn(work).abort_handle();
        let mut bg = self.background.lock().expect("background");
        bg.retain(|h| !h.is_finished());
        bg.push(handle);
    }

    /// Every accepted request gets exactly one answer, and this returns within a bound even if
    /// a recovery is stuck in a hung WebDriver call: no new requests (checked under each queue's
    /// lock, so a racing `submit` either lands before the drain or is refused); queued requests
    /// answered `ShutDown`; running batches get `SHUTDOWN_GRACE` to deliver their results (their
    /// failures are answered `ShutDown`, never re-queued); then everyone still waiting is
    /// answered `ShutDown`, background recoveries are aborted and the browsers closed.
    pub async fn shutdown(&self) {
        self.closed.store(true, Ordering::SeqCst);
        for b in self.batchers.lock().expect("batchers").drain(..) {
            b.abort();
        }
        self.fail_queued();
        let grace = Instant::now() + SHUTDOWN_GRACE;
        while self.running_batches.load(Ordering::SeqCst) > 0 && Instant::now() < grace {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Retries scheduled before `closed` was seen land in a queue: answer them too.
        self.fail_queued();
        self.abandon.send_replace(true);
        for s in self.slots().iter().filter(|s| s.lent.is_some()) {
            s.tab.disconnect();
        }
        for h in self.background.lock().expect("background").drain(..) {
            h.abort();
        }
        match tokio::time::timeout(HOST_LOCK_WAIT, self.host.lock()).await {
            Ok(mut host) => {
                if let Some(host) = host.take() {
                    host.shutdown().await;
                }
            }
            // Dropping the pool drops the host, whose driver kills its process tree.
            Err(_) => {
                tracing::error!("shutdown: the host stayed locked for {HOST_LOCK_WAIT:?}; browsers are left to drop")
            }
        }
        if let Some(r) = &self.recorder {
            r.close();
        }
    }

    fn fail_queued(&self) {
        for m in self.models.lock().expect("models").iter() {
            for job in m.queue.lock().expect("queue").drain(..) {
                let _ = job.reply.send(Err(PoolError::ShutDown));
            }
        }
    }
}

/// A model load's live events: `model_load` with phase started, weights (each tenth of the bytes
/// sent), loaded, failed or spare.
struct LoadProgress<'a> {
    shared: &'a Shared,
    model: &'a str,
    slot: &'a Slot,
    total: AtomicU64,
    sent: AtomicU64,
    tenths: AtomicU64,
    t: Instant,
}

impl<'a> LoadProgress<'a> {
    fn new(shared: &'a Shared, model: &'a str, slot: &'a Slot) -> LoadProgress<'a> {
        let (total, sent, tenths) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
        LoadProgress { shared, model, slot, total, sent, tenths, t: Instant::now() }
    }

    fn phase(&self, phase: &str, detail: Option<&str>) {
        let v = serde_json::json!({
            "type": "model_load", "model": self.model, "tab": self.slot.id, "kind": self.slot.kind.name,
            "phase": phase, "detail": detail, "ms": self.t.elapsed().as_secs_f64() * 1e3,
            "bytes": self.sent.load(Ordering::Relaxed), "total_bytes": self.total.load(Ordering::Relaxed),
        });
        if let serde_json::Value::Object(fields) = v {
            self.shared.emit(fields);
        }
    }
}

impl crate::exec::WeightUpload for LoadProgress<'_> {
    fn start(&self, total_bytes: u64) {
        // A pipeline's stages each start their own upload: the totals add up.
        self.total.fetch_add(total_bytes, Ordering::Relaxed);
    }
    fn advance(&self, bytes: u64) {
        let sent = self.sent.fetch_add(bytes, Ordering::Relaxed) + bytes;
        let total = self.total.load(Ordering::Relaxed).max(1);
        let tenth = (sent * 10 / total).min(10);
        if self.tenths.fetch_max(tenth, Ordering::Relaxed) < tenth {
            self.phase("weights", None);
        }
    }
    fn finish(&self) {}
}
