//! A flood of idle connections to the tab socket (issue 13): the endpoint holds at most
//! `PRE_AUTH_CONNECTIONS` connections that have not authenticated, closes every one past that at
//! once and counts it, and once the flood is gone a real tab joins and works.

use crate::support;

use std::time::{Duration, Instant};

use tabpool::server::socket::PRE_AUTH_CONNECTIONS;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Connections the flood opens: well past the cap.
const FLOOD: usize = 3 * PRE_AUTH_CONNECTIONS;

/// TCP connections whose local end is `port` on 127.0.0.1 that the host has not closed
/// (established, or closed by the peer only): the connections it holds a descriptor for. This
/// test's own ends have `port` as their remote end.
fn held_on(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let local = format!("0100007F:{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // 01 ESTABLISHED, 08 CLOSE_WAIT.
            f.len() > 3 && f[1] == local && (f[3] == "01" || f[3] == "08")
        })
        .count()
}

/// Whether the host closed `s`: EOF or a reset within `wait`, rather than nothing at all.
async fn closed_by_host(s: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(tokio::time::timeout(wait, s.read(&mut buf)).await, Ok(Ok(0) | Err(_)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_past_the_cap_are_closed_and_a_tab_joins_after() {
    let _procs = support::process_guard();
    let mut host = support::host().await;
    let addr = host.socket_url().trim_start_matches("ws://").trim_end_matches('/').to_string();
    let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
    let refused_before = host.refused_peers();

    // Connect and say nothing: each one would wait out the host's Hello timeout (15 s).
    let mut flood = Vec::with_capacity(FLOOD);
    for _ in 0..FLOOD {
        flood.push(TcpStream::connect(&addr).await.expect("the kernel completes the handshake"));
    }
    let want = (FLOOD - PRE_AUTH_CONNECTIONS) as u64;
    let t = Instant::now();
    while host.refused_peers() - refused_before < want {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{} of {FLOOD} idle connections refused in 5 s (cap {PRE_AUTH_CONNECTIONS}); the host holds {}",
            host.refused_peers() - refused_before,
            held_on(port),
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused_in = t.elapsed();
    let held = held_on(port);
    let waits = flood.iter_mut().map(|s| closed_by_host(s, Duration::from_millis(200)));
    let closed = futures_util::future::join_all(waits).await.into_iter().filter(|&c| c).count();
    eprintln!(
        "{FLOOD} idle connections: {} refused in {refused_in:?}, {closed} closed by the host, {held} held by it",
        host.refused_peers() - refused_before,
    );
    assert_eq!(host.refused_peers() - refused_before, want, "exactly the connections past the cap are refused");
    assert_eq!(closed, FLOOD - PRE_AUTH_CONNECTIONS, "every refused connection is closed at once");
    assert_eq!(held, PRE_AUTH_CONNECTIONS, "the host holds the cap's worth of connections, no more");

    // While the cap is full a newcomer is turned away at once too, not queued.
    let mut late = TcpStream::connect(&addr).await.unwrap();
    assert!(closed_by_host(&mut late, Duration::from_secs(2)).await, "a connection past the cap is closed");

    // The flood leaves: every place it held is given back (the host sees each close before Hello)...
    drop(flood);
    drop(late);
    let t = Instant::now();
    while held_on(port) > 0 {
        assert!(t.elapsed() < Duration::from_secs(5), "the host still holds {} connections", held_on(port));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ...and a real browser tab joins and answers.
    let tab = host.launch_tab().await.expect("a real tab joins after the flood");
    tab.ping(Duration::from_secs(30)).await.expect("the tab answers");
    host.shutdown().await;
}
