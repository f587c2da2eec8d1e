//! Pool configuration: a TOML file (`--config`), overridden by CLI flags, with defaults that
//! need neither. See `pool.example.toml` at the repository root.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::browser::{BrowserKind, KindSpec};
use crate::exec::Backend;
use crate::policy::scaling::ScalingConfig;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    /// Tabs kept up at all times (and launched at start).
    pub min_tabs: usize,
    /// Most tabs over all kinds.
    pub max_tabs: usize,
    /// Batches waiting per model before new requests are refused as busy (429). A request is
    /// queued as its batches (see `max_batch_tokens`); one needing more than this is refused as
    /// too large (413), since it could never be admitted.
    pub max_queue: usize,
    /// Most texts in one batch sent to a tab.
    pub max_batch: usize,
    /// Most padded tokens (texts × the longest text's tokens) in one batch: bounds what a tab
    /// allocates for one run (attention grows with batch × length²). Larger requests are split
    /// into batches within this and `max_batch`, and answered as one. At least the model's
    /// longest text (256 tokens for MiniLM).
    pub max_batch_tokens: usize,
    /// How long a partial batch waits for more requests.
    pub batch_wait_ms: u64,
    /// Batches a tab runs at once (a tab executes one at a time; 2 hides the round trip).
    pub in_flight_per_tab: usize,
    /// Samples per (model, kind, backend) before measured history overrides the priors.
    pub min_samples: u64,
    /// Attempts after the first when a tab fails mid-request (on another replica when possible).
    pub retries: u32,
    /// Backend for models in tabs unless a kind sets its own.
    pub backend: Backend,
    /// A batch running longer than this fails as a timeout (and is retried elsewhere).
    pub call_timeout_s: f64,
    /// Hedge a batch to a second free replica once it runs this many times its expected time.
    pub hedge_factor: f64,
    /// ... and never before this.
    pub hedge_floor_ms: u64,
    /// Off: no hedged duplicates.
    pub hedge: bool,
    pub scaling: ScalingToml,
    pub health: HealthToml,
    pub history: HistoryToml,
    pub generation: GenerationToml,
    pub speech: SpeechToml,
    pub lending: LendingToml,
    /// Browser kinds tabs may be launched as, in no particular order (routing orders them).
    pub kinds: Vec<KindSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScalingToml {
    /// Grow when the mean queue wait over the window exceeds this.
    pub wait_high_ms: u64,
    /// Grow when this fraction of tabs is busy and requests are queued.
    pub utilisation_high: f64,
    /// Close a tab idle this long (never below min_tabs).
    pub idle_cooldown_s: f64,
    /// Do not grow when less than this fraction of system memory is available.
    pub min_free_memory: f64,
    /// How often the scaler observes and decides.
    pub interval_ms: u64,
    /// The window utilisation and queue wait are averaged over.
    pub window_s: f64,
    /// Off: the pool stays at min_tabs (still replacing tabs that die).
    pub enabled: bool,
}

/// The performance history (DuckDB, `crate::store`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryToml {
    /// The database file. Unset: nothing is recorded (the library default; `tabpool serve` uses
    /// `Store::default_path()` unless `--no-history`).
    pub path: Option<std::path::PathBuf>,
    /// History older than this is not read back into routing at start.
    pub window_days: f64,
    /// How often each tab's health score is sampled into the history.
    pub health_sample_s: f64,
}

/// Text generation (stateful models: sessions whose KV cache lives in the tab).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GenerationToml {
    /// Most tokens one session holds (prompt + generated); longer prompts are refused naming it.
    pub context_limit: u32,
    /// Sessions one replica runs at once (each decode step advances all of them together); its
    /// KV cache is reserved for this many full contexts (46 KiB per token for SmolLM2-135M).
    pub sessions_per_tab: u32,
    /// Most tokens (decode rows + prompt chunks) in one step: bounds a step's latency, so a long
    /// prompt joining delays the other streams' next token by at most one such step.
    pub step_tokens: usize,
    /// Streams waiting for a free session place per model before new ones are refused as busy.
    pub max_waiting: usize,
    /// Tabs one replica spans (1: a whole model per tab). Above 1 a replica is a pipeline of
    /// this many stage tabs, each holding only its share of the weights and KV cache. Speech
    /// models follow it too, but only as 2 by component (encoder | decoder).
    pub shards: u32,
    /// How a sharded replica is split: layer, pipeline (layer ranges, a step's sessions in
    /// micro-batches), component or attention-ffn (both need shards = 2). Hybrid needs measured
    /// tabs: `tabpool shard plan` prints its choice, to be set here.
    pub strategy: crate::policy::sharding::Strategy,
}

