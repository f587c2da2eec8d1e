//! The pool: tabs of several browser kinds, models with replicas in them, a bounded queue with
//! dynamic batching per model, routing from measured history, and adaptive scaling.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use tabpool::pool::{ModelSpec, Pool};
//! let pool = Pool::builder().min_tabs(2).max_tabs(4).build().await?;
//! pool.load(ModelSpec::minilm()).await?;
//! let served = pool.embed(&["A cat sits outside"]).await?;
//! println!("{} dims from tab {} ({})", served.vectors[0].len(), served.tab, served.kind);
//! println!("{}", serde_json::to_string_pretty(&pool.metrics())?);
//! pool.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Where things are: `config.rs` (TOML + defaults), `state.rs` (tabs, replicas, models, history,
//! launching and retiring tabs), `scheduler.rs` (admission, batching, dispatch, retries),
//! `pipelines.rs` (sharded generation replicas: pipelines of stage tabs), `scaler.rs` (observe → `policy::scaling::decide` → act), `watchdog.rs` (heartbeats, failed
//! tabs → `Shared::recover`), `metrics.rs` (the snapshot).
//! Decisions themselves are pure functions in `crate::policy`.

mod breakers;
pub mod config;
pub mod generation;
pub mod grid;
mod hedge;
mod lending;
pub mod metrics;
mod pipelines;
mod scaler;
mod scheduler;
pub mod speech;
mod state;
pub mod telemetry;
mod watchdog;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use thiserror::Error;

pub use config::{PoolConfig, ScalingToml};
pub use generation::{GenRequest, GenSummary, StreamEvent};
pub use metrics::PoolMetrics;
pub use state::Generator;

use crate::browser::KindSpec;
pub use crate::family::Input;
use crate::policy::routing::ModelType;
use crate::{Host, HostConfig};
use state::Shared;

#[derive(Debug, Error)]
pub enum PoolError {
    #[error("busy: {queued} requests already queued for {model} (limit {limit}); retry later")]
    Busy { model: String, queued: usize, limit: usize },
    #[error("deadline of {after:?} passed before the result arrived")]
    Deadline { after: Duration },
    #[error("bad input: {0}")]
    BadInput(String),
    /// Beyond a request limit (texts per request); the message names the limit.
    #[error("request too large: {0}")]
    TooLarge(String),
    #[error("no model {0:?} is loaded in the pool")]
    UnknownModel(String),
    #[error("failed after {attempts} attempt(s): {message}")]
    Failed { attempts: u32, message: String },
    #[error("the pool is shutting down")]
    ShutDown,
}

impl PoolError {
    /// A short stable name (API error kinds, the history's error column).
    pub fn kind(&self) -> &'static str {
        match self {
            PoolError::Busy { .. } => "busy",
            PoolError::Deadline { .. } => "deadline",
            PoolError::BadInput(_) => "bad_input",
            PoolError::TooLarge(_) => "too_large",
            PoolError::UnknownModel(_) => "unknown_model",
            PoolError::Failed { .. } => "failed",
            PoolError::ShutDown => "shutting_down",
        }
    }
}

/// A served request: one vector per text, and where and how it ran.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Served {
    pub model: String,
    /// Per row, the model's first output (an embedding: one L2-normalised vector per text; a
    /// classifier: its logits).
    pub vectors: Vec<Vec<f32>>,
    /// Per row, the further outputs in graph order (a classifier's pooled features).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub extra: Vec<Vec<Vec<f32>>>,
    /// Tokens per text, [CLS]/[SEP] included.
    pub lengths: Vec<usize>,
    pub truncated: Vec<bool>,
    pub tab: u64,
    pub kind: String,
    pub backend: String,
    /// Texts in the batch this request travelled in (its own and others').
    pub batch_rows: usize,
    pub queue_ms: f64,
    /// Host-measured round trip of the batch.
    pub run_ms: f64,
    /// The tab's own time for the batch (submit to results read, inside the tab): `run_ms`
    /// minus this is transport, framing and the host's side.
    pub device_ms: f64,
    /// 1 unless a tab failed and the request was run again (the most of any part).
    pub attempts: u32,
    /// Batches the request was split into (`max_batch`, `max_batch_tokens`); with more than
    /// one, `batch_rows` and `run_ms` are summed over them and `queue_ms` is the longest wait.
    pub parts: usize,
}

