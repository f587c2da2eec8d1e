//! Issue 12, "every accepted request gets exactly one answer", in real tabs:
//! - a request retried in place after a lost device, whose tab then dies during the model
//!   reload, is not stranded behind a pin to a slot that no longer exists;
//! - shutdown answers every queued, running and racing request, also while a recovery is stuck
//!   in a WebDriver endpoint that stopped answering;
//! - a request bigger than one batch is split by `max_batch`/`max_batch_tokens` and answered as
//!   one; one needing more batches than `max_queue` holds, or past the request limit, is
//!   refused as too large naming the limit (issue 20).

use crate::support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tabpool::browser::{BrowserKind, KindSpec};
use tabpool::exec::Backend;
use tabpool::pool::{ModelSpec, Pool, PoolConfig, PoolError};

fn webnn_pool_config(tabs: usize) -> PoolConfig {
    let spec = KindSpec { backend: Some(Backend::Webnn), ..KindSpec::local(BrowserKind::ChromiumWebnn) };
    let mut cfg = PoolConfig { min_tabs: tabs, max_tabs: tabs, kinds: vec![spec], ..PoolConfig::default() };
    cfg.scaling.enabled = false;
    cfg
}

async fn webnn_pool(cfg: PoolConfig) -> Arc<Pool> {
    let pool = Pool::with_host(support::host().await, cfg).await.unwrap_or_else(|e| panic!("{e:#}"));
    pool.load(ModelSpec::minilm()).await.unwrap_or_else(|e| panic!("{e:#}"));
    Arc::new(pool)
}