impl Default for GenerationToml {
    fn default() -> Self {
        GenerationToml {
            context_limit: 2048,
            sessions_per_tab: 8,
            step_tokens: 256,
            max_waiting: 256,
            shards: 1,
            strategy: crate::policy::sharding::Strategy::Layer,
        }
    }
}

/// Speech models (Whisper).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpeechToml {
    /// Keep the decoder's weights f16 (as stored) where it runs on a tab's wasm CPU executor:
    /// about 57 MB less per replica, decode steps about 1.4× slower there (`policy::weight_form`).
    pub compact_decoder: bool,
}

/// Tabs that pages lend (`serve --join`): how their results are checked on trusted tabs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LendingToml {
    /// Every result of a lent tab's first this many batches and streams is re-run on a trusted
    /// tab before it is answered.
    pub verify_first: u64,
    /// After those, this fraction of its results, drawn at random.
    pub verify_rate: f64,
    /// Relative L2 error within which a lent tab's output row agrees with the trusted one
    /// (`policy::verification::rows_agree`); generated tokens must be identical.
    pub tolerance: f64,
}

impl Default for LendingToml {
    fn default() -> Self {
        LendingToml { verify_first: 16, verify_rate: 0.1, tolerance: 1e-2 }
    }
}

impl LendingToml {
    pub fn sampling(&self) -> crate::policy::verification::Sampling {
        crate::policy::verification::Sampling { first: self.verify_first, rate: self.verify_rate }
    }
}

