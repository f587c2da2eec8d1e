//! MiniLM on WebNN in a real chromium-webnn tab against the float64 reference; batches across
//! shape buckets (cached graphs and one past the cache's budget) agree with one-at-a-time;
//! unloading frees the model's memory in the tab; calibration measures every candidate and
//! keeps the fastest.

use crate::support;

use tabpool::browser::{BrowserKind, procs};
use tabpool::exec::{Backend, Embedder, load_in_tab};
use tabpool::models::minilm::MiniLm;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webnn_tab_matches_the_reference_and_batches_consistently() {
    let _procs = support::process_guard();
    let mut host = support::host().await;
    let e = Embedder::load(&mut host, Backend::Webnn, &()).await.unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(e.load.backend, "webnn-cpu");
    let refs = support::minilm_reference();
    let mut singles = Vec::new();
    for r in &refs {
        let v = e.embed(&[r.text.as_str()]).await.unwrap().vectors.remove(0);
        let (cos, diff) = (support::cosine(&v, &r.embedding), support::max_abs_diff(&v, &r.embedding));
        eprintln!("webnn {:?}: cosine {cos:.7}, max abs {diff:.2e}", r.text);
        assert!(cos >= support::MIN_COSINE && diff <= support::MAX_ABS, "{:?}: cosine {cos}, max abs {diff}", r.text);
        singles.push(v);
    }
    // 6 texts → batch bucket 8, lengths 6..16 → sequence bucket 16: padding rows and columns.
    let texts: Vec<&str> = refs.iter().map(|r| r.text.as_str()).collect();
    let batch = e.embed(&texts).await.unwrap();
    for (i, (b, s)) in batch.vectors.iter().zip(&singles).enumerate() {
        let diff = support::max_abs_diff(b, s);
        assert!(diff <= 1e-5, "text {i}: batch vs single max abs {diff}");
    }
    // Ids outside the model's tables are refused before any kernel runs (WebGPU's gather would
    // clamp them silently), and the tab keeps serving.
    for bad in [30522u32, 70000, u32::MAX] {
        let inputs = tabpool::models::minilm::inputs_from_ids(&[vec![101, bad, 102]]);
        let err = format!("{:#}", e.run_inputs(inputs).await.expect_err("out-of-range id refused"));
        assert!(err.contains("BadInput") && err.contains("outside 0..30522"), "{err}");
    }
    assert_eq!(e.embed(&[refs[0].text.as_str()]).await.unwrap().vectors.len(), 1, "still serving");
    // With a long text the bucket (8 × 224) is past the graph cache's budget: its graph is
    // built for each run and destroyed after it. Twice, so the second run builds it again.
    let long = texts.iter().cycle().take(24).copied().collect::<Vec<_>>().join(" ");
    let mut with_long = texts.clone();
    with_long.push(&long);
    for pass in 0..2 {
        let batch = e.embed(&with_long).await.unwrap();
        assert!(batch.lengths[6] > 192, "the long text has {} tokens", batch.lengths[6]);
        for (i, (b, s)) in batch.vectors.iter().zip(&singles).enumerate() {
            let diff = support::max_abs_diff(b, s);
            assert!(diff <= 1e-5, "pass {pass}, text {i}: batch with a long text vs single max abs {diff}");
        }
    }
    host.shutdown().await;
}

/// PSS of the tab's processes without file-backed pages (see `procs::Memory`), once settled.
async fn tab_anon_bytes(host: &tabpool::Host, tab: u64) -> u64 {
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    host.tab_processes(tab).iter().filter_map(|&(pid, _)| procs::memory(pid)).map(|m| m.anon).sum()
}

/// A model's tensors and graphs live in the ML service until destroyed: unloading must free
/// them (garbage collection does not see that memory, so nothing else would in time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unloading_frees_the_model_in_the_tab() {
    let _procs = support::process_guard();
    let mut host = support::host().await;
    let tab = host.launch(BrowserKind::ChromiumWebnn).await.unwrap_or_else(|e| panic!("{e:#}"));
    let model = MiniLm::load(None).unwrap();
    let texts: Vec<String> = support::minilm_reference().into_iter().map(|r| r.text).collect();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let input = model.batch(&texts).unwrap().inputs;
    let cycle = || async {
        let (tm, _) = load_in_tab(&tab, &model, Backend::Webnn, &()).await.unwrap_or_else(|e| panic!("{e:#}"));
        tm.run(input.clone()).await.unwrap();
        let bytes = tm.weight_bytes;
        tm.unload().await.unwrap();
        bytes
    };
    let weights = cycle().await;
    let before = tab_anon_bytes(&host, tab.id()).await;
    for _ in 0..3 {
        cycle().await;
    }
    let after = tab_anon_bytes(&host, tab.id()).await;
    let grew = after as i64 - before as i64;
    eprintln!(
        "three load/run/unload cycles: {:+.1} MiB (weights {:.1} MiB)",
        grew as f64 / 1048576.0,
        weights as f64 / 1048576.0
    );
    assert!(grew < weights as i64 / 2, "the tab grew {grew} bytes over three reloads of a {weights}-byte model");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_calibrates_every_candidate_and_keeps_the_fastest() {
    let _procs = support::process_guard();
    let mut host = support::host().await;
    let e = Embedder::load(&mut host, Backend::Auto, &()).await.unwrap_or_else(|e| panic!("{e:#}"));
    let cal = &e.load.calibration;
    let names: Vec<&str> = cal.iter().map(|m| m.backend.as_str()).collect();
    assert_eq!(names, ["webnn-cpu", "webgpu", "cpu"], "candidates measured: {cal:?}");
    let best =
        cal.iter().filter_map(|m| m.median_ms.map(|ms| (ms, m.backend.as_str()))).min_by(|a, b| a.0.total_cmp(&b.0));
    assert_eq!(
        Some(e.load.backend.as_str()),
        best.map(|b| b.1),
        "the fastest measured backend runs the model: {cal:?}"
    );
    // And it computes the right thing.
    let r = &support::minilm_reference()[0];
    let v = e.embed(&[r.text.as_str()]).await.unwrap().vectors.remove(0);
    assert!(support::cosine(&v, &r.embedding) >= support::MIN_COSINE);
    host.shutdown().await;
}
