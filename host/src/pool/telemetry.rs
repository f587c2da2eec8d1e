//! Prometheus metrics (`GET /metrics`), named as inference servers name theirs (vLLM, TEI):
//! counters and histograms recorded where things happen (requests, batches, tokens, recoveries)
//! into this pool's own `metrics-exporter-prometheus` recorder — not a process-global one, so
//! two pools in one process (the tests) never mix — and gauges of the pool's state now (queues,
//! streams, tabs, breakers, health) written from a snapshot at scrape time, so a tab that left
//! leaves no stale series behind.

use std::fmt::Write;

use metrics::{Key, KeyName, Label, Level, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use super::metrics::PoolMetrics;

const META: Metadata<'static> = Metadata::new("tabpool", Level::INFO, Some(module_path!()));

/// Seconds: from a fast embedding batch to a long generation.
const SECONDS: &[f64] = &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];
/// Rows per batch.
const ROWS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// Every recorded series: (name, unit, help).
const SERIES: &[(&str, Option<Unit>, &str)] = &[
    ("tabpool_requests_total", None, "HTTP requests by endpoint, model and status"),
    (
        "tabpool_request_duration_seconds",
        Some(Unit::Seconds),
        "HTTP request → response head (a stream's head comes at once)",
    ),
    ("tabpool_queue_duration_seconds", Some(Unit::Seconds), "admission → start on a tab (batches and streams)"),
    (
        "tabpool_inference_duration_seconds",
        Some(Unit::Seconds),
        "an embedding batch's round trip to its tab; a stream's placement to its end",
    ),
    ("tabpool_batch_size", None, "texts per embedding batch"),
    ("tabpool_prompt_tokens_total", None, "prompt tokens of finished generation streams"),
    ("tabpool_generation_tokens_total", None, "tokens generated"),
    (
        "tabpool_prefix_cache_queries_total",
        None,
        "finished streams by whether their replica's prefix cache gave part of the prompt (result=hit|miss)",
    ),
    ("tabpool_prefix_cache_tokens_total", None, "prompt tokens taken from prefix caches instead of prefilled"),
    ("tabpool_time_to_first_token_seconds", Some(Unit::Seconds), "admission → first generated token"),
    ("tabpool_inter_token_latency_seconds", Some(Unit::Seconds), "between two tokens of a stream"),
    (
        "tabpool_recoveries_total",
        None,
        "recoveries by strategy (reload_page, restart_browser, reload_model, replace_stage, ...) and outcome",
    ),
];

pub struct Telemetry {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new()
    }
}

impl Telemetry {
    pub fn new() -> Telemetry {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full("tabpool_batch_size".into()), ROWS))
            .expect("non-empty buckets")
            .build_recorder();
        for &(name, unit, help) in SERIES {
            let (key, help) = (KeyName::from(name), SharedString::from(help));
            if name.ends_with("_total") {
                recorder.describe_counter(key, unit, help);
            } else {
                recorder.describe_histogram(key, unit, help);
            }
        }
        let handle = recorder.handle();
        Telemetry { recorder, handle }
    }

    fn key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
        Key::from_parts(name, labels.iter().map(|(k, v)| Label::new(*k, v.to_string())).collect::<Vec<_>>())
    }

    pub fn count(&self, name: &'static str, labels: &[(&'static str, &str)], n: u64) {
        self.recorder.register_counter(&Self::key(name, labels), &META).increment(n);
    }

    pub fn observe(&self, name: &'static str, labels: &[(&'static str, &str)], value: f64) {
        self.recorder.register_histogram(&Self::key(name, labels), &META).record(value);
    }

    /// Fold recorded histogram samples into their buckets (bounds the memory between scrapes).
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }

    /// The Prometheus text: what was recorded, then the state gauges of `now`.
    pub fn render(&self, now: &PoolMetrics) -> String {
        self.upkeep();
        let mut o = self.handle.render();
        gauges(&mut o, now);
        o
    }
}

/// Label values escaped as the text format wants.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn gauges(o: &mut String, m: &PoolMetrics) {
    let mut family = |name: &str, help: &str, rows: Vec<(String, f64)>| {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (labels, v) in rows {
            let _ = writeln!(o, "{name}{{{labels}}} {v}");
        }
    };
    let per_model = |f: &dyn Fn(&super::metrics::ModelMetrics) -> f64| {
        m.models.iter().map(|x| (format!("model=\"{}\"", esc(&x.name)), f(x))).collect::<Vec<_>>()
    };
    family(
        "tabpool_queue_size",
        "requests waiting per model (batches queued + streams waiting)",
        per_model(&|x| (x.queue_depth + x.streams_waiting) as f64),
    );
    family("tabpool_streams_running", "generation streams on replicas now", per_model(&|x| x.streams_running as f64));
    family("tabpool_replicas", "usable replicas per model", per_model(&|x| x.replicas as f64));
    let mut tabs: std::collections::BTreeMap<(String, String, &str), u32> = Default::default();
    for t in &m.tabs {
        let state = if t.recovering {
            "recovering"
        } else if !t.connected {
            "disconnected"
        } else if t.in_flight > 0 || t.idle_s == 0.0 {
            "busy"
        } else {
            "idle"
        };
        *tabs.entry((t.kind.clone(), t.browser.clone(), state)).or_default() += 1;
    }
    family(
        "tabpool_tabs",
        "tabs by browser kind and state (busy, idle, recovering, disconnected)",
        tabs.into_iter()
            .map(|((kind, browser, state), n)| {
                (format!("kind=\"{}\",browser=\"{}\",state=\"{state}\"", esc(&kind), esc(&browser)), n as f64)
            })
            .collect(),
    );
    let state = |s: crate::policy::breaker::State| match s {
        crate::policy::breaker::State::Closed => 0.0,
        crate::policy::breaker::State::HalfOpen => 1.0,
        crate::policy::breaker::State::Open => 2.0,
    };
    let mut breakers = Vec::new();
    for t in &m.tabs {
        breakers.push((format!("tab=\"{}\",kind=\"{}\",scope=\"tab\"", t.id, esc(&t.kind)), state(t.breaker)));
        for (model, b) in &t.model_breakers {
            breakers.push((format!("tab=\"{}\",kind=\"{}\",scope=\"{}\"", t.id, esc(&t.kind), esc(model)), state(*b)));
        }
    }
    family(
        "tabpool_breaker_state",
        "circuit breaker per tab and per (tab, model): 0 closed, 1 half-open, 2 open",
        breakers,
    );
    family(
        "tabpool_tab_health",
        "health score per tab, 0 to 100",
        m.tabs.iter().map(|t| (format!("tab=\"{}\",kind=\"{}\"", t.id, esc(&t.kind)), t.health as f64)).collect(),
    );
}
