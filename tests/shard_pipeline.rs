//! SmolLM2 split into a pipeline of stages, each stage in its own real tab holding only its own
//! layers' weights, the hidden state passing tab → host → next tab: greedy ids equal the float64
//! reference (`tests/data/smollm2_greedy.json`) at 2 and 3 shards on the tabs' CPU executor, on
//! WebNN and on WebGPU, alone and with sessions sharing steps; a closed session is freed on
//! every stage.

use crate::support;

use std::sync::Arc;

use shared_proto::Sampling;
use tabpool::exec::Backend;
use tabpool::exec::placement;
use tabpool::exec::{Decoder, GenEvent, GenParams, StepLimits, Stepper};
use tabpool::models::smollm2::SmolLm2;
use tabpool::policy::sharding::{self, Strategy};

fn greedy(m: &SmolLm2) -> GenParams {
    GenParams { max_tokens: 24, sampling: Sampling::Greedy, stop_ids: m.eos_ids.clone() }
}

fn with_stop(c: &support::GenCase) -> Vec<u32> {
    // The stream leaves the stop id out; the reference ends with it when it stopped.
    c.greedy_ids.iter().copied().take_while(|&t| t != 2).collect()
}

/// Each case alone, then all of them sharing steps: both equal the reference.
async fn check_reference(m: &SmolLm2, stepper: Arc<Stepper>, what: &str) {
    let cases = support::smollm2_reference();
    let d = Decoder::start(stepper, StepLimits::default(), None);
    for c in &cases {
        let run = placement::generate(m, &d, c.prompt_ids.clone(), greedy(m), |_| {})
            .await
            .unwrap_or_else(|e| panic!("{what}: {e:#}"));
        assert_eq!(run.ids, with_stop(c), "{what}: greedy ids of {:?}", c.user);
    }
    let runs = cases.iter().map(|c| placement::generate(m, &d, c.prompt_ids.clone(), greedy(m), |_| {}));
    let all = futures_util::future::join_all(runs).await;
    for (run, c) in all.into_iter().zip(&cases) {
        let run = run.unwrap_or_else(|e| panic!("{what}: {e:#}"));
        assert_eq!(run.ids, with_stop(c), "{what}: batched greedy ids of {:?}", c.user);
    }
    d.stop().await;
}

async fn pipeline(host: &mut tabpool::Host, m: &SmolLm2, backend: Backend, shards: u32) -> Arc<Stepper> {
    let p = placement::pipeline(host, m, backend, shards, 2, 0, &()).await.unwrap_or_else(|e| panic!("{e:#}"));
    Arc::new(p)
}

