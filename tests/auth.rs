//! The socket endpoint refuses peers with a foreign Origin, a wrong token, a wrong protocol
//! version or malformed frames — and keeps serving the real tab.

use crate::support;

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use shared_proto::{Capabilities, Frame, Hello, Limits, PROTOCOL_VERSION, RejectReason, ToHost, ToTab, decode, encode};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

const T: Duration = Duration::from_secs(60);

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(url: &str, origin: Option<&str>) -> Result<Ws, WsError> {
    let mut req = url.into_client_request().unwrap();
    if let Some(o) = origin {
        req.headers_mut().insert("origin", o.parse().unwrap());
    }
    tokio_tungstenite::connect_async(req).await.map(|(ws, _)| ws)
}

fn hello(tab_id: u64, token: &str, version: u32) -> Message {
    let h = ToHost::Hello(Box::new(Hello {
        protocol_version: version,
        tab_id,
        token: token.into(),
        caps: Capabilities::default(),
    }));
    Message::Binary(encode(&Frame::new(h), &Limits::DEFAULT).unwrap().into())
}

/// The next binary frame as a host message, or None once the socket closes.
async fn next_to_tab(ws: &mut Ws) -> Option<ToTab> {
    loop {
        match tokio::time::timeout(T, ws.next()).await.expect("host answers in time") {
            Some(Ok(Message::Binary(b))) => return Some(decode::<ToTab>(b, &Limits::DEFAULT).unwrap().msg),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => continue,
        }
    }
}

