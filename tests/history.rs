//! The performance history end to end, in real tabs: a pool records every batch, tab launch,
//! scaling decision and recovery in DuckDB; a second pool on the same file starts with that
//! history in routing; reports are built from it (library, CLI, the API); the live dashboard
//! renders in a real headless browser; the plain duckdb CLI reads the file.

use crate::support;

use std::process::Command;
use std::time::{Duration, Instant};

use tabpool::browser::{BrowserKind, BrowserSession, DriverProcess, KindSpec, Launch};
use tabpool::pool::{ModelSpec, Pool, PoolConfig};
use tabpool::report::{Report, render};
use tabpool::store::Store;

const BIN: &str = env!("CARGO_BIN_EXE_tabpool");

fn config(path: &std::path::Path) -> PoolConfig {
    let mut cfg = PoolConfig {
        min_tabs: 2,
        max_tabs: 2,
        max_batch: 8,
        kinds: vec![KindSpec::local(BrowserKind::ChromiumWebnn)],
        // A hedged batch is recorded once per replica it ran on (both may succeed), and this
        // test counts texts: on a loaded machine a slow batch got hedged and 36 of 32 were seen.
        hedge: false,
        ..PoolConfig::default()
    };
    cfg.scaling.enabled = false;
    cfg.history.path = Some(path.to_path_buf());
    cfg.history.health_sample_s = 0.5;
    cfg
}

