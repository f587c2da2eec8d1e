//! Issue 6, WebDriver session loss: chromedriver is killed under a running pool. The tabs keep
//! serving (their sockets do not go through the driver); when a tab then crashes, its page
//! reload fails (the session is gone), the browser is restarted through a new chromedriver, and
//! the pool is back to full size serving correct vectors.

use crate::support;

use std::time::{Duration, Instant};

use tabpool::browser::{BrowserKind, KindSpec, procs};
use tabpool::pool::{ModelSpec, Pool, PoolConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_chromedriver_is_replaced_when_a_tab_needs_it() {
    let _procs = support::process_guard();
    let mut cfg = PoolConfig {
        min_tabs: 2,
        max_tabs: 2,
        kinds: vec![KindSpec::local(BrowserKind::ChromiumWebnn)],
        ..PoolConfig::default()
    };
    cfg.scaling.enabled = false;
    let pool = Pool::with_host(support::host().await, cfg).await.unwrap_or_else(|e| panic!("{e:#}"));
    pool.load(ModelSpec::minilm()).await.unwrap_or_else(|e| panic!("{e:#}"));
    let refs = support::minilm_reference();
    let texts: Vec<&str> = refs.iter().map(|r| r.text.as_str()).collect();
    let check = |served: &tabpool::pool::Served| {
        for (v, r) in served.vectors.iter().zip(&refs) {
            support::check_against_reference(v, r);
        }
    };

    let driver = pool.driver_pid().await.expect("a chromedriver runs the chromium tabs");
    let id = procs::proc_id(driver).expect("chromedriver is running");
    // SAFETY: kill(2) on the chromedriver this pool started.
    unsafe { libc::kill(driver, libc::SIGKILL) };
    let t = Instant::now();
    while procs::alive(id) {
        assert!(t.elapsed() < Duration::from_secs(10), "chromedriver {driver} did not die");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check(&pool.embed(&texts).await.expect("tabs serve without their WebDriver sessions"));

    // A renderer crash now needs WebDriver: the page reload fails, the browser restarts through a
    // new chromedriver.
    let victim = pool.tabs()[0].0;
    let renderers: Vec<i32> =
        pool.tab_processes(victim).await.into_iter().filter(|(_, r)| *r).map(|(p, _)| p).collect();
    assert!(!renderers.is_empty());
    for p in renderers {
        // SAFETY: kill(2) on a renderer of a browser this pool started.
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
    let t = Instant::now();
    loop {
        let m = pool.metrics();
        if m.recoveries.iter().any(|r| r.ok)
            && m.connections == 2
            && m.models[0].replicas == 2
            && m.tabs.iter().all(|t| !t.recovering)
        {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "the pool did not heal: {}", m.render());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let m = pool.metrics();
    let r = m.recoveries.iter().find(|r| r.ok).unwrap();
    assert_eq!(r.step, "restart_browser", "the page could not be reloaded without a session: {r:?}");
    let new_driver = pool.driver_pid().await.expect("a new chromedriver");
    assert_ne!(new_driver, driver);
    // Both tabs serve (a batch each, at once), correctly.
    let all =
        pool.execute_concurrent(&[("all-MiniLM-L6-v2", texts.clone()), ("all-MiniLM-L6-v2", texts.clone())]).await;
    for served in all {
        check(&served.expect("served after the driver was replaced"));
    }
    pool.shutdown().await;
}
