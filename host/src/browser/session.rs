//! Browser sessions over WebDriver (fantoccini): local Chromium, attached Chromium, Firefox through
//! its own geckodriver, or a remote endpoint. One browser process per tab.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use fantoccini::{Client, ClientBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;

/// Flags every launch gets (DESIGN.md, measured on these machines): headless, no network
/// chatter that the closed network would refuse, a fresh profile, and WebGPU enabled.
pub const BASE_FLAGS: &[&str] = &[
    "--headless=new",
    "--no-sandbox",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--disable-dev-shm-usage",
    "--enable-unsafe-webgpu",
];

/// How to start one browser with one tab.
#[derive(Debug, Clone)]
pub enum Launch {
    /// Chromium through the host's shared chromedriver at `driver_url`; with `attach`, the host
    /// starts the binary with `--remote-debugging-port` and attaches the driver through
    /// `goog:chromeOptions.debuggerAddress` (builds chromedriver cannot launch, such as the npm
    /// headless shell with WebNN).
    Chromium { driver_url: String, binary: PathBuf, flags: Vec<String>, attach: bool },
    /// Firefox through its own geckodriver process (geckodriver serves one session at a time).
    Firefox { geckodriver: PathBuf, binary: PathBuf, flags: Vec<String> },
    /// A session on someone else's WebDriver endpoint: nothing local to start or kill.
    Remote { url: String, engine: super::BrowserKind, binary: Option<PathBuf>, flags: Vec<String> },
}

/// One browser with one tab, and its throwaway profile directory.
pub struct BrowserSession {
    client: Client,
    /// A local profile directory (none for remote sessions): every process of this browser has it
    /// on its command line, which is how `close` finds them all.
    profile: Option<PathBuf>,
    /// A process we started (attached Chromium, or Firefox's geckodriver); its group is ours.
    own: Option<tokio::process::Child>,
    /// geckodriver, when this session has its own.
    driver: Option<super::DriverProcess>,
}

fn chromium_args(flags: &[String], profile: Option<&std::path::Path>) -> Vec<String> {
    let mut args: Vec<String> = BASE_FLAGS.iter().map(|s| s.to_string()).collect();
    if let Some(p) = profile {
        args.push(format!("--user-data-dir={}", p.display()));
    }
    args.extend(flags.iter().cloned());
    args
}

fn firefox_caps(
    binary: Option<&std::path::Path>,
    flags: &[String],
    profile: Option<&std::path::Path>,
) -> serde_json::Value {
    let mut args = vec!["-headless".to_string()];
    if let Some(p) = profile {
        args.extend(["-profile".to_string(), p.display().to_string()]);
    }
    args.extend(flags.iter().cloned());
    let prefs: serde_json::Map<String, serde_json::Value> =
        super::kinds::FIREFOX_PREFS.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
    let mut opts = json!({ "args": args, "prefs": prefs });
    if let Some(b) = binary {
        opts["binary"] = json!(b);
    }
    json!({ "browserName": "firefox", "moz:firefoxOptions": opts })
}

fn fresh_profile() -> anyhow::Result<PathBuf> {
    let profile =
        std::env::temp_dir().join(format!("tabpool-profile-{}-{:016x}", std::process::id(), rand::random::<u64>()));
    std::fs::create_dir_all(&profile).with_context(|| format!("creating {}", profile.display()))?;
    Ok(profile)
}

