//! The socket endpoint refuses peers with a foreign Origin, a wrong token, a wrong protocol
//! version or malformed frames — and keeps serving the real tab.

#[path = "support/mod.rs"]
mod support;

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
