//! Bad input to the CLI gets a clear message and a non-zero exit, never a crash.

use crate::support;

use std::io::Write;
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_tabpool");

fn run(args: &[&str], stdin: &[u8], env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn empty_text_is_refused() {
    let _procs = support::process_guard();
    let (code, err) = run(&["embed", "--backend", "cpu", "fine", "  "], b"", &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("text 2 is empty"), "{err}");
}

#[test]
fn invalid_utf8_on_stdin_is_refused() {
    let _procs = support::process_guard();
    let (code, err) = run(&["embed", "--backend", "cpu"], b"ok line\n\xff\xfe broken\n", &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not valid UTF-8") && err.contains("offset 8"), "{err}");
}

#[test]
fn missing_model_cache_names_the_fix() {
    let _procs = support::process_guard();
    let dir = std::env::temp_dir().join(format!("tabpool-empty-cache-{}", std::process::id()));
    let (code, err) = run(&["embed", "--backend", "cpu", "hello"], b"", &[("TABPOOL_MODELS", dir.to_str().unwrap())]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("model not found") && err.contains("scripts/setup.sh"), "{err}");
}

#[test]
fn long_text_is_truncated_and_said_so() {
    let _procs = support::process_guard();
    let long = "word ".repeat(600);
    let (code, err) = run(&["embed", "--backend", "cpu", "--json", &long], b"", &[]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("truncated"), "{err}");
}

#[test]
fn stdin_lines_are_embedded() {
    let _procs = support::process_guard();
    let out = Command::new(BIN)
        .args(["embed", "--backend", "cpu", "--json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(b"A cat sits outside\n\nA feline rests outdoors\n")?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["embeddings"].as_array().unwrap().len(), 2, "blank lines are skipped");
    assert_eq!(v["embeddings"][0].as_array().unwrap().len(), 384);
    let sim = v["similarity"][0][1].as_f64().unwrap();
    assert!(sim > 0.5, "paraphrases are similar: {sim}");
}

#[test]
fn no_browser_falls_back_to_the_cpu_executor_and_says_why() {
    let _procs = support::process_guard();
    let out = Command::new(BIN)
        .args(["embed", "--json", "--chromium", "/nonexistent/chromium", "--chromium-webnn", "/nonexistent/webnn"])
        .arg("A cat sits outside")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("falling back to the CPU executor") && err.contains("/nonexistent/chromium"), "{err}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["backend"], "cpu");
    let (code, err) = run(&["embed", "--backend", "webgpu", "--chromium", "/nonexistent/chromium", "x"], b"", &[]);
    assert_eq!(code, 1, "an explicit --backend webgpu does not fall back: {err}");
}

#[test]
fn pool_configuration_mistakes_are_named_before_any_browser_starts() {
    let _procs = support::process_guard();
    let cfg = std::env::temp_dir().join(format!("tabpool-bad-{}.toml", std::process::id()));
    std::fs::write(&cfg, "max_tabs = 2\nmax_tab = 3\n").unwrap();
    let (code, err) = run(&["serve", "--config", cfg.to_str().unwrap()], b"", &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("max_tab") && err.contains(cfg.to_str().unwrap()), "{err}");
    let _ = std::fs::remove_file(&cfg);

    let (code, err) = run(&["serve", "--min-tabs", "5", "--max-tabs", "2"], b"", &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("min_tabs 5 > max_tabs 2"), "{err}");
    let (code, err) = run(&["serve", "--kind", "safari"], b"", &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("safari") && err.contains("chromium-webnn"), "{err}");
    let (code, err) = run(&["serve", "--remote", "ftp://x"], b"", &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("WebDriver endpoint"), "{err}");
}

#[test]
fn status_without_a_running_pool_says_how_to_start_one() {
    let _procs = support::process_guard();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (code, err) = run(&["status", "--api", &format!("127.0.0.1:{port}")], b"", &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no tabpool serve") && err.contains("tabpool serve"), "{err}");
}
