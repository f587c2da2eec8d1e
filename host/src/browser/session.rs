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
///
/// `disable_resource_suballocation` (a Dawn toggle): Dawn's Vulkan backend places every buffer
/// under 4 MiB in a power-of-two block of 8 MiB heaps that it pools and does not free while the
/// device lives; MiniLM's 0.6–2.3 MiB weights took 12 heaps (96 MiB) for ~51 MiB. Without it each
/// buffer is its own allocation of its own size, freed when the buffer is destroyed.
///
/// `--optimization-guide-performance-class=7`: three minutes after start, Chromium (Debian 156)
/// rates the machine for its built-in AI APIs by starting its `on_device_model` utility process;
/// that process stays for the browser's life (56 MiB PSS in `bench memory`, 1.39× → 2.05× of the
/// weights) although the rating fails here: it stores class 7 (the model library could not be
/// loaded). This switch sets the class without the rating, so the process never starts; 7 keeps
/// what Chromium measures itself. Disabling `LogOnDeviceMetricsOnStartup`,
/// `OptimizationGuideModelExecution`, `OnDeviceModelWarmDrivers` or `OptimizationHints` does not
/// stop it. The npm headless shell (WebNN kind) has no such process and ignores the switch.
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
    "--enable-dawn-features=disable_resource_suballocation",
    "--optimization-guide-performance-class=7",
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
    /// `caps` are asked for beside the browser's own (a Grid matches them to node stereotypes).
    Remote {
        url: crate::redact::SecretUrl,
        engine: super::BrowserKind,
        binary: Option<PathBuf>,
        flags: Vec<String>,
        caps: serde_json::Map<String, serde_json::Value>,
    },
}

/// One browser with one tab, and its throwaway profile directory.
pub struct BrowserSession {
    client: Client,
    /// A local profile directory (none for remote sessions): every process of this browser has it
    /// on its command line, which is how `close` finds them all.
    profile: Option<Profile>,
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

/// The longest a WebDriver new-session or navigation call may take.
const SESSION_TIMEOUT: Duration = Duration::from_secs(60);

/// A browser's throwaway profile directory: private (0700: it holds the page URL with the tab's
/// secret, cookies and, for the WebNN shell, the DevTools port), and removed on every exit path —
/// also when a launch is abandoned half-way (Ctrl-C during start-up drops the launching future),
/// after killing whatever process still names it.
pub(crate) struct Profile(PathBuf);

impl Profile {
    fn fresh() -> anyhow::Result<Profile> {
        use std::os::unix::fs::DirBuilderExt;
        let path =
            std::env::temp_dir().join(format!("tabpool-profile-{}-{:016x}", std::process::id(), rand::random::<u64>()));
        std::fs::DirBuilder::new().mode(0o700).create(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Profile(path))
    }

    fn path(&self) -> &std::path::Path {
        &self.0
    }