impl BrowserSession {
    /// Start a browser as `launch` says and open `page_url` in it.
    pub async fn open(launch: &Launch, page_url: &str) -> anyhow::Result<BrowserSession> {
        let session = match launch {
            Launch::Chromium { driver_url, binary, flags, attach } => {
                let profile = fresh_profile()?;
                let args = chromium_args(flags, Some(&profile));
                if *attach {
                    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
                    let child = tokio::process::Command::new(binary)
                        .args(&args)
                        .arg(format!("--remote-debugging-port={port}"))
                        .arg("about:blank")
                        .stdout(std::process::Stdio::null())
                        .stderr(std::process::Stdio::null())
                        .process_group(0)
                        .kill_on_drop(true)
                        .spawn()
                        .with_context(|| format!("starting {}", binary.display()))?;
                    let mut s = BrowserSession::unconnected(Some(profile), Some(child), None);
                    if let Err(e) = wait_for_port(port, Duration::from_secs(20)).await {
                        s.kill_local().await;
                        return Err(e).with_context(|| format!("{} debugging port", binary.display()));
                    }
                    let caps = json!({ "goog:chromeOptions": { "debuggerAddress": format!("127.0.0.1:{port}") } });
                    s.connect(driver_url, caps).await?
                } else {
                    let caps =
                        json!({ "browserName": "chrome", "goog:chromeOptions": { "binary": binary, "args": args } });
                    BrowserSession::unconnected(Some(profile), None, None).connect(driver_url, caps).await?
                }
            }
            Launch::Firefox { geckodriver, binary, flags } => {
                let profile = fresh_profile()?;
                let driver = super::DriverProcess::geckodriver(geckodriver).await?;
                let url = driver.url();
                let caps = firefox_caps(Some(binary), flags, Some(&profile));
                BrowserSession::unconnected(Some(profile), None, Some(driver)).connect(&url, caps).await?
            }
            Launch::Remote { url, engine, binary, flags } => {
                let caps = match engine {
                    super::BrowserKind::Firefox => firefox_caps(binary.as_deref(), flags, None),
                    _ => {
                        let mut opts = json!({ "args": chromium_args(flags, None) });
                        if let Some(b) = binary {
                            opts["binary"] = json!(b);
                        }
                        json!({ "browserName": "chrome", "goog:chromeOptions": opts })
                    }
                };
                BrowserSession::unconnected(None, None, None).connect(url, caps).await?
            }
        };
        if let Err(e) = session.client.as_ref().expect("connected").goto(page_url).await {
            session.close().await;
            return Err(e).context("opening the page");
        }
        Ok(session.into_connected())
    }

    fn unconnected(
        profile: Option<PathBuf>,
        own: Option<tokio::process::Child>,
        driver: Option<super::DriverProcess>,
    ) -> Starting {
        Starting { client: None, profile, own, driver }
    }

    /// The local process roots of this session (attached browser, own geckodriver).
    pub fn own_pids(&self) -> Vec<i32> {
        let own = self.own.as_ref().and_then(|c| c.id()).map(|p| p as i32);
        own.into_iter().chain(self.driver.as_ref().and_then(super::DriverProcess::pid)).collect()
    }

    /// The page title: the runtime writes its state there (`tabpool: ready`, `tabpool: error: …`).
    pub async fn title(&self) -> String {
        self.client.title().await.unwrap_or_else(|e| format!("<no title: {e}>"))
    }

    /// A PNG of the visible page (the dashboard test checks what a person would see).
    pub async fn screenshot(&self) -> anyhow::Result<Vec<u8>> {
        self.client.screenshot().await.context("taking a screenshot")
    }

    /// How many elements match `css` on the page now.
    pub async fn count(&self, css: &str) -> anyhow::Result<usize> {
        Ok(self.client.find_all(fantoccini::Locator::Css(css)).await.with_context(|| format!("finding {css}"))?.len())
    }

    /// Load `url` again in this browser's tab (after a dropped socket). chromedriver refuses
    /// every command on a tab whose renderer crashed ("tab crashed"), even opening a new tab, so
    /// that case fails here and recovery restarts the browser.
    pub async fn reopen(&self, url: &str) -> anyhow::Result<()> {
        self.client.goto(url).await.context("reopening the page (renderer crashed or WebDriver session lost?)")
    }

    /// Close the tab's window through WebDriver, as a user closing the tab would.
    pub async fn close_window(&self) -> anyhow::Result<()> {
        self.client.close_window().await.context("closing the window")
    }

