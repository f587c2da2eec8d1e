//! `tabpool serve` as a user runs it: a real pool in real tabs, `tabpool status` prints its
//! metrics, `POST /embed` serves correct vectors and refuses bad requests with 4xx, and Ctrl-C
//! stops it cleanly.

use crate::support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_tabpool");

/// A minimal HTTP/1.1 POST (the test's own client, independent of the host's).
async fn post(addr: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let code = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (code, body)
}

fn status(api: &str, json: bool) -> (bool, String) {
    let mut args = vec!["status", "--api", api];
    if json {
        args.push("--json");
    }
    let out = Command::new(BIN).args(&args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_answers_status_and_embed_then_stops_on_ctrl_c() {
    let _procs = support::process_guard();
    let dir = tempfile::tempdir().unwrap();
    let mut serve = Command::new(BIN)
        .args(["serve", "--min-tabs", "1", "--max-tabs", "2", "--kind", "chromium-webnn", "--api", "127.0.0.1:0"])
        .arg("--history")
        .arg(dir.path().join("h.duckdb"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let addr = support::api_address(serve.stdout.take().unwrap());
    let api = support::wait_for_api(&mut serve, &addr).await;
    let started = Instant::now();
    let text = loop {
        let (ok, text) = status(&api, false);
        if ok {
            break text;
        }
        if let Some(code) = serve.try_wait().unwrap() {
            panic!("serve exited with {code}");
        }
        assert!(started.elapsed() < Duration::from_secs(120), "serve did not come up: {text}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(text.contains("1 tabs connected") && text.contains("chromium-webnn × 1"), "{text}");
    assert!(text.contains("all-MiniLM-L6-v2 (webnn-cpu)") || text.contains("all-MiniLM-L6-v2 (webgpu)"), "{text}");

    let refs = support::minilm_reference();
    let body = serde_json::json!({ "texts": [refs[0].text, refs[1].text] }).to_string();
    let (code, answer) = post(&api, "/embed", &body).await;
    assert_eq!(code, 200, "{answer}");
    let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
    for (i, r) in refs.iter().take(2).enumerate() {
        let vec: Vec<f32> = v["vectors"][i].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
        support::check_against_reference(&vec, r);
    }

    let (code, answer) = post(&api, "/embed", r#"{"texts": ["   "]}"#).await;
    assert_eq!(code, 400, "{answer}");
    assert!(answer.contains("bad_input"), "{answer}");
    let (code, answer) = post(&api, "/embed", r#"{"texts": "not a list"}"#).await;
    assert!((400..500).contains(&code), "{code} {answer}");
    let (code, answer) = post(&api, "/embed", r#"{"texts": ["x"], "model": "nope"}"#).await;
    assert_eq!(code, 404, "{answer}");
    let huge = serde_json::json!({ "texts": [ "word ".repeat(600_000) ] }).to_string();
    let (code, _) = post(&api, "/embed", &huge).await;
    assert_eq!(code, 413, "a body over the limit is refused");

    let (ok, json) = status(&api, true);
    assert!(ok, "{json}");
    let m: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(m["connections"], 1);
    assert_eq!(m["models"][0]["served"], 1);
    assert!(m["memory"]["total_mib"].as_f64().unwrap() > 0.0);

    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(serve.id() as i32, libc::SIGINT);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let code = loop {
        if let Some(c) = serve.try_wait().unwrap() {
            break c;
        }
        assert!(Instant::now() < deadline, "serve did not stop on Ctrl-C");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(code.code(), Some(130), "serve exits as interrupted: {code}");
    assert!(!status(&api, false).0, "the endpoint is gone");
}