/// A multi-tab job's merged answer (`Pool::embed_many`).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ManyServed {
    pub model: String,
    pub vectors: Vec<Vec<f32>>,
    pub lengths: Vec<usize>,
    pub truncated: Vec<bool>,
    pub shards: usize,
    /// Tabs that served a shard.
    pub tabs: Vec<u64>,
    /// Shards that needed more than one attempt.
    pub retried_shards: usize,
}

fn texts_of(texts: &[&str]) -> Input {
    Input::Texts(texts.iter().map(|t| t.to_string()).collect())
}

/// A model to load: a sentence-encoder folder (default: all-MiniLM-L6-v2 from the model cache).
#[derive(Debug, Clone)]
pub struct ModelSpec {
    pub dir: Option<PathBuf>,
    /// Name requests use; the model's own name when absent.
    pub name: Option<String>,
    pub model_type: ModelType,
    /// Replicas to keep; every tab when absent.
    pub replicas: Option<usize>,
    /// Browser kinds (configured kind names) its replicas may live on; every kind when absent.
    /// Directs a model's work to chosen kinds: routing only ever picks among its replicas.
    pub kinds: Option<Vec<String>>,
}

impl ModelSpec {
    pub fn minilm() -> ModelSpec {
        ModelSpec { dir: None, name: None, model_type: ModelType::TextEmbedding, replicas: None, kinds: None }
    }
    /// SmolLM2-135M-Instruct (Q4_1 GGUF from the model cache): text generation.
    pub fn smollm2() -> ModelSpec {
        ModelSpec { model_type: ModelType::TextGeneration, ..ModelSpec::minilm() }
    }
    /// The built-in model of type `ty` (EfficientNet-Lite0 for `Vision`), from the model cache.
    pub fn of_type(ty: ModelType) -> ModelSpec {
        ModelSpec { model_type: ty, ..ModelSpec::minilm() }
    }
    pub fn from_dir(dir: impl Into<PathBuf>) -> ModelSpec {
        ModelSpec { dir: Some(dir.into()), ..ModelSpec::minilm() }
    }
    pub fn named(mut self, name: &str) -> ModelSpec {
        self.name = Some(name.into());
        self
    }
    pub fn replicas(mut self, n: usize) -> ModelSpec {
        self.replicas = Some(n);
        self
    }
    /// Keep replicas on tabs of these kinds only (by kind name, e.g. "firefox"): to serve a model
    /// from a chosen browser, or to measure or test each kind whatever routing would prefer.
    pub fn on_kinds(mut self, kinds: &[&str]) -> ModelSpec {
        self.kinds = Some(kinds.iter().map(|k| k.to_string()).collect());
        self
    }
}

/// Most texts in one request (a request travels in one batch; split bigger jobs).
pub const MAX_TEXTS_PER_REQUEST: usize = 1024;

pub struct PoolBuilder {
    host: HostConfig,
    cfg: PoolConfig,
}

impl PoolBuilder {
    pub fn host(mut self, host: HostConfig) -> Self {
        self.host = host;
        self
    }
    pub fn config(mut self, cfg: PoolConfig) -> Self {
        self.cfg = cfg;
        self
    }
    pub fn min_tabs(mut self, n: usize) -> Self {
        self.cfg.min_tabs = n;
        self
    }
    pub fn max_tabs(mut self, n: usize) -> Self {
        self.cfg.max_tabs = n;
        self
    }
    /// Add a browser kind (the first call replaces the installed-kinds default).
    pub fn kind(mut self, kind: KindSpec) -> Self {
        self.cfg.kinds.push(kind);
        self
    }
    pub fn max_queue(mut self, n: usize) -> Self {
        self.cfg.max_queue = n;
        self
    }
    pub fn max_batch(mut self, n: usize) -> Self {
        self.cfg.max_batch = n;
        self
    }
    pub fn scaling(mut self, s: ScalingToml) -> Self {
        self.cfg.scaling = s;
        self
    }

    /// Start the host, launch `min_tabs` tabs (kinds in routing order), start the scaler.
    pub async fn build(self) -> anyhow::Result<Pool> {
        let host = Host::start(self.host).await?;
        Pool::with_host(host, self.cfg).await
    }
}

/// Cheap to share: clone the `Arc` it sits in, or use it by reference from many tasks.
/// A lent tab as `Pool::lent_tabs` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LentTab {
    pub tab: u64,
    pub token: String,
    pub origin: String,
    /// Its models are loaded and it takes work.
    pub serving: bool,
    /// Results it produced (batches and streams), those checked on a trusted tab, those agreeing.
    pub served: u64,
    pub checked: u64,
    pub agreed: u64,
}

