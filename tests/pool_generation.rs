//! SmolLM2 generation through the pool, in real tabs: greedy ids equal the float64 reference
//! (`tests/data/smollm2_greedy.json`); concurrent streams spread over the replicas; a tab whose
//! renderer is SIGKILLed mid-stream is recovered and its streams are replayed on the other tab
//! without one token differing from the reference; a dropped stream frees its session in the
//! tab; every stream is one row in the history database; bad requests get typed errors.

use crate::support;

use std::time::Duration;

use shared_proto::Sampling;
use tabpool::browser::{BrowserKind, KindSpec};
use tabpool::exec::{Finish, GenParams};
use tabpool::pool::{GenRequest, GenSummary, ModelSpec, Pool, PoolConfig, PoolError, StreamEvent};

fn config(tabs: usize, sessions_per_tab: u32, history: Option<std::path::PathBuf>) -> PoolConfig {
    let kinds = vec![KindSpec::local(BrowserKind::ChromiumWebnn).with_max_tabs(tabs)];
    let mut cfg = PoolConfig { min_tabs: tabs, max_tabs: tabs, kinds, ..PoolConfig::default() };
    cfg.scaling.enabled = false;
    cfg.generation.context_limit = 256;
    cfg.generation.sessions_per_tab = sessions_per_tab;
    cfg.history.path = history;
    cfg
}

fn greedy(stop_ids: &[u32], max_tokens: u32) -> GenParams {
    GenParams { max_tokens, sampling: Sampling::Greedy, stop_ids: stop_ids.to_vec() }
}

/// The reference's tokens up to its stop id (a stream leaves the stop id out).
fn reference_ids(c: &support::GenCase) -> Vec<u32> {
    c.greedy_ids.iter().copied().take_while(|&t| t != 2).collect()
}

/// Everything a stream said.
#[derive(Debug, Default)]
struct Collected {
    ids: Vec<u32>,
    tabs: Vec<u64>,
    backends: Vec<String>,
    summary: Option<GenSummary>,
}

async fn collect(mut rx: tokio::sync::mpsc::UnboundedReceiver<StreamEvent>) -> Result<Collected, PoolError> {
    let mut c = Collected::default();
    while let Some(ev) = rx.recv().await {
        match ev {
            StreamEvent::Placed { tab, backend, .. } => {
                c.tabs.push(tab);
                c.backends.push(backend);
            }
            StreamEvent::Token(t) => c.ids.push(t),
            StreamEvent::Done(s) => {
                c.summary = Some(s);
                return Ok(c);
            }
            StreamEvent::Failed(e) => return Err(e),
        }
    }
    panic!("the stream ended without Done or Failed: {c:?}");
}