async fn expect_reject(ws: &mut Ws, want: RejectReason) {
    match next_to_tab(ws).await {
        Some(ToTab::Reject { reason, .. }) => assert_eq!(reason, want),
        other => panic!("expected Reject({want:?}), got {other:?}"),
    }
    assert!(next_to_tab(ws).await.is_none(), "socket is closed after a Reject");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impostors_are_refused_and_the_host_keeps_serving() {
    let _procs = support::process_guard();
    let mut host = support::host().await;
    let url = host.socket_url();
    let origin = host.origin();
    let pending = host.expect_tab();

    // Foreign or missing Origin: refused at the HTTP upgrade with 403.
    for bad_origin in [Some("http://evil.example"), None] {
        match connect(&url, bad_origin).await {
            Err(WsError::Http(resp)) => assert_eq!(resp.status(), 403),
            other => panic!("origin {bad_origin:?} must be refused, got {:?}", other.map(|_| "connected")),
        }
    }
    // Right origin, wrong token.
    let mut ws = connect(&url, Some(&origin)).await.unwrap();
    ws.send(hello(pending.id, "0123456789abcdef0123456789abcdef", PROTOCOL_VERSION)).await.unwrap();
    expect_reject(&mut ws, RejectReason::BadToken).await;
    // Right token, wrong protocol version.
    let mut ws = connect(&url, Some(&origin)).await.unwrap();
    ws.send(hello(pending.id, &pending.token, PROTOCOL_VERSION + 1)).await.unwrap();
    expect_reject(&mut ws, RejectReason::VersionMismatch).await;
    // A tab id nobody launched.
    let mut ws = connect(&url, Some(&origin)).await.unwrap();
    ws.send(hello(999, &pending.token, PROTOCOL_VERSION)).await.unwrap();
    expect_reject(&mut ws, RejectReason::UnknownTab).await;
    // Garbage and text instead of Hello: closed without a Welcome.
    for msg in [Message::Binary(Bytes::from_static(b"\x00\x01garbage")), Message::Text("hello?".into())] {
        let mut ws = connect(&url, Some(&origin)).await.unwrap();
        ws.send(msg).await.unwrap();
        assert!(next_to_tab(&mut ws).await.is_none(), "closed without a reply");
    }
    assert_eq!(host.refused_peers(), 7, "every impostor is counted and logged");

    // The pending registration survived all that: a peer with the real secret joins...
    let mut ws = connect(&url, Some(&origin)).await.unwrap();
    ws.send(hello(pending.id, &pending.token, PROTOCOL_VERSION)).await.unwrap();
    assert!(matches!(next_to_tab(&mut ws).await, Some(ToTab::Welcome { tab_id }) if tab_id == pending.id));
    let token = pending.token.clone();
    let joined = pending.joined(T).await.unwrap();
    // ...and a malformed frame after the handshake closes that socket, and only that one.
    ws.send(Message::Binary(Bytes::from_static(b"TBP1\xff\xff\xff\xff"))).await.unwrap();
    assert!(next_to_tab(&mut ws).await.is_none(), "violating socket is closed");
    let deadline = std::time::Instant::now() + T;
    while joined.is_connected() {
        assert!(std::time::Instant::now() < deadline, "host marks the tab disconnected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(matches!(joined.ping(T).await, Err(tabpool::TabError::Closed(_))));

    // A real browser tab still joins and works.
    let tab = host.launch_tab().await.expect("a real tab joins after the impostors");
    tab.ping(T).await.expect("real tab answers");
    // Replaying a joined tab's secret is refused.
    let mut ws = connect(&url, Some(&origin)).await.unwrap();
    ws.send(hello(joined.id(), &token, PROTOCOL_VERSION)).await.unwrap();
    expect_reject(&mut ws, RejectReason::UnknownTab).await;
    tab.ping(T).await.expect("real tab still answers");
    host.shutdown().await;
}

/// Upgrade by hand, send the header of a 100 MiB binary frame and 1 KiB of it; how long until
/// the host closes the connection.
async fn announce_huge_frame(url: &str, origin: &str) -> Duration {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = url.trim_start_matches("ws://").trim_end_matches('/');
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let upgrade = format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nOrigin: {origin}\r\n\r\n"
    );
    s.write_all(upgrade.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    let mut frame = vec![0x82u8, 0x80 | 127];
    frame.extend_from_slice(&(100u64 << 20).to_be_bytes());
    frame.extend_from_slice(&[1, 2, 3, 4]); // mask key (clients must mask)
    frame.extend_from_slice(&[0u8; 1024]);
    s.write_all(&frame).await.unwrap();
    let t = std::time::Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(30), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return t.elapsed(),
            Ok(Ok(_)) => continue, // a close frame, then EOF
            Err(_) => return t.elapsed(),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthenticated_peer_may_send_one_small_frame_only() {
    let _procs = support::process_guard();
    let mut host = support::host().await;
    let (url, origin) = (host.socket_url(), host.origin());
    let refused = host.refused_peers();
    // 1 MiB before any Hello (the limit for an unauthenticated peer is 64 KiB): cut off by the
    // socket itself, never buffered whole, never answered.
    for msg in [Message::Binary(vec![0u8; 1 << 20].into()), Message::Text("x".repeat(1 << 20).into())] {
        let mut ws = connect(&url, Some(&origin)).await.unwrap();
        let _ = ws.send(msg).await;
        assert!(next_to_tab(&mut ws).await.is_none(), "closed without a reply");
    }
    // A frame announcing 100 MiB, of which 1 KiB arrives: the host hangs up on the header
    // alone instead of waiting (and buffering) for the rest.
    let closed_after = announce_huge_frame(&url, &origin).await;
    eprintln!("a 100 MiB frame announced before Hello: closed after {closed_after:?}");
    assert!(closed_after < Duration::from_secs(5), "closed on the header, not at the Hello timeout");
    let deadline = std::time::Instant::now() + T;
    while host.refused_peers() < refused + 3 {
        assert!(std::time::Instant::now() < deadline, "both counted as refused");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A real tab still joins, and frames far above 64 KiB flow both ways once it is
    // authenticated: an element-wise add of two 2 MiB operands (4 MiB in, 2 MiB back).
    let tab = host.launch_tab().await.expect("a real tab joins");
    let n = 512 * 1024;
    let a: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let inputs =
        vec![shared_proto::Tensor::from_f32(vec![n as u32], &a), shared_proto::Tensor::from_f32(vec![n as u32], &a)];
    let (out, _) = tab.kernel(shared_proto::Kernel::Add, inputs, T).await.expect("a 4 MiB frame after Hello");
    let sum = out[0].to_f32().unwrap();
    assert_eq!((sum.len(), sum[n - 1]), (n, 2.0 * (n - 1) as f32));
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_bound_to_ipv6_loopback_serves_tabs() {
    let _procs = support::process_guard();
    let cfg = tabpool::HostConfig { bind: "::1".parse().unwrap(), ..tabpool::HostConfig::default() };
    let mut host = tabpool::Host::start(cfg).await.unwrap_or_else(|e| panic!("{e:#}"));
    assert!(host.origin().starts_with("http://[::1]:"), "{}", host.origin());
    assert!(host.socket_url().starts_with("ws://[::1]:"), "{}", host.socket_url());
    let tab = host.launch_tab().await.unwrap_or_else(|e| panic!("a tab over [::1]: {e:#}"));
    tab.ping(T).await.expect("the tab answers over IPv6 loopback");
    host.shutdown().await;
}
