//! A hung tab (a busy loop on its page's main thread; the socket stays open): the batch running
//! there is hedged to the other replica and answered correctly, heartbeats find the hang, and the
//! tab is replaced with its model loaded. Also: breakers and health are reported per tab.

use crate::support;

use std::time::{Duration, Instant};

use tabpool::browser::{BrowserKind, KindSpec};
use tabpool::pool::{ModelSpec, Pool, PoolConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_tab_is_hedged_around_then_found_by_heartbeats_and_replaced() {
    let _procs = support::process_guard();
    let mut cfg = PoolConfig {
        min_tabs: 2,
        max_tabs: 2,
        max_batch: 16,
        kinds: vec![KindSpec::local(BrowserKind::ChromiumWebnn)],
        hedge_factor: 3.0,
        hedge_floor_ms: 100,
        ..PoolConfig::default()
    };
    cfg.scaling.enabled = false;
    cfg.health.heartbeat_interval_ms = 300;
    cfg.health.heartbeat_timeout_ms = 1000;
    cfg.health.heartbeat_misses = 2;
    let pool = Pool::with_host(support::host().await, cfg).await.unwrap_or_else(|e| panic!("{e:#}"));
    let name = pool.load(ModelSpec::minilm()).await.unwrap();
    let refs = support::minilm_reference();
    let texts: Vec<&str> = refs.iter().map(|r| r.text.as_str()).cycle().take(16).collect();
    let mut last = 0;
    for _ in 0..6 {
        last = pool.embed(&texts).await.unwrap().tab; // measured history: the hedge point is known
    }
    let m = pool.metrics();
    assert!(m.tabs.iter().all(|t| t.health == 100 && format!("{:?}", t.breaker) == "Closed"), "{}", m.render());

    // Freeze the tab that will take the next batch (sequential batches go to the first replica in
    // routing order, the one that took the last one), then send it.
    let request = {
        let texts: Vec<String> = texts.iter().map(|s| s.to_string()).collect();
        let name = name.clone();
        let pool = &pool;
        async move {
            let t: Vec<&str> = texts.iter().map(String::as_str).collect();
            pool.embed_with(&name, &t, Some(Duration::from_secs(60))).await
        }
    };
    let (frozen, served) = {
        let victim = last;
        assert!(pool.freeze_tab(victim).await.unwrap() >= 1);
        let started = Instant::now();
        let served = request.await.expect("the batch is answered despite the hung tab");
        (victim, (served, started.elapsed()))
    };
    let (served, took) = served;
    // A hedged loser keeps its tab busy until its run really ends (a dispatched run cannot be
    // aborted): while the hung tab is still in the pool, unrecovered, it must not look free.
    let m = pool.metrics();
    if let Some(t) = m.tabs.iter().find(|t| t.id == frozen && !t.recovering)
        && m.hedged >= 1
    {
        assert_eq!(t.in_flight, 1, "the hung tab still runs the hedged batch: {}", m.render());
    }
    for (v, r) in served.vectors.iter().zip(refs.iter().cycle()) {
        support::check_against_reference(v, r);
    }
    assert_ne!(served.tab, frozen, "answered by the healthy replica");
    assert!(took < Duration::from_secs(20), "hedged or re-dispatched promptly: {took:?}");

    // Heartbeats find the hang; the tab is replaced and serves again.
    let t = Instant::now();
    loop {
        let m = pool.metrics();
        let recovered = m.recoveries.iter().any(|r| r.ok && format!("{:?}", r.category) == "Timeout");
        if recovered && m.connections == 2 && m.models[0].replicas == 2 && m.tabs.iter().all(|t| !t.recovering) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(90), "the hung tab was not found and replaced: {}", m.render());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let m = pool.metrics();
    println!("{}", m.render());
    assert!(m.hedged >= 1 || served.attempts > 1, "the slow batch was hedged or retried elsewhere");
    let all = pool.execute_concurrent(&[(name.as_str(), texts.clone()), (name.as_str(), texts.clone())]).await;
    for r in all {
        support::check_against_reference(&r.unwrap().vectors[0], &refs[0]);
    }
    pool.shutdown().await;
}
