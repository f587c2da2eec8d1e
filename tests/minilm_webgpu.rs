//! MiniLM in a real headless Chromium tab on WebGPU against the float64 reference, and a
//! mixed-length batch against one-at-a-time — through the same protocol the CLI uses.

use crate::support;

use tabpool::exec::{Backend, Embedder};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webgpu_tab_matches_the_reference_and_batches_consistently() {
    let _procs = support::process_guard();
    let mut host = support::host().await;
    let e = Embedder::load(&mut host, Backend::Webgpu, &()).await.unwrap_or_else(|e| panic!("{e:#}"));
    assert!(e.load.prepare_ms > 0.0, "pipelines were compiled at load");
    let refs = support::minilm_reference();
    let texts: Vec<&str> = refs.iter().map(|r| r.text.as_str()).collect();

    // One at a time, against the reference.
    let mut singles = Vec::new();
    for r in &refs {
        let out = e.embed(&[r.text.as_str()]).await.unwrap();
        let v = &out.vectors[0];
        let (cos, diff) = (support::cosine(v, &r.embedding), support::max_abs_diff(v, &r.embedding));
        eprintln!("webgpu {:?}: cosine {cos:.7}, max abs {diff:.2e}", r.text);
        assert!(cos >= support::MIN_COSINE && diff <= support::MAX_ABS, "{:?}: cosine {cos}, max abs {diff}", r.text);
        singles.push(v.clone());
    }
    // All together: lengths 6..16 padded to 16 and masked.
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
    host.shutdown().await;
}
