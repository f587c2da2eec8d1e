//! A sharded SmolLM2 in the pool, in real tabs: with `[generation] shards = 2` each replica is a
//! pipeline of two stage tabs; two pipelines run side by side; greedy ids equal the float64
//! reference; a stage tab whose renderer is SIGKILLed mid-generation is replaced by the pool and
//! its sessions replayed into the new stage, so no stream is replayed elsewhere and no token
//! differs; `status` shows each pipeline's tabs, parts and health. And `tabpool serve --shards`
//! as a user runs it, with a component split (the head's tab visited twice a token). A stage
//! tab that fails (its WebNN context destroyed), then heals (the stage loaded into it again)
//! ends with its breaker closed: stage breakers half-open like every other.

use crate::support;

use std::process::Command;
use std::time::Duration;

use shared_proto::Sampling;
use tabpool::browser::{BrowserKind, KindSpec};
use tabpool::exec::{Backend, GenParams};
use tabpool::policy::breaker::State;
use tabpool::policy::sharding::Strategy;
use tabpool::pool::{GenRequest, ModelSpec, Pool, PoolConfig, PoolError, StreamEvent};

fn config(tabs: usize, shards: u32, strategy: Strategy) -> PoolConfig {
    let kinds = vec![KindSpec::local(BrowserKind::ChromiumWebnn).with_max_tabs(tabs)];
    let mut cfg = PoolConfig { min_tabs: tabs, max_tabs: tabs, kinds, ..PoolConfig::default() };
    cfg.scaling.enabled = false;
    cfg.generation.context_limit = 256;
    cfg.generation.sessions_per_tab = 4;
    cfg.generation.shards = shards;
    cfg.generation.strategy = strategy;
    cfg
}

fn reference_ids(c: &support::GenCase) -> Vec<u32> {
    c.greedy_ids.iter().copied().take_while(|&t| t != 2).collect()
}