impl Default for HistoryToml {
    fn default() -> Self {
        HistoryToml { path: None, window_days: 30.0, health_sample_s: 5.0 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthToml {
    /// Ping a tab that has been silent this long.
    pub heartbeat_interval_ms: u64,
    /// A ping unanswered this long is a missed heartbeat.
    pub heartbeat_timeout_ms: u64,
    /// Missed heartbeats in a row that make a tab unresponsive (its page is reloaded).
    pub heartbeat_misses: u32,
    /// Circuit breaker per tab and per (tab, model): sliding window of the last calls.
    pub breaker_window: usize,
    pub breaker_min_calls: usize,
    pub breaker_failure_rate: f64,
    pub breaker_slow_call_s: f64,
    pub breaker_slow_rate: f64,
    pub breaker_open_wait_s: f64,
    pub breaker_half_open_probes: usize,
}

impl Default for HealthToml {
    fn default() -> Self {
        let b = crate::policy::breaker::BreakerConfig::default();
        HealthToml {
            heartbeat_interval_ms: 1000,
            heartbeat_timeout_ms: 5000,
            heartbeat_misses: 3,
            breaker_window: b.window,
            breaker_min_calls: b.min_calls,
            breaker_failure_rate: b.failure_rate,
            breaker_slow_call_s: b.slow_call.as_secs_f64(),
            breaker_slow_rate: b.slow_rate,
            breaker_open_wait_s: b.open_wait.as_secs_f64(),
            breaker_half_open_probes: b.half_open_probes,
        }
    }
}

impl HealthToml {
    pub fn breaker(&self) -> crate::policy::breaker::BreakerConfig {
        crate::policy::breaker::BreakerConfig {
            window: self.breaker_window.max(1),
            min_calls: self.breaker_min_calls.max(1),
            failure_rate: self.breaker_failure_rate,
            slow_call: Duration::from_secs_f64(self.breaker_slow_call_s),
            slow_rate: self.breaker_slow_rate,
            open_wait: Duration::from_secs_f64(self.breaker_open_wait_s),
            half_open_probes: self.breaker_half_open_probes.max(1),
        }
    }
}

impl Default for ScalingToml {
    fn default() -> Self {
        let d = ScalingConfig::default();
        ScalingToml {
            wait_high_ms: d.wait_high.as_millis() as u64,
            utilisation_high: d.utilisation_high,
            idle_cooldown_s: d.idle_cooldown.as_secs_f64(),
            min_free_memory: d.min_free_memory,
            interval_ms: 1000,
            window_s: 5.0,
            enabled: true,
        }
    }
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            min_tabs: 1,
            max_tabs: 4,
            max_queue: 256,
            max_batch: 32,
            max_batch_tokens: 8192,
            batch_wait_ms: 2,
            in_flight_per_tab: 1,
            min_samples: 20,
            retries: 8,
            backend: Backend::Auto,
            call_timeout_s: 60.0,
            hedge_factor: 4.0,
            hedge_floor_ms: 250,
            hedge: true,
            scaling: ScalingToml::default(),
            health: HealthToml::default(),
            history: HistoryToml::default(),
            generation: GenerationToml::default(),
            speech: SpeechToml::default(),
            lending: LendingToml::default(),
            kinds: Vec::new(),
        }
    }
}

impl PoolConfig {
    pub fn from_toml(text: &str) -> anyhow::Result<PoolConfig> {
        let cfg: PoolConfig = toml::from_str(text)?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn from_file(path: &Path) -> anyhow::Result<PoolConfig> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::from_toml(&text).with_context(|| format!("in {}", path.display()))
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        // Durations and rates are floats in the file: NaN, infinities and negatives would panic
        // deep inside (Duration::from_secs_f64) or silently disable a policy; name them here.
        const LONGEST_S: f64 = 10.0 * 365.0 * 86_400.0;
        let secs = |name: &str, v: f64, zero_ok: bool| -> anyhow::Result<()> {
            anyhow::ensure!(
                v.is_finite() && (v > 0.0 || (zero_ok && v == 0.0)) && v <= LONGEST_S,
                "{name} = {v}: expected a {} number of seconds up to {LONGEST_S:e}",
                if zero_ok { "non-negative" } else { "positive" }
            );
            Ok(())
        };
        let rate = |name: &str, v: f64| -> anyhow::Result<()> {
            anyhow::ensure!(v.is_finite() && (0.0..=1.0).contains(&v), "{name} = {v}: expected a fraction in [0, 1]");
            Ok(())
        };
        secs("call_timeout_s", self.call_timeout_s, false)?;
        rate("lending.verify_rate", self.lending.verify_rate)?;
        anyhow::ensure!(
            self.lending.tolerance.is_finite() && self.lending.tolerance > 0.0,
            "lending.tolerance = {}: expected a positive relative error",
            self.lending.tolerance
        );
        anyhow::ensure!(
            self.hedge_factor.is_finite() && (1.0..=1e6).contains(&self.hedge_factor),
            "hedge_factor = {}: expected a finite factor of at least 1 (the batch's expected time × it)",
            self.hedge_factor
        );
        let g = &self.generation;
        anyhow::ensure!(
            (16..=1 << 20).contains(&g.context_limit),
            "generation.context_limit = {}: expected 16 to 1048576 tokens",
            g.context_limit
        );
        anyhow::ensure!(
            (1..=256).contains(&g.sessions_per_tab),
            "generation.sessions_per_tab = {}: expected 1 to 256",
            g.sessions_per_tab
        );
        anyhow::ensure!(
            g.step_tokens >= 1 && g.step_tokens <= 1 << 16,
            "generation.step_tokens = {}: expected 1 to 65536",
            g.step_tokens
        );
        anyhow::ensure!((1..=64).contains(&g.shards), "generation.shards = {}: expected 1 to 64 tabs", g.shards);
        use crate::policy::sharding::Strategy;
        anyhow::ensure!(
            !matches!(g.strategy, Strategy::Hybrid | Strategy::Replicas),
            "generation.strategy = {}: a pool runs a fixed split (layer, pipeline, component, attention-ffn); \
             `tabpool shard plan` measures the tabs and names the hybrid's choice",
            g.strategy.name()
        );
        anyhow::ensure!(
            g.shards as usize <= self.max_tabs,
            "generation.shards = {} needs at least that many tabs, but max_tabs = {}",
            g.shards,
            self.max_tabs
        );
        let sc = &self.scaling;
        rate("scaling.utilisation_high", sc.utilisation_high)?;
        rate("scaling.min_free_memory", sc.min_free_memory)?;
        secs("scaling.idle_cooldown_s", sc.idle_cooldown_s, true)?;
        secs("scaling.window_s", sc.window_s, false)?;
        let h = &self.health;
        rate("health.breaker_failure_rate", h.breaker_failure_rate)?;
        rate("health.breaker_slow_rate", h.breaker_slow_rate)?;
        secs("health.breaker_slow_call_s", h.breaker_slow_call_s, false)?;
        secs("health.breaker_open_wait_s", h.breaker_open_wait_s, true)?;
        secs("history.health_sample_s", self.history.health_sample_s, false)?;
        secs("history.window_days (in seconds)", self.history.window_days * 86_400.0, false)?;
        // A batch must hold one input of the longest length any embedding model is given;
        // below that, a long text would form a batch alone that breaks the bound anyway.
        let longest = crate::models::minilm::MAX_TOKENS;
        anyhow::ensure!(
            self.max_batch_tokens >= longest,
            "max_batch_tokens = {}: a batch must hold at least one input of {longest} tokens (the longest an \
             embedding model takes)",
            self.max_batch_tokens
        );
        anyhow::ensure!(
            g.max_waiting >= 1,
            "generation.max_waiting = 0: no stream could ever wait for a session place (at least 1)"
        );
        anyhow::ensure!(self.max_tabs >= 1, "max_tabs must be at least 1");
        anyhow::ensure!(self.min_tabs <= self.max_tabs, "min_tabs {} > max_tabs {}", self.min_tabs, self.max_tabs);
        anyhow::ensure!(self.max_queue >= 1 && self.max_batch >= 1, "max_queue and max_batch must be at least 1");
        anyhow::ensure!(self.in_flight_per_tab >= 1, "in_flight_per_tab must be at least 1");
        anyhow::ensure!(self.backend != Backend::Cpu, "backend cpu runs on the host; tabs take auto, webnn or webgpu");
        let mut names = std::collections::HashSet::new();
        for k in &self.kinds {
            k.validate()?;
            anyhow::ensure!(names.insert(k.name.as_str()), "browser kind {:?} is configured twice", k.name);
        }
        Ok(())
    }

