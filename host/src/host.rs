//! The host: HTTP + socket listeners, the driver, and the browsers it launched.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, anyhow};
use tokio::sync::oneshot;

use crate::browser::{BrowserKind, BrowserSession, DriverProcess, KindSpec, Launch, procs};
use crate::paths;
use crate::server::socket::{Counters, Expected, JOIN_PATH, JoinDoor, Registry};
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
    /// Firefox binary; `firefox-esr` or `firefox` on PATH when `None`.
    pub firefox: Option<PathBuf>,
    /// geckodriver binary; from PATH (or ~/.cargo/bin) when `None`.
    pub geckodriver: Option<PathBuf>,
    /// Address both listeners bind to (127.0.0.1; 0.0.0.0 for tabs on other machines).
    pub bind: std::net::IpAddr,
    /// Host name or IP that tabs use to reach this host (default: the bind address, or
    /// 127.0.0.1 when binding all interfaces). Remote WebDriver tabs need a reachable one.
    pub advertise: Option<String>,
    /// Flags added to every browser launch.
    pub extra_flags: Vec<String>,
    /// How long a launched tab may take to load, probe and say `Hello`.
    pub tab_timeout: Duration,
    /// Take tabs that pages lend (`serve --join`), admitted by the join tokens in this file.
    pub join: Option<PathBuf>,
    /// Threads per launched tab (`--tab-threads`); `None`: one, unless a command sizes them.
    pub tab_threads: Option<u32>,
    /// What tabs' CPU executors multiply block-quantized weights with (`--tab-activations`):
    /// "f32", "int16" or "int8-batched" (`page_runtime::executors::cpu::quantized_int`).
    pub tab_activations: Option<String>,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            www: None,
            chromium: None,
            chromium_webnn: None,
            chromedriver: None,
            firefox: None,
            geckodriver: None,
            bind: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            advertise: None,
            extra_flags: Vec::new(),
            tab_timeout: Duration::from_secs(60),
            join: None,
            tab_threads: None,
            tab_activations: None,
        }
    }
}

pub const CHROMIUM_NAMES: &[&str] = &["chromium", "chromium-browser", "google-chrome"];
pub const CHROMEDRIVER_NAMES: &[&str] = &["chromedriver"];
pub const FIREFOX_NAMES: &[&str] = &["firefox-esr", "firefox"];
pub const GECKODRIVER_NAMES: &[&str] = &["geckodriver"];

