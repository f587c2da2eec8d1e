//! Browser kinds beyond Chromium: a Firefox tab (geckodriver, its own process) and a tab from a
//! remote WebDriver endpoint (a chromedriver the host does not own, reached by URL) join one pool
//! and serve MiniLM correctly. Each kind gets its own replica of the model (`ModelSpec::on_kinds`),
//! so each is made to serve whichever one routing would prefer.

use crate::support;

use std::path::Path;

use tabpool::browser::{BrowserKind, DriverProcess, KindSpec};
use tabpool::pool::{ModelSpec, Pool, PoolConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firefox_and_remote_webdriver_tabs_serve_minilm() {
    let _procs = support::process_guard();
    // The "remote" endpoint: a WebDriver server this test starts and the host only knows by URL.
    // Started as the host starts its own drivers: ready once it answers `GET /status`, started
    // again on another port if the free port it was given is taken first (then a connect alone
    // could reach another server); its process tree is killed when stopped or dropped.
    let remote = DriverProcess::start(Path::new("chromedriver"), |port| vec![format!("--port={port}")])
        .await
        .unwrap_or_else(|e| panic!("{e:#} (scripts/setup.sh installs chromedriver)"));
    let url = remote.url();
    let mut grid = KindSpec::remote("remote-chromedriver", &url, BrowserKind::Chromium).with_max_tabs(1);
    grid.binary = Some("/usr/bin/chromium".into());
    let firefox = KindSpec::local(BrowserKind::Firefox).with_max_tabs(1);
    let mut cfg =
        PoolConfig { min_tabs: 2, max_tabs: 2, max_batch: 4, kinds: vec![firefox, grid], ..PoolConfig::default() };
    cfg.scaling.enabled = false;

    let pool = Pool::with_host(support::host().await, cfg).await.unwrap_or_else(|e| panic!("{e:#}"));
    let m = pool.metrics();
    assert_eq!(m.browser_distribution.get("firefox"), Some(&1), "{}", m.render());
    assert_eq!(m.browser_distribution.get("remote-chromedriver"), Some(&1), "{}", m.render());
    let ff = m.tabs.iter().find(|t| t.kind == "firefox").unwrap();
    assert!(ff.user_agent.contains("Firefox"), "{}", ff.user_agent);

    // One model per kind: routing rightly sends a shared model's every batch to the faster tab,
    // so only a replica kept to one kind makes that kind serve.
    let refs = support::minilm_reference();
    for kind in ["firefox", "remote-chromedriver"] {
        let spec = ModelSpec::minilm().named(&format!("minilm@{kind}")).on_kinds(&[kind]);
        let name = pool.load(spec).await.unwrap_or_else(|e| panic!("{kind}: {e:#}"));
        let requests: Vec<(&str, Vec<&str>)> = refs.iter().map(|r| (name.as_str(), vec![r.text.as_str()])).collect();
        for (res, r) in pool.execute_concurrent(&requests).await.iter().zip(&refs) {
            let served = res.as_ref().unwrap_or_else(|e| panic!("{kind}: {e}"));
            assert_eq!(served.kind, kind, "{name} has replicas on {kind} tabs only");
            support::check_against_reference(&served.vectors[0], r);
        }
    }
    let m = pool.metrics();
    println!("{}", m.render());
    pool.shutdown().await;
    remote.stop().await;
}
