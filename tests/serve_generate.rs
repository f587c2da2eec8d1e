//! `tabpool serve --model smollm2` as a user runs it (real tab): `POST /generate` streams the
//! reference's greedy tokens as server-sent events; a client that disconnects mid-stream cancels
//! its session and frees its KV cache in the tab (the tab holds ONE session, so the next request
//! could never run otherwise); bad requests get 4xx naming what is wrong.

use crate::support;

use std::time::{Duration, Instant};

use support::{http as request, http_send as send};
use tokio::io::AsyncReadExt;

/// The server-sent events of a body: (event, JSON data).
fn events(body: &str) -> Vec<(String, serde_json::Value)> {
    body.split("\n\n")
        .filter_map(|block| {
            let mut event = None;
            let mut data = None;
            for line in block.lines() {
                if let Some(e) = line.strip_prefix("event: ") {
                    event = Some(e.to_string());
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data = serde_json::from_str(d).ok();
                }
            }
            Some((event?, data?))
        })
        .collect()
}

fn streams_running(api_status: &str) -> i64 {
    let m: serde_json::Value = serde_json::from_str(api_status).unwrap();
    m["models"].as_array().unwrap().iter().map(|m| m["streams_running"].as_i64().unwrap()).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_streams_tokens_and_a_disconnect_frees_the_session() {
    let _procs = support::process_guard();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("pool.toml");
    std::fs::write(&cfg, "[generation]\ncontext_limit = 512\nsessions_per_tab = 1\n").unwrap();
    let (serve, api) =
        support::start_serve(&[support::ONE_TAB, &["--model", "smollm2", "--config", cfg.to_str().unwrap()]].concat())
            .await;
    let cases = support::smollm2_reference();

    // A streamed chat reply: the reference's greedy tokens and text, then `done` with `stop`.
    let body = serde_json::json!({ "prompt": cases[0].user, "max_tokens": 24 }).to_string();
    let (code, text) = request(&api, "POST", "/generate", &body).await;
    assert_eq!(code, 200, "{text}");
    let evs = events(&text);
    assert_eq!(evs.first().map(|e| e.0.as_str()), Some("placed"), "{text}");
    let ids: Vec<u32> = evs.iter().filter(|e| e.0 == "token").map(|e| e.1["id"].as_u64().unwrap() as u32).collect();
    let reference: Vec<u32> = cases[0].greedy_ids.iter().copied().take_while(|&t| t != 2).collect();
    assert_eq!(ids, reference, "streamed greedy ids");
    let streamed: String = evs.iter().filter(|e| e.0 != "placed").map(|e| e.1["text"].as_str().unwrap_or("")).collect();
    assert_eq!(streamed, cases[0].text);
    let (last, done) = evs.last().unwrap();
    assert_eq!((last.as_str(), done["finish_reason"].as_str()), ("done", Some("stop")), "{text}");
    assert_eq!(done["prompt_tokens"].as_u64(), Some(cases[0].prompt_ids.len() as u64));

    // A client that goes away after 3 tokens of a long generation: its session is cancelled.
    let body = serde_json::json!({ "prompt": cases[0].user, "max_tokens": 400 }).to_string();
    let mut s = send(&api, "POST", "/generate", &body).await;
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while seen.matches("event: token").count() < 3 {
        let n = tokio::time::timeout(Duration::from_secs(120), s.read(&mut buf)).await.expect("tokens flow").unwrap();
        assert!(n > 0, "the stream ended early: {seen}");
        seen += &String::from_utf8_lossy(&buf[..n]);
    }
    drop(s);
    let t = Instant::now();
    loop {
        let (code, status) = request(&api, "GET", "/status", "").await;
        assert_eq!(code, 200, "{status}");
        if streams_running(&status) == 0 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "the abandoned stream still runs 20 s after its client left");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("the abandoned stream ended {:.1} s after its client left", t.elapsed().as_secs_f64());
    // The tab holds one session: this runs only if the abandoned one was closed in the tab.
    let body = serde_json::json!({ "prompt": cases[1].user, "max_tokens": 24, "stream": false }).to_string();
    let (code, text) = request(&api, "POST", "/generate", &body).await;
    assert_eq!(code, 200, "{text}");
    let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
    let reference: Vec<u32> = cases[1].greedy_ids.iter().copied().take_while(|&t| t != 2).collect();
    let ids: Vec<u32> = answer["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    assert_eq!(ids, reference);
    assert_eq!(answer["text"].as_str(), Some(cases[1].text.as_str()));

    // Bad requests: 4xx naming the problem, nothing generated.
    for (body, code, needle) in [
        (serde_json::json!({ "prompt": "hi", "max_tokens": 600 }), 413, "context limit of 512"),
        (serde_json::json!({ "prompt": "hi", "max_tokens": 0 }), 400, "max_tokens"),
        (serde_json::json!({ "prompt": "hi", "model": "gpt-9" }), 404, "gpt-9"),
        (serde_json::json!({ "prompt": "hi", "messages": [{ "role": "user", "content": "hi" }] }), 400, "either"),
        (serde_json::json!({ "prompt": "hi", "temperature": -1 }), 400, "temperature"),
        (serde_json::json!({ "messages": [{ "role": "robot", "content": "hi" }] }), 400, "robot"),
        (serde_json::json!({ "prompt": "hi", "max_token": 3 }), 422, "max_token"),
    ] {
        let (got, text) = request(&api, "POST", "/generate", &body.to_string()).await;
        assert_eq!(got, code, "{body} → {text}");
        assert!(text.contains(needle), "{body} → {text}");
    }
    // This serve has no embedding model.
    let (got, text) = request(&api, "POST", "/embed", r#"{"texts": ["x"]}"#).await;
    assert_eq!(got, 503, "{text}");
    drop(serve);
}
