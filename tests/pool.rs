//! The pool with real tabs: three tabs over two browser kinds serve two models concurrently with
//! correct results (MiniLM against the float64 reference, a second generated model against the
//! CPU executor); deadlines; overload refused as busy at once, nothing lost, serving resumes.

use crate::support;

use std::collections::HashSet;
use std::time::Duration;

use page_runtime::executors::cpu::CpuModel;
use tabpool::browser::{BrowserKind, KindSpec};
use tabpool::exec::Backend;
use tabpool::models::generated::{self, Shape};
use tabpool::models::minilm::{self, MiniLm};
use tabpool::pool::{ModelSpec, Pool, PoolConfig, PoolError};

fn fixed(kinds: Vec<KindSpec>, tabs: usize, max_queue: usize) -> PoolConfig {
    let mut cfg = PoolConfig { min_tabs: tabs, max_tabs: tabs, max_queue, kinds, ..PoolConfig::default() };
    cfg.scaling.enabled = false;
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_tabs_two_kinds_serve_two_models_concurrently() {
    let _procs = support::process_guard();
    let webgpu = KindSpec { backend: Some(Backend::Webgpu), ..KindSpec::local(BrowserKind::Chromium).with_max_tabs(1) };
    let kinds = vec![KindSpec::local(BrowserKind::ChromiumWebnn).with_max_tabs(2), webgpu];
    let cfg = PoolConfig { max_batch: 8, ..fixed(kinds, 3, 512) };
    let pool = Pool::with_host(support::host().await, cfg).await.unwrap_or_else(|e| panic!("{e:#}"));
    let m = pool.metrics();
    assert_eq!(m.connections, 3);
    assert_eq!(m.browser_distribution.get("chromium-webnn"), Some(&2), "{:?}", m.browser_distribution);
    assert_eq!(m.browser_distribution.get("chromium"), Some(&1), "{:?}", m.browser_distribution);

    // Which tab takes a batch is routing's call (it may rightly keep everything on the fast WebNN
    // tabs), so each kind is given a model of its own: MiniLM on the WebNN tabs, the second model
    // on the WebGPU one.
    let minilm_spec = ModelSpec::minilm().on_kinds(&["chromium-webnn"]);
    let minilm_name = pool.load(minilm_spec).await.unwrap_or_else(|e| panic!("{e:#}"));
    let dir = std::env::temp_dir().join(format!("tabpool-test-bert-{}", std::process::id()));
    generated::write_bert(&dir, Shape::TINY, 11, &minilm::default_dir()).unwrap();
    let tiny = ModelSpec::from_dir(&dir).named("tiny-bert").on_kinds(&["chromium"]);
    pool.load(tiny).await.unwrap_or_else(|e| panic!("{e:#}"));
    pool.load(ModelSpec::from_dir(&dir).named("tiny-one").replicas(1)).await.unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(pool.models(), [minilm_name.as_str(), "tiny-bert", "tiny-one"]);
    let m = pool.metrics();
    assert_eq!(m.models[0].replicas, 2, "a model kept to a kind lives on every tab of it, and no other");
    assert_eq!(m.models[1].replicas, 1, "a model kept to a kind lives on every tab of it, and no other");
    assert_eq!(m.models[2].replicas, 1, "a model can ask for fewer replicas than tabs");
    let unknown = pool.load(ModelSpec::from_dir(&dir).named("nowhere").on_kinds(&["safari"])).await;
    assert!(unknown.is_err_and(|e| e.to_string().contains("safari")), "a kind the pool lacks is refused");

    // The second model's expected vectors come from the CPU executor on the same weights.
    let tiny = MiniLm::load(Some(&dir)).unwrap();
    let cpu = CpuModel::new(tiny.graph.clone(), tiny.weights.clone()).unwrap();
    let refs = support::minilm_reference();
    let expected_tiny: Vec<Vec<f32>> = refs
        .iter()
        .map(|r| {
            let ids = tiny.tokenize(&[r.text.as_str()]).unwrap().0;
            cpu.run(&minilm::inputs_from_ids(&ids)).unwrap()[0].to_f32().unwrap()
        })
        .collect();

    // Every sentence four times on each model, all at once, interleaved; results in order.
    let mut requests: Vec<(&str, Vec<&str>)> = Vec::new();
    for _ in 0..4 {
        for r in &refs {
            requests.push((minilm_name.as_str(), vec![r.text.as_str()]));
            requests.push(("tiny-bert", vec![r.text.as_str()]));
        }
    }
    let results = pool.execute_concurrent(&requests).await;
    let mut tabs_used = HashSet::new();
    let mut kinds_used = HashSet::new();
    for (i, res) in results.iter().enumerate() {
        let served = res.as_ref().unwrap_or_else(|e| panic!("request {i}: {e}"));
        let r = &refs[(i / 2) % refs.len()];
        assert_eq!(served.model, requests[i].0);
        if i % 2 == 0 {
            support::check_against_reference(&served.vectors[0], r);
        } else {
            assert_eq!(served.kind, "chromium", "tiny-bert is kept to the chromium kind");
            let want = &expected_tiny[(i / 2) % refs.len()];
            let diff = support::max_abs_diff(&served.vectors[0], want);
            assert!(
                diff <= support::MAX_ABS,
                "tiny-bert on {} ({}): max abs {diff} vs CPU",
                served.kind,
                served.backend
            );
        }
        tabs_used.insert(served.tab);
        kinds_used.insert(served.kind.clone());
    }
    assert!(tabs_used.len() >= 2, "work spread over tabs: {tabs_used:?}");
    assert_eq!(kinds_used.len(), 2, "both kinds served: {kinds_used:?}");
    let m = pool.metrics();
    assert_eq!(m.models.iter().map(|x| x.served).sum::<u64>(), requests.len() as u64);
    assert!(m.history.iter().all(|h| h.failures == 0), "{:?}", m.history);
    assert!(m.history.iter().any(|h| h.kind == "chromium" && h.backend == "webgpu"), "{:?}", m.history);
    assert!(m.tabs.iter().all(|t| !t.webgpu.is_empty() && !t.user_agent.is_empty()), "capabilities reported");

    // Batching: a burst of one-sentence requests travels in shared batches.
    let burst: Vec<(&str, Vec<&str>)> =
        (0..64).map(|i| (minilm_name.as_str(), vec![refs[i % refs.len()].text.as_str()])).collect();
    let results = pool.execute_concurrent(&burst).await;
    let max_batch = results.iter().map(|r| r.as_ref().unwrap().batch_rows).max().unwrap();
    assert!(max_batch > 1, "queued requests were batched together");
    for (i, r) in results.iter().enumerate() {
        support::check_against_reference(&r.as_ref().unwrap().vectors[0], &refs[i % refs.len()]);
    }

    // A deadline far shorter than any run fails as such; nothing leaks into the next request.
    let short = pool.embed_with(&minilm_name, &[refs[1].text.as_str()], Some(Duration::from_micros(1))).await;
    assert!(matches!(short, Err(PoolError::Deadline { .. })), "{short:?}");
    let next = pool.embed_with(&minilm_name, &[refs[2].text.as_str()], Some(Duration::from_secs(60))).await.unwrap();
    support::check_against_reference(&next.vectors[0], &refs[2]);

    // Bad input fails alone, with a clear error.
    assert!(matches!(pool.embed(&["  "]).await, Err(PoolError::BadInput(_))));
    assert!(matches!(pool.embed_with("nope", &["x"], None).await, Err(PoolError::UnknownModel(_))));
    pool.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_refused_as_busy_and_nothing_is_lost() {
    let _procs = support::process_guard();
    let mut cfg = fixed(vec![KindSpec::local(BrowserKind::ChromiumWebnn)], 1, 2);
    cfg.max_batch = 1;
    let pool = Pool::with_host(support::host().await, cfg).await.unwrap_or_else(|e| panic!("{e:#}"));
    let name = pool.load(ModelSpec::minilm()).await.unwrap();
    let refs = support::minilm_reference();
    let burst: Vec<(&str, Vec<&str>)> =
        (0..64).map(|i| (name.as_str(), vec![refs[i % refs.len()].text.as_str()])).collect();
    let results = pool.execute_concurrent(&burst).await;
    let busy = results.iter().filter(|r| matches!(r, Err(PoolError::Busy { .. }))).count();
    assert!(busy >= 1, "overload is refused as busy");
    for (i, res) in results.iter().enumerate() {
        match res {
            Ok(e) => support::check_against_reference(&e.vectors[0], &refs[i % refs.len()]),
            Err(PoolError::Busy { limit, .. }) => assert_eq!(*limit, 2),
            Err(e) => panic!("request {i} failed: {e}"),
        }
    }
    let m = pool.metrics();
    assert_eq!(m.models[0].busy_refusals, busy as u64);
    assert_eq!(m.models[0].served as usize + busy, burst.len(), "every request answered exactly once");
    // The refusals left nothing behind: the pool serves again.
    support::check_against_reference(&pool.embed(&[refs[0].text.as_str()]).await.unwrap().vectors[0], &refs[0]);
    pool.shutdown().await;
}
