//! No chromedriver or Chromium process survives the CLI: neither on Ctrl-C nor on normal exit.

use crate::support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tabpool::browser::procs::{self, ProcId};

const BIN: &str = env!("CARGO_BIN_EXE_tabpool");

fn assert_browser_tree(seen: &HashMap<ProcId, String>) {
    let names: Vec<&String> = seen.values().collect();
    assert!(names.iter().any(|n| n.contains("chromedriver")), "chromedriver was started: {names:?}");
    assert!(
        names.iter().any(|n| n.contains("chrom") && !n.contains("chromedriver")),
        "chromium was started: {names:?}"
    );
}

fn assert_all_gone(seen: &HashMap<ProcId, String>) {
    let alive: Vec<_> = seen.iter().filter(|(p, _)| procs::alive(**p)).collect();
    assert!(alive.is_empty(), "processes outlived tabpool: {alive:?}");
}

#[test]
fn ctrl_c_closes_tabs_browser_and_driver() {
    let _procs = support::process_guard();
    ctrl_c_leaves_nothing("chromium");
}

#[test]
fn ctrl_c_closes_an_attached_webnn_browser_too() {
    let _procs = support::process_guard();
    // This browser is started by the host itself (attach mode), not by chromedriver.
    ctrl_c_leaves_nothing("chromium-webnn");
}

fn ctrl_c_leaves_nothing(kind: &str) {
    let mut child = Command::new(BIN)
        // Port 0: the tests in this file run at once.
        .args(["serve", "--tabs", "1", "--browser", kind, "--api", "127.0.0.1:0", "--no-history", "--model", "minilm"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    // Read on a thread so a serve that never gets ready fails the test instead of hanging it.
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Drain to the end: a closed pipe would make serve's next println fail.
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains("tab(s) ready") => break,
            Ok(_) => {}
            Err(e) => {
                let _ = child.kill();
                panic!("serve --browser {kind} was not ready within 180 s ({e})");
            }
        }
    }
    let seen: HashMap<ProcId, String> = procs::descendants(pid).into_iter().collect();
    assert_browser_tree(&seen);
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "tabpool exits within 30 s of Ctrl-C");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(130), "interrupted exit code");
    assert_all_gone(&seen);
}

#[test]
fn normal_exit_leaves_no_browser_processes() {
    let _procs = support::process_guard();
    let mut child = Command::new(BIN)
        .args(["matmul", "--m", "16", "--k", "16", "--n", "16", "--json"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    // Record every descendant seen while it runs.
    let mut seen = HashMap::new();
    let status = loop {
        seen.extend(procs::descendants(pid));
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "matmul succeeds");
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON line");
    assert_eq!(v["ok"], true, "{v}");
    assert_browser_tree(&seen);
    assert_all_gone(&seen);
}
