//! `tabpool bench history`: what recording costs. (1) The recorder alone: the caller's cost per
//! row and the writer's rows/s into DuckDB. (2) Pool throughput with and without recording,
//! two identical pools measured in alternating passes in this run, and the ratio.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Instant;

use serde_json::json;

use super::pool_args::parse_kind;
use crate::HostConfig;
use crate::pool::{ModelSpec, Pool, PoolConfig};
use crate::store::{Record, Recorder, Store};

pub struct Args {
    pub tabs: usize,
    pub kind: String,
    /// One-sentence requests per timed pass.
    pub requests: usize,
    /// Passes per pool (alternating order).
    pub rounds: usize,
    /// Rows for the recorder-alone measurement.
    pub rows: usize,
    pub json: bool,
}

fn scratch(name: &str) -> PathBuf {
    let dir = dirs::cache_dir().unwrap_or_else(std::env::temp_dir).join("tabpool/bench");
    let _ = std::fs::create_dir_all(&dir);
    dir.join(format!("{name}-{}.duckdb", std::process::id()))
}

fn remove_db(p: &std::path::Path) {
    let _ = std::fs::remove_file(p);
    let _ = std::fs::remove_file(p.with_extension("duckdb.wal"));
}

/// Caller ns per `record`, and rows/s until all are in the file.
fn recorder_alone(rows: usize) -> anyhow::Result<(f64, f64, u64)> {
    let path = scratch("recorder");
    remove_db(&path);
    let store = Store::open(&path)?;
    let rec = Recorder::start(&store, store.start_run("bench")?)?;
    let t = Instant::now();
    let mut caller = std::time::Duration::ZERO;
    for i in 0..rows {
        let row = Record::Execution {
            model: "all-MiniLM-L6-v2".into(),
            kind: "chromium-webnn".into(),
            backend: "webnn-cpu".into(),
            tab: (i % 4) as u64,
            batch_rows: 32,
            tokens: 512,
            latency_ms: 100.0 + (i % 17) as f64,
            queue_ms: 3.0,
            error: None,
            hedge: false,
        };
        let c = Instant::now();
        rec.record(row);
        caller += c.elapsed();
        // Pace like a busy pool would not: this is the writer's ceiling, so let it keep up.
        if i % 50_000 == 49_999 {
            rec.flush()?;
        }
    }
    rec.flush()?;
    let secs = t.elapsed().as_secs_f64();
    let dropped = rec.stats().dropped.load(Ordering::Relaxed);
    rec.close();
    drop(store);
    remove_db(&path);
    Ok((caller.as_nanos() as f64 / rows as f64, rows as f64 / secs, dropped))
}

/// One pass: every request at once; sentences per second.
async fn timed(pool: &Pool, reqs: &[(&str, Vec<&str>)]) -> anyhow::Result<f64> {
    let t = Instant::now();
    for r in pool.execute_concurrent(reqs).await {
        r?;
    }
    Ok(reqs.len() as f64 / t.elapsed().as_secs_f64())
}

