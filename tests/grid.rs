//! The pool on a real Selenium Grid 4 (tests/support/grid.rs): a hub and two nodes, each node in
//! a network namespace of its own, pinned to its own core. The host binds only the bridge's
//! address, so the tabs on the nodes reach it across an interface, as from other machines.

use std::time::{Duration, Instant};

use crate::support;
use crate::support::grid::Grid;

use tabpool::browser::{BrowserKind, KindSpec};
use tabpool::pool::{ModelSpec, Pool, PoolConfig};
use tabpool::{Host, HostConfig};

/// Two tabs, one per node, serve MiniLM equal to the reference; killing one node's JVM and
/// browsers mid-load loses its tab, and every request still gets its right answer from the
/// other node; when the pool stops, the Grid holds no session (no leaked slot).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_on_a_grid_serves_from_two_nodes_and_survives_losing_one() {
    let _procs = support::process_guard();
    let mut grid = Grid::start(2);
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
