//! SmolLM2-135M-Instruct generating in real tabs, its KV cache kept in the tab between steps:
//! greedy ids equal the float64 reference (`tests/data/smollm2_greedy.json`) on the tab's CPU
//! executor, on WebGPU and on WebNN (CPU device, chromium-webnn); concurrent generations batched into shared steps give each the ids
//! it gets alone; a prompt again reuses its KV rows from the prefix cache (WebGPU: copied between
//! device buffers) with the same ids; seeded sampling is reproducible; a cancelled stream frees its KV rows; the
//! tab refuses sessions beyond its limits with a typed error.

use crate::support;

use std::sync::Arc;

use shared_proto::Sampling;
use tabpool::exec::Backend;
use tabpool::exec::placement;
use tabpool::exec::{Decoder, Finish, GenEvent, GenParams, StepLimits};
use tabpool::models::smollm2::{Message, SmolLm2};

fn params(m: &SmolLm2, max_tokens: u32, sampling: Sampling) -> GenParams {
    GenParams { max_tokens, sampling, stop_ids: m.eos_ids.clone() }
}

/// Up to 24 tokens of each case, greedy (the reference's stop rule), all cases at once.
async fn greedy_all(m: &SmolLm2, d: &Decoder, cases: &[support::GenCase]) -> Vec<Vec<u32>> {
    let runs =
        cases.iter().map(|c| placement::generate(m, d, c.prompt_ids.clone(), params(m, 24, Sampling::Greedy), |_| {}));
    futures_util::future::join_all(runs).await.into_iter().map(|r| r.unwrap_or_else(|e| panic!("{e:#}")).ids).collect()
}

