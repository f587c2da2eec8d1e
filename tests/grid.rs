//! The pool on a real Selenium Grid 4 (`tabpool::browser::grid_local`, as `bench grid` starts it): a hub and two nodes, each node in
//! a network namespace of its own, pinned to its own core. The host binds only the bridge's
//! address, so the tabs on the nodes reach it across an interface, as from other machines.

use std::time::{Duration, Instant};

use crate::support;
use tabpool::browser::grid_local::LocalGrid as Grid;

use tabpool::browser::{BrowserKind, KindSpec};
use tabpool::pool::{ModelSpec, Pool, PoolConfig};
use tabpool::{Host, HostConfig};

/// Two tabs, one per node (each knows its node), serve MiniLM equal to the reference; idle past
/// the nodes' session timeout they keep their sessions (the pool touches them); killing one
/// node's JVM and browsers mid-load loses its tab, and every request still gets its right answer
/// from the other node; when the node is started again the pool gets its tab back there; when
/// the pool stops, the Grid holds no session (no leaked slot).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_on_a_grid_serves_from_two_nodes_and_survives_losing_one() {
    let _procs = support::process_guard();
    // Nodes end sessions idle for 15 s.
    let mut grid = Grid::start_with(&[(serde_json::json!({}), 1), (serde_json::json!({}), 1)], 15)
        .unwrap_or_else(|e| panic!("grid: {e:#}"));
    let mut kind = KindSpec::remote("grid", &grid.hub_url, BrowserKind::Chromium).with_max_tabs(2);
    kind.binary = Some("/usr/bin/chromium".into());
    let mut cfg = PoolConfig { min_tabs: 2, max_tabs: 2, max_batch: 4, kinds: vec![kind], ..PoolConfig::default() };
    cfg.scaling.enabled = false;
    let host = Host::start(HostConfig { bind: grid.host_ip.parse().unwrap(), ..HostConfig::default() })
        .await
        .unwrap_or_else(|e| panic!("host: {e:#}"));
    let pool = Pool::with_host(host, cfg).await.unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(grid.sessions_in_use(), 2, "one session per node: {}", grid.status());
    let m = pool.metrics();
    // Every tab knows its node: the two nodes, one tab each.
    let mut on: Vec<String> =
        m.tabs.iter().map(|t| t.node.as_ref().expect("a grid tab knows its node").uri.clone()).collect();
    on.sort();
    let mut nodes: Vec<String> = grid.nodes.iter().map(|n| n.uri.clone()).collect();
    nodes.sort();
    assert_eq!(on, nodes, "{}", m.render());
    for t in &m.tabs {
        // A secure context across the bridge: the host tells a remote Chromium to treat its
        // page's plain-http origin as secure, or WebGPU would not exist there.
        assert!(
            !t.webgpu.contains("undefined"),
            "tab {} on the grid has no WebGPU: {} ({})",
            t.id,
            t.webgpu,
            t.user_agent
        );
    }
    let name = pool.load(ModelSpec::minilm()).await.unwrap_or_else(|e| panic!("{e:#}"));
    let refs = support::minilm_reference();
    let requests: Vec<(&str, Vec<&str>)> = refs.iter().map(|r| (name.as_str(), vec![r.text.as_str()])).collect();
    for (res, r) in pool.execute_concurrent(&requests).await.iter().zip(&refs) {
        support::check_against_reference(&res.as_ref().unwrap_or_else(|e| panic!("{e}")).vectors[0], r);
    }

    // Idle for longer than the nodes' session timeout: the tabs talk over their sockets, not
    // WebDriver, so only the pool's keepalive stops the nodes ending their sessions.
    tokio::time::sleep(Duration::from_secs(25)).await;
    assert_eq!(grid.sessions_in_use(), 2, "sessions ended while idle: {}", grid.status());
    for (res, r) in pool.execute_concurrent(&requests).await.iter().zip(&refs) {
        support::check_against_reference(&res.as_ref().unwrap_or_else(|e| panic!("{e}")).vectors[0], r);
    }
    assert!(pool.metrics().recoveries.is_empty(), "{}", pool.metrics().render());

    // A node lost at once while requests keep coming: all answered right, by the other node.
    let t = Instant::now();
    let load = async {
        let mut answered = 0;
        while t.elapsed() < Duration::from_secs(8) {
            for (res, r) in pool.execute_concurrent(&requests).await.iter().zip(&refs) {
                support::check_against_reference(&res.as_ref().unwrap_or_else(|e| panic!("{e}")).vectors[0], r);
                answered += 1;
            }
        }
        answered
    };
    let kill = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        grid.kill_node(0);
    };
    let (answered, ()) = tokio::join!(load, kill);
    eprintln!("{answered} requests answered across the loss of node 0");
    assert!(answered >= refs.len());

    // The machine comes back: the pool, refused while no slot was free, asks again and is back
    // at two tabs, one on each node.
    grid.restart_node(0).unwrap_or_else(|e| panic!("{e:#}"));
    let t = Instant::now();
    loop {
        let m = pool.metrics();
        let mut on: Vec<String> = m
            .tabs
            .iter()
            .filter(|t| t.connected && !t.recovering)
            .filter_map(|t| t.node.clone().map(|n| n.uri))
            .collect();
        on.sort();
        if on == nodes {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(90), "not back on both nodes: {}", m.render());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    eprintln!("back on both nodes {:.1} s after node 0 was started again", t.elapsed().as_secs_f64());
    for (res, r) in pool.execute_concurrent(&requests).await.iter().zip(&refs) {
        support::check_against_reference(&res.as_ref().unwrap_or_else(|e| panic!("{e}")).vectors[0], r);
    }
    let m = pool.metrics();
    println!("{}", m.render());
    pool.shutdown().await;
    // Every session the pool asked of the Grid is deleted; the lost node's goes when the hub
    // drops the node (its health check runs every 5 s here).
    let t = Instant::now();
    while grid.sessions_in_use() > 0 {
        assert!(t.elapsed() < Duration::from_secs(60), "slots still held after shutdown: {}", grid.status());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Three nodes, two of them (lane "a") advertising what the pool's kind asks for — node 0 with
/// two slots on its one core: `doctor --grid` starts a tab in each of the three free lane-a
/// slots; the pool's two tabs land one per lane-a node (a second on node 0 would share its
/// core), never on the third. A SmolLM2 stream whose node is killed mid-stream
/// is replayed on the other node's tab, token-identical to the reference. With one lane-a slot
/// left and in use, the pool's attempts to get back to two tabs are refused by the pool itself
/// (no free slot), so nothing waits in the Grid's queue and the lane-b node is never asked. The
/// last node drained by the Grid has its tab retired and its session deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_survives_its_node_and_the_pool_asks_only_free_matching_slots() {
    use shared_proto::Sampling;
    use tabpool::exec::GenParams;
    use tabpool::pool::{GenRequest, StreamEvent};

    let _procs = support::process_guard();
    // Lane-a nodes also advertise WebGPU, which the kind asks for and each tab must then have.
    let lane = |l: &str| serde_json::json!({ "tabpool:lane": l, "tabpool:webgpu": l == "a" });
    // Node 0 has two slots but, pinned to one core, room for one of the pool's tabs.
    let mut grid = Grid::start_with(&[(lane("a"), 2), (lane("a"), 1), (lane("b"), 1)], 60)
        .unwrap_or_else(|e| panic!("grid: {e:#}"));

    // `doctor --grid` lists the three nodes and starts one tab per free lane-a slot: two, on the
    // two lane-a nodes, each with what it measured; then the Grid holds no session.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tabpool"))
        .args(["--bind", &grid.host_ip, "doctor", "--grid", &grid.hub_url, "--capability", "tabpool:lane=a"])
        .args(["--capability", "tabpool:webgpu=true", "--json"])
        .output()
        .unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("doctor --grid: {e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert!(out.status.success(), "{doc}");
    assert_eq!(doc["grid"]["nodes"].as_array().unwrap().len(), 3, "{doc}");
    assert_eq!(doc["free_slots"], 3, "{doc}");
    let mut on: Vec<&str> = doc["tabs"].as_array().unwrap().iter().map(|t| t["node"].as_str().expect("node")).collect();
    on.sort();
    let (n0, n1) = (grid.nodes[0].uri.as_str(), grid.nodes[1].uri.as_str());
    assert_eq!(on, [n0, n0, n1], "{doc}");
    for t in doc["tabs"].as_array().unwrap() {
        assert!(t["unmet"].is_null(), "{t}");
        let measured = t["calibration"].as_array().unwrap_or_else(|| panic!("{t}"));
        assert!(measured.iter().any(|m| m["median_ms"].as_f64().is_some_and(|ms| ms > 0.0)), "{t}");
    }
    let t = Instant::now();
    while grid.sessions_in_use() > 0 {
        assert!(t.elapsed() < Duration::from_secs(10), "doctor left a session: {}", grid.status());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut kind = KindSpec::remote("grid", &grid.hub_url, BrowserKind::Chromium).with_max_tabs(2);
    kind.binary = Some("/usr/bin/chromium".into());
    kind.capabilities.insert("tabpool:lane".into(), "a".into());
    kind.capabilities.insert("tabpool:webgpu".into(), true.into());
    let mut cfg = PoolConfig { min_tabs: 2, max_tabs: 2, kinds: vec![kind], ..PoolConfig::default() };
    cfg.scaling.interval_ms = 500;
    cfg.generation.context_limit = 256;
    let host = Host::start(HostConfig { bind: grid.host_ip.parse().unwrap(), ..HostConfig::default() })
        .await
        .unwrap_or_else(|e| panic!("host: {e:#}"));
    let pool = Pool::with_host(host, cfg).await.unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!((grid.sessions_on(0), grid.sessions_on(1), grid.sessions_on(2)), (1, 1, 0), "{}", grid.status());

    let name = pool.load(ModelSpec::smollm2()).await.unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(pool.replica_count(&name), Some(2));
    let (_, g) = pool.generation_model(None).unwrap();
    let case = &support::smollm2_reference()[0];
    let want: Vec<u32> = case.greedy_ids.iter().copied().take_while(|&t| t != 2).collect();
    let params = GenParams { max_tokens: 24, sampling: Sampling::Greedy, stop_ids: g.model.stop_ids().to_vec() };
    let mut rx = pool.generate(None, GenRequest { prompt: case.prompt_ids.clone(), params }).unwrap();
    let (mut ids, mut tabs, mut replays) = (Vec::new(), Vec::new(), None);
    let mut killed = None;
    while let Some(ev) = tokio::time::timeout(Duration::from_secs(180), rx.recv()).await.expect("stream stalled") {
        match ev {
            StreamEvent::Placed { tab, .. } => tabs.push(tab),
            StreamEvent::Token(t) => {
                ids.push(t);
                if ids.len() == 3 && killed.is_none() {
                    // The streaming tab's whole node goes.
                    let uri =
                        pool.metrics().tabs.iter().find(|t| t.id == tabs[0]).and_then(|t| t.node.clone()).unwrap().uri;
                    let i = grid.nodes.iter().position(|n| n.uri == uri).unwrap();
                    grid.kill_node(i);
                    killed = Some(i);
                }
            }
            StreamEvent::Done(s) => {
                replays = Some(s.replays);
                break;
            }
            StreamEvent::Failed(e) => panic!("stream failed after node loss: {e}"),
        }
    }
    assert_eq!(ids, want, "token-identical across the loss of node {killed:?}");
    assert!(replays.unwrap() >= 1 && tabs.len() >= 2, "replayed on another tab: {tabs:?}");
    let left = 1 - killed.unwrap();

    // Below min_tabs with no lane-a slot worth asking for (node 1 full, or node 0's free slot on
    // a core the pool's tab there already uses): refused by the pool, not queued at the Grid.
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(10) {
        assert_eq!(grid.queue_size(), Some(0), "a new-session request waits in the grid's queue");
        assert_eq!(grid.sessions_on(2), 0, "the lane-b node was asked");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let m = pool.metrics();
    assert!(
        m.scaling_events.iter().any(|e| e.reason.contains("not asking")),
        "the scaler's refusals are logged: {}",
        m.render()
    );

    // The Grid drains the last lane-a node: the pool retires its tab and deletes the session.
    grid.drain(left).unwrap_or_else(|e| panic!("{e:#}"));
    let t = Instant::now();
    while grid.node_status(left).is_some_and(|n| n["slots"].as_array().unwrap().iter().any(|s| !s["session"].is_null()))
    {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the draining node's session is held: {}",
            pool.metrics().render()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let m = pool.metrics();
    assert!(m.scaling_events.iter().any(|e| e.action == "drain"), "{}", m.render());
    pool.shutdown().await;
    // No live node holds a session of the pool (the killed node, DOWN, still lists its dead one
    // until the hub drops the node).
    no_session_left(&grid, killed).await;
}

/// A pipeline on a Grid: with `shards = 2` and three one-slot nodes, the pool's pipeline has
/// its two stages on two different nodes and the third node's tab free. Killing the node of a stage mid-stream moves that stage to the free tab on
/// the third node; the pipeline replays its sessions there, and every stream equals the
/// reference without being replayed elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_spreads_its_stages_over_nodes_and_moves_a_lost_nodes_stage() {
    use shared_proto::Sampling;
    use tabpool::exec::GenParams;
    use tabpool::pool::{GenRequest, StreamEvent};

    let _procs = support::process_guard();
    let mut grid =
        Grid::start_with(&[(serde_json::json!({}), 1), (serde_json::json!({}), 1), (serde_json::json!({}), 1)], 60)
            .unwrap_or_else(|e| panic!("grid: {e:#}"));
    let mut kind = KindSpec::remote("grid", &grid.hub_url, BrowserKind::Chromium).with_max_tabs(3);
    kind.binary = Some("/usr/bin/chromium".into());
    let mut cfg = PoolConfig { min_tabs: 3, max_tabs: 3, kinds: vec![kind], ..PoolConfig::default() };
    cfg.scaling.enabled = false;
    cfg.generation.context_limit = 256;
    cfg.generation.sessions_per_tab = 4;
    cfg.generation.shards = 2;
    let host = Host::start(HostConfig { bind: grid.host_ip.parse().unwrap(), ..HostConfig::default() })
        .await
        .unwrap_or_else(|e| panic!("host: {e:#}"));
    let pool = Pool::with_host(host, cfg).await.unwrap_or_else(|e| panic!("{e:#}"));
    let name = pool.load(ModelSpec::smollm2()).await.unwrap_or_else(|e| panic!("{e:#}"));
    let node_of = |m: &tabpool::pool::PoolMetrics, tab: u64| {
        m.tabs.iter().find(|t| t.id == tab).and_then(|t| t.node.clone()).map(|n| n.uri)
    };
    let m = pool.metrics();
    let model = m.models.iter().find(|x| x.name == name).unwrap();
    assert_eq!(model.pipelines.len(), 1, "{}", m.render());
    let stages: Vec<u64> = model.pipelines[0].tabs.iter().map(|t| t.tab).collect();
    let on: Vec<String> = stages.iter().map(|&t| node_of(&m, t).expect("a grid tab knows its node")).collect();
    assert_ne!(on[0], on[1], "the stages share a node: {}", m.render());

    let (_, g) = pool.generation_model(None).unwrap();
    let greedy = GenParams { max_tokens: 24, sampling: Sampling::Greedy, stop_ids: g.model.stop_ids().to_vec() };
    let cases = support::smollm2_reference();
    let mut streams: Vec<_> = cases
        .iter()
        .take(2)
        .map(|c| {
            pool.generate(Some(&name), GenRequest { prompt: c.prompt_ids.clone(), params: greedy.clone() }).unwrap()
        })
        .collect();
    let mut got: Vec<(Vec<u32>, Option<u32>)> = vec![(Vec::new(), None); streams.len()];
    let mut killed = None;
    while got.iter().any(|g| g.1.is_none()) {
        for (i, rx) in streams.iter_mut().enumerate() {
            if got[i].1.is_some() {
                continue;
            }
            let ev = tokio::time::timeout(Duration::from_secs(180), rx.recv()).await.expect("stream stalled");
            match ev.expect("an answer") {
                StreamEvent::Token(t) => got[i].0.push(t),
                StreamEvent::Done(s) => got[i].1 = Some(s.replays),
                StreamEvent::Failed(e) => panic!("stream {i} failed after its stage's node was lost: {e}"),
                StreamEvent::Placed { .. } => {}
            }
        }
        if killed.is_none() && got.iter().all(|g| g.0.len() >= 3) {
            // Stage 1's whole node goes.
            let i = grid.nodes.iter().position(|n| n.uri == on[1]).unwrap();
            grid.kill_node(i);
            killed = Some(i);
        }
    }
    for ((ids, replays), c) in got.iter().zip(&cases) {
        let want: Vec<u32> = c.greedy_ids.iter().copied().take_while(|&t| t != 2).collect();
        assert_eq!(ids, &want, "token-identical across the loss of stage 1's node ({:?})", c.user);
        assert_eq!(*replays, Some(0), "the stream stayed on its pipeline");
    }
    let m = pool.metrics();
    let model = m.models.iter().find(|x| x.name == name).unwrap();
    let p = &model.pipelines[0];
    assert!(p.stage_recoveries >= 1 && p.replayed_tokens > 0, "{}", m.render());
    let now: Vec<String> = p.tabs.iter().map(|t| node_of(&m, t.tab).unwrap_or_default()).collect();
    assert_eq!(now[0], on[0], "stage 0 stayed: {}", m.render());
    assert!(now[1] != on[1] && now[1] != on[0], "stage 1 moved to the third node: {}", m.render());
    pool.shutdown().await;
    no_session_left(&grid, killed).await;
}

/// Every node but the `killed` one holds no session within 30 s of the pool's shutdown: the hub
/// lists a session until its node reports it ended, a moment after the delete was answered.
async fn no_session_left(grid: &Grid, killed: Option<usize>) {
    let t = Instant::now();
    loop {
        let held: usize = (0..grid.nodes.len()).filter(|&i| Some(i) != killed).map(|i| grid.sessions_on(i)).sum();
        if held == 0 {
            return;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "{held} session(s) still held: {}", grid.status());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
