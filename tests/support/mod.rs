//! Helpers shared by the end-to-end tests. Nothing here fakes a browser: tests start the real
//! host, which starts real chromedriver and headless Chromium.

#![allow(dead_code)]

use std::collections::HashSet;
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tabpool::browser::procs::{self, ProcId};
use tabpool::{Host, HostConfig};

/// Kills, when dropped — at the end of the test, or while a failed assert unwinds — every process
/// the test started that is still running: browsers and drivers a host or pool launched, `tabpool`
/// children and their browsers, a WebDriver server the test started itself. Create it first in
/// every test that starts processes (`let _procs = support::process_guard();`).
///
/// "Started by this test" is every descendant of this test process that appeared after the guard
/// was made, plus browser processes reparented to init that still name a profile of this process
/// (`tabpool-profile-<pid>-…`). So that this is exact, guarded tests of one binary take turns:
/// `process_guard` waits until no other guard is alive (cargo runs the test binaries themselves one by one).
pub struct ProcessGuard {
    before: HashSet<ProcId>,
}

/// Whether a guard is alive in this test binary, and its wake-up for the next one.
static TURN: Mutex<bool> = Mutex::new(false);
static TURN_FREE: Condvar = Condvar::new();

/// A [`ProcessGuard`] for the calling test, once no other guarded test of this binary runs.
pub fn process_guard() -> ProcessGuard {
    let mut busy = TURN.lock().unwrap_or_else(PoisonError::into_inner);
    while *busy {
        busy = TURN_FREE.wait(busy).unwrap_or_else(PoisonError::into_inner);
    }
    *busy = true;
    ProcessGuard { before: ours().into_iter().map(|(p, _)| p).collect() }
}

impl ProcessGuard {
    fn started(&self) -> Vec<(ProcId, String)> {
        ours().into_iter().filter(|(p, _)| !self.before.contains(p)).collect()
    }
}

/// Live descendants of this process, and browser processes naming one of its profiles.
fn ours() -> Vec<(ProcId, String)> {
    let me = std::process::id() as i32;
    let mut all = procs::descendants(me);
    for p in procs::with_cmdline_containing(&format!("tabpool-profile-{me}-")) {
        if !all.iter().any(|(q, _)| *q == p) {
            all.push((p, "browser (reparented)".into()));
        }
    }
    all.retain(|(p, _)| procs::alive(*p));
    all
}

impl Drop for ProcessGuard {
    fn drop(&mut self) {
        // Kill until a quiet spell: a pool still running (its tasks outlive a failed test's
        // future until the runtime stops) may relaunch a browser it just lost.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut quiet_since = Instant::now();
        while Instant::now() < deadline && quiet_since.elapsed() < Duration::from_millis(400) {
            let left = self.started();
            if !left.is_empty() {
                let why = if std::thread::panicking() { "the test failed" } else { "the test ended" };
                let names: Vec<String> = left.iter().map(|(p, c)| format!("{} {c}", p.pid)).collect();
                eprintln!(
                    "ProcessGuard ({why}): killing {} process(es) left running: {}",
                    left.len(),
                    names.join(", ")
                );
                let ids: Vec<ProcId> = left.iter().map(|(p, _)| *p).collect();
                procs::kill_all(&ids);
                while ids.iter().any(|p| procs::alive(*p)) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
                quiet_since = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // The profiles of browsers killed above (a clean shutdown removes its own).
        let prefix = format!("tabpool-profile-{}-", std::process::id());
        for dir in std::fs::read_dir(std::env::temp_dir()).into_iter().flatten().flatten() {
            if dir.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_dir_all(dir.path());
            }
        }
        *TURN.lock().unwrap_or_else(PoisonError::into_inner) = false;
        TURN_FREE.notify_one();
    }
}

/// Deterministic values in [-1, 1).
pub fn values(n: usize, seed: u64) -> Vec<f32> {
    tabpool::commands::random_values(n, seed)
}

/// A started host; panics with the reason (page not built, no browser) so the test fails loudly.
pub async fn host() -> Host {
    Host::start(HostConfig::default())
        .await
        .unwrap_or_else(|e| panic!("host did not start: {e:#} (run `bash scripts/setup.sh` first)"))
}

/// One sentence of `tests/data/minilm_embeddings.json` (float64 reference forward; provenance in
/// `tests/data/README.md`).
pub struct RefSentence {
    pub text: String,
    pub input_ids: Vec<u32>,
    pub embedding: Vec<f32>,
}

pub fn minilm_reference() -> Vec<RefSentence> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/minilm_embeddings.json");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| RefSentence {
            text: s["text"].as_str().unwrap().to_string(),
            input_ids: s["input_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect(),
            embedding: s["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect(),
        })
        .collect()
}

