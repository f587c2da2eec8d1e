//! Issue 12, "the API is locked" and "servers are bounded", against `tabpool serve` as a user
//! runs it (real tabs): keys, Host allow-list, keyless non-loopback binds refused, request
//! limits named in 413s, `?since=` nonsense refused with 400 while reports run off the request
//! path, slow and idle connections closed, open connections capped, private files, and browser
//! profiles removed on every exit path (Ctrl-C during start-up included).

use crate::support;

use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_tabpool");
const KEY: &str = "k3y-for-tests-0123456789abcdef";

/// A `tabpool serve` child, SIGKILLed with its browsers if the test fails before stopping it.
struct Serve {
    child: Child,
    addr: std::sync::mpsc::Receiver<String>,
}

impl Serve {
    fn start(extra: &[&str]) -> Serve {
        let mut child = Command::new(BIN)
            .args(["serve", "--min-tabs", "1", "--max-tabs", "1", "--kind", "chromium-webnn", "--api", "127.0.0.1:0"])
            // Embeddings are what these tests send; loading the generation model too would only
            // make each start slower.
            .args(["--model", "minilm"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr = support::api_address(child.stdout.take().unwrap());
        Serve { child, addr }
    }

    /// The API address, once serve is ready.
    async fn api(&mut self) -> String {
        support::wait_for_api(&mut self.child, &self.addr).await
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGINT, then wait for the exit code.
    async fn interrupt(&mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.pid(), libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(c) = self.child.try_wait().unwrap() {
                return c;
            }
            assert!(Instant::now() < deadline, "serve did not stop on Ctrl-C");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let tree: Vec<_> = tabpool::browser::procs::descendants(self.pid()).into_iter().map(|(p, _)| p).collect();
            let _ = self.child.kill();
            tabpool::browser::procs::kill_all(&tree);
            let _ = self.child.wait();
        }
    }
}

/// The test's own HTTP/1.1 client: (status, body).
async fn http(api: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(api).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req += &format!("Host: {api}\r\n");
    }
    for (k, v) in headers {
        req += &format!("{k}: {v}\r\n");
    }
    req += "\r\n";
    s.write_all(req.as_bytes()).await.unwrap();
    // The server may answer (413) and close before reading a body past its limit.
    let _ = s.write_all(body.as_bytes()).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let code = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

const AUTH: (&str, &str) = ("Authorization", "Bearer k3y-for-tests-0123456789abcdef");

fn profiles_of(pid: i32) -> Vec<std::path::PathBuf> {
    let prefix = format!("tabpool-profile-{pid}-");
    std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect()
}

fn socket_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter(|l| l.to_string_lossy().starts_with("socket:"))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn an_open_api_beyond_loopback_and_weak_keys_are_refused_before_anything_starts() {
    let _procs = support::process_guard();
    let run = |args: &[&str]| {
        let t = Instant::now();
        let out = Command::new(BIN).args(args).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned(), t.elapsed())
    };
    let (ok, err, took) = run(&["serve", "--api", "0.0.0.0:0"]);
    assert!(!ok && err.contains("without an API key") && err.contains("--api-key"), "{err}");
    assert!(took < Duration::from_secs(5), "refused before any browser started ({took:?})");
    let (ok, err, _) = run(&["serve", "--api", "127.0.0.1:0", "--api-key", "short"]);
    assert!(!ok && err.contains("at least 16"), "{err}");
    let (ok, err, _) = run(&["serve", "--api-key-file", "/nonexistent/key"]);
    assert!(!ok && err.contains("/nonexistent/key"), "{err}");
    // A key file others can read is refused, as ssh refuses such a private key.
    let dir = tempfile::tempdir().unwrap();
    let open_key = dir.path().join("key");
    std::fs::write(&open_key, format!("{KEY}\n")).unwrap();
    std::fs::set_permissions(&open_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (ok, err, took) = run(&["serve", "--api-key-file", open_key.to_str().unwrap()]);
    assert!(!ok && err.contains("chmod 600"), "{err}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    // Configuration nonsense is named before anything starts too.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("pool.toml");
    std::fs::write(&cfg, "hedge_factor = nan\n").unwrap();
    let (ok, err, took) = run(&["serve", "--config", cfg.to_str().unwrap()]);
    assert!(!ok && err.contains("hedge_factor"), "{err}");
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_is_locked_bounded_and_private() {
    let _procs = support::process_guard();
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, format!("{KEY}\n")).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let history = dir.path().join("private/h.duckdb");
    let mut serve = Serve::start(&[
        "--api-key-file",
        key_file.to_str().unwrap(),
        "--history",
        history.to_str().unwrap(),
        "--allow-host",
        "tabpool.internal",
        "--metrics-public",
    ]);
    let api = serve.api().await;
    let t = Instant::now();
    loop {
        let out = Command::new(BIN).args(["status", "--api", &api, "--api-key-file"]).arg(&key_file).output().unwrap();
        if out.status.success() {
            break;
        }
        if let Some(code) = serve.child.try_wait().unwrap() {
            panic!("serve exited with {code}");
        }
        assert!(t.elapsed() < Duration::from_secs(120), "serve did not come up");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Keys: every route but /health (and the data-free dashboard shell) needs one.
    let (code, body) = http(&api, "GET", "/health", &[], "").await;
    assert_eq!(code, 200, "{body}");
    for path in ["/status", "/status.txt", "/report.md", "/nope", "/openapi.json", "/v1/events"] {
        let (code, body) = http(&api, "GET", path, &[], "").await;
        assert_eq!(code, 401, "{path}: {body}");
        assert!(body.contains("\"kind\":\"unauthorized\"") || body.contains("\"authentication_error\""), "{body}");
    }
    // --metrics-public: the counts, and only them, without the key.
    let (code, body) = http(&api, "GET", "/metrics", &[], "").await;
    assert!(code == 200 && body.contains("# TYPE tabpool_tabs gauge"), "{code}: {body}");
    let (code, _) = http(&api, "POST", "/v1/embeddings", &[], r#"{"input": "hi"}"#).await;
    assert_eq!(code, 401);
    let (code, _) = http(&api, "POST", "/embed", &[], r#"{"texts": ["hi"]}"#).await;
    assert_eq!(code, 401);
    let (code, _) =
        http(&api, "GET", "/status", &[("Authorization", "Bearer k3y-for-tests-0123456789abcdeX")], "").await;
    assert_eq!(code, 401, "a wrong key of the right length");
    let (code, _) = http(&api, "GET", "/status", &[("Authorization", "Bearer k3y")], "").await;
    assert_eq!(code, 401, "a prefix of the key");
    let (code, _) =
        http(&api, "GET", "/status", &[("Authorization", "bearer k3y-for-tests-0123456789abcdef")], "").await;
    assert_eq!(code, 200, "the scheme is case-insensitive (RFC 7235)");
    let out = Command::new(BIN).args(["status", "--api", &api]).env_remove("TABPOOL_API_KEY").output().unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("401"));
    let out = Command::new(BIN).args(["status", "--api", &api]).env("TABPOOL_API_KEY", KEY).output().unwrap();
    assert!(out.status.success(), "the key from the environment");

    // Host allow-list (DNS rebinding): a foreign name is refused even with the key.
    let (code, body) = http(&api, "GET", "/status", &[AUTH, ("Host", "evil.example")], "").await;
    assert_eq!(code, 421, "{body}");
    let (code, _) = http(&api, "GET", "/health", &[("Host", "evil.example:7878")], "").await;
    assert_eq!(code, 421, "even /health");
    for host in ["localhost", "127.0.0.1:1234", "tabpool.internal:80", "[::1]:7878"] {
        let (code, body) = http(&api, "GET", "/status", &[AUTH, ("Host", host)], "").await;
        assert_eq!(code, 200, "{host}: {body}");
    }

    // Limits named in 413s; a valid request still served.
    let refs = support::minilm_reference();
    let body = serde_json::json!({ "texts": [refs[0].text] }).to_string();
    let (code, answer) = http(&api, "POST", "/embed", &[AUTH, ("Content-Type", "application/json")], &body).await;
    assert_eq!(code, 200, "{answer}");
    let many = serde_json::json!({ "texts": vec!["x"; 1025] }).to_string();
    let (code, answer) = http(&api, "POST", "/embed", &[AUTH, ("Content-Type", "application/json")], &many).await;
    assert_eq!(code, 413, "{answer}");
    assert!(answer.contains("1024"), "names the limit: {answer}");
    let huge = serde_json::json!({ "texts": ["word ".repeat(600_000)] }).to_string();
    let (code, answer) = http(&api, "POST", "/embed", &[AUTH, ("Content-Type", "application/json")], &huge).await;
    assert_eq!(code, 413, "{answer}");
    assert!(answer.contains("2097152 bytes"), "names the limit: {answer}");

    // Reports: nonsense spans are 400 (they used to panic a task: 500), and two reports at
    // once never freeze the request path.
    for since in ["-1h", "NaNh", "1e20d"] {
        let (code, answer) = http(&api, "GET", &format!("/report.json?since={since}"), &[AUTH], "").await;
        assert_eq!(code, 400, "{since}: {answer}");
        assert!(answer.contains("--since"), "{answer}");
    }
    let (a, b) = (api.clone(), api.clone());
    let r1 = tokio::spawn(async move { http(&a, "GET", "/report.html", &[AUTH], "").await.0 });
    let r2 = tokio::spawn(async move { http(&b, "GET", "/report.md?since=1h", &[AUTH], "").await.0 });
    let t = Instant::now();
    let (code, _) = http(&api, "GET", "/status", &[AUTH], "").await;
    assert_eq!(code, 200);
    eprintln!("/status during two reports: {:?}", t.elapsed());
    assert_eq!((r1.await.unwrap(), r2.await.unwrap()), (200, 200));

    // Files: the history database and its folder are private; so are browser profiles.
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&history), 0o600, "history file");
    assert_eq!(mode(history.parent().unwrap()), 0o700, "history folder created by serve");
    let profiles = profiles_of(serve.pid());
    assert!(!profiles.is_empty(), "the tab's profile");
    for p in &profiles {
        assert_eq!(mode(p), 0o700, "{}", p.display());
    }

    // A client that never finishes its headers is dropped (header-read timeout, 10 s).
    let mut slow = tokio::net::TcpStream::connect(&api).await.unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n").await.unwrap();
    let t = Instant::now();
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(30), slow.read(&mut buf)).await.expect("closed within 30 s");
    eprintln!("half-sent headers: closed after {:?} ({n:?})", t.elapsed());
    assert!(t.elapsed() < Duration::from_secs(15), "closed by the header-read timeout, not later");

    // Open connections are capped: 300 idle clients do not take 300 of the host's descriptors,
    // and once the idle ones are dropped a real client is served.
    let before = socket_fds(serve.pid());
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(tokio::net::TcpStream::connect(&api).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = socket_fds(serve.pid());
    eprintln!("host sockets: {before} before, {during} with 300 idle clients");
    assert!(during <= before + 256, "capped at 256 API connections: {before} → {during}");
    let t = Instant::now();
    let (code, _) = http(&api, "GET", "/health", &[], "").await;
    assert_eq!(code, 200);
    eprintln!("a client behind 300 idle ones was served after {:?}", t.elapsed());
    drop(idle);

    let code = serve.interrupt().await;
    assert_eq!(code.code(), Some(130));
    assert!(profiles.iter().all(|p| !p.exists()), "profiles removed at exit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_during_start_up_leaves_no_profile_and_no_browser() {
    let _procs = support::process_guard();
    let mut serve = Serve::start(&["--no-history"]);
    let pid = serve.pid();
    // Interrupt while the first tab's browser is starting: its profile exists, the pool does not.
    let t = Instant::now();
    while profiles_of(pid).is_empty() {
        assert!(t.elapsed() < Duration::from_secs(60), "no browser started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let profile = profiles_of(pid).remove(0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let code = serve.interrupt().await;
    assert_eq!(code.code(), Some(130), "{code}");
    assert!(!profile.exists(), "{} left behind", profile.display());
    let needle = profile.display().to_string();
    let left = tabpool::browser::procs::with_cmdline_containing(&needle);
    assert!(left.is_empty(), "browser processes left: {left:?}");
}
