//! Headless Chromium sessions through chromedriver (fantoccini), one browser process per tab.

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

#[derive(Debug, Clone)]
pub struct ChromiumOptions {
    pub binary: PathBuf,
    pub extra_flags: Vec<String>,
    /// Start the browser ourselves with `--remote-debugging-port` and attach the driver through
    /// `goog:chromeOptions.debuggerAddress` (for builds chromedriver cannot launch, such as the
    /// npm headless shell that has WebNN).
    pub attach: bool,
}

/// One browser with one tab, and its throwaway profile directory.
pub struct BrowserSession {
    client: Client,
    profile: PathBuf,
    /// The browser process when we started it (attach mode); its whole group is ours to kill.
    own: Option<tokio::process::Child>,
}

impl BrowserSession {
    /// Start a browser through `driver_url` and open `page_url` in it.
    pub async fn open(driver_url: &str, opts: &ChromiumOptions, page_url: &str) -> anyhow::Result<BrowserSession> {
        let profile =
            std::env::temp_dir().join(format!("tabpool-profile-{}-{:016x}", std::process::id(), rand::random::<u64>()));
        std::fs::create_dir_all(&profile).with_context(|| format!("creating {}", profile.display()))?;
        let mut args: Vec<String> = BASE_FLAGS.iter().map(|s| s.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        args.extend(opts.extra_flags.iter().cloned());
        let (caps, own) = if opts.attach {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let child = tokio::process::Command::new(&opts.binary)
                .args(&args)
                .arg(format!("--remote-debugging-port={port}"))
                .arg("about:blank")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .process_group(0)
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("starting {}", opts.binary.display()))?;
            wait_for_port(port, Duration::from_secs(20))
                .await
                .with_context(|| format!("{} debugging port", opts.binary.display()))?;
            (json!({ "goog:chromeOptions": { "debuggerAddress": format!("127.0.0.1:{port}") } }), Some(child))
        } else {
            (json!({ "browserName": "chrome", "goog:chromeOptions": { "binary": opts.binary, "args": args } }), None)
        };
        let caps = caps.as_object().expect("object").clone();
        let client = match ClientBuilder::new(HttpConnector::new()).capabilities(caps).connect(driver_url).await {
            Ok(c) => c,
            Err(e) => {
                if let Some(mut child) = own {
                    kill_group(&mut child).await;
                }
                return Err(e).with_context(|| format!("starting {} through {driver_url}", opts.binary.display()));
            }
        };
        let session = BrowserSession { client, profile, own };
        session.client.goto(page_url).await.context("opening the page")?;
        Ok(session)
    }

    /// The browser's pid when the host started it itself (attach mode).
    pub fn own_pid(&self) -> Option<i32> {
        self.own.as_ref().and_then(|c| c.id()).map(|p| p as i32)
    }

    /// The page title: the runtime writes its state there (`tabpool: ready`, `tabpool: error: …`).
    pub async fn title(&self) -> String {
        self.client.title().await.unwrap_or_else(|e| format!("<no title: {e}>"))
    }

    /// Quit the browser and remove its profile.
    pub async fn close(mut self) {
        if let Err(e) = self.client.close().await {
            tracing::debug!("closing browser session: {e}");
        }
        if let Some(child) = self.own.as_mut() {
            kill_group(child).await;
        }
        let _ = std::fs::remove_dir_all(&self.profile);
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