    /// A profile a closed browser left (every process of it gone), ready for the next browser of
    /// its kind: the files naming the old process — its single-instance lock, its DevTools port
    /// (read to attach: a stale one would point at nothing) — removed; everything else kept,
    /// above all the Cache Storage holding the tab's weights.
    fn reused(self) -> Profile {
        for f in ["DevToolsActivePort", "SingletonLock", "SingletonSocket", "SingletonCookie", "lock", ".parentlock"] {
            let _ = std::fs::remove_file(self.0.join(f));
        }
        self
    }
}

impl Drop for Profile {
    fn drop(&mut self) {
        // Usually `close` has killed everything already; this catches abandoned launches. A browser
        // interrupted mid-start can still fork a helper after one listing, and a dying helper can
        // write into the profile while it is being removed (remove_dir_all then fails with
        // ENOTEMPTY), so list, kill and remove again until nothing names the profile and it is gone.
        let needle = self.0.display().to_string();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            // With their descendants: a helper (the network service, say) need not name the
            // profile on its command line, yet writes into it as it exits, recreating what was
            // removed; killed outright, it writes nothing.
            let mut left: Vec<_> = super::procs::with_cmdline_containing(&needle);
            let tree: Vec<_> = left.iter().flat_map(|p| super::procs::descendants(p.pid)).map(|(p, _)| p).collect();
            left.extend(tree);
            left.retain(|p| super::procs::alive(*p));
            if left.is_empty() {
                let _ = std::fs::remove_dir_all(&self.0);
                if !self.0.exists() {
                    return;
                }
            } else {
                super::procs::kill_all(&left);
            }
            if std::time::Instant::now() >= deadline {
                tracing::warn!("could not remove browser profile {}", self.0.display());
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The DevTools port Chromium picked for `--remote-debugging-port=0`, read from the profile
/// (`DevToolsActivePort`, first line). Letting the browser bind its own port means no other
/// process can take a port we chose between our probe and its bind (chromedriver would then
/// attach to an impostor), and only this user can read which port it is (the profile is 0700).
async fn devtools_port(profile: &std::path::Path, timeout: Duration) -> anyhow::Result<u16> {
    let file = profile.join("DevToolsActivePort");
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Ok(text) = std::fs::read_to_string(&file)
            && let Some(Ok(port)) = text.lines().next().map(str::parse::<u16>)
        {
            return Ok(port);
        }
        anyhow::ensure!(std::time::Instant::now() < deadline, "{} did not appear within {timeout:?}", file.display());
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

impl BrowserSession {
    /// Start a browser as `launch` says, on a fresh profile, and open `page_url` in it.
    pub async fn open(launch: &Launch, page_url: &str) -> anyhow::Result<BrowserSession> {
        Self::open_on(launch, page_url, None).await
    }

    /// [`BrowserSession::open`], a local browser on `reuse` — a profile an earlier browser of
    /// its kind left ([`BrowserSession::close_keeping_profile`]) — if given.
    pub(crate) async fn open_on(
        launch: &Launch,
        page_url: &str,
        reuse: Option<Profile>,
    ) -> anyhow::Result<BrowserSession> {
        let profile_for = |reuse: Option<Profile>| match reuse {
            Some(p) => Ok(p.reused()),
            None => Profile::fresh(),
        };
        let session = match launch {
            Launch::Chromium { driver_url, binary, flags, attach } => {
                let profile = profile_for(reuse)?;
                let args = chromium_args(flags, Some(profile.path()));
                if *attach {
                    let child = tokio::process::Command::new(binary)
                        .args(&args)
                        // Loopback only, a port of the browser's choosing (see devtools_port).
                        .arg("--remote-debugging-address=127.0.0.1")
                        .arg("--remote-debugging-port=0")
                        .arg("about:blank")
                        .stdout(std::process::Stdio::null())
                        .stderr(std::process::Stdio::null())
                        .process_group(0)
                        .kill_on_drop(true)
                        .spawn()
                        .with_context(|| format!("starting {}", binary.display()))?;
                    let dir = profile.path().to_path_buf();
                    let mut s = BrowserSession::unconnected(Some(profile), Some(child), None);
                    let port = match devtools_port(&dir, Duration::from_secs(20)).await {
                        Ok(port) => port,
                        Err(e) => {
                            s.kill_local().await;
                            return Err(e).with_context(|| format!("{} debugging port", binary.display()));
                        }
                    };
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
                let profile = profile_for(reuse)?;
                let driver = super::DriverProcess::geckodriver(geckodriver).await?;
                let url = driver.url();
                let caps = firefox_caps(Some(binary), flags, Some(profile.path()));
                BrowserSession::unconnected(Some(profile), None, Some(driver)).connect(&url, caps).await?
            }
            Launch::Remote { url, engine, binary, flags, caps: asked } => {
                let mut caps = match engine {
                    super::BrowserKind::Firefox => firefox_caps(binary.as_deref(), flags, None),
                    _ => {
                        let mut opts = json!({ "args": chromium_args(flags, None) });
                        if let Some(b) = binary {
                            opts["binary"] = json!(b);
                        }
                        json!({ "browserName": "chrome", "goog:chromeOptions": opts })
                    }
                };
                for (k, v) in asked {
                    caps[k] = v.clone();
                }
                // The one place the URL is used whole: to connect.
                BrowserSession::unconnected(None, None, None).connect(url.expose(), caps).await?
            }
        };
        let opened = tokio::time::timeout(SESSION_TIMEOUT, session.client.as_ref().expect("connected").goto(page_url));
        match opened.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                session.close().await;
                return Err(e).context("opening the page");
            }
            Err(_) => {
                session.close().await;
                anyhow::bail!("opening the page: no answer from WebDriver within {SESSION_TIMEOUT:?}");
            }
        }
        Ok(session.into_connected())
    }

    fn unconnected(
        profile: Option<Profile>,
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

    /// The WebDriver session's id (a Grid names the node holding it by this id).
    pub async fn session_id(&self) -> Option<String> {
        self.client.session_id().await.ok().flatten()
    }

    /// A handle that keeps this session alive on an endpoint that ends idle sessions (a Grid
    /// node's `--session-timeout`): the tab talks over its socket, not WebDriver, so without it
    /// an idle pool would lose every Grid tab.
    pub fn keepalive(&self) -> KeepAlive {
        KeepAlive { client: self.client.clone() }
    }

    /// The page title: the runtime writes its state there (`tabpool: ready`, `tabpool: error: …`).
    pub async fn title(&self) -> String {
        self.client.title().await.unwrap_or_else(|e| format!("<no title: {e}>"))
    }

    /// A PNG of the visible page (the dashboard test checks what a person would see).
    pub async fn screenshot(&self) -> anyhow::Result<Vec<u8>> {
        self.client.screenshot().await.context("taking a screenshot")
    }

    /// A full garbage collection in the page, where the browser exposes `gc()` (our Chromium
    /// kinds: `--js-flags=--expose-gc`): memory is measured without the garbage a collection
    /// that happened to run or not would leave. Whether it ran.
    pub async fn collect_garbage(&self) -> bool {
        let js = "if (typeof gc === 'function') { gc(); return true; } return false;";
        matches!(self.client.execute(js, vec![]).await, Ok(serde_json::Value::Bool(true)))
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
        for main in super::procs::with_cmdline_containing(&p.path().display().to_string()) {
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

    /// Close as [`BrowserSession::close`] does, but hand back the local profile instead of
    /// removing it, for a replacement browser to start on (its weights already cached).
    pub(crate) async fn close_keeping_profile(self) -> Option<Profile> {
        let BrowserSession { client, profile, own, driver } = self;
        Starting { client: Some(client), profile, own, driver }.shut().await
    }
}

/// A cheap WebDriver command on a session, at the pool's pace ([`BrowserSession::keepalive`]).
#[derive(Clone, Debug)]
pub struct KeepAlive {
    client: Client,
}

impl KeepAlive {
    /// Read the page's title (the cheapest command every driver answers), bounded.
    pub async fn touch(&self) -> anyhow::Result<()> {
        match tokio::time::timeout(Duration::from_secs(10), self.client.title()).await {
            Ok(r) => r.map(|_| ()).context("keeping the WebDriver session alive"),
            Err(_) => anyhow::bail!("keeping the WebDriver session alive: no answer within 10 s"),
        }
    }
}

/// A session being set up: every part optional, so a failure half-way cleans up what exists.
pub struct Starting {
    client: Option<Client>,
    profile: Option<Profile>,
    own: Option<tokio::process::Child>,
    driver: Option<super::DriverProcess>,
}

impl Starting {
    async fn connect(mut self, url: &str, caps: serde_json::Value) -> anyhow::Result<Starting> {
        let caps = caps.as_object().expect("object").clone();
        // A WebDriver endpoint that accepts and never answers (a hung Grid hub) must not hold
        // the launch, and the host with it, for ever.
        let mut builder = ClientBuilder::new(HttpConnector::new());
        let connecting = builder.capabilities(caps).connect(url);
        let shown = crate::redact::url(url);
        match tokio::time::timeout(SESSION_TIMEOUT, connecting).await {
            Ok(Ok(c)) => {
                self.client = Some(c);
                Ok(self)
            }
            Ok(Err(e)) => {
                self.close().await;
                Err(anyhow::anyhow!(crate::redact::text(&e.to_string())))
                    .with_context(|| format!("starting a browser session through {shown}"))
            }
            Err(_) => {
                self.close().await;
                anyhow::bail!("{shown} did not start a browser session within {SESSION_TIMEOUT:?}")
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
            let left = super::procs::with_cmdline_containing(&p.path().display().to_string());
            super::procs::kill_all(&left);
            super::procs::wait_gone(&left, Duration::from_secs(5)).await;
        }
    }

    async fn close(self) {
        // Dropping the profile removes its directory.
        drop(self.shut().await);
    }

    /// Close the session and kill every local process of it (also those naming the profile);
    /// the profile, untouched, is handed back.
    async fn shut(mut self) -> Option<Profile> {
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
        self.profile.take()
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