    /// Local processes of this browser: those naming its profile (the main process) and their
    /// descendants (zygotes, GPU, renderers): (pid, is a renderer). Empty for remote sessions.
    pub fn processes(&self) -> Vec<(i32, bool)> {
        let Some(p) = &self.profile else { return vec![] };
        let mut pids: Vec<i32> = Vec::new();
        for main in super::procs::with_cmdline_containing(&p.display().to_string()) {
            pids.push(main.pid);
            pids.extend(super::procs::descendants(main.pid).into_iter().map(|(d, _)| d.pid));
        }
        pids.sort_unstable();
        pids.dedup();
        pids.into_iter()
            .map(|pid| {
                let cmd = String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default())
                    .into_owned();
                (
                    pid,
                    cmd.contains("--type=renderer")
                        || (cmd.contains("-contentproc") && cmd.trim_end().ends_with("tab")),
                )
            })
            .collect()
    }

    /// Quit the browser, kill whatever of it is left locally, and remove its profile.
    pub async fn close(self) {
        let BrowserSession { client, profile, own, driver } = self;
        Starting { client: Some(client), profile, own, driver }.close().await
    }
}

/// A session being set up: every part optional, so a failure half-way cleans up what exists.
pub struct Starting {
    client: Option<Client>,
    profile: Option<PathBuf>,
    own: Option<tokio::process::Child>,
    driver: Option<super::DriverProcess>,
}

impl Starting {
    async fn connect(mut self, url: &str, caps: serde_json::Value) -> anyhow::Result<Starting> {
        let caps = caps.as_object().expect("object").clone();
        match ClientBuilder::new(HttpConnector::new()).capabilities(caps).connect(url).await {
            Ok(c) => {
                self.client = Some(c);
                Ok(self)
            }
            Err(e) => {
                self.close().await;
                Err(e).with_context(|| format!("starting a browser session through {url}"))
            }
        }
    }

    fn into_connected(self) -> BrowserSession {
        BrowserSession {
            client: self.client.expect("connected"),
            profile: self.profile,
            own: self.own,
            driver: self.driver,
        }
    }

    async fn kill_local(&mut self) {
        if let Some(child) = self.own.as_mut() {
            kill_group(child).await;
        }
        if let Some(d) = self.driver.take() {
            d.stop().await;
        }
        if let Some(p) = &self.profile {
            // Renderers and helpers reparented to init still carry the profile path.
            let left = super::procs::with_cmdline_containing(&p.display().to_string());
            super::procs::kill_all(&left);
            super::procs::wait_gone(&left, Duration::from_secs(5)).await;
        }
    }

    async fn close(mut self) {
        if let Some(c) = self.client.take() {
            // A hung renderer can stall WebDriver's close forever; local processes are killed
            // below anyway.
            match tokio::time::timeout(Duration::from_secs(5), c.close()).await {
                Ok(Err(e)) => tracing::debug!("closing browser session: {e}"),
                Err(_) => tracing::debug!("closing browser session: no answer within 5 s"),
                Ok(Ok(())) => {}
            }
        }
        self.kill_local().await;
        if let Some(p) = &self.profile {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

/// SIGKILL a browser we started and everything in its process group; wait until it is gone.
async fn kill_group(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id() {
        let tree: Vec<super::procs::ProcId> =
            super::procs::descendants(pid as i32).into_iter().map(|(p, _)| p).collect();
        // SAFETY: kill(2) on a process group we created (process_group(0) at spawn).
        unsafe {
            libc::kill(-(pid as i32), libc::SIGKILL);
        }
        super::procs::kill_all(&tree);
        let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
        super::procs::wait_gone(&tree, Duration::from_secs(5)).await;
    }
}

async fn wait_for_port(port: u16, timeout: Duration) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        anyhow::ensure!(std::time::Instant::now() < deadline, "port {port} did not open within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Ok(())
}