fn kill_renderers(procs: &[(i32, bool)]) -> usize {
    let renderers: Vec<i32> = procs.iter().filter(|(_, r)| *r).map(|(p, _)| *p).collect();
    for pid in &renderers {
        // SAFETY: kill(2) on a renderer of a browser this test's host started.
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
    renderers.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tab_lost_while_its_model_reloads_strands_no_request() {
    let _procs = support::process_guard();
    let pool = webnn_pool(webnn_pool_config(1)).await;
    let refs = support::minilm_reference();
    let tab = pool.metrics().tabs[0].id;
    assert!(pool.lose_device(tab).await.unwrap() >= 1);
    let requests: Vec<_> = refs
        .iter()
        .take(4)
        .map(|r| {
            let (pool, text) = (pool.clone(), r.text.clone());
            tokio::spawn(async move { pool.embed(&[text.as_str()]).await })
        })
        .collect();
    // The first batch fails with DeviceLost and the pool reloads the model in that tab; kill
    // the renderer during the reload. The requests are retried pinned to that slot, which is
    // then replaced by a new one (new serial): the pin must not hold the queue.
    let t = Instant::now();
    loop {
        if pool.metrics().failures.get("DeviceLost").copied().unwrap_or(0) >= 1 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "no DeviceLost: {:?}", pool.metrics().failures);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let killed = kill_renderers(&pool.tab_processes(tab).await);
    assert!(killed >= 1, "a renderer to kill");
    let mut retried = 0;
    for (h, r) in requests.into_iter().zip(&refs) {
        let served = tokio::time::timeout(Duration::from_secs(90), h)
            .await
            .expect("a request was stranded: no answer within 90 s")
            .unwrap()
            .unwrap_or_else(|e| panic!("{e}"));
        // Which requests rode in the failed first batch is the batcher's timing (the four are
        // submitted from separate tasks); a request that came later is served at its first try.
        retried += (served.attempts >= 2) as usize;
        support::check_against_reference(&served.vectors[0], r);
    }
    assert!(retried >= 1, "the failed batch's requests were retried after the loss");
    let m = pool.metrics();
    let steps: Vec<(&str, bool)> = m.recoveries.iter().map(|r| (r.step.as_str(), r.ok)).collect();
    assert!(steps.contains(&("reload_model", false)), "the in-place reload was cut short: {steps:?}");
    assert!(steps.iter().any(|(s, ok)| *ok && (*s == "restart_browser" || *s == "reload_page")), "{steps:?}");
    assert_eq!(m.models[0].failed, 0, "nothing failed: {}", m.render());
    pool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_queued_running_and_racing_requests() {
    let _procs = support::process_guard();
    let cfg = PoolConfig { max_batch: 8, max_queue: 1024, ..webnn_pool_config(1) };
    let pool = webnn_pool(cfg).await;
    let text = "The quick brown fox jumps over the lazy dog near the river bank.";
    let mut handles = Vec::new();
    for _ in 0..400 {
        let pool = pool.clone();
        handles.push(tokio::spawn(async move { pool.embed(&[text]).await.map(|_| ()) }));
    }
    // Submitters that keep racing with shutdown: each call must still get an answer.
    let stop = Arc::new(AtomicBool::new(false));
    for _ in 0..4 {
        let (pool, stop) = (pool.clone(), stop.clone());
        handles.push(tokio::spawn(async move {
            loop {
                let r = pool.embed(&[text]).await;
                if matches!(r, Err(PoolError::ShutDown)) || stop.load(Ordering::SeqCst) {
                    return r.map(|_| ());
                }
            }
        }));
    }
    // Let batches get going so some are in flight when shutdown starts.
    let t = Instant::now();
    while pool.metrics().models[0].served < 24 {
        assert!(t.elapsed() < Duration::from_secs(60), "nothing served");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let t = Instant::now();
    tokio::time::timeout(Duration::from_secs(30), pool.shutdown()).await.expect("shutdown returned within 30 s");
    let took = t.elapsed();
    stop.store(true, Ordering::SeqCst);
    let (mut ok, mut shut) = (0, 0);
    for h in handles {
        match tokio::time::timeout(Duration::from_secs(5), h).await.expect("a request got no answer").unwrap() {
            Ok(()) => ok += 1,
            Err(PoolError::ShutDown) => shut += 1,
            Err(e) => panic!("unexpected answer {e}"),
        }
    }
    eprintln!("shutdown took {took:?}; {ok} served, {shut} answered ShutDown");
    assert!(shut > 0, "some requests were still queued or running");
}

/// Bytes from `from` to `to`, held (not dropped) while `frozen`.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while frozen.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// A TCP proxy in front of a WebDriver server that can be frozen: once frozen it stops moving
/// bytes (and accepts without forwarding), as a hung Grid hub would.
async fn freezable_proxy(target: u16, frozen: Arc<AtomicBool>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else { return };
            let frozen = frozen.clone();
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await else { return };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::join!(pipe(cr, sw, frozen.clone()), pipe(sr, cw, frozen));
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_bounded_while_a_recovery_hangs_in_webdriver() {
    let _procs = support::process_guard();
    // The "remote" WebDriver server, started as the host starts its own drivers: ready once it
    // answers `GET /status` (a pre-picked port could be taken by another server first), its
    // process tree killed when dropped, also when the test fails.
    let guard = tabpool::browser::DriverProcess::start(std::path::Path::new("chromedriver"), |port| {
        vec![format!("--port={port}")]
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#} (scripts/setup.sh installs chromedriver)"));
    let port: u16 = guard.url().rsplit(':').next().and_then(|p| p.trim_end_matches('/').parse().ok()).unwrap();
    let frozen = Arc::new(AtomicBool::new(false));
    let proxy = freezable_proxy(port, frozen.clone()).await;
    let mut grid =
        KindSpec::remote("hung-grid", &format!("http://127.0.0.1:{proxy}"), BrowserKind::Chromium).with_max_tabs(1);
    grid.binary = Some("/usr/bin/chromium".into());
    grid.backend = Some(Backend::Webgpu);
    let mut cfg = PoolConfig { min_tabs: 1, max_tabs: 1, kinds: vec![grid], ..PoolConfig::default() };
    cfg.scaling.enabled = false;
    let pool = Arc::new(Pool::with_host(support::host().await, cfg).await.unwrap_or_else(|e| panic!("{e:#}")));
    pool.load(ModelSpec::minilm()).await.unwrap_or_else(|e| panic!("{e:#}"));
    let tab = pool.tabs()[0].0;
    // The WebDriver endpoint stops answering, then the tab's socket drops: the recovery reloads
    // the page through WebDriver (hangs), then would restart the browser (hangs) — all while it
    // holds the host.
    frozen.store(true, Ordering::SeqCst);
    assert!(pool.disconnect_tab(tab));
    // Past the page reload (given up after 10 s) and the session close (5 s): the recovery now
    // holds the host while it starts a new browser session through the frozen endpoint.
    tokio::time::sleep(Duration::from_secs(16)).await;
    let waiting: Vec<_> = (0..3)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.embed(&["still waiting"]).await.map(|_| ()) })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    tokio::time::timeout(Duration::from_secs(30), pool.shutdown())
        .await
        .expect("shutdown returned within 30 s although a recovery holds the host");
    eprintln!("shutdown with a hung WebDriver took {:?}", t.elapsed());
    for h in waiting {
        let r = tokio::time::timeout(Duration::from_secs(5), h).await.expect("answered").unwrap();
        assert!(matches!(r, Err(PoolError::ShutDown)), "{r:?}");
    }
    guard.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_bigger_than_a_batch_is_split_and_answered_as_one() {
    let _procs = support::process_guard();
    let cfg = PoolConfig { max_batch: 16, max_batch_tokens: 512, max_queue: 32, ..webnn_pool_config(1) };
    let pool = webnn_pool(cfg).await;
    let refs = support::minilm_reference();
    // 60 texts: the reference sentences (6–16 tokens) and long ones (~100 tokens), mixed.
    let long = "Browsers in a pool serve sentence embeddings computed by real kernels. ".repeat(8);
    let texts: Vec<&str> =
        (0..60).map(|i| if i % 5 == 4 { long.as_str() } else { refs[i % refs.len()].text.as_str() }).collect();
    let served = pool.embed(&texts).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(served.vectors.len(), 60);
    assert!(served.parts > 60 / 16, "split by rows and padded tokens: {} parts", served.parts);
    // Answered in order: each reference sentence has its own vector wherever it sits.
    for (i, v) in served.vectors.iter().enumerate() {
        if i % 5 != 4 {
            support::check_against_reference(v, &refs[i % refs.len()]);
        }
    }
    let batches: u64 = pool.metrics().tabs.iter().map(|t| t.batches).sum();
    assert!(batches >= served.parts as u64, "{batches} batches for {} parts", served.parts);
    // More batches than the queue ever holds: too large (413), not busy (429) for ever.
    let long_ones = vec![long.as_str(); 200];
    match pool.embed(&long_ones).await {
        Err(e @ PoolError::TooLarge(_)) => assert!(e.to_string().contains("max_queue"), "{e}"),
        other => panic!("200 long texts, 32 places in the queue: {other:?}"),
    }
    // Past the request limit: refused, naming it.
    let many = vec!["x"; 1025];
    match pool.embed(&many).await {
        Err(e @ PoolError::TooLarge(_)) => assert!(e.to_string().contains("1024"), "{e}"),
        other => panic!("1025 texts: {other:?}"),
    }
    pool.shutdown().await;
}