/// One case of `tests/data/smollm2_greedy.json` (float64 reference forward of SmolLM2 with its
/// weights dequantized; greedy ids stop at token 2 or after 24 tokens; provenance in the README).
#[derive(serde::Deserialize)]
pub struct GenCase {
    pub user: String,
    pub prompt: String,
    pub prompt_ids: Vec<u32>,
    pub greedy_ids: Vec<u32>,
    pub text: String,
}

pub fn smollm2_reference() -> Vec<GenCase> {
    #[derive(serde::Deserialize)]
    struct Reference {
        cases: Vec<GenCase>,
    }
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/smollm2_greedy.json");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    serde_json::from_str::<Reference>(&text).unwrap().cases
}

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// The acceptance bar against the float64 reference.
pub const MIN_COSINE: f64 = 0.9999;
pub const MAX_ABS: f32 = 1e-3;

/// Panics unless `v` matches the reference sentence within the acceptance bar.
pub fn check_against_reference(v: &[f32], r: &RefSentence) {
    let (cos, diff) = (cosine(v, &r.embedding), max_abs_diff(v, &r.embedding));
    assert!(cos >= MIN_COSINE && diff <= MAX_ABS, "{:?}: cosine {cos}, max abs {diff}", r.text);
}

/// SIGKILL the renderers among a tab's processes (`(pid, is_renderer)`, from `tab_processes`),
/// as a crashed tab; how many were killed.
pub fn kill_renderers(procs: &[(i32, bool)]) -> usize {
    let mut n = 0;
    for (pid, renderer) in procs {
        if *renderer {
            // SAFETY: a plain kill(2) of a process this test started.
            unsafe { libc::kill(*pid, libc::SIGKILL) };
            n += 1;
        }
    }
    n
}

/// A `tabpool serve` child: on drop (also while a failed assert unwinds) Ctrl-C, so it closes
/// its browsers itself, then SIGKILL for it and its process tree if it has not stopped in 30 s.
pub struct Serve {
    pub child: std::process::Child,
}

impl Serve {
    pub fn new(child: std::process::Child) -> Serve {
        Serve { child }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let pid = self.child.id() as i32;
        let tree: Vec<_> = tabpool::browser::procs::descendants(pid).into_iter().map(|(p, _)| p).collect();
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(pid, libc::SIGINT) };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while self.child.try_wait().ok().flatten().is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = self.child.kill();
        tabpool::browser::procs::kill_all(&tree);
        let _ = self.child.wait();
    }
}

/// Send a request over HTTP/1.0 (the body then ends when the connection does: no chunking to
/// undo) and return the open socket.
pub async fn http_send(api: &str, method: &str, path: &str, body: &str) -> tokio::net::TcpStream {
    http_send_keyed(api, method, path, body, None).await
}

/// As `http_send`, with `Authorization: Bearer KEY` when a key is given.
pub async fn http_send_keyed(
    api: &str,
    method: &str,
    path: &str,
    body: &str,
    key: Option<&str>,
) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(api).await.unwrap();
    let auth = key.map(|k| format!("Authorization: Bearer {k}\r\n")).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.0\r\nHost: {api}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    s
}

/// (status, body) of a whole HTTP/1.0 response.
pub async fn http(api: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    http_keyed(api, method, path, body, None).await
}

/// As `http`, with `Authorization: Bearer KEY` when a key is given.
pub async fn http_keyed(api: &str, method: &str, path: &str, body: &str, key: Option<&str>) -> (u16, String) {
    use tokio::io::AsyncReadExt;
    let mut s = http_send_keyed(api, method, path, body, key).await;
    let mut out = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(180), s.read_to_end(&mut out))
        .await
        .expect("an answer within 180 s")
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let code = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

/// `serve` flags for a pool of exactly one WebNN-shell tab that records no history.
pub const ONE_TAB: &[&str] = &["--min-tabs", "1", "--max-tabs", "1", "--kind", "chromium-webnn", "--no-history"];

/// `tabpool serve --api 127.0.0.1:0 ARGS…` started and waited for (up to 240 s, failing at once
/// if it exits): the child and the API address it printed. Port 0, read back, because a port
/// picked here and freed could be taken by one of serve's own browsers or drivers before serve
/// binds it (a test then talks to the wrong listener).
pub async fn start_serve(args: &[&str]) -> (Serve, String) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tabpool"))
        .args(["serve", "--api", "127.0.0.1:0"])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    let addr = api_address(child.stdout.take().unwrap());
    let mut serve = Serve::new(child);
    let api = wait_for_api(&mut serve.child, &addr).await;
    (serve, api)
}

/// Reads a `serve`'s stdout to its end (a full pipe would block it) and sends the API address
/// it prints once ready.
pub fn api_address(stdout: std::process::ChildStdout) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line.split("`tabpool status --api ").nth(1).and_then(|r| r.split('`').next()) {
                let _ = tx.send(addr.to_string());
            }
        }
    });
    rx
}

