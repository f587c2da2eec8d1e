//! Pages lend their tabs to a pool (`serve --join`, `rt.join` of the npm package): a page served
//! from another origin (a second HTTP server on another port) joins with a join token, receives
//! the models its token names, and serves embeddings and generation equal to the references,
//! every result checked on the trusted tab; a page that perturbs its results (it patches the
//! browser's WebSocket to add noise to every reply with floats — what a lying lender would do) is
//! quarantined at its first checked batch, with no wrong answer reaching a caller; expired,
//! revoked, unknown and malformed tokens are refused with a clear close reason.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use shared_proto::{Capabilities, Frame, Hello, Limits, PROTOCOL_VERSION, RejectReason, ToHost, ToTab, decode, encode};
use tabpool::browser::{BrowserKind, BrowserSession, DriverProcess, KindSpec, Launch};
use tabpool::exec::GenParams;
use tabpool::pool::{ModelSpec, Pool, PoolConfig, StreamEvent};
use tabpool::server::join::TokenFile;
use tabpool::{Host, HostConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::support;

/// What a lying lender does (`host/data/lying_lend.html`, also `bench lending`'s): every frame
/// it sends after its `Hello` that is large enough to carry floats gets +0.25 on each 4-byte word
/// of its last KiB (the tensor payload ends the frame); otherwise it is the example's join.
const LYING_PAGE: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/data/lying_lend.html"));

/// The page's state from its title (`lent {…}`, `closed {…}`, `error {…}`), once it is one of
/// `want`, within 180 s.
async fn page_state(session: &BrowserSession, want: &[&str]) -> (String, serde_json::Value) {
    let t = Instant::now();
    loop {
        let title = session.title().await;
        if let Some((state, json)) = title.split_once(' ')
            && want.contains(&state)
            && let Ok(v) = serde_json::from_str(json)
        {
            return (state.to_string(), v);
        }
        assert!(t.elapsed() < Duration::from_secs(180), "the page is at {title:?}, not {want:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Wait until the pool has lent tab `tab` serving.
async fn serving(pool: &Pool, tab: u64) {
    let t = Instant::now();
    while !pool.lent_tabs().iter().any(|l| l.tab == tab && l.serving) {
        assert!(t.elapsed() < Duration::from_secs(240), "lent tab {tab} never served: {:?}", pool.lent_tabs());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Rounds of single-sentence requests all at once (so both tabs get batches), each answer
/// checked against the float64 reference; returns the tabs that answered, per answer.
async fn embed_round(pool: &Pool, refs: &[support::RefSentence]) -> Vec<u64> {
    let answers =
        futures_util::future::join_all(refs.iter().map(|r| async move { pool.embed(&[r.text.as_str()]).await })).await;
    answers
        .into_iter()
        .zip(refs)
        .map(|(a, r)| {
            let served = a.unwrap_or_else(|e| panic!("{e}"));
            support::check_against_reference(&served.vectors[0], r);
            served.tab
        })
        .collect()
}

/// A stream's ids and the tabs it was placed on.
async fn drain_noting(mut rx: tokio::sync::mpsc::UnboundedReceiver<StreamEvent>) -> (Vec<u32>, Vec<u64>) {
    let (mut ids, mut tabs) = (Vec::new(), Vec::new());
    while let Some(ev) = rx.recv().await {
        match ev {
            StreamEvent::Placed { tab, .. } => tabs.push(tab),
            StreamEvent::Token(t) => ids.push(t),
            StreamEvent::Done(_) => return (ids, tabs),
            StreamEvent::Failed(e) => panic!("{e}"),
        }
    }
    panic!("a stream ended without Done");
}

async fn drain(rx: tokio::sync::mpsc::UnboundedReceiver<StreamEvent>) -> (Vec<u32>, Vec<u64>) {
    drain_noting(rx).await
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A raw peer at the join URL (any Origin) saying `Hello` with `token`: the host's Reject
/// message and the close reason.
async fn refused(join_url: &str, token: &str) -> (String, String) {
    let mut req = join_url.into_client_request().unwrap();
    req.headers_mut().insert("origin", "http://lender.example".parse().unwrap());
    let (mut ws, _): (Ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let h = ToHost::Hello(Box::new(Hello {
        protocol_version: PROTOCOL_VERSION,
        tab_id: 0,
        token: token.into(),
        caps: Capabilities::default(),
    }));
    ws.send(Message::Binary(encode(&Frame::new(h), &Limits::DEFAULT).unwrap().into())).await.unwrap();
    let (mut rejected, mut close) = (None, None);
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
        match m {
            Message::Binary(b) => match decode::<ToTab>(b, &Limits::DEFAULT).unwrap().msg {
                ToTab::Reject { reason, message } => {
                    assert_eq!(reason, RejectReason::BadToken);
                    rejected = Some(message);
                }
                other => panic!("a bad join token got {other:?}"),
            },
            Message::Close(Some(f)) => close = Some(f.reason.to_string()),
            _ => {}
        }
    }
    (rejected.expect("a Reject"), close.expect("a close frame with a reason"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_from_another_origin_lend_their_tabs_and_a_lying_one_is_quarantined() {
    let _procs = support::process_guard();
    let dir = tempfile::tempdir().unwrap();
    let tokens_path = dir.path().join("join_tokens.json");
    let host = Host::start(HostConfig { join: Some(tokens_path.clone()), ..HostConfig::default() })
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let join_url = host.join_url().expect("the host takes lent tabs");
    // One trusted tab, launched by the pool; the lent tabs come on their own. Every tab on the
    // wasm CPU executor, so trusted and lent tabs are equally fast and small batches, one at a
    // time per tab, spread over both (with WebNN the trusted tab would take every batch).
    let kinds = vec![KindSpec::local(BrowserKind::ChromiumWebnn).with_max_tabs(1)];
    let mut cfg = PoolConfig {
        min_tabs: 1,
        max_tabs: 1,
        kinds,
        backend: tabpool::exec::Backend::WasmCpu,
        max_batch: 2,
        in_flight_per_tab: 1,
        ..PoolConfig::default()
    };
    cfg.scaling.enabled = false;
    cfg.generation.context_limit = 256;
    cfg.generation.sessions_per_tab = 4;
    let pool = Pool::with_host(host, cfg).await.unwrap_or_else(|e| panic!("{e:#}"));
    let minilm = pool.load(ModelSpec::minilm()).await.unwrap_or_else(|e| panic!("{e:#}"));
    let smollm2 = pool.load(ModelSpec::smollm2()).await.unwrap_or_else(|e| panic!("{e:#}"));
    let trusted = pool.tabs()[0].0;

    // Refused tokens: the close reason says why, and nothing joins.
    let file = TokenFile::at(&tokens_path);
    let (expiring, expired) = file.create(Some(Duration::from_secs(1)), 1, vec![minilm.clone()]).unwrap();
    let (revoked_t, revoked) = file.create(None, 1, vec![minilm.clone()]).unwrap();
    assert!(file.revoke(&revoked_t.id).unwrap());
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (_, why) = refused(&join_url, &expired).await;
    assert!(why.contains(&format!("join token {} expired", expiring.id)), "{why}");
    let (_, why) = refused(&join_url, &revoked).await;
    assert_eq!(why, format!("join token {} was revoked", revoked_t.id));
    let (_, why) = refused(&join_url, "tpj_not-a-token").await;
    assert!(why.starts_with("malformed join token"), "{why}");
    let (_, why) = refused(&join_url, "tpj_0123abcd_0123456789abcdef").await;
    assert_eq!(why, "unknown join token 0123abcd");
    let (_, why) = refused(&join_url, &format!("tpj_{}_{}", revoked_t.id, "f".repeat(32))).await;
    assert!(why.starts_with("wrong secret"), "{why}");
    assert!(pool.lent_tabs().is_empty());

    // Another origin: a second static server on another port serves the package and pages.
    let site = tempfile::tempdir().unwrap();
    let www = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../www"));
    assert!(www.join("pkg/npm/index.js").is_file(), "the npm package is not built: bash scripts/build-page.sh");
    std::os::unix::fs::symlink(www, site.path().join("www")).unwrap();
    std::fs::write(site.path().join("lying.html"), LYING_PAGE).unwrap();
    let (addr, server) = tabpool::server::http::serve(site.path().to_path_buf(), [127, 0, 0, 1].into()).await.unwrap();
    assert_ne!(format!("http://{addr}"), pool_origin(&join_url), "the lending page's origin is another one");
    let driver = DriverProcess::chromedriver(std::path::Path::new("/usr/bin/chromedriver")).await.unwrap();
    let chromium =
        Launch::Chromium { driver_url: driver.url(), binary: "/usr/bin/chromium".into(), flags: vec![], attach: false };
    let enc = support::query_value;

    // A revoked token through the package: a `Refused` error naming why.
    let page = format!("http://{addr}/www/examples/lend.html?pool={}&token={revoked}", enc(&join_url));
    let session = BrowserSession::open(&chromium, &page).await.unwrap_or_else(|e| panic!("{e:#}"));
    let (_, r) = page_state(&session, &["error"]).await;
    assert_eq!(r["name"], "Refused", "{r}");
    assert!(r["message"].as_str().unwrap().contains("was revoked"), "{r}");
    session.close().await;

    // A longer stream's ids on the trusted tab alone, for the page-closed-mid-stream check.
    let (_, g) = pool.generation_model(None).unwrap();
    let long_prompt = support::smollm2_reference()[1].prompt_ids.clone();
    let long = |pool: &Pool| {
        let params = GenParams { max_tokens: 48, sampling: shared_proto::Sampling::Greedy, stop_ids: vec![] };
        pool.generate(Some(&smollm2), tabpool::pool::GenRequest { prompt: long_prompt.clone(), params })
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let (expected_long, _) = drain(long(&pool)).await;

    // An honest lender: both models, every result checked while it is new.
    let (good_t, good) =
        file.create(Some(Duration::from_secs(3600)), 1, vec![minilm.clone(), smollm2.clone()]).unwrap();
    let page = format!("http://{addr}/www/examples/lend.html?pool={}&token={good}", enc(&join_url));
    let t = Instant::now();
    let honest = BrowserSession::open(&chromium, &page).await.unwrap_or_else(|e| panic!("{e:#}"));
    let (_, r) = page_state(&honest, &["lent"]).await;
    let lent = r["tab"].as_u64().unwrap();
    serving(&pool, lent).await;
    eprintln!("lent tab {lent} serving {:.1} s after the page opened", t.elapsed().as_secs_f64());
    assert_eq!(pool.replica_count(&minilm), Some(2));
    assert_eq!(pool.replica_count(&smollm2), Some(2));
    // A token's max_tabs: a second page with the same token is refused while the first is in.
    let (_, why) = refused(&join_url, &good).await;
    assert_eq!(why, format!("join token {} already has its 1 tab(s) joined", good_t.id));

    let refs = support::minilm_reference();
    let mut by_lent = 0;
    for _ in 0..6 {
        by_lent += embed_round(&pool, &refs).await.iter().filter(|&&t| t == lent).count();
        if by_lent >= 4 {
            break;
        }
    }
    assert!(by_lent > 0, "no embedding was answered by the lent tab");
    // Generation: streams spread over both replicas; the lent one's are checked token by token.
    let stops = g.model.stop_ids().to_vec();
    let cases = support::smollm2_reference();
    let streams = cases.iter().take(2).cycle().take(4).map(|c| {
        let params = GenParams { max_tokens: 24, sampling: shared_proto::Sampling::Greedy, stop_ids: stops.clone() };
        let rx = pool.generate(Some(&smollm2), tabpool::pool::GenRequest { prompt: c.prompt_ids.clone(), params });
        async move {
            let mut rx = rx.unwrap_or_else(|e| panic!("{e}"));
            let (mut ids, mut tabs) = (Vec::new(), Vec::new());
            while let Some(ev) = rx.recv().await {
                match ev {
                    StreamEvent::Placed { tab, .. } => tabs.push(tab),
                    StreamEvent::Token(t) => ids.push(t),
                    StreamEvent::Done(_) => return (ids, tabs, c),
                    StreamEvent::Failed(e) => panic!("{e}"),
                }
            }
            panic!("a stream ended without Done");
        }
    });
    let done = futures_util::future::join_all(streams).await;
    let mut on_lent = 0;
    for (ids, tabs, c) in &done {
        let want: Vec<u32> = c.greedy_ids.iter().copied().take_while(|&t| t != 2).collect();
        assert_eq!(ids, &want, "{:?}", c.user);
        on_lent += usize::from(tabs.contains(&lent));
    }
    assert!(on_lent > 0, "no stream ran on the lent tab: {:?}", done.iter().map(|d| &d.1).collect::<Vec<_>>());
    let l = pool.lent_tabs().into_iter().find(|l| l.tab == lent).unwrap();
    eprintln!("honest lender: {by_lent} embeddings and {on_lent} streams answered; {l:?}");
    assert!(l.serving && l.checked >= 2 && l.agreed == l.checked && l.checked == l.served, "{l:?}");
    // The page closes while streams run on its tab: they go on elsewhere, not one token
    // different from the trusted tab's own run.
    let streams: Vec<_> = (0..4).map(|_| long(&pool)).collect();
    let watched: Vec<_> = streams.into_iter().map(|rx| tokio::spawn(drain_noting(rx))).collect();
    // 48 tokens take ~3.5 s on these tabs: at 0.8 s every stream is mid-way.
    tokio::time::sleep(Duration::from_millis(800)).await;
    honest.close().await;
    let mut on_lent_when_closed = 0;
    for w in watched {
        let (ids, tabs) = w.await.unwrap();
        assert_eq!(ids, expected_long, "a stream across its lent tab's departure");
        on_lent_when_closed += usize::from(tabs.contains(&lent));
    }
    eprintln!("page closed mid-stream: {on_lent_when_closed} of 4 streams had been on the lent tab; all equal");
    assert!(on_lent_when_closed > 0, "no stream was on the lent tab when its page closed");
    let t = Instant::now();
    while pool.lent_tabs().iter().any(|l| l.tab == lent) {
        assert!(t.elapsed() < Duration::from_secs(60), "the closed page's tab is still in the pool");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(pool.replica_count(&minilm), Some(1), "its replicas left with it");

    // A lying lender (MiniLM only): caught at its first checked batch, no wrong answer out.
    let (_, liar_token) = file.create(None, 1, vec![minilm.clone()]).unwrap();
    let page = format!("http://{addr}/lying.html?pool={}&token={liar_token}", enc(&join_url));
    let liar = BrowserSession::open(&chromium, &page).await.unwrap_or_else(|e| panic!("{e:#}"));
    let (_, r) = page_state(&liar, &["lent"]).await;
    let liar_tab = r["tab"].as_u64().unwrap();
    serving(&pool, liar_tab).await;
    assert_eq!(pool.replica_count(&smollm2), Some(1), "no SmolLM2 weights for a MiniLM-only token");
    let t = Instant::now();
    let mut rounds = 0;
    while pool.lent_tabs().iter().any(|l| l.tab == liar_tab) {
        // Every answer is checked against the reference inside embed_round.
        embed_round(&pool, &refs).await;
        rounds += 1;
        assert!(rounds < 20, "the lying tab was never caught: {:?}", pool.lent_tabs());
    }
    let caught = t.elapsed();
    let (_, r) = page_state(&liar, &["closed"]).await;
    assert!(r["reason"].as_str().unwrap().starts_with("quarantined"), "{r}");
    let metrics = pool.prometheus();
    assert!(metrics.contains("tabpool_lent_quarantined_total"), "{metrics}");
    eprintln!("lying lender quarantined after {rounds} round(s), {caught:?}; its page says {r}");
    // The trusted tab serves on.
    assert_eq!(pool.tabs(), vec![(trusted, "chromium-webnn".to_string())]);
    embed_round(&pool, &refs).await;
    liar.close().await;
    server.abort();
    pool.shutdown().await;
}

/// The origin of the pool's own page server is not where a join URL points (the socket's port),
/// but both are on 127.0.0.1: the lending page's server must differ from either.
fn pool_origin(join_url: &str) -> String {
    join_url.replace("ws://", "http://").trim_end_matches("/join").to_string()
}