pub struct Host {
    cfg: HostConfig,
    http_addr: SocketAddr,
    socket_addr: SocketAddr,
    registry: Arc<Registry>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The shared chromedriver, started with the first Chromium tab.
    driver: Option<DriverProcess>,
    /// One browser per tab, by tab id, with the page URL (it carries the tab's secret).
    browsers: Vec<(u64, String, BrowserSession)>,
    /// Profiles of local browsers closed to be replaced, by kind name, for the replacement to
    /// start on (`close_tab_for_restart`): its Cache Storage still holds the tab's weights.
    parked: Vec<(String, crate::browser::session::Profile)>,
    /// The address tabs use to reach the listeners.
    advertised: String,
    /// Lent tabs as they join, until the pool takes them ([`Self::take_joined`]).
    joined: Option<tokio::sync::mpsc::UnboundedReceiver<crate::server::socket::Joined>>,
    /// This host's random id, asked of every Grid session as `tabpool:owner`.
    owner: String,
    /// Threads the next tabs' pages ask for (`&threads=N`; `policy::threads`).
    tab_threads: u32,
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
        let tab_threads = cfg.tab_threads.unwrap_or(1).max(1);
        let www = paths::www_dir(cfg.www.as_deref())?;
        let (http_addr, http_task) = http::serve(www, cfg.bind).await.context("starting the HTTP server")?;
        let advertised = url_host(&match (&cfg.advertise, cfg.bind) {
            (Some(a), _) => a.clone(),
            (None, ip) if ip.is_unspecified() => "127.0.0.1".into(),
            (None, ip) => ip.to_string(),
        });
        let (door, joined) = match &cfg.join {
            Some(file) => {
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                let door = JoinDoor {
                    tokens: crate::server::join::TokenFile::at(file.clone()),
                    arrivals: tx,
                    joined: Mutex::default(),
                };
                (Some(door), Some(rx))
            }
            None => (None, None),
        };
        let registry = Arc::new(Registry {
            allowed_origin: format!("http://{advertised}:{}", http_addr.port()),
            expected: Mutex::new(HashMap::new()),
            counters: Counters::default(),
            next_tab: std::sync::atomic::AtomicU64::new(1),
            door,
        });
        let (socket_addr, socket_task) =
            socket::listen(registry.clone(), cfg.bind).await.context("starting the socket endpoint")?;
        tracing::info!(%http_addr, %socket_addr, "host listening");
        Ok(Host {
            cfg,
            http_addr,
            socket_addr,
            registry,
            tasks: vec![http_task, socket_task],
            driver: None,
            browsers: Vec::new(),
            parked: Vec::new(),
            advertised,
            joined,
            owner: format!("{:016x}", rand::random::<u64>()),
            tab_threads,
        })
    }

    /// The configuration the host was started with.
    pub fn config(&self) -> &HostConfig {
        &self.cfg
    }

    /// Where the page server listens.
    pub fn page_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The only Origin the socket endpoint accepts: the host's own page server.
    pub fn origin(&self) -> String {
        self.registry.allowed_origin.clone()
    }

    pub fn socket_url(&self) -> String {
        format!("ws://{}:{}/", self.advertised, self.socket_addr.port())
    }

    /// Peers the socket endpoint refused so far (bad origin, token, version, frames).
    pub fn refused_peers(&self) -> u64 {
        self.registry.counters.refused.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Where a page lends its tab (`rt.join(url, { token })`), when the host takes lent tabs.
    pub fn join_url(&self) -> Option<String> {
        self.registry.door.as_ref().map(|_| format!("ws://{}:{}{JOIN_PATH}", self.advertised, self.socket_addr.port()))
    }

    /// The lent tabs as they join (once: the pool takes them).
    pub fn take_joined(&mut self) -> Option<tokio::sync::mpsc::UnboundedReceiver<crate::server::socket::Joined>> {
        self.joined.take()
    }

    /// Threads each tab launched from now on asks for (1: the single-thread runtime). A page
    /// gets them only where it is cross-origin isolated and the threaded build exists; the tab
    /// reports what it got (`Capabilities::threads`).
    pub fn set_tab_threads(&mut self, threads: u32) {
        self.tab_threads = threads.max(1);
    }

    /// The threads per tab the user asked for (`--tab-threads`), if any.
    pub fn tab_threads_asked(&self) -> Option<u32> {
        self.cfg.tab_threads
    }

    /// Register a tab id with a fresh 128-bit secret; the page URL carries both.
    pub fn expect_tab(&mut self) -> PendingTab {
        let id = self.registry.next_tab.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let token = format!("{:032x}", rand::random::<u128>());
        let (tx, rx) = oneshot::channel();
        self.registry
            .expected
            .lock()
            .expect("registry lock")
            .insert(id, Expected { token: token.clone(), arrived: tx });
        let mut url =
            format!("{}/index.html?ws={}&token={token}&tab={id}", self.origin(), urlencode(&self.socket_url()));
        if self.tab_threads > 1 {
            url.push_str(&format!("&threads={}", self.tab_threads));
        }
        if let Some(a) = &self.cfg.tab_activations {
            url.push_str(&format!("&activations={}", urlencode(a)));
        }
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
            BrowserKind::Firefox => paths::find_binary(self.cfg.firefox.as_deref(), FIREFOX_NAMES)
                .context("Firefox: `bash scripts/setup.sh` installs Debian firefox-esr"),
            BrowserKind::Remote => anyhow::bail!("a remote kind has no local binary: it needs a WebDriver URL"),
        }
    }

    fn geckodriver(&self) -> anyhow::Result<PathBuf> {
        let cargo_bin = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin/geckodriver"));
        match (&self.cfg.geckodriver, cargo_bin.filter(|p| p.is_file())) {
            (None, Some(p)) if paths::find_binary(None, GECKODRIVER_NAMES).is_err() => Ok(p),
            (explicit, _) => paths::find_binary(explicit.as_deref(), GECKODRIVER_NAMES)
                .context("geckodriver: `bash scripts/setup.sh` builds it from crates.io (cargo install geckodriver)"),
        }
    }

    /// Start a browser of a built-in local `kind` with one tab; see [`Self::launch_spec`].
    pub async fn launch(&mut self, kind: BrowserKind) -> anyhow::Result<Tab> {
        self.launch_spec(&KindSpec::local(kind)).await
    }

    /// Start one browser of `spec` with one tab on the page and wait for its authenticated `Hello`.
    pub async fn launch_spec(&mut self, spec: &KindSpec) -> anyhow::Result<Tab> {
        spec.validate()?;
        let mut flags = spec.browser.flags();
        flags.extend(self.cfg.extra_flags.iter().cloned());
        flags.extend(spec.flags.iter().cloned());
        let launch = match spec.browser {
            BrowserKind::Chromium | BrowserKind::ChromiumWebnn => {
                let binary = match &spec.binary {
                    Some(b) => b.clone(),
                    None => self.browser_binary(spec.browser)?,
                };
                if self.driver.as_mut().is_some_and(DriverProcess::exited) {
                    // Its sessions are gone (tabs still serve; their page reloads fail and fall
                    // back to a browser restart, which lands here): start a new one.
                    tracing::warn!("chromedriver exited; starting a new one");
                    self.driver = None;
                }
                if self.driver.is_none() {
                    let driver = paths::find_binary(self.cfg.chromedriver.as_deref(), CHROMEDRIVER_NAMES)?;
                    self.driver = Some(DriverProcess::chromedriver(&driver).await?);
                }
                let driver_url = self.driver.as_ref().expect("started above").url();
                Launch::Chromium { driver_url, binary, flags, attach: spec.browser.attach() }
            }
            BrowserKind::Firefox => {
                let binary = match &spec.binary {
                    Some(b) => b.clone(),
                    None => self.browser_binary(BrowserKind::Firefox)?,
                };
                Launch::Firefox { geckodriver: self.geckodriver()?, binary, flags }
            }
            BrowserKind::Remote => {
                let engine = spec.remote_engine.unwrap_or(BrowserKind::Chromium);
                if engine != BrowserKind::Firefox && !is_loopback_origin(&self.registry.allowed_origin) {
                    // WebGPU and WebNN exist only in secure contexts; the page reached over plain
                    // http at another machine's address is not one unless the browser is told so.
                    flags.push(format!("--unsafely-treat-insecure-origin-as-secure={}", self.registry.allowed_origin));
                }
                let mut caps = spec.capabilities.clone();
                caps.insert(crate::browser::grid::OWNER_CAP.into(), self.owner.clone().into());
                Launch::Remote {
                    url: spec.url.clone().expect("validated"),
                    engine,
                    binary: spec.binary.clone(),
                    flags,
                    caps,
                }
            }
        };
        let mut pending = self.expect_tab();
        let id = pending.id;
        let url = std::mem::take(&mut pending.url);
        let reuse = match self.parked.iter().position(|(kind, _)| *kind == spec.name) {
            Some(i) if spec.browser != BrowserKind::Remote => Some(self.parked.swap_remove(i).1),
            _ => None,
        };
        let session = match BrowserSession::open_on(&launch, &url, reuse).await {
            Ok(s) => s,
            Err(e) => {
                self.forget(id);
                return Err(e.context(format!("launching a {} tab", spec.name)));
            }
        };
        let waited = tokio::time::timeout(self.cfg.tab_timeout, pending.arrived).await;
        let title = match &waited {
            Ok(Ok(_)) => String::new(),
            _ => session.title().await,
        };
        match waited {
            Ok(Ok(tab)) => {
                self.browsers.push((id, url, session));
                Ok(tab)
            }
            Ok(Err(_)) => {
                session.close().await;
                Err(anyhow!("{} tab {id} was dropped before joining; page says {title:?}", spec.name))
            }
            Err(_) => {
                self.forget(id);
                session.close().await;
                Err(anyhow!(
                    "{} tab {id} did not connect within {:?}; page says {title:?}",
                    spec.name,
                    self.cfg.tab_timeout
                ))
            }
        }
    }

    fn forget(&self, id: u64) {
        self.registry.expected.lock().expect("registry lock").remove(&id);
    }

    /// Close the browser behind tab `id` to start another of kind `kind` in its place: its
    /// profile is kept for the next launch of that kind (the newest few per host). False if
    /// unknown.
    pub async fn close_tab_for_restart(&mut self, id: u64, kind: &str) -> bool {
        /// Profiles parked at most: a pool replaces its tabs one at a time per slot.
        const PARKED: usize = 4;
        match self.browsers.iter().position(|(t, _, _)| *t == id) {
            Some(i) => {
                let (_, _, session) = self.browsers.swap_remove(i);
                if let Some(p) = session.close_keeping_profile().await {
                    self.parked.push((kind.to_string(), p));
                    if self.parked.len() > PARKED {
                        self.parked.remove(0);
                    }
                }
                true
            }
            None => false,
        }
    }

    /// Close the browser behind tab `id` (its socket closes with it). False if unknown.
    pub async fn close_tab(&mut self, id: u64) -> bool {
        match self.browsers.iter().position(|(t, _, _)| *t == id) {
            Some(i) => {
                let (_, _, session) = self.browsers.swap_remove(i);
                session.close().await;
                true
            }
            None => false,
        }
    }

    /// Tab `id`'s WebDriver session: its id (a Grid names the node holding it by this id) and a
    /// handle to keep it alive, for remote tabs.
    pub async fn webdriver_session(&self, id: u64) -> Option<(Option<String>, crate::browser::session::KeepAlive)> {
        let (_, _, s) = self.browsers.iter().find(|(t, _, _)| *t == id)?;
        Some((s.session_id().await, s.keepalive()))
    }

    /// A full garbage collection in tab `id`'s page (see `BrowserSession::collect_garbage`).
    pub async fn collect_garbage(&self, id: u64) -> bool {
        match self.browsers.iter().find(|(t, _, _)| *t == id) {
            Some((_, _, s)) => s.collect_garbage().await,
            None => false,
        }
    }

    /// This host's id, which every session it asks of a Grid carries (`browser::grid::OWNER_CAP`).
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The WebDriver session ids of every browser this host has open; `None` if one could not be
    /// read at once (its client busy with a call to an unreachable node), as then the set is not
    /// known.
    pub async fn webdriver_sessions(&self) -> Option<std::collections::HashSet<String>> {
        let mut ids = std::collections::HashSet::new();
        for (_, _, s) in &self.browsers {
            match tokio::time::timeout(std::time::Duration::from_secs(2), s.session_id()).await {
                Ok(Some(id)) => ids.insert(id),
                Ok(None) => false,
                Err(_) => return None,
            };
        }
        Some(ids)
    }

    /// Tab ids with a browser open.
    pub fn open_tabs(&self) -> Vec<u64> {
        self.browsers.iter().map(|(id, _, _)| *id).collect()
    }

    /// Reload tab `id`'s page in the same browser and wait for it to join again (same id and
    /// secret, a new socket). Fails if the browser or its WebDriver session is gone.
    pub async fn reload_tab(&mut self, id: u64) -> anyhow::Result<Tab> {
        let (url, token) = {
            let (_, url, _) = self.browsers.iter().find(|(t, _, _)| *t == id).context("no such tab")?;
            let token = url.split("token=").nth(1).and_then(|t| t.split('&').next()).context("token")?.to_string();
            (url.clone(), token)
        };
        let (tx, rx) = oneshot::channel();
        self.registry.expected.lock().expect("registry lock").insert(id, Expected { token, arrived: tx });
        let session = &self.browsers.iter().find(|(t, _, _)| *t == id).expect("found above").2;
        // A hung renderer never finishes a navigation; don't hold the host for WebDriver's 300 s
        // (a healthy reload takes 1-4 s here, even under load).
        let limit = self.cfg.tab_timeout.min(Duration::from_secs(10));
        let reopened = match tokio::time::timeout(limit, session.reopen(&url)).await {
            Ok(r) => r,
            Err(_) => Err(anyhow::anyhow!("the page did not reload within {limit:?} (renderer hung?)")),
        };
        if let Err(e) = reopened {
            self.forget(id);
            return Err(e);
        }
        match tokio::time::timeout(self.cfg.tab_timeout, rx).await {
            Ok(Ok(tab)) => Ok(tab),
            _ => {
                self.forget(id);
                anyhow::bail!("tab {id} did not rejoin within {:?} after a reload", self.cfg.tab_timeout)
            }
        }
    }

    /// Close tab `id`'s window through WebDriver (the browser stays up to the driver's will).
    pub async fn close_window(&mut self, id: u64) -> anyhow::Result<()> {
        let (_, _, s) = self.browsers.iter().find(|(t, _, _)| *t == id).context("no such tab")?;
        s.close_window().await
    }

    /// Local processes of tab `id`'s browser: (pid, is a renderer/content process).
    /// The shared chromedriver's pid, once one was started.
    pub fn driver_pid(&self) -> Option<i32> {
        self.driver.as_ref().and_then(DriverProcess::pid)
    }

    pub fn tab_processes(&self, id: u64) -> Vec<(i32, bool)> {
        self.browsers.iter().find(|(t, _, _)| *t == id).map(|(_, _, s)| s.processes()).unwrap_or_default()
    }

    /// Close every browser, stop the driver (killing anything left below it) and the listeners.
    pub async fn shutdown(mut self) {
        // Snapshot every process we started while the tree is intact: closing a browser can
        // reparent its renderers to init, out of reach of a later walk from the driver.
        let mut tree: Vec<procs::ProcId> = Vec::new();
        let roots = self
            .driver
            .as_ref()
            .and_then(DriverProcess::pid)
            .into_iter()
            .chain(self.browsers.iter().flat_map(|(_, _, b)| b.own_pids()));
        for root in roots {
            tree.extend(procs::descendants(root).into_iter().map(|(p, _)| p));
        }
        for (_, _, b) in self.browsers.drain(..) {
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

/// A host as it goes into a URL: IPv6 literals in brackets (`--bind ::1` → `http://[::1]:port`).
pub fn url_host(host: &str) -> String {
    match host.parse::<std::net::Ipv6Addr>() {
        Ok(v6) => format!("[{v6}]"),
        Err(_) => host.to_string(),
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

/// Whether `origin` (`http://host:port`) is loopback, which browsers treat as secure.
fn is_loopback_origin(origin: &str) -> bool {
    let host = origin.trim_start_matches("http://").rsplit_once(':').map_or(origin, |(h, _)| h);
    host == "localhost" || host.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_loopback_origins_count_as_secure() {
        assert!(super::is_loopback_origin("http://127.0.0.1:8080"));
        assert!(super::is_loopback_origin("http://localhost:1"));
        assert!(super::is_loopback_origin("http://[::1]:9"));
        assert!(!super::is_loopback_origin("http://10.77.3.1:8080"));
        assert!(!super::is_loopback_origin("http://grid-host:8080"));
    }
}
