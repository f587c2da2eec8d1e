//! `tabpool serve` as an OpenAI-compatible server, driven by what users drive it with: the
//! README's API examples (its curl block and its Python block, run as written there) and the
//! official `openai` Python package (`tests/clients/openai_client.py`: embeddings in both formats
//! against the float64 MiniLM reference, streamed greedy chat equal to the SmolLM2 reference,
//! include_usage, stop strings, completions, every error class the client raises — 429 from a
//! pool holding one session with one stream allowed to wait). Plus the envelope on refusals the
//! client cannot provoke: unknown routes, malformed JSON, an oversized body.

use crate::support;

use std::process::Command;
use std::time::Instant;

const KEY: &str = "k3y-for-tests-0123456789abcdef";

/// The README's code blocks between `<!-- ci: api-examples -->` and `<!-- /ci -->`: (language, code).
fn readme_examples() -> Vec<(String, String)> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let start = readme.find("<!-- ci: api-examples -->").expect("the README's API examples");
    let end = start + readme[start..].find("<!-- /ci -->").expect("their end marker");
    let mut blocks = Vec::new();
    let mut rest = &readme[start..end];
    while let Some(open) = rest.find("```") {
        let after = &rest[open + 3..];
        let (lang, body) = after.split_once('\n').unwrap();
        let close = body.find("```").expect("a closed code block");
        blocks.push((lang.trim().to_string(), body[..close].to_string()));
        rest = &body[close + 3..];
    }
    blocks
}

