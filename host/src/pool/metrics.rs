//! A snapshot of the pool for people and programs: connections, utilisation, browser
//! distribution, capabilities, queues, memory, measured history and the scaling log.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use serde::Serialize;

use super::state::{RecoveryEvent, ScalingEvent, Shared};
use crate::tab::{adapter_line, webnn_line};

#[derive(Debug, Clone, Serialize)]
pub struct PoolMetrics {
    pub uptime_s: f64,
    pub min_tabs: usize,
    pub max_tabs: usize,
    /// Tabs with an open socket.
    pub connections: usize,
    /// Share of tabs busy right now, and averaged over the scaler's window.
    pub utilisation_now: f64,
    pub utilisation_window: f64,
    /// Mean queue wait over the scaler's window.
    pub mean_queue_wait_ms: f64,
    pub queue_depth: usize,
    /// Tabs per browser kind.
    pub browser_distribution: BTreeMap<String, usize>,
    pub tabs: Vec<TabMetrics>,
    /// The Selenium Grids behind remote kinds as last read (nodes, slots, queue), by kind.
    pub grids: BTreeMap<String, crate::browser::grid::GridView>,
    pub models: Vec<ModelMetrics>,
    pub memory: Option<Memory>,
    /// Measured per (model, kind, backend): what routing reads.
    pub history: Vec<HistoryRow>,
    pub scaling_events: Vec<ScalingEvent>,
    /// Failed batches by category.
    pub failures: BTreeMap<String, u64>,
    /// Tab recoveries (page reloads, browser restarts), latest last.
    pub recoveries: Vec<RecoveryEvent>,
    /// Batches hedged to a second replica.
    pub hedged: u64,
    /// Coordinated recoveries of multi-tab jobs.
    pub coordinated: u64,
    /// The history database, when the pool records.
    pub history_db: Option<HistoryDb>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HistoryDb {
    pub path: String,
    pub run_id: String,
    pub rows_written: u64,
    /// Rows dropped because the writer fell a whole channel behind.
    pub rows_dropped: u64,
    pub write_errors: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TabMetrics {
    pub id: u64,
    pub kind: String,
    pub browser: String,
    pub connected: bool,
    pub in_flight: usize,
    /// Streams (generations, transcriptions) running on it now; they hold no execution place.
    pub streams: usize,
    pub batches: u64,
    pub rows: u64,
    pub idle_s: f64,
    pub age_s: f64,
    /// model → backend
    pub models: BTreeMap<String, String>,
    /// model → the calibration that chose its backend (empty when forced)
    pub calibration: BTreeMap<String, Vec<crate::policy::backend_choice::Measured>>,
    pub webgpu: String,
    pub webnn: String,
    pub hardware_concurrency: u32,
    /// Threads of the tab's CPU executor, and what its quantized Linear multiplies with.
    pub cpu_threads: u32,
    pub activations: String,
    pub device_memory_gib: Option<f64>,
    pub user_agent: String,
    /// 0–100 from failures, latency against its own baseline, missed heartbeats, memory.
    pub health: u8,
    /// The tab's breaker, and each (tab, model) breaker.
    pub breaker: crate::policy::breaker::State,
    pub model_breakers: BTreeMap<String, crate::policy::breaker::State>,
    pub missed_heartbeats: u32,
    pub recovering: bool,
    /// Busy finishing the losing copy of a hedged batch (no request waits on it).
    pub draining: bool,
    /// A remote tab's WebDriver session id, and on a Selenium Grid the node holding it.
    pub session: Option<String>,
    pub node: Option<crate::pool::grid::NodeRef>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelMetrics {
    pub name: String,
    pub model_type: crate::policy::routing::ModelType,
    pub replicas: usize,
    pub queue_depth: usize,
    pub served: u64,
    pub failed: u64,
    pub busy_refusals: u64,
    pub retried: u64,
    /// Full calibrations run (every backend compiled and timed); a tab of a kind already
    /// calibrated reuses that answer, so this stays at the first tabs' count through recoveries.
    pub calibrations: u64,
    /// Generation: streams running on replicas now, and admitted ones waiting for a place.
    pub streams_running: usize,
    pub streams_waiting: usize,
    /// A sharded model's replicas: each pipeline's stage tabs.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pipelines: Vec<PipelineMetrics>,
}

/// One sharded replica: its stage tabs in model order and its recoveries.
#[derive(Debug, Clone, Serialize)]
pub struct PipelineMetrics {
    pub strategy: String,
    pub tabs: Vec<StageTab>,
    /// Stages moved to another tab after their tab was lost, and the tokens replayed into them.
    pub stage_recoveries: u64,
    pub replayed_tokens: u64,
}

/// A tab of a pipeline: which parts it holds and how it is doing.
#[derive(Debug, Clone, Serialize)]
pub struct StageTab {
    /// 0: the replica's own tab (it holds the first stage).
    pub position: usize,
    pub tab: u64,
    pub kind: String,
    pub parts: String,
    pub connected: bool,
    pub health: u8,
    pub breaker: crate::policy::breaker::State,
}

#[derive(Debug, Clone, Serialize)]
pub struct HistoryRow {
    pub model: String,
    pub kind: String,
    pub backend: String,
    pub successes: u64,
    pub failures: u64,
    pub success_rate: f64,
    pub mean_ms_per_text: f64,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Memory {
    pub total_mib: f64,
    pub available_mib: f64,
    /// This host process's resident set.
    pub host_rss_mib: f64,
}

impl Memory {
    pub fn available_fraction(&self) -> f64 {
        if self.total_mib > 0.0 { self.available_mib / self.total_mib } else { 1.0 }
    }
}

/// System memory from /proc/meminfo and this process's RSS from /proc/self/status.
pub fn system_memory() -> Option<Memory> {
    let field = |text: &str, key: &str| -> Option<f64> {
        let line = text.lines().find(|l| l.starts_with(key))?;
        line.split_whitespace().nth(1)?.parse::<f64>().ok().map(|kib| kib / 1024.0)
    };
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    Some(Memory {
        total_mib: field(&meminfo, "MemTotal:")?,
        available_mib: field(&meminfo, "MemAvailable:")?,
        host_rss_mib: field(&status, "VmRSS:").unwrap_or(0.0),
    })
}

pub(crate) fn snapshot(shared: &Shared) -> PoolMetrics {
    let slots = shared.slots();
    let models = shared.models.lock().expect("models").clone();
    let mut per_tab: BTreeMap<u64, BTreeMap<String, String>> = BTreeMap::new();
    let mut calibration: BTreeMap<u64, BTreeMap<String, Vec<crate::policy::backend_choice::Measured>>> =
        BTreeMap::new();
    let mut breakers: BTreeMap<u64, BTreeMap<String, crate::policy::breaker::State>> = BTreeMap::new();
    let free_memory = system_memory().map(|m| m.available_fraction()).unwrap_or(1.0);
    let model_rows: Vec<ModelMetrics> = models
        .iter()
        .map(|m| {
            let replicas = m.replicas.lock().expect("replicas");
            let mut pipelines = Vec::new();
            for r in replicas.iter() {
                per_tab.entry(r.slot.id).or_default().insert(m.name.clone(), r.backend.clone());
                if let Some(st) = &r.stages {
                    let tabs: Vec<StageTab> = st
                        .slots()
                        .iter()
                        .zip(&st.labels)
                        .enumerate()
                        .map(|(position, (s, parts))| StageTab {
                            position,
                            tab: s.id,
                            kind: s.kind.name.clone(),
                            parts: parts.clone(),
                            connected: s.tab.is_connected(),
                            health: s.health(free_memory),
                            breaker: s.breaker.lock().expect("breaker").state(),
                        })
                        .collect();
                    for t in tabs.iter().skip(1) {
                        per_tab
                            .entry(t.tab)
                            .or_default()
                            .insert(format!("{} [{}]", m.name, t.parts), r.backend.clone());
                    }
                    let (stage_recoveries, replayed_tokens) = st.recoveries();
                    pipelines.push(PipelineMetrics {
                        strategy: st.strategy.name().into(),
                        tabs,
                        stage_recoveries,
                        replayed_tokens,
                    });
                }
                calibration.entry(r.slot.id).or_default().insert(m.name.clone(), r.calibration.clone());
                breakers
                    .entry(r.slot.id)
                    .or_default()
                    .insert(m.name.clone(), r.breaker.lock().expect("breaker").state());
            }
            ModelMetrics {
                name: m.name.clone(),
                model_type: m.model_type,
                replicas: replicas.iter().filter(|r| r.slot.usable()).count(),
                queue_depth: m.queue.lock().expect("queue").len(),
                served: m.served.load(Ordering::Relaxed),
                failed: m.failed.load(Ordering::Relaxed),
                busy_refusals: m.busy.load(Ordering::Relaxed),
                retried: m.retried.load(Ordering::Relaxed),
                calibrations: m.calibrations.load(Ordering::Relaxed),
                streams_running: replicas.iter().map(|r| r.streams()).sum(),
                streams_waiting: m.waiting.load(Ordering::SeqCst),
                pipelines,
            }
        })
        .collect();
    let tabs: Vec<TabMetrics> = slots
        .iter()
        .map(|s| {
            let caps = s.tab.caps();
            let placement = s.placement.lock().expect("placement").clone();
            TabMetrics {
                id: s.id,
                kind: s.kind.name.clone(),
                browser: s.kind.browser.name().into(),
                connected: s.tab.is_connected(),
                in_flight: s.in_flight.load(Ordering::SeqCst),
                streams: s.streams.load(Ordering::SeqCst),
                batches: s.batches.load(Ordering::Relaxed),
                rows: s.rows.load(Ordering::Relaxed),
                idle_s: s.idle_for().as_secs_f64(),
                age_s: s.started.elapsed().as_secs_f64(),
                models: per_tab.remove(&s.id).unwrap_or_default(),
                calibration: calibration.remove(&s.id).unwrap_or_default(),
                webgpu: adapter_line(caps),
                webnn: webnn_line(caps),
                hardware_concurrency: caps.hardware_concurrency,
                cpu_threads: s.threads.load(Ordering::Relaxed),
                activations: caps.activations.clone(),
                device_memory_gib: caps.device_memory_gib,
                user_agent: caps.user_agent.clone(),
                health: s.health(free_memory),
                breaker: s.breaker.lock().expect("breaker").state(),
                model_breakers: breakers.remove(&s.id).unwrap_or_default(),
                missed_heartbeats: s.missed_heartbeats.load(Ordering::SeqCst),
                recovering: s.recovering.load(Ordering::SeqCst),
                draining: s.draining.load(Ordering::SeqCst),
                session: placement.as_ref().map(|p| p.session.clone()),
                node: placement.and_then(|p| p.node()),
            }
        })
        .collect();
    let live: Vec<&TabMetrics> = tabs.iter().filter(|t| t.connected).collect();
    let mut browser_distribution = BTreeMap::new();
    for t in &live {
        *browser_distribution.entry(t.kind.clone()).or_insert(0) += 1;
    }
    let utilisation_now =
        if live.is_empty() { 0.0 } else { live.iter().filter(|t| t.in_flight > 0).count() as f64 / live.len() as f64 };
    let utilisation_window = {
        let u = shared.utilisation.lock().expect("utilisation");
        if u.is_empty() { utilisation_now } else { u.iter().map(|(_, x)| x).sum::<f64>() / u.len() as f64 }
    };
    let mean_queue_wait_ms = {
        let w = shared.waits.lock().expect("waits");
        if w.is_empty() { 0.0 } else { w.iter().map(|(_, d)| d.as_secs_f64()).sum::<f64>() * 1e3 / w.len() as f64 }
    };
    let mut history: Vec<HistoryRow> = shared
        .history
        .lock()
        .expect("history")
        .iter()
        .map(|((model, kind, backend), h)| HistoryRow {
            model: model.clone(),
            kind: kind.clone(),
            backend: backend.clone(),
            successes: h.successes,
            failures: h.failures,
            success_rate: h.success_rate(),
            mean_ms_per_text: h.mean_latency_ms,
        })
        .collect();
    history.sort_by(|a, b| (&a.model, &a.kind, &a.backend).cmp(&(&b.model, &b.kind, &b.backend)));
    PoolMetrics {
        uptime_s: shared.started.elapsed().as_secs_f64(),
        min_tabs: shared.cfg.min_tabs,
        max_tabs: shared.cfg.max_tabs,
        connections: live.len(),
        utilisation_now,
        utilisation_window,
        mean_queue_wait_ms,
        queue_depth: model_rows.iter().map(|m| m.queue_depth).sum(),
        browser_distribution,
        models: model_rows,
        memory: system_memory(),
        history,
        scaling_events: shared.events.lock().expect("events").iter().cloned().collect(),
        failures: shared.failures.lock().expect("failures").iter().map(|(c, n)| (format!("{c:?}"), *n)).collect(),
        recoveries: shared.recoveries.lock().expect("recoveries").iter().cloned().collect(),
        hedged: shared.hedged.load(Ordering::Relaxed),
        coordinated: shared.coordinated.load(Ordering::Relaxed),
        history_db: shared.store.as_ref().zip(shared.recorder.as_ref()).map(|(st, r)| HistoryDb {
            path: st.path().display().to_string(),
            run_id: r.run_id().to_string(),
            rows_written: r.stats().written.load(Ordering::Relaxed),
            rows_dropped: r.stats().dropped.load(Ordering::Relaxed),
            write_errors: r.stats().write_errors.load(Ordering::Relaxed),
        }),
        tabs,
        grids: shared.grids.views().into_iter().collect(),
    }
}

impl PoolMetrics {
    /// The human form `tabpool status` prints.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut o = String::new();
        let _ = writeln!(
            o,
            "pool: {} tabs connected (min {}, max {}), up {:.0} s; utilisation {:.0}% now, {:.0}% over the window; queue {} (mean wait {:.1} ms)",
            self.connections,
            self.min_tabs,
            self.max_tabs,
            self.uptime_s,
            self.utilisation_now * 100.0,
            self.utilisation_window * 100.0,
            self.queue_depth,
            self.mean_queue_wait_ms
        );
        let dist: Vec<String> = self.browser_distribution.iter().map(|(k, n)| format!("{k} × {n}")).collect();
        let _ = writeln!(o, "browsers: {}", if dist.is_empty() { "none".into() } else { dist.join(", ") });
        if let Some(m) = self.memory {
            let _ = writeln!(
                o,
                "memory: {:.0} of {:.0} MiB available ({:.0}%), host RSS {:.0} MiB",
                m.available_mib,
                m.total_mib,
                m.available_fraction() * 100.0,
                m.host_rss_mib
            );
        }
        let _ = writeln!(
            o,
            "\n{:>4} | {:<19} | {:>6} | {:<9} | {:>4} | {:>7} | {:>7} | {:>7} | {:<28} | capabilities",
            "tab", "kind", "health", "breaker", "busy", "batches", "texts", "idle s", "models (backend)"
        );
        for t in &self.tabs {
            let models: Vec<String> = t.models.iter().map(|(m, b)| format!("{m} ({b})")).collect();
            let _ = writeln!(
                o,
                "{:>4} | {:<19} | {:>6} | {:<9} | {:>4} | {:>7} | {:>7} | {:>7.1} | {:<28} | WebGPU: {}; WebNN: {}; {} cores, CPU executor {} thread(s), {} activations{}{}",
                t.id,
                t.kind,
                t.health,
                format!("{:?}", t.breaker),
                t.in_flight,
                t.batches,
                t.rows,
                t.idle_s,
                models.join(", "),
                t.webgpu,
                t.webnn,
                t.hardware_concurrency,
                t.cpu_threads,
                t.activations,
                t.node.as_ref().map(|n| format!("; grid node {}", n.uri)).unwrap_or_default(),
                if t.recovering {
                    " [recovering]"
                } else if t.connected {
                    ""
                } else {
                    " [disconnected]"
                }
            );
        }
        let _ = writeln!(
            o,
            "\n{:<24} | {:>8} | {:>5} | {:>8} | {:>6} | {:>4} | {:>7} | {:>10}",
            "model", "replicas", "queue", "served", "failed", "busy", "retried", "calibrated"
        );
        for m in &self.models {
            let _ = writeln!(
                o,
                "{:<24} | {:>8} | {:>5} | {:>8} | {:>6} | {:>4} | {:>7} | {:>10}",
                m.name, m.replicas, m.queue_depth, m.served, m.failed, m.busy_refusals, m.retried, m.calibrations
            );
        }
        for m in &self.models {
            for (k, p) in m.pipelines.iter().enumerate() {
                let _ = writeln!(
                    o,
                    "\n{} pipeline {} ({}, {} tabs): {} stage recoveries, {} tokens replayed",
                    m.name,
                    k + 1,
                    p.strategy,
                    p.tabs.len(),
                    p.stage_recoveries,
                    p.replayed_tokens
                );
                for t in &p.tabs {
                    let _ = writeln!(
                        o,
                        "  {:>2} | tab {:>4} | {:<19} | {:<24} | health {:>3} | breaker {:?}{}",
                        t.position,
                        t.tab,
                        t.kind,
                        t.parts,
                        t.health,
                        t.breaker,
                        if t.connected { "" } else { " [disconnected]" }
                    );
                }
            }
        }
        if !self.history.is_empty() {
            let _ = writeln!(o, "\nmeasured history (what routing reads):");
            for h in &self.history {
                let _ = writeln!(
                    o,
                    "  {:<22} {:<19} {:<10} ok {:>6} fail {:>4} ({:>5.1}%)  {:>8.2} ms/text",
                    h.model,
                    h.kind,
                    h.backend,
                    h.successes,
                    h.failures,
                    h.success_rate * 100.0,
                    h.mean_ms_per_text
                );
            }
        }
        match &self.history_db {
            Some(h) => {
                let _ = writeln!(
                    o,
                    "\nhistory: {} (run {}): {} rows written, {} dropped, {} write errors",
                    h.path, h.run_id, h.rows_written, h.rows_dropped, h.write_errors
                );
            }
            None => {
                let _ = writeln!(o, "\nhistory: not recorded (--no-history)");
            }
        }
        if !self.failures.is_empty() || !self.recoveries.is_empty() || self.hedged > 0 {
            let _ = writeln!(
                o,
                "\nfailed batches by category: {:?}; hedged batches: {}; coordinated recoveries: {}",
                self.failures, self.hedged, self.coordinated
            );
            for r in self.recoveries.iter().rev().take(10).rev() {
                let _ = writeln!(
                    o,
                    "  {:>8.1} s  tab {:<4} {:<15} {:?} → {} in {:.0} ms{}",
                    r.at_s,
                    r.tab,
                    r.kind,
                    r.category,
                    r.step,
                    r.ms,
                    if r.ok { "" } else { " (failed)" }
                );
            }
        }
        for (kind, g) in &self.grids {
            let _ = write!(o, "\n{kind}: {}", g.describe());
        }
        if !self.scaling_events.is_empty() {
            let _ = writeln!(o, "\nscaling log (latest last):");
            for e in self.scaling_events.iter().rev().take(15).rev() {
                let _ = writeln!(
                    o,
                    "  {:>8.1} s  {:<13} {:<19} tab {:<4} → {} tabs: {}",
                    e.at_s,
                    e.action,
                    e.kind.as_deref().unwrap_or("-"),
                    e.tab.map(|t| t.to_string()).unwrap_or_else(|| "-".into()),
                    e.tabs_after,
                    e.reason
                );
            }
        }
        o
    }
}