pub struct Pool {
    shared: Arc<Shared>,
    /// The scaler and the watchdog.
    tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Where pages lend their tabs (`serve --join`).
    join_url: Option<String>,
}

impl Pool {
    pub fn builder() -> PoolBuilder {
        PoolBuilder { host: HostConfig::default(), cfg: PoolConfig::default() }
    }

    /// A pool over an already started host.
    pub async fn with_host(mut host: Host, cfg: PoolConfig) -> anyhow::Result<Pool> {
        cfg.validate()?;
        // One thread budget for the machine (unless the user set `--tab-threads`): a page starts
        // with threads enough for the fewest tabs the pool may hold, and the scaler then gives
        // each tab its share of the cores as tabs come and go (`scaler::balance_threads`).
        let thread_budget = host.tab_threads_asked().is_none().then(crate::policy::threads::local_cores);
        if let Some(cores) = thread_budget {
            host.set_tab_threads(crate::policy::threads::per_tab(cores, cfg.min_tabs.max(1)));
        }
        let kinds = cfg.kinds_or_installed(|k| host.browser_binary(k).is_ok());
        anyhow::ensure!(
            !kinds.is_empty(),
            "no browser kind is installed or configured (run `bash scripts/setup.sh`, or add [[kinds]] to the config)"
        );
        let store = match &cfg.history.path {
            Some(p) => {
                let p = p.clone();
                Some(Arc::new(tokio::task::spawn_blocking(move || crate::store::Store::open(&p)).await??))
            }
            None => None,
        };
        let joined = host.take_joined();
        let join_url = host.join_url();
        let mut shared = Shared::new(host, cfg, kinds, store)?;
        shared.thread_budget = thread_budget;
        let shared = Arc::new(shared);
        // Start at min_tabs before anything is served, so a bad setup fails here, loudly.
        let started = Instant::now();
        while shared.live_tabs() < shared.cfg.min_tabs {
            let reason = format!("start: {} tabs, below min_tabs {}", shared.live_tabs(), shared.cfg.min_tabs);
            if let Err(e) = shared.grow(None, &reason).await {
                shared.shutdown().await;
                return Err(e.context("starting the pool's first tabs"));
            }
        }
        tracing::info!("pool up with {} tabs in {:.1} s", shared.live_tabs(), started.elapsed().as_secs_f64());
        let mut tasks = vec![
            tokio::spawn(scaler::run(shared.clone())),
            tokio::spawn(watchdog::run(shared.clone())),
            tokio::spawn(grid::run(shared.clone())),
        ];
        if let Some(arrivals) = joined {
            tasks.push(tokio::spawn(lending::run(shared.clone(), arrivals)));
        }
        Ok(Pool { shared, tasks: std::sync::Mutex::new(tasks), join_url })
    }

    /// Load a model on its replicas (every tab unless `spec.replicas` says fewer); returns its name.
    pub async fn load(&self, spec: ModelSpec) -> anyhow::Result<String> {
        let m = self.shared.load_model(spec).await?;
        // Embeddings queue for a batcher; generation streams are placed on replicas directly.
        if matches!(m.family, state::Family::Batches(_)) {
            let batcher = tokio::spawn(scheduler::run(self.shared.clone(), m.clone()));
            self.shared.batchers.lock().expect("batchers").push(batcher);
        }
        Ok(m.name.clone())
    }

    /// Transcribe `audio` with speech model `model` (the first loaded when `None`), with
    /// `context` (token ids) as the text before it.
    pub async fn transcribe(
        &self,
        model: Option<&str>,
        audio: speech::Audio,
        context: Vec<u32>,
        deadline: Option<Duration>,
    ) -> Result<speech::Transcribed, PoolError> {
        let (_, m) = self.speech_entry(model)?;
        speech::transcribe(&self.shared, &m, audio, context, deadline).await
    }

    /// The speech model `model` names (the first loaded when `None`): its name and the model
    /// (tokenizer, language, limits) for the API.
    pub fn speech_model(
        &self,
        model: Option<&str>,
    ) -> Result<(String, Arc<crate::models::whisper::Whisper>), PoolError> {
        let (name, m) = self.speech_entry(model)?;
        match &m.family {
            state::Family::Speech(p) => Ok((name, p.model.clone())),
            _ => unreachable!("speech_entry returns speech models"),
        }
    }

