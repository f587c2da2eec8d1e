//! A WebDriver server process owned by the host (chromedriver, geckodriver): started on a free
//! loopback port, killed with its whole process tree when stopped or dropped.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

use super::procs;

pub struct DriverProcess {
    child: Child,
    port: u16,
}

impl DriverProcess {
    /// chromedriver, which serves any number of sessions.
    pub async fn chromedriver(binary: &Path) -> anyhow::Result<DriverProcess> {
        Self::start(binary, |port| {
            vec![
                format!("--port={port}"),
                "--allowed-ips=127.0.0.1".into(),
                // Attached browsers may be older builds (the npm headless shell with WebNN is 153).
                "--disable-build-check".into(),
            ]
        })
        .await
    }

    /// geckodriver, which serves one session at a time: one process per Firefox tab.
    pub async fn geckodriver(binary: &Path) -> anyhow::Result<DriverProcess> {
        Self::start(binary, |port| vec!["--port".into(), port.to_string(), "--host".into(), "127.0.0.1".into()]).await
    }

    /// Start `binary` with the arguments for a free port; return once it answers WebDriver's
    /// `GET /status`. A port found free here can be taken by another process before the driver
    /// binds it (the driver then exits, or another server answers there): the driver is started
    /// again on another port, up to three times.
    pub async fn start(binary: &Path, args: impl Fn(u16) -> Vec<String>) -> anyhow::Result<DriverProcess> {
        let mut last = None;
        for _ in 0..3 {
            match Self::start_once(binary, &args).await {
                Ok(d) => return Ok(d),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("three attempts"))
    }

    async fn start_once(binary: &Path, args: &impl Fn(u16) -> Vec<String>) -> anyhow::Result<DriverProcess> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new(binary)
            .args(args(port))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            // Its own group: a stop kills the browsers below it even if they are reparented.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut driver = DriverProcess { child, port };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = driver.child.try_wait()? {
                bail!("{} exited with {status} before listening on port {port}", binary.display());
            }
            if webdriver_status(port).await.is_some_and(|body| body.contains("\"ready\""))
                && driver.child.try_wait()?.is_none()
            {
                return Ok(driver);
            }
            if Instant::now() > deadline {
                bail!("{} did not answer GET /status on port {port} within 15 s", binary.display());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The driver has exited (killed, crashed): its WebDriver sessions are gone with it.
    pub fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    pub fn pid(&self) -> Option<i32> {
        self.child.id().map(|p| p as i32)
    }

    /// Kill the driver and everything below it (browsers it launched that are still running).
    pub async fn stop(mut self) {
        let tree: Vec<procs::ProcId> =
            self.pid().map(procs::descendants).unwrap_or_default().into_iter().map(|(p, _)| p).collect();
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
        procs::kill_all(&tree);
        // Return only once they are really gone: "no orphans" must hold when the CLI exits.
        let left = procs::wait_gone(&tree, Duration::from_secs(5)).await;
        if !left.is_empty() {
            tracing::warn!("{} browser processes survived SIGKILL: {left:?}", left.len());
        }
    }
}

/// The body of a 200 answer to `GET /status` on `127.0.0.1:port`, within a second. Read up to
/// its Content-Length: chromedriver keeps the connection open a while even when asked to close
/// it (and closes an HTTP/1.0 request without answering).
async fn webdriver_status(port: u16) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ask = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        let req = format!("GET /status HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = s.read(&mut buf).await.ok()?;
            out.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&out);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length = head.lines().find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.trim().eq_ignore_ascii_case("content-length").then(|| v.trim().parse::<usize>().ok())?
                });
                if n == 0 || length.is_some_and(|len| body.len() >= len) {
                    let ok = head.split(' ').nth(1) == Some("200");
                    return ok.then(|| body.to_string());
                }
            }
            if n == 0 || out.len() > 1 << 20 {
                return None;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(1), ask).await.ok().flatten()
}

impl Drop for DriverProcess {
    fn drop(&mut self) {
        // Last resort when `stop` was not awaited (a panic, an early return).
        if let Some(pid) = self.pid() {
            let tree: Vec<procs::ProcId> = procs::descendants(pid).into_iter().map(|(p, _)| p).collect();
            procs::kill_all(&tree);
        }
        let _ = self.child.start_kill();
    }
}