fn count(store: &Store, sql: &str) -> i64 {
    store.conn().query_row(sql, [], |r| r.get(0)).unwrap_or_else(|e| panic!("{sql}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_recorded_survives_a_restart_and_feeds_reports_and_the_dashboard() {
    let _procs = support::process_guard();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("history.duckdb");
    let refs = support::minilm_reference();
    let texts: Vec<&str> = refs.iter().map(|r| r.text.as_str()).collect();

    // Run 1: 24 requests, then a dropped socket (a real recovery), then 8 more.
    let (batches, texts_served) = {
        let pool = Pool::with_host(support::host().await, config(&db)).await.unwrap_or_else(|e| panic!("{e:#}"));
        let name = pool.load(ModelSpec::minilm()).await.unwrap();
        let reqs: Vec<(&str, Vec<&str>)> = (0..24).map(|i| (name.as_str(), vec![texts[i % texts.len()]])).collect();
        for (r, want) in pool.execute_concurrent(&reqs).await.into_iter().zip(refs.iter().cycle()) {
            support::check_against_reference(&r.unwrap().vectors[0], want);
        }
        let victim = pool.tabs()[0].0;
        assert!(pool.disconnect_tab(victim));
        let t = Instant::now();
        while !pool.metrics().recoveries.iter().any(|r| r.ok) {
            assert!(t.elapsed() < Duration::from_secs(90), "no recovery: {}", pool.metrics().render());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for (r, want) in pool.execute_concurrent(&reqs[..8]).await.into_iter().zip(refs.iter().cycle()) {
            support::check_against_reference(&r.unwrap().vectors[0], want);
        }
        tokio::time::sleep(Duration::from_millis(700)).await; // at least one health sample
        pool.flush_history().unwrap();
        let m = pool.metrics();
        let h = m.history_db.clone().expect("the pool records");
        assert_eq!((h.rows_dropped, h.write_errors), (0, 0), "{h:?}");
        let batches: u64 = m.tabs.iter().map(|t| t.batches).sum();
        let rows: u64 = m.tabs.iter().map(|t| t.rows).sum();
        let store = pool.store().unwrap();
        // Batches of tabs replaced meanwhile are gone from metrics; the database has them all.
        let recorded = count(&store, "SELECT count(*) FROM executions WHERE success") as u64;
        assert!(recorded >= batches && recorded > 0, "{recorded} recorded, {batches} on live tabs");
        assert_eq!(count(&store, "SELECT sum(batch_rows) FROM executions WHERE success"), 32, "every text once");
        assert!(rows <= 32);
        assert!(count(&store, "SELECT count(*) FROM tab_events WHERE event = 'launched'") >= 2);
        assert!(count(&store, "SELECT count(*) FROM scaling_decisions WHERE action = 'grow'") >= 2);
        assert!(count(&store, "SELECT count(*) FROM recoveries WHERE ok") >= 1);
        assert!(count(&store, "SELECT count(*) FROM health_samples WHERE health BETWEEN 0 AND 100") >= 2);
        assert!(count(&store, "SELECT count(*) FROM tab_events WHERE capabilities LIKE '%webnn%'") >= 2);
        pool.shutdown().await;
        (recorded, 32)
    };

    // Run 2 on the same file: routing starts from run 1's measurements, before any request.
    let pool = Pool::with_host(support::host().await, config(&db)).await.unwrap_or_else(|e| panic!("{e:#}"));
    let m = pool.metrics();
    let known = m.history.iter().find(|h| h.kind == "chromium-webnn" && h.model == "all-MiniLM-L6-v2");
    let known = known.unwrap_or_else(|| panic!("history not read back: {}", m.render()));
    assert_eq!(known.successes, batches, "{}", m.render());
    assert!(known.mean_ms_per_text > 0.0);
    let name = pool.load(ModelSpec::minilm()).await.unwrap();
    for r in pool.execute_concurrent(&[(name.as_str(), texts.clone())]).await {
        let r = r.unwrap();
        for (v, want) in r.vectors.iter().zip(&refs) {
            support::check_against_reference(v, want);
        }
    }

    // While this pool holds the file, another process cannot open it and says what to do.
    let out = Command::new(BIN).args(["report", "--history"]).arg(&db).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("in use by another process"), "{err}");

    // The API: reports from the live database, and the dashboard in a real headless browser.
    let pool = std::sync::Arc::new(pool);
    let (addr, _api) =
        tabpool::api::serve(pool.clone(), "127.0.0.1:0".parse().unwrap(), Default::default(), Default::default())
            .await
            .unwrap();
    let (code, md) = tabpool::api::get_text(&addr.to_string(), "/report.md?since=1h", None).await.unwrap();
    assert_eq!(code, 200, "{md}");
    assert!(md.contains("| all-MiniLM-L6-v2 | chromium-webnn | webnn-cpu |"), "{md}");
    assert!(md.contains("over 2 run(s)"), "{md}");
    let (code, _) = tabpool::api::get_text(&addr.to_string(), "/report.html?since=yesterday-ish", None).await.unwrap();
    assert_eq!(code, 400);

    let driver = DriverProcess::chromedriver(std::path::Path::new("/usr/bin/chromedriver")).await.unwrap();
    let launch = Launch::Chromium {
        driver_url: driver.url(),
        binary: "/usr/bin/chromium".into(),
        flags: vec!["--window-size=1000,900".into()],
        attach: false,
    };
    let page = BrowserSession::open(&launch, &format!("http://{addr}/dashboard")).await.unwrap();
    let t = Instant::now();
    while page.count("body[data-ready='1'] #tabs tbody tr").await.unwrap() < 2 {
        assert!(t.elapsed() < Duration::from_secs(30), "the dashboard did not render the pool's tabs");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(page.count("#tabs tbody tr").await.unwrap(), 2, "one row per tab");
    assert!(page.count("#thr polyline").await.unwrap() == 1, "the throughput chart is drawn");

    // Live: once the page listens to /v1/events, a tab dropped from the host side shows in its
    // event list (lost, then recovered) without waiting for a poll.
    let t = Instant::now();
    while page.count("body[data-live='1']").await.unwrap() == 0 {
        assert!(t.elapsed() < Duration::from_secs(30), "the dashboard did not subscribe to /v1/events");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut events = pool.subscribe_events();
    let victim = pool.tabs()[0].0;
    let t = Instant::now();
    assert!(pool.disconnect_tab(victim));
    let first = tokio::time::timeout(Duration::from_secs(10), events.recv()).await.unwrap().unwrap();
    let first: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert_eq!(
        (first["type"].as_str(), first["event"].as_str(), first["tab"].as_u64()),
        (Some("tab"), Some("lost"), Some(victim)),
        "{first}"
    );
    while page.count("#live tbody tr").await.unwrap() == 0 {
        assert!(t.elapsed() < Duration::from_secs(10), "the dashboard did not show the lost tab");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "dashboard: tab {victim} dropped → shown in its live events after {:.0} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    let mut seen = vec![first];
    while !seen.iter().any(|e| e["type"] == "recovery" && e["ok"] == true) {
        let e = tokio::time::timeout(Duration::from_secs(60), events.recv()).await.expect("a recovery event").unwrap();
        seen.push(serde_json::from_str(&e).unwrap());
    }
    let recovery = seen.last().unwrap();
    for field in ["tab", "kind", "category", "step", "ok", "ms", "detail", "at_s"] {
        assert!(recovery.get(field).is_some(), "the recovery event has the history row's {field}: {recovery}");
    }
    let loads: Vec<_> =
        seen.iter().filter(|e| e["type"] == "model_load").map(|e| e["phase"].as_str().unwrap()).collect();
    assert!(loads.first() == Some(&"started") && loads.last() == Some(&"loaded"), "model load events: {seen:?}");
    let png = page.screenshot().await.unwrap();
    page.close().await;
    driver.stop().await;
    let decoder = png::Decoder::new(std::io::Cursor::new(&png));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let px = info.color_type.samples();
    let pixels: Vec<&[u8]> = buf[..info.buffer_size()].chunks(px).collect();
    let background = pixels.iter().filter(|p| p[..3] == [0xfa, 0xfa, 0xfa] || p[..3] == [0xff, 0xff, 0xff]).count();
    let inked = 1.0 - background as f64 / pixels.len() as f64;
    let colours: std::collections::HashSet<&[u8]> = pixels.iter().map(|p| &p[..3]).collect();
    println!(
        "dashboard screenshot: {}×{}, {:.1} % inked, {} colours",
        info.width,
        info.height,
        inked * 100.0,
        colours.len()
    );
    assert!(info.width >= 600 && info.height >= 400, "{}×{}", info.width, info.height);
    assert!(
        inked > 0.03 && colours.len() > 20,
        "a blank-looking dashboard: {:.1} % inked, {} colours",
        inked * 100.0,
        colours.len()
    );
    match std::sync::Arc::try_unwrap(pool) {
        Ok(p) => p.shutdown().await,
        Err(p) => p.shutdown().await,
    }
    drop(_api);

    // After the pool: the file reads back in the library, the CLI and the plain duckdb CLI.
    let store = Store::open_read_only(&db).unwrap();
    assert_eq!(count(&store, "SELECT count(*) FROM runs"), 2);
    let report = Report::build(&store, None).unwrap();
    assert_eq!(report.runs, 2);
    assert_eq!(report.texts as u64, texts_served + texts.len() as u64, "{report:?}");
    let html = render::html(&report);
    assert!(html.contains("<svg") && html.contains("<polyline") && html.contains("chromium-webnn"));
    drop(store);
    let out =
        Command::new(BIN).args(["report", "--format", "md", "--since", "1d", "--history"]).arg(&db).output().unwrap();
    let md = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(md.contains("## Regressions") && md.contains("## Recoveries") && md.contains("reload_page"), "{md}");

    let cli = dirs::home_dir().unwrap().join(".cache/tabpool/duckdb/cli-1.5.6/bin/duckdb");
    assert!(cli.exists(), "{} missing: run `bash scripts/setup.sh`", cli.display());
    let out = Command::new(&cli)
        .arg(&db)
        .args(["-csv", "-noheader", "-c", "SELECT count(*), sum(batch_rows) FILTER (WHERE success) FROM executions"])
        .output()
        .unwrap();
    let csv = String::from_utf8_lossy(&out.stdout);
    assert_eq!(csv.trim(), format!("{},{}", report.executions, report.texts), "{csv}");
}