fn envelope(body: &str) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    let e = &v["error"];
    assert!(e["message"].is_string() && e["type"].is_string(), "OpenAI's error envelope: {body}");
    assert!(e.get("param").is_some() && e.get("code").is_some(), "param and code present (null or not): {body}");
    e.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_client_and_the_readme_examples_work_against_serve() {
    let _procs = support::process_guard();
    let python = support::pyclients();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("pool.toml");
    std::fs::write(&cfg, "[generation]\ncontext_limit = 512\nsessions_per_tab = 1\nmax_waiting = 1\n").unwrap();
    let (_serve, api) = support::start_serve(
        &[
            support::ONE_TAB,
            &["--model", "minilm", "--model", "smollm2", "--api-key", KEY, "--config", cfg.to_str().unwrap()],
        ]
        .concat(),
    )
    .await;
    let base = format!("http://{api}");

    // The README's examples, as written there.
    let examples = readme_examples();
    assert_eq!(examples.iter().map(|(l, _)| l.as_str()).collect::<Vec<_>>(), ["sh", "python"]);
    let run = |cmd: &mut Command| {
        let out = cmd.env("TABPOOL_API", &base).env("TABPOOL_API_KEY", KEY).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        stdout
    };
    let sh = run(Command::new("bash").args(["-euo", "pipefail", "-c", &examples[0].1]));
    assert!(sh.contains("\"object\":\"list\"") && sh.contains("SmolLM2-135M-Instruct"), "{sh}");
    assert!(sh.contains("\"object\":\"embedding\""), "{sh}");
    assert!(sh.contains("\" Paris\"") && sh.trim_end().ends_with("data: [DONE]"), "{sh}");
    let py = run(Command::new(&python).args(["-c", &examples[1].1]));
    assert_eq!(py, "384\nThe capital of France is Paris.\n");

    // The official client, check by check.
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/clients/openai_client.py");
    let out = run(Command::new(&python).args([script, &format!("{base}/v1"), KEY, data]));
    eprintln!("{out}");
    assert!(out.trim_end().ends_with("ALL OK"), "{out}");

    // Refusals in the envelope: unknown route, malformed JSON, oversized body, no key.
    let (code, body) = support::http_keyed(&api, "GET", "/v1/nope", "", Some(KEY)).await;
    assert_eq!((code, envelope(&body)["code"].as_str()), (404, Some("unknown_url")), "{body}");
    let (code, body) = support::http_keyed(&api, "POST", "/v1/chat/completions", "{\"messages\": [", Some(KEY)).await;
    assert_eq!((code, envelope(&body)["type"].as_str()), (400, Some("invalid_request_error")), "{body}");
    let huge = format!("{{\"input\": \"{}\"}}", "a ".repeat(1_100_000));
    let (code, body) = support::http_keyed(&api, "POST", "/v1/embeddings", &huge, Some(KEY)).await;
    assert_eq!(code, 413, "{body}");
    assert!(envelope(&body)["message"].as_str().unwrap().contains("2 MiB"), "{body}");
    let (code, body) = support::http(&api, "GET", "/v1/models", "").await;
    assert_eq!((code, envelope(&body)["type"].as_str()), (401, Some("authentication_error")), "{body}");
    let (code, body) = support::http_keyed(
        &api,
        "POST",
        "/v1/chat/completions",
        r#"{"messages": [{"role": "user", "content": "hi"}], "tools": [{}]}"#,
        Some(KEY),
    )
    .await;
    assert_eq!((code, envelope(&body)["param"].as_str()), (400, Some("tools")), "{body}");

    // /openapi.json: a valid OpenAPI document (openapi-spec-validator) naming every /v1 and /v2 route.
    let (code, spec) = support::http_keyed(&api, "GET", "/openapi.json", "", Some(KEY)).await;
    assert_eq!(code, 200, "{spec}");
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, &spec).unwrap();
    let check = "import json, sys\nfrom openapi_spec_validator import validate\nd = json.load(open(sys.argv[1]))\nvalidate(d)\nprint(' '.join(sorted(d['paths'])))";
    let paths = run(Command::new(&python).args(["-c", check]).arg(&file));
    assert_eq!(
        paths.trim(),
        "/v1/audio/transcriptions /v1/chat/completions /v1/completions /v1/embeddings /v1/events /v1/images/classifications /v1/models \
         /v1/models/{model} /v2 /v2/models/{model} /v2/models/{model}/infer",
        "{spec}"
    );

    // /metrics: needs the key; parsed by prometheus_client; counts what the clients above did.
    let (code, _) = support::http(&api, "GET", "/metrics", "").await;
    assert_eq!(code, 401, "/metrics without the key");
    let t = Instant::now();
    let scrapes = 50;
    let mut text = String::new();
    for _ in 0..scrapes {
        let (code, body) = support::http_keyed(&api, "GET", "/metrics", "", Some(KEY)).await;
        assert_eq!(code, 200, "{body}");
        text = body;
    }
    eprintln!(
        "/metrics: {} bytes, {:.2} ms per scrape over loopback ({scrapes} scrapes)",
        text.len(),
        t.elapsed().as_secs_f64() * 1e3 / scrapes as f64
    );
    let file = dir.path().join("metrics.txt");
    std::fs::write(&file, &text).unwrap();
    let parser = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/clients/parse_metrics.py");
    let parsed: serde_json::Value = serde_json::from_str(&run(Command::new(&python).arg(parser).arg(&file))).unwrap();
    let samples = parsed["samples"].as_array().unwrap();
    let sum = |name: &str, want: &[(&str, &str)]| -> f64 {
        samples
            .iter()
            .filter(|s| s[0] == name && want.iter().all(|(k, v)| s[1][*k] == *v))
            .map(|s| s[2].as_f64().unwrap())
            .sum()
    };
    let chat = "/v1/chat/completions";
    assert!(sum("tabpool_requests_total", &[("endpoint", chat), ("status", "200")]) >= 8.0, "{text}");
    assert!(sum("tabpool_requests_total", &[("endpoint", chat), ("status", "429")]) >= 1.0, "{text}");
    assert!(sum("tabpool_requests_total", &[("endpoint", chat), ("status", "400")]) >= 4.0, "{text}");
    assert!(sum("tabpool_requests_total", &[("endpoint", "/v1/models"), ("status", "401")]) >= 2.0, "{text}");
    assert!(sum("tabpool_requests_total", &[("endpoint", "/v1/embeddings"), ("model", "all-MiniLM-L6-v2")]) >= 4.0);
    let smol = [("model", "SmolLM2-135M-Instruct")];
    assert!(sum("tabpool_generation_tokens_total", &smol) >= 100.0, "{text}");
    assert!(sum("tabpool_time_to_first_token_seconds_count", &smol) >= 8.0, "{text}");
    assert!(sum("tabpool_inter_token_latency_seconds_count", &smol) >= 50.0, "{text}");
    assert!(sum("tabpool_batch_size_count", &[("model", "all-MiniLM-L6-v2")]) >= 1.0, "{text}");
    assert_eq!(sum("tabpool_tabs", &[("kind", "chromium-webnn")]), 1.0, "{text}");
    assert_eq!(sum("tabpool_breaker_state", &[("scope", "tab")]), 0.0, "{text}");
    eprintln!("{} samples in {} families", samples.len(), parsed["families"]);
}