/// The address from `api_address`, within 240 s; panics at once if `child` exits first.
pub async fn wait_for_api(child: &mut std::process::Child, addr: &std::sync::mpsc::Receiver<String>) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(240);
    loop {
        if let Ok(api) = addr.try_recv() {
            return api;
        }
        assert!(std::time::Instant::now() < deadline, "serve did not open its API within 240 s");
        if let Some(code) = child.try_wait().unwrap() {
            panic!("serve exited with {code} (its error is above)");
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// One image of `tests/data/efficientnet/reference.json` (float64 EfficientNet-Lite0 forward;
/// provenance in that folder's README).
pub struct VisionRef {
    pub file: String,
    pub path: std::path::PathBuf,
    /// (class, label, softmax probability), most likely first.
    pub top5: Vec<(usize, String, f32)>,
    pub logits: Vec<f32>,
}

pub fn efficientnet_reference() -> Vec<VisionRef> {
    let dir = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/efficientnet"));
    let path = dir.join("reference.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let file = c["file"].as_str().unwrap().to_string();
            VisionRef {
                path: dir.join(&file),
                file,
                top5: c["top5"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| {
                        (
                            t[0].as_u64().unwrap() as usize,
                            t[1].as_str().unwrap().to_string(),
                            t[2].as_f64().unwrap() as f32,
                        )
                    })
                    .collect(),
                logits: c["logits"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect(),
            }
        })
        .collect()
}

/// The acceptance bar for EfficientNet-Lite0 logits against the float64 reference. An f32
/// forward with the reference's summation order lands at a few 1e-5 (the reference's own note;
/// the host's CPU executor: 7.8e-6); WebGPU and WebNN sum in other orders (tiled matmuls, their
/// own conv algorithms) through 65 layers, so the bar is the project's f32 bar for MiniLM too
/// (`MAX_ABS`). It still decides the ranking: the closest neighbours among the reference's top
/// 6 are 0.057 apart, so logits within 1e-3 cannot reorder the top 5.
pub const VISION_MAX_LOGIT_DIFF: f32 = 1e-3;
/// Softmax probabilities of logits that each moved ≤ `VISION_MAX_LOGIT_DIFF` move by at most
/// a factor e^(2·1e-3), i.e. < 2e-3 absolute; the reference rounds them to 6 decimals.
pub const VISION_MAX_PROB_DIFF: f32 = 2e-3;

/// The top `k` classes of `logits`, most likely first (ties: lower class first).
pub fn top_classes(logits: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

/// Panics unless `logits` have the reference's top 5 and lie within `VISION_MAX_LOGIT_DIFF` of
/// its logits; the max |logit diff|.
pub fn check_vision_logits(what: &str, logits: &[f32], r: &VisionRef) -> f32 {
    assert_eq!(logits.len(), r.logits.len(), "{what} {}: {} logits", r.file, logits.len());
    let want: Vec<usize> = r.top5.iter().map(|t| t.0).collect();
    assert_eq!(top_classes(logits, 5), want, "{what} {}: top-5 classes", r.file);
    let diff = max_abs_diff(logits, &r.logits);
    assert!(diff <= VISION_MAX_LOGIT_DIFF, "{what} {}: max |logit diff| {diff:.3e} > {VISION_MAX_LOGIT_DIFF}", r.file);
    diff
}

/// Panics unless `top` — (class, label, probability), most likely first — is the reference's
/// top 5 with probabilities within `VISION_MAX_PROB_DIFF`.
pub fn check_vision_top5(what: &str, top: &[(usize, String, f32)], r: &VisionRef) {
    assert_eq!(top.len(), 5, "{what} {}: {top:?}", r.file);
    for ((c, l, p), (rc, rl, rp)) in top.iter().zip(&r.top5) {
        assert_eq!((c, l), (rc, rl), "{what} {}: top-5 {top:?} vs reference {:?}", r.file, r.top5);
        assert!((p - rp).abs() <= VISION_MAX_PROB_DIFF, "{what} {}: {rl} probability {p} vs reference {rp}", r.file);
    }
}

/// The venv setup installs the clients into.
pub fn pyclients() -> std::path::PathBuf {
    let dir = std::env::var_os("TABPOOL_PYCLIENTS").map(std::path::PathBuf::from).unwrap_or_else(|| {
        std::path::PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/tabpool/pyclients")
    });
    let python = dir.join("bin/python");
    assert!(python.exists(), "{} is missing: run `bash scripts/setup.sh`", python.display());
    python
}

/// `v` as a URL query value: every byte but the unreserved characters percent-encoded.
pub fn query_value(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
