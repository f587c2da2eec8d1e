//! The host: HTTP + socket listeners, the driver, and the browsers it launched.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, anyhow};
use tokio::sync::oneshot;

use crate::browser::{BrowserKind, BrowserSession, Chromedriver, ChromiumOptions, procs};
use crate::paths;
use crate::server::socket::{Counters, Expected, Registry};
use crate::server::{http, socket};
use crate::tab::Tab;

#[derive(Debug, Clone)]
pub struct HostConfig {
    /// The `www/` folder; found automatically when `None`.
    pub www: Option<PathBuf>,
    /// Chromium binary; `chromium` (or `chromium-browser`, `google-chrome`) on PATH when `None`.
    pub chromium: Option<PathBuf>,
    /// The WebNN-capable headless shell; the setup location when `None`.
    pub chromium_webnn: Option<PathBuf>,
    /// chromedriver binary; from PATH when `None`.
    pub chromedriver: Option<PathBuf>,
    /// Flags added to every browser launch.
    pub extra_flags: Vec<String>,
    /// How long a launched tab may take to load, probe and say `Hello`.
    pub tab_timeout: Duration,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            www: None,
            chromium: None,
            chromium_webnn: None,
            chromedriver: None,
            extra_flags: Vec::new(),
            tab_timeout: Duration::from_secs(60),
        }
    }
}

pub const CHROMIUM_NAMES: &[&str] = &["chromium", "chromium-browser", "google-chrome"];
pub const CHROMEDRIVER_NAMES: &[&str] = &["chromedriver"];

pub struct Host {
    cfg: HostConfig,
    http_addr: SocketAddr,
    socket_addr: SocketAddr,
    registry: Arc<Registry>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    driver: Option<Chromedriver>,
    browsers: Vec<BrowserSession>,
    next_tab: u64,
}

/// A tab the host expects: its id, secret and page URL. [`Host::launch_tab`] uses this; tests use
/// it to act as a peer that knows (or guesses) part of it.
pub struct PendingTab {
    pub id: u64,
    pub token: String,
    pub url: String,
    arrived: oneshot::Receiver<Tab>,
}

impl Host {
    /// Bind both listeners on 127.0.0.1. Fails if the page is not built.
    pub async fn start(cfg: HostConfig) -> anyhow::Result<Host> {
        let www = paths::www_dir(cfg.www.as_deref())?;
        let (http_addr, http_task) = http::serve(www).await.context("starting the HTTP server")?;
        let registry = Arc::new(Registry {
            allowed_origin: format!("http://{http_addr}"),
            expected: Mutex::new(HashMap::new()),
            counters: Counters::default(),
        });
        let (socket_addr, socket_task) =
            socket::listen(registry.clone()).await.context("starting the socket endpoint")?;
        tracing::info!(%http_addr, %socket_addr, "host listening");
        Ok(Host {
            cfg,
            http_addr,
            socket_addr,
            registry,
            tasks: vec![http_task, socket_task],
            driver: None,
            browsers: Vec::new(),
            next_tab: 1,
        })
    }

    /// The only Origin the socket endpoint accepts: the host's own page server.
    pub fn origin(&self) -> String {
        self.registry.allowed_origin.clone()
    }

    pub fn socket_url(&self) -> String {
        format!("ws://{}/", self.socket_addr)
    }