    fn speech_entry(&self, model: Option<&str>) -> Result<(String, Arc<state::ModelEntry>), PoolError> {
        let m = match model {
            Some(name) => self.shared.model(name).ok_or_else(|| PoolError::UnknownModel(name.into()))?,
            None => self
                .shared
                .default_model(Some(ModelType::Audio))
                .ok_or_else(|| PoolError::UnknownModel("(no speech model loaded)".into()))?,
        };
        if !matches!(m.family, state::Family::Speech(_)) {
            return Err(PoolError::BadInput(format!("{} does not transcribe speech", m.name)));
        }
        Ok((m.name.clone(), m))
    }

    /// Embed with the first loaded model.
    pub async fn embed(&self, texts: &[&str]) -> Result<Served, PoolError> {
        let model = self
            .shared
            .default_model(Some(ModelType::TextEmbedding))
            .ok_or_else(|| PoolError::UnknownModel("(none loaded)".into()))?;
        scheduler::submit(&self.shared, &model, texts_of(texts), None, None).await
    }

    /// Embed with `model`, failing with `Deadline` if no result arrives within `deadline`. A
    /// request still queued at its deadline is never run; a late reply is dropped.
    pub async fn embed_with(
        &self,
        model: &str,
        texts: &[&str],
        deadline: Option<Duration>,
    ) -> Result<Served, PoolError> {
        self.submit(model, texts_of(texts), deadline).await
    }

    /// Run `input` on `model` (any model served in batches: texts, token ids, images, a
    /// prepared tensor — as the model takes it), within `deadline`.
    pub async fn submit(&self, model: &str, input: Input, deadline: Option<Duration>) -> Result<Served, PoolError> {
        let m = self.shared.model(model).ok_or_else(|| PoolError::UnknownModel(model.into()))?;
        scheduler::submit(&self.shared, &m, input, deadline, None).await
    }

    /// The batch model named `model` (its signature, class names), or why there is none.
    pub fn batch_model(&self, model: &str) -> Result<Arc<dyn crate::family::BatchModel>, PoolError> {
        let m = self.shared.model(model).ok_or_else(|| PoolError::UnknownModel(model.into()))?;
        m.batch_model().cloned()
    }

    /// Embed texts given as token ids of the model's own vocabulary (without [CLS]/[SEP]: they
    /// are added, and a text longer than the model takes is truncated).
    pub async fn embed_ids(
        &self,
        model: &str,
        ids: &[Vec<u32>],
        deadline: Option<Duration>,
    ) -> Result<Served, PoolError> {
        // Counted before copying: a list of a million ids is refused, not copied first.
        scheduler::check_count(ids.len())?;
        self.submit(model, Input::TokenIds(ids.to_vec()), deadline).await
    }

    /// When the pool started, in Unix seconds (OpenAI's `created` for its models).
    pub fn started_unix(&self) -> u64 {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        now.saturating_sub(self.shared.started.elapsed()).as_secs()
    }

    /// Most tokens a generation session holds (prompt + generated) for `g` in this pool.
    pub fn context_limit(&self, g: &Generator) -> usize {
        self.shared.cfg.generation.context_limit.min(g.model.context_length()) as usize
    }

    /// Embed many texts as one multi-tab job: shards of `max_batch` run on every replica at once
    /// and are merged in order. All or nothing: a shard whose tab fails is reassigned (with the
    /// job's other queued shards kept off that tab: coordinated recovery); if a shard still fails
    /// after its retries, the whole call fails.
    pub async fn embed_many(
        &self,
        model: &str,
        texts: &[&str],
        deadline: Option<Duration>,
    ) -> Result<ManyServed, PoolError> {
        let m = self.shared.model(model).ok_or_else(|| PoolError::UnknownModel(model.into()))?;
        if texts.is_empty() {
            return Err(PoolError::BadInput("no texts to embed".into()));
        }
        let group = self.shared.next_group.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let shards = texts.chunks(self.shared.cfg.max_batch.max(1));
        let results = futures_util::future::join_all(
            shards.map(|shard| scheduler::submit(&self.shared, &m, texts_of(shard), deadline, Some(group))),
        )
        .await;
        let mut out = ManyServed { model: m.name.clone(), ..ManyServed::default() };
        for r in results {
            let s = r?;
            out.shards += 1;
            out.retried_shards += (s.attempts > 1) as usize;
            if !out.tabs.contains(&s.tab) {
                out.tabs.push(s.tab);
            }
            out.vectors.extend(s.vectors);
            out.lengths.extend(s.lengths);
            out.truncated.extend(s.truncated);
        }
        Ok(out)
    }