    /// Configured kinds, or the local kinds installed on this machine when none are.
    pub fn kinds_or_installed(&self, installed: impl Fn(BrowserKind) -> bool) -> Vec<KindSpec> {
        if !self.kinds.is_empty() {
            return self.kinds.clone();
        }
        BrowserKind::LOCAL.into_iter().filter(|k| installed(*k)).map(KindSpec::local).collect()
    }

    /// The hedging rule's settings.
    pub fn hedging(&self) -> crate::policy::recovery::Hedging {
        crate::policy::recovery::Hedging {
            enabled: self.hedge,
            factor: self.hedge_factor,
            floor: Duration::from_millis(self.hedge_floor_ms),
        }
    }

    pub fn scaling_policy(&self) -> ScalingConfig {
        ScalingConfig {
            min_tabs: self.min_tabs,
            max_tabs: self.max_tabs,
            wait_high: Duration::from_millis(self.scaling.wait_high_ms),
            utilisation_high: self.scaling.utilisation_high,
            idle_cooldown: Duration::from_secs_f64(self.scaling.idle_cooldown_s),
            min_free_memory: self.scaling.min_free_memory,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn parses_the_example_file() {
        let text = include_str!("../../../pool.example.toml");
        let cfg = PoolConfig::from_toml(text).unwrap();
        assert_eq!(cfg.kinds.len(), 4);
        assert_eq!(cfg.kinds[0].browser, BrowserKind::ChromiumWebnn);
        assert_eq!(cfg.kinds[3].browser, BrowserKind::Remote);
        assert!(cfg.kinds[3].url.as_ref().unwrap().expose().starts_with("http://"));
        assert!(!cfg.speech.compact_decoder, "speed by default");
        let compact = PoolConfig::from_toml("[speech]\ncompact_decoder = true\n").unwrap();
        assert!(compact.speech.compact_decoder);
    }

    #[test]
    fn defaults_fill_what_is_absent_and_mistakes_are_named() {
        let cfg = PoolConfig::from_toml("max_tabs = 3\n[scaling]\nidle_cooldown_s = 5\n").unwrap();
        assert_eq!((cfg.min_tabs, cfg.max_tabs, cfg.max_batch), (1, 3, 32));
        assert_eq!(cfg.scaling.idle_cooldown_s, 5.0);
        assert_eq!(cfg.scaling.wait_high_ms, 200);
        let e = PoolConfig::from_toml("max_tab = 3").unwrap_err().to_string();
        assert!(e.contains("max_tab"), "{e}");
        let e = PoolConfig::from_toml("min_tabs = 5\nmax_tabs = 2").unwrap_err().to_string();
        assert!(e.contains("min_tabs"), "{e}");
        let e = PoolConfig::from_toml("[[kinds]]\nname = \"g\"\nbrowser = \"remote\"").unwrap_err().to_string();
        assert!(e.contains("url"), "{e}");
        let twice = "[[kinds]]\nname = \"a\"\nbrowser = \"chromium\"\n[[kinds]]\nname = \"a\"\nbrowser = \"firefox\"";
        assert!(PoolConfig::from_toml(twice).unwrap_err().to_string().contains("twice"));
    }

    #[test]
    fn nonsense_numbers_are_refused_with_their_name() {
        for (text, name) in [
            ("hedge_factor = nan", "hedge_factor"),
            ("hedge_factor = -1.0", "hedge_factor"),
            ("hedge_factor = inf", "hedge_factor"),
            ("call_timeout_s = 0", "call_timeout_s"),
            ("[scaling]\nidle_cooldown_s = -5", "idle_cooldown_s"),
            ("[scaling]\nidle_cooldown_s = nan", "idle_cooldown_s"),
            ("[scaling]\nwindow_s = inf", "window_s"),
            ("[scaling]\nutilisation_high = 1.5", "utilisation_high"),
            ("[health]\nbreaker_open_wait_s = -1", "breaker_open_wait_s"),
            ("[health]\nbreaker_slow_call_s = 1e300", "breaker_slow_call_s"),
            ("[health]\nbreaker_failure_rate = nan", "breaker_failure_rate"),
            ("[history]\nhealth_sample_s = 0", "health_sample_s"),
            ("[history]\nwindow_days = -inf", "window_days"),
            ("max_batch_tokens = 0", "max_batch_tokens"),
            ("max_batch_tokens = 255", "at least one input of 256 tokens"),
            ("[generation]\nmax_waiting = 0", "generation.max_waiting = 0"),
            ("[generation]\nshards = 0", "generation.shards"),
            ("max_tabs = 2\n[generation]\nshards = 3", "max_tabs = 2"),
            ("[generation]\nshards = 2\nstrategy = \"hybrid\"", "shard plan"),
            ("[generation]\nstrategy = \"diagonal\"", "diagonal"),
        ] {
            let e = format!("{:#}", PoolConfig::from_toml(text).unwrap_err());
            assert!(e.contains(name), "{text:?} → {e}");
        }
        // Every value the example file and the defaults use passes, and the breaker, scaling
        // and sampling durations they make do not panic.
        let cfg = PoolConfig::default();
        cfg.validate().unwrap();
        let sharded = PoolConfig::from_toml("[generation]\nshards = 2\nstrategy = \"attention-ffn\"").unwrap();
        assert_eq!((sharded.generation.shards, sharded.generation.strategy.name()), (2, "attention-ffn"));
        let _ = (cfg.health.breaker(), cfg.scaling_policy());
    }

    /// A remote kind whose WebDriver URL carries credentials.
    pub(crate) const WITH_SECRET: &str =
        "[[kinds]]\nname = \"grid\"\nbrowser = \"remote\"\nurl = \"http://user:s3cret@grid:4444\"\n";

    #[test]
    fn credentials_in_a_remote_url_never_show_in_debug_or_serialized_config() {
        let cfg = PoolConfig::from_toml(WITH_SECRET).unwrap();
        // What a debug log prints, and what `Store::start_run` stores (`Shared::new`).
        let debug = format!("{cfg:?} {:#?} {:?}", cfg.kinds, cfg.kinds[0]);
        let json = serde_json::to_string(&cfg).unwrap();
        assert!(!debug.contains("s3cret") && !debug.contains("user:"), "{debug}");
        assert!(!json.contains("s3cret") && !json.contains("user:"), "{json}");
        assert!(debug.contains("http://***@grid:4444") && json.contains("http://***@grid:4444"), "{json}");
    }

    #[test]
    fn installed_kinds_are_the_default() {
        let cfg = PoolConfig::default();
        let kinds = cfg.kinds_or_installed(|k| k != BrowserKind::Firefox);
        let names: Vec<_> = kinds.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(names, ["chromium-webnn", "chromium"]);
    }
}
