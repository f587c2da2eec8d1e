//! `tabpool bench lending`: what lending costs and how fast a liar is caught. One trusted tab
//! (launched by the pool) alone, then with a tab lent by a page from another origin (Debian
//! Chromium opening `www/examples/lend.html` from a second page server), its results checked at
//! the default rate (after its first `verify_first`) and at 100 %; then a page that perturbs its
//! replies, timed from its first batch to its quarantine. Every tab runs the wasm CPU executor,
//! so trusted and lent tabs are the same speed and the ratios show the checks' cost alone.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;

use super::bench_pool::{Pass, fixed_pool, pass};
use crate::browser::{BrowserKind, BrowserSession, DriverProcess, KindSpec, Launch};
use crate::pool::{ModelSpec, Pool, PoolConfig};
use crate::server::join::TokenFile;
use crate::{Host, HostConfig, paths};

#[derive(clap::Args)]
pub struct Args {
    /// Requests (one sentence each) per timed pass.
    #[arg(long, default_value_t = 256)]
    pub requests: usize,
    #[arg(long)]
    pub json: bool,
}

/// The lying page: the example's join, with every reply carrying floats perturbed (+0.25 on the
/// last KiB of the frame, where the tensor payload is) — what a dishonest lender would do.
const LYING_PAGE: &str = include_str!("../../data/lying_lend.html");

struct Row {
    name: &'static str,
    tabs: usize,
    pass: Pass,
    lent_answered: usize,
    /// The lent tab's batches in the timed pass, and those checked on the trusted tab.
    lent_batches: u64,
    checked: u64,
}

/// A folder a second page server serves: `www` (linked) and the lying page, on another port than
/// the pool's own page server — another origin.
struct Site {
    dir: PathBuf,
}