    /// Peers the socket endpoint refused so far (bad origin, token, version, frames).
    pub fn refused_peers(&self) -> u64 {
        self.registry.counters.refused.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Register a tab id with a fresh 128-bit secret; the page URL carries both.
    pub fn expect_tab(&mut self) -> PendingTab {
        let id = self.next_tab;
        self.next_tab += 1;
        let token = format!("{:032x}", rand::random::<u128>());
        let (tx, rx) = oneshot::channel();
        self.registry
            .expected
            .lock()
            .expect("registry lock")
            .insert(id, Expected { token: token.clone(), arrived: tx });
        let url =
            format!("http://{}/index.html?ws={}&token={token}&tab={id}", self.http_addr, urlencode(&self.socket_url()));
        PendingTab { id, token, url, arrived: rx }
    }

    /// Start a Debian Chromium tab (see [`Self::launch`]).
    pub async fn launch_tab(&mut self) -> anyhow::Result<Tab> {
        self.launch(BrowserKind::Chromium).await
    }

    /// The binary for `kind`, if it is installed.
    pub fn browser_binary(&self, kind: BrowserKind) -> anyhow::Result<PathBuf> {
        match kind {
            BrowserKind::Chromium => paths::find_binary(self.cfg.chromium.as_deref(), CHROMIUM_NAMES),
            BrowserKind::ChromiumWebnn => {
                let p = self.cfg.chromium_webnn.clone().unwrap_or_else(BrowserKind::default_webnn_binary);
                anyhow::ensure!(
                    p.is_file(),
                    "{} is missing: `bash scripts/setup.sh` installs npm @sparticuz/chromium@153 there",
                    p.display()
                );
                Ok(p)
            }
        }
    }

    /// Start a browser of `kind` with one tab on the page and wait for its authenticated `Hello`.
    pub async fn launch(&mut self, kind: BrowserKind) -> anyhow::Result<Tab> {
        let binary = self.browser_binary(kind)?;
        let pending = self.expect_tab();
        if self.driver.is_none() {
            let driver = paths::find_binary(self.cfg.chromedriver.as_deref(), CHROMEDRIVER_NAMES)?;
            self.driver = Some(Chromedriver::start(&driver).await?);
        }
        let mut extra_flags = kind.flags();
        extra_flags.extend(self.cfg.extra_flags.iter().cloned());
        let opts = ChromiumOptions { binary, extra_flags, attach: kind.attach() };
        let driver_url = self.driver.as_ref().expect("started above").url();
        let session = BrowserSession::open(&driver_url, &opts, &pending.url).await?;
        let waited = tokio::time::timeout(self.cfg.tab_timeout, pending.arrived).await;
        let title = match &waited {
            Ok(Ok(_)) => String::new(),
            _ => session.title().await,
        };
        self.browsers.push(session);
        match waited {
            Ok(Ok(tab)) => Ok(tab),
            Ok(Err(_)) => Err(anyhow!("tab {} was dropped before joining; page says {title:?}", pending.id)),
            Err(_) => Err(anyhow!(
                "tab {} did not connect within {:?}; page says {title:?}",
                pending.id,
                self.cfg.tab_timeout
            )),
        }
    }

    /// Close every browser, stop the driver (killing anything left below it) and the listeners.
    pub async fn shutdown(mut self) {
        // Snapshot every process we started while the tree is intact: closing a browser can
        // reparent its renderers to init, out of reach of a later walk from the driver.
        let mut tree: Vec<procs::ProcId> = Vec::new();
        let roots = self
            .driver
            .as_ref()
            .and_then(Chromedriver::pid)
            .into_iter()
            .chain(self.browsers.iter().filter_map(BrowserSession::own_pid));
        for root in roots {
            tree.extend(procs::descendants(root).into_iter().map(|(p, _)| p));
        }
        for b in self.browsers.drain(..) {
            b.close().await;
        }
        if let Some(d) = self.driver.take() {
            d.stop().await;
        }
        procs::kill_all(&tree);
        let left = procs::wait_gone(&tree, Duration::from_secs(5)).await;
        if !left.is_empty() {
            tracing::warn!("{} browser processes survived SIGKILL: {left:?}", left.len());
        }
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        // `driver`'s own Drop kills its process tree if `shutdown` was not awaited.
    }
}

impl PendingTab {
    /// Wait for this tab's `Hello` to be accepted.
    pub async fn joined(self, timeout: Duration) -> anyhow::Result<Tab> {
        tokio::time::timeout(timeout, self.arrived)
            .await
            .map_err(|_| anyhow!("tab {} did not join within {timeout:?}", self.id))?
            .map_err(|_| anyhow!("tab {} registration dropped", self.id))
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
