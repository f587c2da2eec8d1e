//! Issue 6, simple recovery: a lost accelerator — the WebGPU device (`GPUDevice.destroy()`) or
//! the WebNN context (`MLContext.destroy()`), really destroyed in the tab as a driver reset or a
//! crashed GPU/ML service would lose it — is recovered in the same tab: the model is loaded again
//! on a new device or context and the failed requests retry there. Every answer still matches
//! the float64 reference; nothing fails, no page reload, no browser restart.

use crate::support;

use tabpool::browser::{BrowserKind, KindSpec};
use tabpool::exec::Backend;
use tabpool::pool::{ModelSpec, Pool, PoolConfig};

async fn recovers_in_place(kind: BrowserKind, backend: Backend) {
    let spec = KindSpec { backend: Some(backend), ..KindSpec::local(kind) };
    let mut cfg = PoolConfig { min_tabs: 1, max_tabs: 1, kinds: vec![spec], ..PoolConfig::default() };
    cfg.scaling.enabled = false;
    let pool = Pool::with_host(support::host().await, cfg).await.unwrap_or_else(|e| panic!("{e:#}"));
    pool.load(ModelSpec::minilm()).await.unwrap_or_else(|e| panic!("{e:#}"));
    let refs = support::minilm_reference();
    let texts: Vec<&str> = refs.iter().map(|r| r.text.as_str()).collect();
    let tab = pool.metrics().tabs[0].id;
    let backend_name = pool.metrics().tabs[0].models.values().next().cloned().unwrap();

    for round in 1..=2 {
        assert!(pool.lose_device(tab).await.unwrap() >= 1, "{backend_name}: something was destroyed");
        let served = pool.embed(&texts).await.unwrap_or_else(|e| panic!("{backend_name} round {round}: {e}"));
        assert_eq!((served.tab, served.attempts), (tab, 2), "{backend_name}: retried once, in the same tab");
        assert_eq!(served.vectors.len(), refs.len());
        for (v, r) in served.vectors.iter().zip(&refs) {
            support::check_against_reference(v, r);
        }
        let m = pool.metrics();
        let reloads: Vec<_> = m.recoveries.iter().filter(|r| r.step == "reload_model").collect();
        assert_eq!(reloads.len(), round, "{backend_name}: one in-place reload per loss: {:?}", m.recoveries);
        assert!(reloads.iter().all(|r| r.ok && r.tab == tab), "{reloads:?}");
        assert_eq!(m.recoveries.len(), round, "no page reload or browser restart: {:?}", m.recoveries);
        assert_eq!(m.failures.get("DeviceLost"), Some(&(round as u64)), "{backend_name}: {:?}", m.failures);
        assert_eq!((m.tabs.len(), m.tabs[0].id), (1, tab));
        assert_eq!(m.tabs[0].models.values().next(), Some(&backend_name), "the same backend again");
        assert_eq!(m.models[0].failed, 0, "no request failed");
    }
    pool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_webgpu_device_is_recovered_in_the_same_tab() {
    let _procs = support::process_guard();
    recovers_in_place(BrowserKind::Chromium, Backend::Webgpu).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_webnn_context_is_recovered_in_the_same_tab() {
    let _procs = support::process_guard();
    recovers_in_place(BrowserKind::ChromiumWebnn, Backend::Webnn).await;
}