/// (ids, replays) of a stream, forwarding (stream, tokens so far) as tokens arrive.
async fn collect(
    i: usize,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<StreamEvent>,
    progress: tokio::sync::mpsc::UnboundedSender<(usize, usize)>,
) -> Result<(Vec<u32>, u32, Vec<u64>), PoolError> {
    let (mut ids, mut tabs) = (Vec::new(), Vec::new());
    while let Some(ev) = rx.recv().await {
        match ev {
            StreamEvent::Placed { tab, .. } => tabs.push(tab),
            StreamEvent::Token(t) => {
                ids.push(t);
                let _ = progress.send((i, ids.len()));
            }
            StreamEvent::Done(s) => return Ok((ids, s.replays, tabs)),
            StreamEvent::Failed(e) => return Err(e),
        }
    }
    panic!("stream {i} ended without Done or Failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pipelines_match_the_reference_and_a_killed_stage_tab_is_replaced() {
    let _procs = support::process_guard();
    let pool =
        Pool::with_host(support::host().await, config(4, 2, Strategy::Layer)).await.unwrap_or_else(|e| panic!("{e:#}"));
    let name = pool.load(ModelSpec::smollm2()).await.unwrap_or_else(|e| panic!("{e:#}"));
    let (_, g) = pool.generation_model(None).unwrap();
    let stops = g.model.stop_ids().to_vec();
    let cases = support::smollm2_reference();
    let greedy = GenParams { max_tokens: 24, sampling: Sampling::Greedy, stop_ids: stops };

    // Two pipelines of two tabs each, on four different tabs, each tab with its share.
    let m = pool.metrics();
    let model = m.models.iter().find(|x| x.name == name).unwrap();
    assert_eq!(model.pipelines.len(), 2, "{:?}", model.pipelines);
    let mut all_tabs: Vec<u64> = model.pipelines.iter().flat_map(|p| p.tabs.iter().map(|t| t.tab)).collect();
    all_tabs.sort();
    all_tabs.dedup();
    assert_eq!(all_tabs.len(), 4, "{:?}", model.pipelines);
    for p in &model.pipelines {
        assert_eq!(p.strategy, "layer");
        assert!(p.tabs[0].parts.starts_with("embed, L0-"), "{p:?}");
        assert!(p.tabs[1].parts.ends_with("-29, head"), "{p:?}");
    }
    let text = m.render();
    assert!(text.contains("pipeline 1 (layer, 2 tabs)") && text.contains("pipeline 2 (layer, 2 tabs)"), "{text}");

    // Each case alone: the reference's greedy ids through a pipeline.
    for c in &cases {
        let req = GenRequest { prompt: c.prompt_ids.clone(), params: greedy.clone() };
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let (ids, replays, _) = collect(0, pool.generate(Some(&name), req).unwrap(), tx).await.unwrap();
        assert_eq!((ids, replays), (reference_ids(c), 0), "greedy ids of {:?}", c.user);
    }

    // Four streams over both pipelines; once tokens flow, the renderer of pipeline 1's second
    // tab is killed. That pipeline moves the stage to the tab the pool brings back and replays
    // its sessions there: every stream equals the reference, none is replayed elsewhere.
    let victim = model.pipelines[0].tabs[1].tab;
    let (tx, mut progress) = tokio::sync::mpsc::unbounded_channel();
    let streams: Vec<_> = (0..4)
        .map(|i| {
            let c = &cases[i % cases.len()];
            let req = GenRequest { prompt: c.prompt_ids.clone(), params: greedy.clone() };
            tokio::spawn(collect(i, pool.generate(Some(&name), req).unwrap(), tx.clone()))
        })
        .collect();
    drop(tx);
    loop {
        let (_, n) = tokio::time::timeout(Duration::from_secs(120), progress.recv())
            .await
            .expect("tokens within 120 s")
            .expect("streams running");
        if n >= 3 {
            break;
        }
    }
    let killed = support::kill_renderers(&pool.tab_processes(victim).await);
    assert!(killed > 0, "tab {victim} has a renderer to kill");
    tokio::spawn(async move { while progress.recv().await.is_some() {} });
    for (i, s) in streams.into_iter().enumerate() {
        let (ids, replays, tabs) = s.await.unwrap().unwrap_or_else(|e| panic!("stream {i}: {e}"));
        let c = &cases[i % cases.len()];
        assert_eq!(ids, reference_ids(c), "stream {i} ({:?}) after stage tab {victim} was killed", c.user);
        assert_eq!(replays, 0, "stream {i} stayed on its pipeline (tabs {tabs:?})");
    }
    let m = pool.metrics();
    let model = m.models.iter().find(|x| x.name == name).unwrap();
    let p = &model.pipelines[0];
    assert!(p.stage_recoveries >= 1 && p.replayed_tokens > 0, "{p:?}");
    assert_ne!(p.tabs[1].tab, victim, "the stage moved off the killed tab: {p:?}");
    eprintln!("{}", m.render());
    let moved = m.recoveries.iter().find(|r| r.ok && r.step == "replace_stage");
    let moved = moved.unwrap_or_else(|| panic!("a stage replacement is recorded: {:?}", m.recoveries));
    eprintln!(
        "stage tab {victim} killed: {} in {:.0} ms, {} tokens replayed",
        moved.detail, moved.ms, p.replayed_tokens
    );

    // The repaired pipeline keeps serving: two more streams at once, one on each pipeline.
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let again: Vec<_> = cases
        .iter()
        .map(|c| {
            let req = GenRequest { prompt: c.prompt_ids.clone(), params: greedy.clone() };
            collect(0, pool.generate(Some(&name), req).unwrap(), tx.clone())
        })
        .collect();
    for (c, r) in cases.iter().zip(futures_util::future::join_all(again).await) {
        assert_eq!(r.unwrap().0, reference_ids(c), "after the repair: {:?}", c.user);
    }
    pool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_shards_streams_the_reference_and_status_lists_the_stages() {
    let _procs = support::process_guard();
    let (_serve, api) = support::start_serve(&[
        "--min-tabs",
        "2",
        "--max-tabs",
        "2",
        "--kind",
        "chromium-webnn",
        "--no-history",
        "--model",
        "smollm2",
        "--no-default-model",
        "--shards",
        "2",
        "--strategy",
        "component",
    ])
    .await;
    let cases = support::smollm2_reference();
    let body = serde_json::json!({ "prompt": cases[0].user, "max_tokens": 24, "stream": false }).to_string();
    let (code, text) = support::http(&api, "POST", "/generate", &body).await;
    assert_eq!(code, 200, "{text}");
    let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
    let ids: Vec<u32> = answer["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    assert_eq!(ids, reference_ids(&cases[0]), "{text}");

    // `tabpool status`: the pipeline, its two tabs and what each holds.
    let out = Command::new(env!("CARGO_BIN_EXE_tabpool")).args(["status", "--api", &api]).output().unwrap();
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{status} {}", String::from_utf8_lossy(&out.stderr));
    assert!(status.contains("pipeline 1 (component, 2 tabs)"), "{status}");
    assert!(status.contains("embed, head") && status.contains("L0-29"), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_tab_that_fails_then_heals_ends_with_its_breaker_closed_and_serving() {
    let _procs = support::process_guard();
    // Three tabs: one pipeline (lead A, stage tab B) and a free tab C. One failure opens a
    // breaker; it may half-open half a second later.
    let mut cfg = config(3, 2, Strategy::Layer);
    cfg.backend = Backend::Webnn;
    cfg.health.breaker_min_calls = 1;
    cfg.health.breaker_open_wait_s = 0.5;
    let pool = Pool::with_host(support::host().await, cfg).await.unwrap_or_else(|e| panic!("{e:#}"));
    let name = pool.load(ModelSpec::smollm2()).await.unwrap_or_else(|e| panic!("{e:#}"));
    let (_, g) = pool.generation_model(None).unwrap();
    let case = &support::smollm2_reference()[0];
    let greedy = GenParams { max_tokens: 12, sampling: Sampling::Greedy, stop_ids: g.model.stop_ids().to_vec() };
    let want: Vec<u32> = reference_ids(case).into_iter().take(12).collect();
    let stage_tab = |pool: &Pool| {
        let m = pool.metrics();
        let p = m.models.iter().find(|x| x.name == name).unwrap().pipelines[0].clone();
        (p.tabs[1].tab, p.tabs[1].breaker)
    };
    let breaker_of = |pool: &Pool, tab: u64| pool.metrics().tabs.iter().find(|t| t.id == tab).unwrap().breaker;
    let generate = async |pool: &Pool, what: &str| {
        let req = GenRequest { prompt: case.prompt_ids.clone(), params: greedy.clone() };
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let (ids, replays, _) = collect(0, pool.generate(Some(&name), req).unwrap(), tx).await.unwrap();
        assert_eq!((ids, replays), (want.clone(), 0), "{what}");
    };
    let (b, _) = stage_tab(&pool);

    // B fails: its context is destroyed, the next stage call fails (DeviceLost) and opens B's
    // breaker; the stage moves to the free tab C and the stream goes on.
    assert!(pool.lose_device(b).await.unwrap() >= 1);
    generate(&pool, "B lost its device").await;
    let (c, _) = stage_tab(&pool);
    assert_ne!(c, b, "the stage moved off B");
    assert_eq!(breaker_of(&pool, b), State::Open, "one failure opens B's breaker");

    // C fails the same way: the stage comes back to B, the one free tab, loaded again (a new
    // context) — B has healed. Its calls after the wait are half-open probes, which close it.
    assert!(pool.lose_device(c).await.unwrap() >= 1);
    generate(&pool, "C lost its device").await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    generate(&pool, "on the healed B").await;
    let (now_on, state) = stage_tab(&pool);
    assert_eq!(now_on, b, "the stage is back on B");
    let events = pool.metrics().scaling_events;
    let log: Vec<String> =
        events.iter().filter(|e| e.action == "breaker").map(|e| format!("tab {:?}: {}", e.tab, e.reason)).collect();
    assert_eq!(state, State::Closed, "B served again, its breaker closed: {log:#?}");
    generate(&pool, "B, closed").await;
    pool.shutdown().await;
}