    /// Start generating with `model` (default: the first generation model loaded). Events
    /// stream on the receiver; dropping it cancels the session and frees its KV cache in the
    /// tab. A replica lost mid-stream is replayed on another and the stream goes on.
    pub fn generate(
        &self,
        model: Option<&str>,
        req: GenRequest,
    ) -> Result<tokio::sync::mpsc::UnboundedReceiver<StreamEvent>, PoolError> {
        let (_, m) = self.generation_entry(model)?;
        generation::start(&self.shared, &m, req)
    }

    /// A generation model by name (default: the first loaded), to tokenise prompts and decode
    /// tokens: (its name, the model).
    pub fn generation_model(&self, model: Option<&str>) -> Result<(String, Arc<Generator>), PoolError> {
        let (name, m) = self.generation_entry(model)?;
        match &m.family {
            state::Family::Generation(g) => Ok((name, g.clone())),
            state::Family::Batches(_) | state::Family::Speech(_) => {
                Err(PoolError::BadInput(format!("{name} does not generate text (ask it through its own route)")))
            }
        }
    }

    fn generation_entry(&self, model: Option<&str>) -> Result<(String, Arc<state::ModelEntry>), PoolError> {
        let m = match model {
            Some(name) => self.shared.model(name).ok_or_else(|| PoolError::UnknownModel(name.into()))?,
            None => self
                .shared
                .default_model(Some(ModelType::TextGeneration))
                .ok_or_else(|| PoolError::UnknownModel("(no generation model loaded)".into()))?,
        };
        Ok((m.name.clone(), m))
    }

    /// Run every (model, texts) request at once across the pool; results in request order.
    pub async fn execute_concurrent(&self, requests: &[(&str, Vec<&str>)]) -> Vec<Result<Served, PoolError>> {
        futures_util::future::join_all(requests.iter().map(|(m, texts)| self.embed_with(m, texts, None))).await
    }

    /// The first model of type `ty` loaded, if any.
    pub fn model_of_type(&self, ty: ModelType) -> Option<String> {
        self.shared.default_model(Some(ty)).map(|m| m.name.clone())
    }

    /// The first embedding model loaded, if any.
    pub fn embedding_model(&self) -> Option<String> {
        self.shared.default_model(Some(ModelType::TextEmbedding)).map(|m| m.name.clone())
    }

    /// Replicas loaded for `model` now (`None`: no such model).
    pub fn replica_count(&self, model: &str) -> Option<usize> {
        self.shared.model(model).map(|m| m.replicas.lock().expect("replicas").len())
    }

    /// Names of the loaded models, in load order.
    pub fn models(&self) -> Vec<String> {
        self.shared.models.lock().expect("models").iter().map(|m| m.name.clone()).collect()
    }

    /// Where a page lends its tab (`rt.join(url, { token })`), when the host takes lent tabs.
    pub fn join_url(&self) -> Option<&str> {
        self.join_url.as_deref()
    }

