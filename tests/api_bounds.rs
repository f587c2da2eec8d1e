//! Issue 20, "nothing a client sends can grow the server without bound or lock others out", and
//! "an accepted request is answered exactly once", against `tabpool serve` with real tabs:
//! metric labels only from known models; event-stream listeners and connection floods from one
//! address cannot starve others (and `/health` answers even past the limits); bodies shaped to
//! amplify are refused by count while parsing; tokenising 2 MiB never stalls the runtime (tab
//! heartbeats); a silent request is bounded by its deadline, not cut by the idle timer; and a
//! stopping server writes every answer in flight before it exits.

use crate::support;

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A connection to `api` from the loopback address `from` (127.0.0.0/8 is all ours), so one
/// test plays several clients.
async fn connect_from(api: &str, from: &str) -> TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{from}:0").parse().unwrap()).unwrap();
    sock.connect(api.parse().unwrap()).await.unwrap()
}

/// Send an HTTP/1.1 request (kept open) on `s`.
async fn send(s: &mut TcpStream, api: &str, method: &str, path: &str, body: &str) {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {api}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let _ = s.write_all(body.as_bytes()).await;
}

/// Read from `s` until `want` appears in what was read (or the peer closes, or 30 s pass).
async fn read_until(s: &mut TcpStream, want: &str) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(30);
    while !String::from_utf8_lossy(&out).contains(want) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(head: &str) -> u16 {
    head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

/// A `/proc/PID/status` memory line (VmRSS, VmHWM), in MiB.
fn mem_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib / 1024.0
}