fn with_stop(c: &support::GenCase) -> Vec<u32> {
    // The stream leaves the stop id out; the reference ends with it when it stopped.
    c.greedy_ids.iter().copied().take_while(|&t| t != 2).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greedy_in_a_tab_equals_the_reference_and_sessions_batch_and_free() {
    let _procs = support::process_guard();
    let mut host = support::host().await;
    let m = SmolLm2::load(None).unwrap_or_else(|e| panic!("{e:#}"));
    let cases = support::smollm2_reference();
    // Two sessions of up to 2048 tokens fit; a third does not.
    let stepper = placement::stepper(&mut host, &m, Backend::WasmCpu, 2, &()).await.unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(stepper.backend(), "wasm-cpu");
    let stepper = Arc::new(stepper);
    let d = Decoder::start(stepper.clone(), StepLimits::default(), None);

    // Each case alone, then both at once (their prompts and decodes share steps).
    for c in &cases {
        let run = placement::generate(&m, &d, c.prompt_ids.clone(), params(&m, 24, Sampling::Greedy), |_| {})
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(run.ids, with_stop(c), "greedy ids of {:?}", c.user);
        assert_eq!(m.decode(&run.ids).unwrap(), c.text);
        assert_eq!(run.finish, Some(Finish::Stop));
    }
    let steps_before = d.stats.steps.load(std::sync::atomic::Ordering::Relaxed);
    let both = greedy_all(&m, &d, &cases).await;
    for (ids, c) in both.iter().zip(&cases) {
        assert_eq!(*ids, with_stop(c), "batched greedy ids of {:?}", c.user);
    }
    let steps = d.stats.steps.load(std::sync::atomic::Ordering::Relaxed) - steps_before;
    let longest = cases.iter().map(|c| with_stop(c).len() + 1).max().unwrap() as u64;
    assert!(steps <= longest + 1, "the two sessions shared steps: {steps} steps for at most {longest} tokens each");

    // Seeded sampling: the same seed gives the same text; max_tokens ends with `length`.
    let prompt = m.chat_ids(&[Message::new("user", "Tell me a story about a dragon.")]).unwrap();
    let sampled = |seed| {
        let p = params(&m, 12, Sampling::TopKP { temperature: 0.9, top_k: 40, top_p: 0.95, seed });
        placement::generate(&m, &d, prompt.clone(), p, |_| {})
    };
    let (a, b, c) = (sampled(7).await.unwrap(), sampled(7).await.unwrap(), sampled(8).await.unwrap());
    assert_eq!(a.ids, b.ids, "same seed, same tokens");
    assert_eq!((a.ids.len(), a.finish), (12, Some(Finish::Length)));
    eprintln!("seed 7: {:?}\nseed 8: {:?}", m.decode(&a.ids).unwrap(), m.decode(&c.ids).unwrap());

    // A stream dropped mid-generation is cancelled and its rows freed: afterwards a session of
    // the whole cache fits (the decoder notices at its next step boundary, which can take
    // seconds on a loaded machine).
    let mut events = d.generate(prompt.clone(), params(&m, 2000, Sampling::Greedy));
    assert!(matches!(events.recv().await, Some(GenEvent::Token(_))));
    drop(events);
    let t = std::time::Instant::now();
    while stepper.open(900, 4096).await.is_err() {
        assert!(t.elapsed() < std::time::Duration::from_secs(60), "the dropped stream's rows were not freed");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    stepper.close(900).await.unwrap();
    stepper.open(900, 2048).await.unwrap();
    stepper.open(901, 2048).await.unwrap();
    // Beyond the limits: a typed Capacity error from the tab, and nothing changes.
    let err = format!("{:#}", stepper.open(902, 16).await.expect_err("the session limit is 2"));
    assert!(err.contains("Capacity"), "{err}");
    stepper.close(900).await.unwrap();
    let err = format!("{:#}", stepper.open(903, 4096).await.expect_err("more than the free rows"));
    assert!(err.contains("Capacity"), "{err}");
    stepper.close(901).await.unwrap();
    d.stop().await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greedy_on_webgpu_equals_the_reference() {
    let _procs = support::process_guard();
    let mut host = support::host().await;
    let m = SmolLm2::load(None).unwrap_or_else(|e| panic!("{e:#}"));
    let cases = support::smollm2_reference();
    let stepper = placement::stepper(&mut host, &m, Backend::Webgpu, 2, &()).await.unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(stepper.backend(), "webgpu");
    let d = Decoder::start(Arc::new(stepper), StepLimits::default(), None);
    // Both cases in shared steps (SwiftShader is slow: ~0.5 s a step).
    let both = greedy_all(&m, &d, &cases).await;
    for (ids, c) in both.iter().zip(&cases) {
        assert_eq!(*ids, with_stop(c), "webgpu greedy ids of {:?}", c.user);
    }
    // Again, alone: its prompt's KV rows (all but its last token) are copied from the prefix
    // cache in device buffers, and the ids do not change.
    let run = placement::generate(&m, &d, cases[1].prompt_ids.clone(), params(&m, 24, Sampling::Greedy), |_| {})
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(run.ids, with_stop(&cases[1]), "webgpu greedy ids from a cached prefix");
    assert_eq!(run.cached_tokens, cases[1].prompt_ids.len() - 1, "the whole prompt but its last token");
    d.stop().await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greedy_on_firefox_webgpu_equals_the_reference() {
    let _procs = support::process_guard();
    let mut host = support::host().await;
    let m = SmolLm2::load(None).unwrap_or_else(|e| panic!("{e:#}"));
    let cases = support::smollm2_reference();
    // Firefox ESR's WebGPU runs on Mesa's lavapipe here (Vulkan on the CPU): another browser's
    // WGSL compiler and another adapter than Chromium's SwiftShader, same kernels.
    let tab = host.launch(tabpool::browser::BrowserKind::Firefox).await.unwrap_or_else(|e| panic!("{e:#}"));
    let limits = placement::kv_limits(&m, 2);
    let stepper = placement::load_in(&tab, &m, Backend::Webgpu, limits, &()).await.unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(stepper.backend(), "webgpu");
    let d = Decoder::start(Arc::new(stepper), StepLimits::default(), None);
    let both = greedy_all(&m, &d, &cases).await;
    for (ids, c) in both.iter().zip(&cases) {
        assert_eq!(*ids, with_stop(c), "firefox webgpu greedy ids of {:?}", c.user);
    }
    d.stop().await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greedy_on_webnn_equals_the_reference() {
    let _procs = support::process_guard();
    let mut host = support::host().await;
    let m = SmolLm2::load(None).unwrap_or_else(|e| panic!("{e:#}"));
    let cases = support::smollm2_reference();
    let stepper = placement::stepper(&mut host, &m, Backend::Webnn, 2, &()).await.unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(stepper.backend(), "webnn-cpu");
    let stepper = Arc::new(stepper);
    let d = Decoder::start(stepper.clone(), StepLimits::default(), None);
    // Each case alone (prefill of T tokens, then one-token decode steps), then both sharing steps
    // (padded token and row buckets).
    for c in &cases {
        let run = placement::generate(&m, &d, c.prompt_ids.clone(), params(&m, 24, Sampling::Greedy), |_| {})
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(run.ids, with_stop(c), "webnn greedy ids of {:?}", c.user);
    }
    let both = greedy_all(&m, &d, &cases).await;
    for (ids, c) in both.iter().zip(&cases) {
        assert_eq!(*ids, with_stop(c), "webnn batched greedy ids of {:?}", c.user);
    }
    // Sampled rows are drawn in wasm from the logits the graph read back: reproducible by seed.
    let prompt = m.chat_ids(&[Message::new("user", "Tell me a story about a dragon.")]).unwrap();
    let sampled = |seed| {
        let p = params(&m, 8, Sampling::TopKP { temperature: 0.9, top_k: 40, top_p: 0.95, seed });
        placement::generate(&m, &d, prompt.clone(), p, |_| {})
    };
    let (a, b) = (sampled(7).await.unwrap(), sampled(7).await.unwrap());
    assert_eq!(a.ids, b.ids, "same seed, same tokens");
    assert_eq!(a.ids.len(), 8);
    d.stop().await;
    host.shutdown().await;
}

/// The threaded runtime (two kernel threads sharing the tab's wasm memory: the block-quantized
/// Linear and attention split by rows): the reference's greedy ids, each case alone and both in
/// shared steps (rows of two sessions in one kernel call).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greedy_on_two_threads_equals_the_reference() {
    let _procs = support::process_guard();
    let cfg = tabpool::HostConfig { tab_threads: Some(2), ..tabpool::HostConfig::default() };
    let mut host = tabpool::Host::start(cfg).await.unwrap_or_else(|e| panic!("{e:#}"));
    let m = SmolLm2::load(None).unwrap_or_else(|e| panic!("{e:#}"));
    let cases = support::smollm2_reference();
    let tab = host.launch_tab().await.unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(tab.caps().threads, 2, "a cross-origin isolated page with the threaded build");
    // Chromium validates relaxed SIMD, so the page chose its relaxed-SIMD build where one was built
    // (scripts/build-page.sh without --demo); the reference ids below hold on it.
    let www = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../www"));
    let relaxed_built = www.join("pkg-threads-relaxed/page_runtime_bg.wasm").is_file();
    assert_eq!(tab.caps().relaxed_simd, relaxed_built, "the relaxed build is chosen exactly where it exists");
    let limits = placement::kv_limits(&m, 2);
    let stepper = placement::load_in(&tab, &m, Backend::WasmCpu, limits, &()).await.unwrap_or_else(|e| panic!("{e:#}"));
    let d = Decoder::start(Arc::new(stepper), StepLimits::default(), None);
    for c in &cases {
        assert_eq!(greedy_all(&m, &d, std::slice::from_ref(c)).await[0], with_stop(c), "alone: {:?}", c.user);
    }
    let both = greedy_all(&m, &d, &cases).await;
    for (ids, c) in both.iter().zip(&cases) {
        assert_eq!(*ids, with_stop(c), "in shared steps: {:?}", c.user);
    }
    // The host's thread budget narrows and widens a tab's threads (SetThreads): the same ids on
    // one, and never more than the page started.
    let t = std::time::Duration::from_secs(10);
    assert_eq!(tab.set_threads(1, t).await.unwrap_or_else(|e| panic!("{e}")), 1);
    assert_eq!(greedy_all(&m, &d, &cases[..1]).await[0], with_stop(&cases[0]), "on one thread of two");
    assert_eq!(tab.set_threads(8, t).await.unwrap_or_else(|e| panic!("{e}")), 2, "at most what it started");
    d.stop().await;
    host.shutdown().await;
}