pub async fn run(host_cfg: HostConfig, args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.rounds >= 1 && args.requests >= 1 && args.tabs >= 1,
        "--rounds, --requests and --tabs must be at least 1"
    );
    let (ns_per_row, rows_per_s, dropped) = tokio::task::spawn_blocking({
        let rows = args.rows;
        move || recorder_alone(rows)
    })
    .await??;

    let (sentences, source) = super::bench::bench_sentences(None, false)?;
    let texts: Vec<&str> = sentences.iter().map(String::as_str).cycle().take(args.requests).collect();
    let kind = parse_kind(&args.kind)?;
    let db = scratch("pool");
    remove_db(&db);
    let cfg = |record: bool| {
        let mut c = PoolConfig {
            min_tabs: args.tabs,
            max_tabs: args.tabs,
            max_queue: args.requests,
            kinds: vec![kind.clone()],
            ..PoolConfig::default()
        };
        c.scaling.enabled = false;
        c.history.path = record.then(|| db.clone());
        c
    };
    let off = Pool::with_host(crate::Host::start(host_cfg.clone()).await?, cfg(false)).await?;
    let on = match Pool::with_host(crate::Host::start(host_cfg.clone()).await?, cfg(true)).await {
        Ok(p) => p,
        Err(e) => {
            off.shutdown().await;
            return Err(e);
        }
    };
    let measured = async {
        let name = off.load(ModelSpec::minilm()).await?;
        on.load(ModelSpec::minilm()).await?;
        let reqs: Vec<(&str, Vec<&str>)> = texts.iter().map(|t| (name.as_str(), vec![*t])).collect();
        timed(&off, &reqs).await?; // warm-up: every shape bucket compiled on every tab
        timed(&on, &reqs).await?;
        on.flush_history()?;
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let cpu0 = on.recorder_cpu_ns();
        let rows0 = on.metrics().history_db.map(|h| h.rows_written).unwrap_or(0);
        for round in 0..args.rounds {
            if round % 2 == 0 {
                a.push(timed(&off, &reqs).await?);
                b.push(timed(&on, &reqs).await?);
            } else {
                b.push(timed(&on, &reqs).await?);
                a.push(timed(&off, &reqs).await?);
            }
        }
        on.flush_history()?;
        let cpu_ns = on.recorder_cpu_ns() - cpu0;
        let rows = on.metrics().history_db.map(|h| h.rows_written).unwrap_or(0) - rows0;
        anyhow::Ok((a, b, cpu_ns, rows))
    }
    .await;
    off.shutdown().await;
    on.shutdown().await;
    let (off_s, on_s, writer_ns, rows) = measured?;
    remove_db(&db);
    let med = |v: &[f64]| crate::stats::quantile(v, 0.5);
    let (m_off, m_on) = (med(&off_s), med(&on_s));
    // Direct cost: CPU the recording took (writer thread measured + callers' record() at the
    // recorder-alone rate) over the CPU the recorded passes had (wall time × cores).
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
    let on_wall_s: f64 = on_s.iter().map(|per_s| args.requests as f64 / per_s).sum();
    let cpu_s = writer_ns as f64 / 1e9 + rows as f64 * ns_per_row / 1e9;
    let direct_pct = cpu_s / (on_wall_s * cores) * 100.0;
    // Throughput A/B: mean change with a 95 % interval (Welch), negative = slower when recording.
    let test = crate::policy::trend::welch(&off_s, &on_s);
    let mean_off = off_s.iter().sum::<f64>() / off_s.len() as f64;
    let (ab_pct, ab_lo, ab_hi) = match test {
        Some(w) => (w.diff / mean_off * 100.0, w.ci95.0 / mean_off * 100.0, w.ci95.1 / mean_off * 100.0),
        None => ((m_on / m_off - 1.0) * 100.0, f64::NAN, f64::NAN),
    };
    if args.json {
        println!(
            "{}",
            json!({
                "recorder": { "caller_ns_per_row": ns_per_row, "rows_per_s": rows_per_s, "dropped": dropped, "rows": args.rows },
                "pool": { "tabs": args.tabs, "kind": kind.name, "requests": args.requests, "sentences": source,
                          "off_per_s": off_s, "on_per_s": on_s, "median_off": m_off, "median_on": m_on,
                          "throughput_change_pct": ab_pct, "throughput_change_ci95_pct": [ab_lo, ab_hi],
                          "rows_written": rows, "writer_cpu_ms": writer_ns as f64 / 1e6,
                          "direct_cost_pct_of_cpu": direct_pct, "cores": cores }
            })
        );
        return Ok(());
    }
    println!("recorder alone ({} execution rows into DuckDB):", args.rows);
    println!("  caller cost {ns_per_row:.0} ns/row; writer {rows_per_s:.0} rows/s; dropped {dropped}");
    println!(
        "\npool throughput with and without recording ({} × {}, {} one-sentence requests per pass, {} passes each, alternating; sentences: {source}):",
        args.tabs, kind.name, args.requests, args.rounds
    );
    println!("| recording | sent/s per pass | median |");
    println!("|---|---|---:|");
    let list = |v: &[f64]| v.iter().map(|x| format!("{x:.1}")).collect::<Vec<_>>().join(", ");
    println!("| off | {} | {m_off:.1} |", list(&off_s));
    println!("| on  | {} | {m_on:.1} |", list(&on_s));
    println!(
        "\nthroughput with recording: {ab_pct:+.2} % (mean; 95 % CI [{ab_lo:+.1}, {ab_hi:+.1}] %, median on/off {:.3}); pass-to-pass spread on this machine bounds what this A/B resolves",
        m_on / m_off
    );
    println!(
        "direct cost: {rows} rows in the timed passes; writer thread {:.2} ms CPU + callers ≈{:.2} ms, over {on_wall_s:.1} s × {cores} cores = {direct_pct:.4} % of the host's CPU (target < 2 %)",
        writer_ns as f64 / 1e6,
        rows as f64 * ns_per_row / 1e6
    );
    Ok(())
}