/// How far `pid`'s resident memory peaks above where it is now while `work` runs: the peak
/// (VmHWM) is reset first (`clear_refs` 5), so model loading's earlier peak cannot hide it.
async fn peak_growth_mib(pid: u32, work: impl std::future::Future<Output = ()>) -> f64 {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
    let now = mem_mib(pid, "VmRSS:");
    work.await;
    mem_mib(pid, "VmHWM:") - now
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_listeners_and_shaped_bodies_cannot_lock_others_out_or_grow_the_server() {
    let _procs = support::process_guard();
    let (serve, api) = support::start_serve(&[support::ONE_TAB, &["--model", "minilm"]].concat()).await;
    let pid = serve.child.id();

    // 1. Metric labels take only known models: 60 unknown names make no series of their own.
    for i in 0..60 {
        let body = format!(r#"{{"input": "hi", "model": "no-such-model-{i}"}}"#);
        let (code, _) = support::http(&api, "POST", "/v1/embeddings", &body).await;
        assert_eq!(code, 404);
    }
    let (code, metrics) = support::http(&api, "GET", "/metrics", "").await;
    assert_eq!(code, 200);
    assert!(!metrics.contains("no-such-model"), "an unknown model became a label value");
    let other = metrics.lines().find(|l| l.starts_with("tabpool_requests_total") && l.contains("model=\"other\""));
    assert!(other.is_some_and(|l| l.contains("status=\"404\"") && l.ends_with(" 60")), "{other:?}");

    // 3. Bodies shaped to amplify are refused by count while parsing; peak memory barely moves.
    let t = Instant::now();
    let mut growth = Vec::new();
    let lists = format!(r#"{{"input": [{}]}}"#, vec!["[0]"; 500_000].join(","));
    let ids = format!(r#"{{"input": [{}]}}"#, vec!["7"; 600_000].join(","));
    let texts = format!(r#"{{"texts": [{}]}}"#, vec!["\"a\""; 400_000].join(","));
    let unknown = format!(r#"{{"input": "hi", "junk": [{}]}}"#, vec!["[0]"; 400_000].join(","));
    for (path, body, code, names) in [
        ("/v1/embeddings", &lists, 413, "1024"),
        ("/v1/embeddings", &ids, 413, "8192"),
        ("/embed", &texts, 413, "1024"),
        ("/v1/embeddings", &unknown, 400, "junk"),
    ] {
        assert!(body.len() < 2 << 20);
        let (api, body) = (api.clone(), body.clone());
        let g = peak_growth_mib(pid, async move {
            let (got, answer) = support::http(&api, "POST", path, &body).await;
            assert_eq!(got, code, "{answer}");
            assert!(answer.contains(names), "names the limit or field: {answer}");
        })
        .await;
        growth.push(g);
    }
    eprintln!(
        "four 2 MiB bodies shaped to amplify: refused in {:?}; serve peak RSS growth {growth:.1?} MiB",
        t.elapsed()
    );
    assert!(growth.iter().all(|g| *g < 16.0), "peak RSS grew {growth:.1?} MiB");
    // The limits refuse only what is over them.
    let fine = format!(r#"{{"input": [{}]}}"#, vec!["[101, 2000]"; 1024].join(","));
    let (code, body) = support::http(&api, "POST", "/v1/embeddings", &fine).await;
    assert_eq!(code, 200, "{body}");

    // 2. One address opening event streams and connections without end takes its share only:
    // 3 × 60 listeners from three addresses fill the stream budget (128), one of them (80 more
    // connections) its connection share (64); another client is still served at once, and
    // `/health` answers even the client over its share.
    let mut held = Vec::new();
    let (mut streaming, mut refused_streams) = (0, 0);
    for from in ["127.0.0.2", "127.0.0.3", "127.0.0.4"] {
        for _ in 0..60 {
            let mut s = connect_from(&api, from).await;
            send(&mut s, &api, "GET", "/v1/events", "").await;
            let head = read_until(&mut s, "\r\n\r\n").await;
            match status_of(&head) {
                200 => streaming += 1,
                429 => {
                    assert!(head.to_lowercase().contains("retry-after"), "{head}");
                    refused_streams += 1;
                }
                other => panic!("status {other}: {head}"),
            }
            held.push(s);
        }
    }
    eprintln!("180 event listeners from 3 addresses: {streaming} streaming, {refused_streams} refused (429)");
    assert_eq!((streaming, refused_streams), (128, 52), "the stream budget is 128");
    let (mut served, mut over) = (0, 0);
    for _ in 0..80 {
        let mut s = connect_from(&api, "127.0.0.5").await;
        // Half-sent headers: a slow client holding its connection.
        s.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n").await.unwrap();
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut late = connect_from(&api, "127.0.0.5").await;
    send(&mut late, &api, "GET", "/health", "").await;
    let answer = read_until(&mut late, "}").await;
    if status_of(&answer) == 200 {
        served += 1;
    }
    let mut late = connect_from(&api, "127.0.0.5").await;
    send(&mut late, &api, "GET", "/status", "").await;
    let answer = read_until(&mut late, "}").await;
    if status_of(&answer) == 503 {
        over += 1;
    }
    assert_eq!((served, over), (1, 1), "past its share: /health ok, the rest 503: {answer}");
    assert!(answer.contains("limit per client"), "{answer}");
    let t = Instant::now();
    for path in ["/health", "/status", "/metrics"] {
        let (code, body) = support::http(&api, "GET", path, "").await;
        assert_eq!(code, 200, "{path}: {body}");
    }
    let mut mine = connect_from(&api, "127.0.0.1").await;
    send(&mut mine, &api, "GET", "/v1/events", "").await;
    let head = read_until(&mut mine, "}").await;
    assert_eq!(status_of(&head), 429, "the stream budget is shared: {head}");
    eprintln!("another client beside 260 held connections: served in {:?}", t.elapsed());
    assert!(t.elapsed() < Duration::from_secs(5), "not after the header timeout of the held ones");
    drop(held);
    // A listener that left is noticed at the latest by the next keep-alive write (15 s).
    let t = Instant::now();
    loop {
        let mut mine = connect_from(&api, "127.0.0.1").await;
        send(&mut mine, &api, "GET", "/v1/events", "").await;
        let head = read_until(&mut mine, "}").await;
        if status_of(&head) == 200 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(40), "places never came back: {head}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!("stream places came back {:?} after the listeners left", t.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_requests_live_to_their_deadline_heartbeats_flow_and_shutdown_writes_every_answer() {
    let _procs = support::process_guard();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("pool.toml");
    // Heartbeats every 50 ms; one unanswered for 500 ms makes the tab unresponsive (a recovery
    // is recorded): a runtime stalled by tokenising would miss them.
    std::fs::write(&cfg, "[health]\nheartbeat_interval_ms = 50\nheartbeat_timeout_ms = 500\nheartbeat_misses = 1\n")
        .unwrap();
    let (mut serve, api) = support::start_serve(
        &[
            support::ONE_TAB,
            &["--model", "smollm2", "--no-default-model", "--config", cfg.to_str().unwrap()],
            &["--idle-timeout", "1", "--request-timeout", "8"],
        ]
        .concat(),
    )
    .await;
    let count = r#""prompt": "Count from 1 to 500: 1, 2, 3, 4,", "temperature": 0"#;

    // 5. A non-streaming completion silent for longer than the idle timeout is answered. 96
    // tokens: a tab decoding 60 tok/s (two threads here) still takes 1.6 s, one four times
    // slower stays within the 8-s request timeout (48 tokens took 0.86 s once decode got fast).
    let t = Instant::now();
    let (code, body) =
        support::http(&api, "POST", "/v1/completions", &format!(r#"{{{count}, "max_tokens": 96}}"#)).await;
    let took = t.elapsed();
    eprintln!("a completion silent for {took:?} with a 1-s idle timeout: {code}");
    assert!(took > Duration::from_millis(1200), "not silent long enough to test anything ({took:?})");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"finish_reason\":\"length\""), "{body}");
    // ... and one past its deadline gets a status, not an EOF.
    let t = Instant::now();
    let (code, body) =
        support::http(&api, "POST", "/v1/completions", &format!(r#"{{{count}, "max_tokens": 2000}}"#)).await;
    eprintln!("a completion past the 8-s request timeout: {code} after {:?}", t.elapsed());
    assert_eq!(code, 504, "{body}");
    assert!(body.contains("request timeout"), "{body}");

    // 4. Four 1.9 MiB prompts tokenise at once; the tab's heartbeats (50 ms, 500 ms timeout)
    // keep flowing and other clients are served meanwhile.
    let words = "lorem ipsum dolor sit amet ".repeat(1_900_000 / 27);
    let t = Instant::now();
    let big: Vec<_> = (0..4)
        .map(|_| {
            let (api, words) = (api.clone(), words.clone());
            tokio::spawn(async move {
                let body = serde_json::json!({ "messages": [{ "role": "user", "content": words }], "max_tokens": 1 });
                support::http(&api, "POST", "/v1/chat/completions", &body.to_string()).await
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    while !big.iter().all(|b| b.is_finished()) {
        let h = Instant::now();
        let (code, _) = support::http(&api, "GET", "/health", "").await;
        assert_eq!(code, 200);
        slowest = slowest.max(h.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let tokenising = t.elapsed();
    for b in big {
        let (code, body) = b.await.unwrap();
        assert_eq!(code, 400, "{body}");
        assert!(body.contains("context_length_exceeded"), "{body}");
    }
    let (_, status) = support::http(&api, "GET", "/status", "").await;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let recoveries = status["recoveries"].as_array().unwrap();
    eprintln!(
        "4 × 1.9 MiB prompts tokenised in {tokenising:?}: /health at worst {slowest:?}, {} recoveries",
        recoveries.len()
    );
    assert!(tokenising > Duration::from_millis(1000), "tokenising was too quick to stall anything ({tokenising:?})");
    assert!(recoveries.is_empty(), "a heartbeat was missed while prompts tokenised: {recoveries:?}");
    assert!(slowest < tokenising / 2, "/health waited {slowest:?} of {tokenising:?}");

    // 8. Shutdown with a stream open, a whole completion and an event listener in flight: each
    // gets its whole answer (a stream its last chunk, a body its full length) before exit.
    let mut stream = TcpStream::connect(&api).await.unwrap();
    send(&mut stream, &api, "POST", "/v1/completions", &format!(r#"{{{count}, "max_tokens": 300, "stream": true}}"#))
        .await;
    let first = read_until(&mut stream, "data: ").await;
    assert_eq!(status_of(&first), 200, "{first}");
    let mut whole = TcpStream::connect(&api).await.unwrap();
    send(&mut whole, &api, "POST", "/v1/completions", &format!(r#"{{{count}, "max_tokens": 60}}"#)).await;
    let mut events = TcpStream::connect(&api).await.unwrap();
    send(&mut events, &api, "GET", "/v1/events", "").await;
    let hello = read_until(&mut events, "subscribed").await;
    assert_eq!(status_of(&hello), 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(serve.child.id() as i32, libc::SIGINT) };
    let rest = first + &read_until(&mut stream, "\r\n0\r\n\r\n").await;
    assert!(rest.ends_with("\r\n0\r\n\r\n"), "the stream was cut: {rest}");
    assert!(rest.contains("data: [DONE]") || rest.contains("shutting_down"), "{rest}");
    let whole = read_until(&mut whole, "\u{0}").await;
    let (head, body) = whole.split_once("\r\n\r\n").unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| l.to_lowercase().strip_prefix("content-length: ").map(|v| v.trim().parse().unwrap()))
        .unwrap_or_else(|| panic!("{head}"));
    assert_eq!(body.len(), length, "the whole body was written: {whole}");
    assert!(matches!(status_of(head), 200 | 503), "{head}");
    let events = hello + &read_until(&mut events, "\r\n0\r\n\r\n").await;
    assert!(events.contains("\"type\":\"shutdown\"") && events.ends_with("\r\n0\r\n\r\n"), "{events}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let code = loop {
        if let Some(c) = serve.child.try_wait().unwrap() {
            break c;
        }
        assert!(Instant::now() < deadline, "serve did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(code.code(), Some(130), "{code}");
}