fn rows_replayed(store: &tabpool::store::Store) -> i64 {
    store.conn().query_row("SELECT count(*) FROM generations WHERE replays > 0", [], |r| r.get(0)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_match_the_reference_and_survive_a_killed_tab() {
    let _procs = support::process_guard();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("history.duckdb");
    let pool = Pool::with_host(support::host().await, config(2, 4, Some(db.clone())))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let name = pool.load(ModelSpec::smollm2()).await.unwrap_or_else(|e| panic!("{e:#}"));
    let (_, g) = pool.generation_model(None).unwrap();
    let stops = g.model.stop_ids().to_vec();
    let cases = support::smollm2_reference();

    // Each case alone: the reference's greedy ids, on the tab's CPU executor (auto: these tabs'
    // WebGPU, if any, is a software adapter).
    for c in &cases {
        let req = GenRequest { prompt: c.prompt_ids.clone(), params: greedy(&stops, 24) };
        let got = collect(pool.generate(Some(&name), req).unwrap()).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got.ids, reference_ids(c), "greedy ids of {:?}", c.user);
        assert_eq!(got.backends, ["wasm-cpu"], "{got:?}");
        let s = got.summary.unwrap();
        assert_eq!((s.finish, s.replays, s.prompt_tokens), (Finish::Stop, 0, c.prompt_ids.len()));
    }

    // Four streams at once spread over both replicas; one tab's renderer is killed once tokens
    // flow. Its streams continue on the other tab: same ids as the reference, a replay counted.
    let streams: Vec<_> = (0..4)
        .map(|i| {
            let c = &cases[i % cases.len()];
            let req = GenRequest { prompt: c.prompt_ids.clone(), params: greedy(&stops, 24) };
            pool.generate(None, req).unwrap()
        })
        .collect();
    let (tx, mut placed) = tokio::sync::mpsc::unbounded_channel::<(usize, u64, usize)>();
    // Forward each stream's events, reporting (stream, tab, tokens so far) as they arrive.
    let forwarded: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(i, mut rx)| {
            let tx = tx.clone();
            let (out_tx, out_rx) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(async move {
                let (mut tab, mut n) = (0, 0);
                while let Some(ev) = rx.recv().await {
                    match &ev {
                        StreamEvent::Placed { tab: t, .. } => tab = *t,
                        StreamEvent::Token(_) => n += 1,
                        _ => {}
                    }
                    let _ = tx.send((i, tab, n));
                    let _ = out_tx.send(ev);
                }
            });
            out_rx
        })
        .collect();
    drop(tx);
    let mut tabs_used = std::collections::BTreeSet::new();
    let victim = loop {
        let (_, tab, n) = tokio::time::timeout(Duration::from_secs(120), placed.recv())
            .await
            .expect("tokens within 120 s")
            .expect("streams running");
        tabs_used.insert(tab);
        if n >= 3 {
            break tab;
        }
    };
    let killed = support::kill_renderers(&pool.tab_processes(victim).await);
    assert!(killed > 0, "tab {victim} has a renderer to kill");
    let results = futures_util::future::join_all(forwarded.into_iter().map(collect)).await;
    let mut replayed = 0;
    for (i, r) in results.into_iter().enumerate() {
        let got = r.unwrap_or_else(|e| panic!("stream {i}: {e}"));
        let c = &cases[i % cases.len()];
        assert_eq!(got.ids, reference_ids(c), "stream {i} ({:?}) after tab {victim} was killed: {got:?}", c.user);
        let s = got.summary.as_ref().unwrap();
        replayed += s.replays;
        if s.replays > 0 {
            assert!(got.tabs.len() >= 2 && got.tabs[0] == victim, "a replayed stream moved off tab {victim}: {got:?}");
            assert_ne!(*got.tabs.last().unwrap(), victim, "{got:?}");
        }
    }
    assert!(replayed >= 1, "a stream on the killed tab {victim} was replayed (tabs used: {tabs_used:?})");

    // The killed tab is replaced (a restarted browser is a new tab id) with the model loaded.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !pool.metrics().recoveries.iter().any(|r| r.ok && r.detail.contains(&format!("tab {victim} "))) {
        assert!(std::time::Instant::now() < deadline, "tab {victim} recovered: {:?}", pool.metrics().recoveries);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    pool.flush_history().unwrap();
    let store = pool.store().unwrap();
    let (rows, replays, ok): (i64, i64, i64) = store
        .conn()
        .query_row("SELECT count(*), sum(replays), count(*) FILTER (WHERE finish = 'stop') FROM generations", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    assert_eq!((rows, ok), (2 + 4, 2 + 4), "one history row per stream, all finished by a stop id");
    assert_eq!(replays, replayed as i64);
    // The report reads the same rows: one generation line per (model, kind, backend).
    let report = tabpool::report::Report::build(&store, None).unwrap();
    let g: Vec<_> = report.generation.iter().filter(|g| g.backend == "wasm-cpu").collect();
    assert_eq!(g.len(), 1, "{:?}", report.generation);
    assert_eq!((g[0].streams, g[0].finished, g[0].failed), (6, 6, 0), "{:?}", g[0]);
    assert_eq!(g[0].replayed, rows_replayed(&store));
    assert!(g[0].p50_ttft_ms > 0.0 && g[0].mean_decode_tok_s > 0.0, "{:?}", g[0]);
    let md = tabpool::report::render::markdown(&report);
    assert!(md.contains("## Text generation (streams)"), "{md}");
    pool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_stream_frees_its_session_and_bad_requests_are_typed() {
    let _procs = support::process_guard();
    // One tab, ONE session: if a dropped stream's session stayed open in the tab, the next
    // stream could never open one (the tab would refuse it with Capacity for ever).
    let pool = Pool::with_host(support::host().await, config(1, 1, None)).await.unwrap_or_else(|e| panic!("{e:#}"));
    pool.load(ModelSpec::smollm2()).await.unwrap_or_else(|e| panic!("{e:#}"));
    let (_, g) = pool.generation_model(None).unwrap();
    let stops = g.model.stop_ids().to_vec();
    let cases = support::smollm2_reference();
    let long = GenRequest { prompt: cases[0].prompt_ids.clone(), params: greedy(&[], 200) };
    let mut rx = pool.generate(None, long).unwrap();
    let mut n = 0;
    while n < 3 {
        if let StreamEvent::Token(_) = rx.recv().await.expect("stream open") {
            n += 1;
        }
    }
    drop(rx);
    let next = GenRequest { prompt: cases[1].prompt_ids.clone(), params: greedy(&stops, 24) };
    let got = tokio::time::timeout(Duration::from_secs(90), collect(pool.generate(None, next).unwrap()))
        .await
        .expect("a new stream got the freed session within 90 s")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(got.ids, reference_ids(&cases[1]));

    // Bad requests: typed errors naming what is wrong, nothing started.
    let prompt = cases[0].prompt_ids.clone();
    let too_long = GenRequest { prompt: prompt.clone(), params: greedy(&stops, 250) };
    match pool.generate(None, too_long) {
        Err(PoolError::TooLarge(m)) => assert!(m.contains("context limit of 256"), "{m}"),
        other => panic!("expected TooLarge, got {:?}", other.map(|_| ())),
    }
    let zero = GenRequest { prompt: prompt.clone(), params: greedy(&stops, 0) };
    assert!(matches!(pool.generate(None, zero), Err(PoolError::BadInput(m)) if m.contains("max_tokens")));
    let empty = GenRequest { prompt: vec![], params: greedy(&stops, 4) };
    assert!(matches!(pool.generate(None, empty), Err(PoolError::BadInput(_))));
    let out_of_vocab = GenRequest { prompt: vec![1, 49_152], params: greedy(&stops, 4) };
    assert!(matches!(pool.generate(None, out_of_vocab), Err(PoolError::BadInput(m)) if m.contains("49152")));
    let unknown = GenRequest { prompt, params: greedy(&stops, 4) };
    assert!(matches!(pool.generate(Some("gpt-9"), unknown), Err(PoolError::UnknownModel(_))));
    pool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_first_token_is_hedged_on_another_tab() {
    let _procs = support::process_guard();
    let mut cfg = config(2, 2, None);
    // Only the hedge can save the stream in time: heartbeats take minutes to call the tab hung.
    cfg.health.heartbeat_interval_ms = 60_000;
    cfg.health.heartbeat_timeout_ms = 60_000;
    cfg.hedge_floor_ms = 500;
    let pool = Pool::with_host(support::host().await, cfg).await.unwrap_or_else(|e| panic!("{e:#}"));
    pool.load(ModelSpec::smollm2()).await.unwrap_or_else(|e| panic!("{e:#}"));
    let (_, g) = pool.generation_model(None).unwrap();
    let stops = g.model.stop_ids().to_vec();
    let cases = support::smollm2_reference();
    // One stream teaches the pool the model's time to first token.
    let req = GenRequest { prompt: cases[0].prompt_ids.clone(), params: greedy(&stops, 24) };
    collect(pool.generate(None, req).unwrap()).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(pool.metrics().hedged, 0, "a prompt answered in time is not hedged");
    // Both tabs idle: the next stream is placed on the lowest tab id. Hang that tab's renderer.
    let frozen = pool.tabs().iter().map(|t| t.0).min().unwrap();
    assert!(pool.freeze_tab(frozen).await.unwrap() >= 1);
    let t = std::time::Instant::now();
    let req = GenRequest { prompt: cases[1].prompt_ids.clone(), params: greedy(&stops, 24) };
    let got = tokio::time::timeout(Duration::from_secs(60), collect(pool.generate(None, req).unwrap()))
        .await
        .expect("the hedge answered within 60 s")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(got.ids, reference_ids(&cases[1]), "the hedge streams the reference's tokens");
    assert_eq!(got.tabs.len(), 2, "placed on the frozen tab, then on the hedge's: {got:?}");
    assert_eq!(got.tabs[0], frozen, "{got:?}");
    assert_ne!(got.tabs[1], frozen, "{got:?}");
    assert_eq!(pool.metrics().hedged, 1);
    eprintln!("hedged stream done in {:.1} s", t.elapsed().as_secs_f64());
    pool.shutdown().await;
}

/// The reference prompts share their first 24 tokens (ChatML's system turn and the user turn's
/// start). Run one after another on two idle tabs, the later ones go to the tab that ran the
/// first (its prefix cache holds that start), reuse exactly the shared tokens — the whole prompt
/// but its last token when a prompt comes again — and still give the float64 reference's greedy
/// ids. Hits and reused tokens are in /metrics and in the history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_prefix_is_prefilled_once_on_the_tab_that_holds_it() {
    let _procs = support::process_guard();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("history.duckdb");
    let pool = Pool::with_host(support::host().await, config(2, 2, Some(db))).await.unwrap_or_else(|e| panic!("{e:#}"));
    let name = pool.load(ModelSpec::smollm2()).await.unwrap_or_else(|e| panic!("{e:#}"));
    let (_, g) = pool.generation_model(None).unwrap();
    let stops = g.model.stop_ids().to_vec();
    let cases = support::smollm2_reference();
    let shared = cases[0].prompt_ids.iter().zip(&cases[1].prompt_ids).take_while(|(a, b)| a == b).count();
    assert_eq!(shared, 24, "the reference prompts' common start");
    let mut tab = None;
    for (c, cached) in [(&cases[0], 0), (&cases[1], shared), (&cases[0], cases[0].prompt_ids.len() - 1)] {
        let req = GenRequest { prompt: c.prompt_ids.clone(), params: greedy(&stops, 24) };
        let got = collect(pool.generate(Some(&name), req).unwrap()).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got.ids, reference_ids(c), "greedy ids of {:?} with {cached} tokens cached", c.user);
        let s = got.summary.unwrap();
        assert_eq!(s.cached_tokens, cached, "{:?}: {s:?}", c.user);
        assert_eq!(*tab.get_or_insert(s.tab), s.tab, "routed to the tab holding the prefix: {s:?}");
    }
    let metrics = pool.prometheus();
    let line = |name: &str, labels: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(name) && l.contains(labels))
            .and_then(|l| l.rsplit(' ').next())
            .map(|v| v.parse::<f64>().unwrap())
    };
    assert_eq!(line("tabpool_prefix_cache_queries_total", "result=\"hit\""), Some(2.0), "{metrics}");
    assert_eq!(line("tabpool_prefix_cache_queries_total", "result=\"miss\""), Some(1.0), "{metrics}");
    let reused = (shared + cases[0].prompt_ids.len() - 1) as f64;
    assert_eq!(line("tabpool_prefix_cache_tokens_total", "model="), Some(reused), "{metrics}");
    pool.flush_history().unwrap();
    let (hits, tokens): (i64, i64) = pool
        .store()
        .unwrap()
        .conn()
        .query_row("SELECT count(*) FILTER (WHERE cached_tokens > 0), sum(cached_tokens) FROM generations", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!((hits, tokens as f64), (2, reused));
    pool.shutdown().await;
}