/// Resident memory of process `pid` (the server alone: its browsers are other processes).
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_streaming_clients_each_end_with_done_or_an_error_and_memory_stays_bounded() {
    let _procs = support::process_guard();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("pool.toml");
    // 8 sessions run, 32 streams may wait: of 64 at once, the rest are refused (429) at once.
    std::fs::write(&cfg, "[generation]\ncontext_limit = 256\nsessions_per_tab = 8\nmax_waiting = 32\n").unwrap();
    let (serve, api) = support::start_serve(
        &[support::ONE_TAB, &["--model", "smollm2", "--no-default-model", "--config", cfg.to_str().unwrap()]].concat(),
    )
    .await;
    let pid = serve.child.id();
    let cases = support::smollm2_reference();
    let mut after = Vec::new();
    for round in 0..2 {
        let t = Instant::now();
        let clients: Vec<_> = (0..64)
            .map(|i| {
                let api = api.clone();
                let user = cases[i % cases.len()].user.clone();
                tokio::spawn(async move {
                    let body = serde_json::json!({
                        "messages": [{ "role": "user", "content": user }], "max_tokens": 16, "temperature": 0,
                        "stream": true, "stream_options": { "include_usage": true },
                    });
                    support::http(&api, "POST", "/v1/chat/completions", &body.to_string()).await
                })
            })
            .collect();
        let (mut done, mut refused, mut tokens) = (0, 0, 0u64);
        for c in clients {
            let (code, body) = c.await.unwrap();
            match code {
                200 => {
                    assert!(body.ends_with("data: [DONE]\n\n"), "a stream was cut: {body}");
                    let usage = body
                        .lines()
                        .filter_map(|l| l.strip_prefix("data: "))
                        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
                        .find_map(|v| v["usage"]["completion_tokens"].as_u64());
                    tokens += usage.expect("the usage chunk");
                    done += 1;
                }
                429 => {
                    assert_eq!(envelope(&body)["code"], "rate_limit_exceeded", "{body}");
                    refused += 1;
                }
                other => panic!("status {other}: {body}"),
            }
        }
        let rss = rss_mib(pid);
        eprintln!(
            "round {round}: 64 clients → {done} streams ended with [DONE] ({tokens} tokens), {refused} refused (429), \
             in {:.1} s; serve RSS {rss:.0} MiB",
            t.elapsed().as_secs_f64()
        );
        assert_eq!(done + refused, 64);
        assert!(done >= 40, "8 running + 32 waiting were admitted: {done}");
        after.push(rss);
    }
    // The second round of the same load may not grow the server much past the first.
    assert!(after[1] - after[0] < 64.0, "serve RSS grew from {:.0} to {:.0} MiB", after[0], after[1]);
    let (code, status) = support::http(&api, "GET", "/status", "").await;
    assert_eq!(code, 200);
    let m: serde_json::Value = serde_json::from_str(&status).unwrap();
    let running: i64 = m["models"].as_array().unwrap().iter().map(|m| m["streams_running"].as_i64().unwrap()).sum();
    assert_eq!(running, 0, "every stream ended");
}