/// Once the decoder has run `n` steps.
async fn after_steps(d: &Decoder, n: u64) {
    while d.stats.steps.load(std::sync::atomic::Ordering::Relaxed) < n {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Greedy streams of `cases` on `d` while `chaos` runs; each stream's ids.
async fn streams_under(
    m: &SmolLm2,
    d: &Decoder,
    cases: &[&support::GenCase],
    chaos: impl std::future::Future<Output = ()>,
) -> Vec<Vec<u32>> {
    let runs = futures_util::future::join_all(cases.iter().map(|c| first_then_rest(m, d, c)));
    tokio::join!(runs, chaos).0
}

/// The first token of a stream, then the rest of it.
async fn first_then_rest(m: &SmolLm2, d: &Decoder, c: &support::GenCase) -> Vec<u32> {
    let mut events = d.generate(c.prompt_ids.clone(), greedy(m));
    let mut ids = Vec::new();
    while let Some(ev) = events.recv().await {
        match ev {
            GenEvent::Token(id) => ids.push(id),
            GenEvent::Done { .. } => return ids,
            GenEvent::Failed(e) => panic!("stream of {:?} failed after {} tokens: {e}", c.user, ids.len()),
        }
    }
    panic!("the stream of {:?} ended without Done", c.user)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_and_three_shards_on_the_host_cpu_equal_the_reference() {
    let mut host = support::host().await;
    let m = SmolLm2::load(None).unwrap_or_else(|e| panic!("{e:#}"));
    for shards in [2, 3] {
        let p = pipeline(&mut host, &m, Backend::Cpu, shards).await;
        assert!(matches!(&*p, Stepper::Pipeline(p) if p.stages().len() == shards as usize));
        check_reference(&m, p, &format!("{shards} host stages")).await;
    }
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_shards_in_three_tabs_equal_the_reference_and_free_every_stage() {
    let _procs = support::process_guard();
    let mut host = support::host().await;
    let m = SmolLm2::load(None).unwrap_or_else(|e| panic!("{e:#}"));
    let p = pipeline(&mut host, &m, Backend::WasmCpu, 3).await;
    let tabs = p.tab_ids();
    assert_eq!(tabs.len(), 3, "one tab per stage");
    assert!(tabs[0] != tabs[1] && tabs[1] != tabs[2] && tabs[0] != tabs[2], "{tabs:?}");
    assert_eq!(p.backend(), "wasm-cpu");
    check_reference(&m, p.clone(), "3 wasm-cpu tabs").await;
    // Two sessions of the whole context fit on every stage; a closed one frees them on all.
    p.open(1, 2048).await.unwrap();
    p.open(2, 2048).await.unwrap();
    let err = format!("{:#}", p.open(3, 16).await.expect_err("every stage holds 2 sessions"));
    assert!(err.contains("Capacity"), "{err}");
    p.close(1).await.unwrap();
    p.open(3, 2048).await.unwrap();
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_shards_on_webnn_equal_the_reference() {
    let _procs = support::process_guard();
    let mut host = support::host().await;
    let m = SmolLm2::load(None).unwrap_or_else(|e| panic!("{e:#}"));
    let p = pipeline(&mut host, &m, Backend::Webnn, 2).await;
    assert_eq!(p.backend(), "webnn-cpu");
    check_reference(&m, p, "2 webnn tabs").await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_shards_on_webgpu_equal_the_reference() {
    let _procs = support::process_guard();
    let mut host = support::host().await;
    let m = SmolLm2::load(None).unwrap_or_else(|e| panic!("{e:#}"));
    let p = pipeline(&mut host, &m, Backend::Webgpu, 2).await;
    assert_eq!(p.backend(), "webgpu");
    check_reference(&m, p, "2 webgpu tabs").await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_stage_tabs_are_replaced_without_a_wrong_token() {
    let _procs = support::process_guard();
    let mut host = support::host().await;
    let m = SmolLm2::load(None).unwrap_or_else(|e| panic!("{e:#}"));
    let cases = support::smollm2_reference();
    // Three stages in three tabs, two spare tabs; six streams at once.
    let p =
        placement::pipeline(&mut host, &m, Backend::WasmCpu, 3, 6, 2, &()).await.unwrap_or_else(|e| panic!("{e:#}"));
    let p = Arc::new(p);
    let Stepper::Pipeline(pipe) = &*p else { unreachable!() };
    let before = p.tab_ids();
    let d = Decoder::start(p.clone(), StepLimits::default(), None);
    let streams: Vec<_> = (0..6).map(|i| &cases[i % cases.len()]).collect();
    // While they run: kill the middle stage's renderer once tokens flow, then the first's.
    let chaos = async {
        after_steps(&d, 4).await;
        assert!(support::kill_renderers(&host.tab_processes(before[1])) > 0, "stage 1 has a renderer");
        after_steps(&d, 12).await;
        let now = p.tab_ids();
        assert!(support::kill_renderers(&host.tab_processes(now[0])) > 0, "stage 0 has a renderer");
    };
    let got = streams_under(&m, &d, &streams, chaos).await;
    for (ids, c) in got.iter().zip(&streams) {
        assert_eq!(*ids, with_stop(c), "greedy ids of {:?} with two stages killed", c.user);
    }
    let recoveries = pipe.stats.recoveries.load(std::sync::atomic::Ordering::Relaxed);
    let ms = pipe.stats.recovery_ms.lock().unwrap().clone();
    let after = p.tab_ids();
    eprintln!(
        "stage tabs {before:?} → {after:?}; {recoveries} recoveries in {ms:?} ms, {} tokens replayed",
        pipe.stats.replayed_tokens.load(std::sync::atomic::Ordering::Relaxed)
    );
    assert_eq!(recoveries, 2, "each killed stage replaced once");
    assert!(after[0] != before[0] && after[1] != before[1] && after[2] == before[2], "{before:?} → {after:?}");
    d.stop().await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_stage_without_a_spare_is_replanned_on_the_tabs_left() {
    let _procs = support::process_guard();
    let mut host = support::host().await;
    let m = SmolLm2::load(None).unwrap_or_else(|e| panic!("{e:#}"));
    let cases = support::smollm2_reference();
    // Three stages, no spare tab: a lost stage cannot be replaced, so the model is split anew
    // over the two tabs left and the streams' tokens replayed through it.
    let p =
        placement::pipeline(&mut host, &m, Backend::WasmCpu, 3, 4, 0, &()).await.unwrap_or_else(|e| panic!("{e:#}"));
    let p = Arc::new(p);
    let Stepper::Pipeline(pipe) = &*p else { unreachable!() };
    let before = p.tab_ids();
    let d = Decoder::start(p.clone(), StepLimits::default(), None);
    let streams: Vec<_> = (0..4).map(|i| &cases[i % cases.len()]).collect();
    let chaos = async {
        after_steps(&d, 6).await;
        assert!(support::kill_renderers(&host.tab_processes(before[1])) > 0, "stage 1 has a renderer");
    };
    let got = streams_under(&m, &d, &streams, chaos).await;
    for (ids, c) in got.iter().zip(&streams) {
        assert_eq!(*ids, with_stop(c), "greedy ids of {:?} across a re-plan", c.user);
    }
    let after = p.tab_ids();
    eprintln!(
        "stage tabs {before:?} → {after:?}; re-planned in {:?} ms, {} tokens replayed",
        pipe.stats.recovery_ms.lock().unwrap(),
        pipe.stats.replayed_tokens.load(std::sync::atomic::Ordering::Relaxed)
    );
    assert_eq!(pipe.stats.replans.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(after, vec![before[0], before[2]], "two stages on the tabs left");
    d.stop().await;
    host.shutdown().await;
}

/// `strategy` over `shards` tabs of `backend`, laid out by the planner, with `spares` spare tabs.
async fn planned(
    host: &mut tabpool::Host,
    m: &SmolLm2,
    backend: Backend,
    strategy: Strategy,
    shards: usize,
    spares: u32,
) -> Arc<Stepper> {
    let (stages, micro) = sharding::layout(strategy, &m.part_costs().unwrap(), None, shards).unwrap();
    let p = placement::pipeline_of(host, m, backend, &stages, micro, 4, spares, &()).await;
    Arc::new(p.unwrap_or_else(|e| panic!("{strategy:?} ×{shards}: {e:#}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_strategy_equals_the_reference_in_tabs() {
    let _procs = support::process_guard();
    let mut host = support::host().await;
    let m = SmolLm2::load(None).unwrap_or_else(|e| panic!("{e:#}"));
    // Micro-batched pipelines (the batched half of the check runs both cases in two groups),
    // the embedding and head apart from the body, and every attention apart from its FFN.
    for (strategy, shards) in
        [(Strategy::Pipeline, 2), (Strategy::Pipeline, 3), (Strategy::Component, 2), (Strategy::AttentionFfn, 2)]
    {
        let p = planned(&mut host, &m, Backend::WasmCpu, strategy, shards, 0).await;
        check_reference(&m, p, &format!("{strategy:?} ×{shards}")).await;
    }
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_webnn_stage_is_replaced_without_a_wrong_token() {
    killed_stage_is_replaced(Backend::Webnn, "webnn-cpu").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_webgpu_stage_is_replaced_without_a_wrong_token() {
    killed_stage_is_replaced(Backend::Webgpu, "webgpu").await;
}

/// Two stages on `backend` tabs and a spare; stage 1's renderer SIGKILLed after 4 steps of two
/// streams: the spare takes the stage, every id equals the reference.
async fn killed_stage_is_replaced(backend: Backend, what: &str) {
    let _procs = support::process_guard();
    let mut host = support::host().await;
    let m = SmolLm2::load(None).unwrap_or_else(|e| panic!("{e:#}"));
    let cases = support::smollm2_reference();
    let p = planned(&mut host, &m, backend, Strategy::Layer, 2, 1).await;
    assert_eq!(p.backend(), what);
    let Stepper::Pipeline(pipe) = &*p else { unreachable!() };
    let before = p.tab_ids();
    let d = Decoder::start(p.clone(), StepLimits::default(), None);
    let chaos = async {
        after_steps(&d, 4).await;
        assert!(support::kill_renderers(&host.tab_processes(before[1])) > 0, "stage 1 has a renderer");
    };
    let got = streams_under(&m, &d, &cases.iter().collect::<Vec<_>>(), chaos).await;
    for (ids, c) in got.iter().zip(&cases) {
        assert_eq!(*ids, with_stop(c), "{what} greedy ids of {:?} with stage 1 killed", c.user);
    }
    assert_eq!(pipe.stats.recoveries.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_ne!(p.tab_ids()[1], before[1], "stage 1 runs in the spare tab");
    d.stop().await;
    host.shutdown().await;
}
