//! A pool of three real tabs over two browser kinds serves concurrent embed requests correctly;
//! overload is refused as busy at once, nothing is lost, and the pool keeps serving.

#[path = "support/mod.rs"]
mod support;

use tabpool::browser::BrowserKind;
use tabpool::exec::Backend;
use tabpool::pool::{EmbedPool, PoolError};

fn check(v: &[f32], r: &support::RefSentence) {
    let (cos, diff) = (support::cosine(v, &r.embedding), support::max_abs_diff(v, &r.embedding));
    assert!(cos >= support::MIN_COSINE && diff <= support::MAX_ABS, "{:?}: cosine {cos}, max abs {diff}", r.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_tabs_two_kinds_serve_concurrent_requests_and_refuse_overload() {
    let mut host = support::host().await;
    let tabs = [
        (BrowserKind::ChromiumWebnn, Backend::Webnn),
        (BrowserKind::ChromiumWebnn, Backend::Webnn),
        (BrowserKind::Chromium, Backend::Webgpu),
    ];
    let pool = EmbedPool::start(&mut host, &tabs, 64).await.unwrap_or_else(|e| panic!("{e:#}"));
    let kinds: std::collections::HashSet<_> = pool.placement().into_iter().map(|(k, _)| k).collect();
    assert_eq!(kinds.len(), 2, "two browser kinds: {:?}", pool.placement());

    let refs = support::minilm_reference();
    // Every sentence twice, all at once: more requests than tabs, results in request order.
    let requests: Vec<Vec<&str>> = refs.iter().chain(&refs).map(|r| vec![r.text.as_str()]).collect();
    let results = pool.execute_concurrent(&requests).await;
    for (res, r) in results.iter().zip(refs.iter().chain(&refs)) {
        check(&res.as_ref().unwrap_or_else(|e| panic!("{e}")).vectors[0], r);
    }

    // A deadline far shorter than a WebGPU run on SwiftShader fails as such; the late reply does
    // not leak into the next request.
    let webgpu_only = EmbedPool::start(&mut host, &tabs[2..], 8).await.unwrap();
    let short = std::time::Duration::from_millis(1);
    assert!(matches!(webgpu_only.embed_within(&[refs[1].text.as_str()], short).await, Err(PoolError::Deadline { .. })));
    let next = webgpu_only.embed_within(&[refs[2].text.as_str()], std::time::Duration::from_secs(60)).await.unwrap();
    check(&next.vectors[0], &refs[2]);

    // A pool that admits 2 pending requests, hit with 8 at once.
    drop(pool);
    let small = EmbedPool::start(&mut host, &tabs[..1], 2).await.unwrap();
    let burst: Vec<Vec<&str>> = (0..8).map(|i| vec![refs[i % refs.len()].text.as_str()]).collect();
    let results = small.execute_concurrent(&burst).await;
    let busy = results.iter().filter(|r| matches!(r, Err(PoolError::Busy { .. }))).count();
    assert!(busy >= 1, "overload is refused as busy");
    for (i, res) in results.iter().enumerate() {
        match res {
            Ok(e) => check(&e.vectors[0], &refs[i % refs.len()]),
            Err(PoolError::Busy { limit, .. }) => assert_eq!(*limit, 2),
            Err(e) => panic!("request {i} failed: {e}"),
        }
    }
    // The refusals left nothing behind: the pool serves again.
    check(&small.embed(&[refs[0].text.as_str()]).await.unwrap().vectors[0], &refs[0]);
    host.shutdown().await;
}
