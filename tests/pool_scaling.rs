//! Adaptive scaling with real tabs: a flood of requests makes the queue wait, the scaler grows
//! the pool (logging why) and the new tabs serve; once idle past the cooldown, it shrinks back to
//! min_tabs (logging why). Every result is checked against the float64 reference.

use crate::support;

use std::time::{Duration, Instant};

use tabpool::browser::{BrowserKind, KindSpec};
use tabpool::pool::{ModelSpec, Pool, PoolConfig, ScalingToml};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grows_under_load_and_shrinks_when_idle() {
    let _procs = support::process_guard();
    let cfg = PoolConfig {
        min_tabs: 1,
        max_tabs: 3,
        max_queue: 4096,
        // Small batches: one tab cannot keep up with the flood, so requests wait.
        max_batch: 2,
        kinds: vec![KindSpec::local(BrowserKind::ChromiumWebnn)],
        scaling: ScalingToml {
            wait_high_ms: 150,
            idle_cooldown_s: 3.0,
            interval_ms: 200,
            window_s: 1.0,
            ..ScalingToml::default()
        },
        ..PoolConfig::default()
    };
    let pool = Pool::with_host(support::host().await, cfg).await.unwrap_or_else(|e| panic!("{e:#}"));
    let name = pool.load(ModelSpec::minilm()).await.unwrap();
    assert_eq!(pool.metrics().connections, 1);
    // One thread budget for the machine: a tab alone has every core (up to 8) for its kernels.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8) as u32;
    let alone = pool.metrics().tabs[0].cpu_threads;
    assert_eq!(alone, cores, "a tab alone runs on every core: {}", pool.metrics().render());

    let refs = support::minilm_reference();
    let mut peak = 1;
    let mut tabs_used = std::collections::HashSet::new();
    // Waves of requests until the pool has grown (bounded: the test fails if it never does).
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(90) {
        let wave: Vec<(&str, Vec<&str>)> =
            (0..400).map(|i| (name.as_str(), vec![refs[i % refs.len()].text.as_str()])).collect();
        let results = pool.execute_concurrent(&wave).await;
        for (i, r) in results.iter().enumerate() {
            let served = r.as_ref().unwrap_or_else(|e| panic!("request {i}: {e}"));
            support::check_against_reference(&served.vectors[0], &refs[i % refs.len()]);
            tabs_used.insert(served.tab);
        }
        peak = peak.max(pool.metrics().connections);
        if peak >= 2 && tabs_used.len() >= 2 {
            break;
        }
    }
    let m = pool.metrics();
    assert!(peak >= 2, "the pool never grew under load: {}", m.render());
    assert!(tabs_used.len() >= 2, "new tabs served requests: {tabs_used:?}");
    let grow = m.scaling_events.iter().find(|e| e.action == "grow" && e.reason.contains("queue wait"));
    assert!(grow.is_some(), "a grow decision with its reason was logged: {:?}", m.scaling_events);
    // Tabs × threads within the cores once the scaler has given each its share.
    let shared_out = |m: &tabpool::pool::PoolMetrics| {
        let sum: u32 = m.tabs.iter().map(|t| t.cpu_threads).sum();
        m.tabs.len() >= 2 && sum as usize <= (cores as usize).max(m.tabs.len())
    };
    let since = Instant::now();
    while !shared_out(&pool.metrics()) && since.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(shared_out(&pool.metrics()), "the tabs share the cores: {}", pool.metrics().render());

    // Idle now: past the 3 s cooldown the extra tabs close, one by one, down to min_tabs.
    let idle_since = Instant::now();
    while pool.metrics().connections > 1 && idle_since.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let m = pool.metrics();
    assert_eq!(m.connections, 1, "shrank back to min_tabs: {}", m.render());
    let shrink = m.scaling_events.iter().find(|e| e.action == "shrink" && e.reason.contains("idle"));
    assert!(shrink.is_some(), "a shrink decision with its reason was logged: {:?}", m.scaling_events);
    // Alone again: the tab gets every core back.
    let since = Instant::now();
    while pool.metrics().tabs[0].cpu_threads != cores && since.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(pool.metrics().tabs[0].cpu_threads, cores, "{}", pool.metrics().render());
    if cores > 1 {
        let given = m.scaling_events.iter().find(|e| e.action == "threads");
        assert!(given.is_some(), "the thread shares were logged: {:?}", m.scaling_events);
    }
    assert!(m.scaling_events.iter().all(|e| e.tabs_after >= 1 && e.tabs_after <= 3), "{:?}", m.scaling_events);
    // The remaining tab still serves.
    let served = pool.embed(&[refs[0].text.as_str()]).await.unwrap();
    support::check_against_reference(&served.vectors[0], &refs[0]);
    println!("{}", m.render());
    pool.shutdown().await;
}
