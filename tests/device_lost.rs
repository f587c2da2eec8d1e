//! Issue 6, simple recovery: a lost WebGPU device (really destroyed in the tab with
//! `GPUDevice.destroy()`, as a driver reset would lose it) is recovered in the same tab — the
//! model is loaded again on a new device and the failed requests retry there — and every answer
//! still matches the float64 reference. Not fatal, nothing lost, no page reload.

#[path = "support/mod.rs"]
mod support;

use tabpool::browser::{BrowserKind, KindSpec};
use tabpool::exec::Backend;
use tabpool::pool::{ModelSpec, Pool, PoolConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_webgpu_device_is_recovered_in_the_same_tab() {
    let webgpu = KindSpec { backend: Some(Backend::Webgpu), ..KindSpec::local(BrowserKind::Chromium) };
    let mut cfg = PoolConfig { min_tabs: 1, max_tabs: 1, kinds: vec![webgpu], ..PoolConfig::default() };
    cfg.scaling.enabled = false;
    let pool = Pool::with_host(support::host().await, cfg).await.unwrap_or_else(|e| panic!("{e:#}"));
    pool.load(ModelSpec::minilm()).await.unwrap_or_else(|e| panic!("{e:#}"));
    let refs = support::minilm_reference();
    let texts: Vec<&str> = refs.iter().map(|r| r.text.as_str()).collect();
    let tab = pool.metrics().tabs[0].id;

    for round in 1..=2 {
        assert!(pool.lose_device(tab).await.unwrap(), "the chromium tab has a WebGPU device");
        let served = pool.embed(&texts).await.unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!(served.tab, tab, "served by the same tab");
        assert_eq!(served.vectors.len(), refs.len());
        for (v, r) in served.vectors.iter().zip(&refs) {
            support::check_against_reference(v, r);
        }
        let m = pool.metrics();
        let reloads: Vec<_> = m.recoveries.iter().filter(|r| r.step == "reload_model").collect();
        assert_eq!(reloads.len(), round, "one in-place model reload per lost device: {:?}", m.recoveries);
        assert!(reloads.iter().all(|r| r.ok && r.tab == tab), "{reloads:?}");
        assert_eq!(m.recoveries.len(), round, "no page reload or browser restart: {:?}", m.recoveries);
        assert_eq!(m.failures.get("DeviceLost"), Some(&(round as u64)), "{:?}", m.failures);
        assert_eq!(m.tabs.len(), 1);
        assert_eq!(m.tabs[0].id, tab);
        assert_eq!(m.models[0].failed, 0, "no request failed");
    }
    pool.shutdown().await;
}