impl Site {
    fn new() -> anyhow::Result<Site> {
        let dir = std::env::temp_dir().join(format!("tabpool-lending-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir)?;
        std::os::unix::fs::symlink(paths::www_dir(None)?, dir.join("www"))?;
        std::fs::write(dir.join("lying.html"), LYING_PAGE)?;
        Ok(Site { dir })
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn config(verify_first: u64, requests: usize) -> PoolConfig {
    let kinds = vec![KindSpec::local(BrowserKind::ChromiumWebnn).with_max_tabs(1)];
    let mut cfg = PoolConfig { backend: crate::exec::Backend::WasmCpu, ..fixed_pool(kinds, 1, requests) };
    cfg.lending.verify_first = verify_first;
    cfg
}

fn enc(v: &str) -> String {
    v.replace(':', "%3A").replace('/', "%2F")
}

/// Open `page` in a Debian Chromium of its own and wait until the pool has its tab serving.
async fn lend(pool: &Pool, launch: &Launch, page: &str) -> anyhow::Result<(BrowserSession, u64)> {
    let before: Vec<u64> = pool.lent_tabs().iter().map(|l| l.tab).collect();
    let session = BrowserSession::open(launch, page).await?;
    let t = Instant::now();
    loop {
        if let Some(l) = pool.lent_tabs().into_iter().find(|l| l.serving && !before.contains(&l.tab)) {
            return Ok((session, l.tab));
        }
        if t.elapsed() > Duration::from_secs(180) {
            let title = session.title().await;
            session.close().await;
            anyhow::bail!("the lending page never served (it says {title:?})");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn run(host_cfg: HostConfig, args: Args) -> anyhow::Result<()> {
    let (sentences, _) = super::bench::bench_sentences(None, false)?;
    let texts: Vec<&str> = sentences.iter().map(String::as_str).cycle().take(args.requests).collect();
    let minilm = crate::models::minilm::NAME;
    let reqs: Vec<(&str, Vec<&str>)> = texts.iter().map(|t| (minilm, vec![*t])).collect();
    let site = Site::new()?;
    let (site_addr, site_server) = crate::server::http::serve(site.dir.clone(), [127, 0, 0, 1].into()).await?;
    let driver = DriverProcess::chromedriver(&paths::find_binary(
        host_cfg.chromedriver.as_deref(),
        crate::host::CHROMEDRIVER_NAMES,
    )?)
    .await?;
    let chromium = paths::find_binary(host_cfg.chromium.as_deref(), crate::host::CHROMIUM_NAMES)?;
    let launch = Launch::Chromium { driver_url: driver.url(), binary: chromium, flags: vec![], attach: false };
    let tokens = site.dir.join("join_tokens.json");
    let file = TokenFile::at(&tokens);

    let mut rows = Vec::new();
    let mut reference: Vec<Vec<f32>> = Vec::new();
    let mut caught = None;
    // Default sampling first, then everything checked.
    for (verify_first, name) in [
        (crate::pool::config::LendingToml::default().verify_first, "lent tab, default checks"),
        (u64::MAX, "lent tab, all checked"),
    ] {
        let host = Host::start(HostConfig { join: Some(tokens.clone()), ..host_cfg.clone() }).await?;
        let join_url = host.join_url().context("the host takes lent tabs")?;
        let pool = Pool::with_host(host, config(verify_first, args.requests)).await?;
        let result: anyhow::Result<()> = async {
            pool.load(ModelSpec::minilm()).await?;
            let trusted = pool.tabs()[0].0;
            if rows.is_empty() {
                pass(&pool, &reqs).await?; // warm-up
                let alone = pass(&pool, &reqs).await?;
                rows.push(Row {
                    name: "trusted tab alone",
                    tabs: 1,
                    pass: alone,
                    lent_answered: 0,
                    lent_batches: 0,
                    checked: 0,
                });
                reference = pool
                    .execute_concurrent(&reqs[..8])
                    .await
                    .into_iter()
                    .map(|r| r.map(|s| s.vectors[0].clone()))
                    .collect::<Result<_, _>>()?;
            }
            let (_, token) = file.create(Some(Duration::from_secs(3600)), 1, vec![minilm.into()])?;
            let page = format!("http://{site_addr}/www/examples/lend.html?pool={}&token={token}", enc(&join_url));
            let (session, lent) = lend(&pool, &launch, &page).await?;
            // Warm-up until the lent tab is past its first, fully checked results.
            let first = if verify_first == u64::MAX { 0 } else { verify_first };
            let t = Instant::now();
            while pool.lent_tabs().iter().find(|l| l.tab == lent).is_some_and(|l| l.served < first)
                && t.elapsed() < Duration::from_secs(120)
            {
                pass(&pool, &reqs).await?;
            }
            pass(&pool, &reqs).await?;
            let before = pool.lent_tabs().into_iter().find(|l| l.tab == lent).map_or((0, 0), |l| (l.served, l.checked));
            let p = pass(&pool, &reqs).await?;
            let l = pool.lent_tabs().into_iter().find(|l| l.tab == lent).context("the lent tab left")?;
            let lent_answered = p.by_tab.get(&lent).copied().unwrap_or(0);
            rows.push(Row {
                name,
                tabs: 2,
                pass: p,
                lent_answered,
                lent_batches: l.served - before.0,
                checked: l.checked - before.1,
            });
            session.close().await;
            if verify_first == u64::MAX {
                // A liar: from its first batch to its quarantine, every answer compared.
                let (_, token) = file.create(None, 1, vec![minilm.into()])?;
                let page = format!("http://{site_addr}/lying.html?pool={}&token={token}", enc(&join_url));
                let (session, liar) = lend(&pool, &launch, &page).await?;
                let t = Instant::now();
                let mut wrong = 0;
                let mut answers = 0;
                while pool.lent_tabs().iter().any(|l| l.tab == liar) && t.elapsed() < Duration::from_secs(60) {
                    for (got, want) in pool.execute_concurrent(&reqs[..8]).await.into_iter().zip(&reference) {
                        let got = got?;
                        answers += 1;
                        wrong += usize::from(crate::exec::cosine(&got.vectors[0], want) < 0.999);
                    }
                }
                let ms = t.elapsed().as_secs_f64() * 1e3;
                let title = session.title().await;
                session.close().await;
                anyhow::ensure!(
                    !pool.lent_tabs().iter().any(|l| l.tab == liar),
                    "the lying tab was not caught in 60 s"
                );
                caught = Some((ms, answers, wrong, title));
                anyhow::ensure!(pool.tabs().iter().any(|(t, _)| *t == trusted), "the trusted tab was lost");
            }
            Ok(())
        }
        .await;
        pool.shutdown().await;
        result?;
    }
    site_server.abort();
    drop(driver);

    let base = rows[0].pass.per_s;
    let (caught_ms, answers, wrong, title) = caught.context("the liar phase did not run")?;
    if args.json {
        let rows_json: Vec<_> = rows
            .iter()
            .map(|r| {
                json!({"row": r.name, "tabs": r.tabs, "sent_per_s": r.pass.per_s, "vs_alone": r.pass.per_s / base,
                       "p50_ms": r.pass.p50_ms, "lent_answered": r.lent_answered, "lent_batches": r.lent_batches,
                       "lent_batches_checked": r.checked})
            })
            .collect();
        println!(
            "{}",
            json!({"rows": rows_json, "requests": args.requests, "verify_rate": crate::pool::config::LendingToml::default().verify_rate,
                   "liar": {"caught_ms": caught_ms, "answers_meanwhile": answers, "wrong_answers": wrong, "page_says": title}})
        );
        return Ok(());
    }
    println!(
        "Lending: {} one-sentence requests per pass, every tab on the wasm CPU executor (verify_rate {} after the first {})",
        args.requests,
        crate::pool::config::LendingToml::default().verify_rate,
        crate::pool::config::LendingToml::default().verify_first
    );
    println!(
        "| row | tabs | sent/s | vs trusted alone | p50 ms | requests answered by the lent tab | its batches | checked |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {:.1} | {:.2}× | {:.0} | {} | {} | {} |",
            r.name,
            r.tabs,
            r.pass.per_s,
            r.pass.per_s / base,
            r.pass.p50_ms,
            r.lent_answered,
            r.lent_batches,
            r.checked
        );
    }
    println!(
        "A lying lender (+0.25 on its replies' floats): quarantined {caught_ms:.0} ms after it began serving; {answers} \
         answers meanwhile, {wrong} wrong; its page says {title:?}"
    );
    Ok(())
}