    /// Lent tabs now: (tab id, token id, origin, results served, checked, agreed).
    pub fn lent_tabs(&self) -> Vec<LentTab> {
        self.shared
            .slots()
            .iter()
            .filter_map(|s| {
                let l = s.lent.as_ref()?;
                let n = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::SeqCst);
                Some(LentTab {
                    tab: s.id,
                    token: l.token.clone(),
                    origin: l.origin.clone(),
                    serving: s.usable(),
                    served: n(&l.served),
                    checked: n(&l.checked),
                    agreed: n(&l.agreed),
                })
            })
            .collect()
    }

    /// (tab id, kind) of the tabs serving now.
    pub fn tabs(&self) -> Vec<(u64, String)> {
        self.shared.slots().iter().filter(|s| s.usable()).map(|s| (s.id, s.kind.name.clone())).collect()
    }

    /// Launch one more tab now, as the scaler would (within the kinds' `max_tabs`; on a Grid only
    /// when a matching slot is free), with a replica of every model that wants one. Returns its id
    /// once it is ready to serve.
    pub async fn add_tab(&self, reason: &str) -> anyhow::Result<u64> {
        self.shared.grow(None, reason).await
    }

    /// Retire tab `id` as the scaler would: no new work, what runs there finishes (bounded), its
    /// browser or Grid session is closed.
    pub async fn retire_tab(&self, id: u64, reason: &str) -> anyhow::Result<()> {
        let slot = self.shared.slots().into_iter().find(|s| s.id == id).context("no such tab")?;
        self.shared.retire(&slot, "retire", reason).await;
        Ok(())
    }

    /// Drop tab `id`'s socket from the host side (operations and chaos testing); the pool
    /// recovers it like any lost connection.
    pub fn disconnect_tab(&self, id: u64) -> bool {
        let slot = self.shared.slots().into_iter().find(|s| s.id == id && s.usable());
        slot.map(|s| s.tab.disconnect()).is_some()
    }

    /// Lose tab `id`'s WebGPU device and WebNN contexts (`destroy()` in the tab, as a driver
    /// reset would): its models fail with `DeviceLost` until the pool reloads them on a new
    /// device or context (simple recovery). Returns how many were destroyed.
    pub async fn lose_device(&self, id: u64) -> anyhow::Result<u32> {
        let slot = self.shared.slots().into_iter().find(|s| s.id == id && s.usable()).context("no such tab")?;
        Ok(slot.tab.lose_device(std::time::Duration::from_secs(10)).await?)
    }

    /// Close tab `id`'s window through WebDriver (as a user closing it would).
    pub async fn close_tab_window(&self, id: u64) -> anyhow::Result<()> {
        self.shared.host.lock().await.as_mut().context("shutting down")?.close_window(id).await
    }

    /// Hang tab `id`: stop its renderer process(es) (SIGSTOP), as a renderer stuck in a loop
    /// would be. The socket stays open (the network service is another process), so only
    /// heartbeats can tell. Local tabs only; returns how many processes were stopped.
    pub async fn freeze_tab(&self, id: u64) -> anyhow::Result<usize> {
        let renderers: Vec<i32> =
            self.tab_processes(id).await.into_iter().filter(|(_, r)| *r).map(|(p, _)| p).collect();
        anyhow::ensure!(!renderers.is_empty(), "tab {id} has no local renderer process to stop");
        for pid in &renderers {
            // SAFETY: kill(2) with a pid of a process this host started.
            unsafe { libc::kill(*pid, libc::SIGSTOP) };
        }
        Ok(renderers.len())
    }

    /// The shared chromedriver's pid (to kill it in tests: a lost WebDriver session).
    pub async fn driver_pid(&self) -> Option<i32> {
        self.shared.host.lock().await.as_ref().and_then(|h| h.driver_pid())
    }

    /// Local processes of tab `id`'s browser: (pid, is a renderer/content process).
    pub async fn tab_processes(&self, id: u64) -> Vec<(i32, bool)> {
        self.shared.host.lock().await.as_ref().map(|h| h.tab_processes(id)).unwrap_or_default()
    }

    pub fn metrics(&self) -> PoolMetrics {
        metrics::snapshot(&self.shared)
    }

    /// The Prometheus text exposition of this pool (`GET /metrics`).
    pub fn prometheus(&self) -> String {
        self.shared.telemetry.render(&self.metrics())
    }

    /// The live event stream (`GET /v1/events`): JSON objects, each with its `type`.
    pub fn subscribe_events(&self) -> tokio::sync::broadcast::Receiver<Arc<str>> {
        self.shared.live.subscribe()
    }

    /// Where the API records its requests.
    pub fn telemetry(&self) -> &telemetry::Telemetry {
        &self.shared.telemetry
    }

    /// The history database this pool records into (`history.path`), for reports.
    pub fn store(&self) -> Option<Arc<crate::store::Store>> {
        self.shared.store.clone()
    }

    /// Wait until every row recorded so far is in the history database.
    pub fn flush_history(&self) -> anyhow::Result<()> {
        match &self.shared.recorder {
            Some(r) => r.flush(),
            None => Ok(()),
        }
    }

    /// CPU time the history writer thread has spent (0 when not recording).
    pub fn recorder_cpu_ns(&self) -> u64 {
        self.shared
            .recorder
            .as_ref()
            .map(|r| r.stats().writer_cpu_ns.load(std::sync::atomic::Ordering::Relaxed))
            .unwrap_or(0)
    }

    pub fn config(&self) -> &PoolConfig {
        &self.shared.cfg
    }

    /// Fail what is queued, close every tab, browser and driver.
    /// Whether `shutdown` has begun (no new work is accepted).
    pub fn is_shut_down(&self) -> bool {
        self.shared.closed.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub async fn shutdown(&self) {
        for t in self.tasks.lock().expect("tasks").drain(..) {
            t.abort();
        }
        self.shared.shutdown().await;
    }
}
