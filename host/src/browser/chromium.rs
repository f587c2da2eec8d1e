//! Headless Chromium sessions through chromedriver (fantoccini), one browser process per tab.

use std::path::PathBuf;

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
}

/// One browser with one tab, and its throwaway profile directory.
pub struct BrowserSession {
    client: Client,
    profile: PathBuf,
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
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": opts.binary, "args": args },
        });
        let caps = caps.as_object().expect("object").clone();
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(caps)
            .connect(driver_url)
            .await
            .with_context(|| format!("starting {} through {driver_url}", opts.binary.display()))?;
        let session = BrowserSession { client, profile };
        session.client.goto(page_url).await.context("opening the page")?;
        Ok(session)
    }

    /// The page title: the runtime writes its state there (`tabpool: ready`, `tabpool: error: …`).
    pub async fn title(&self) -> String {
        self.client.title().await.unwrap_or_else(|e| format!("<no title: {e}>"))
    }

    /// Quit the browser and remove its profile.
    pub async fn close(self) {
        if let Err(e) = self.client.close().await {
            tracing::debug!("closing browser session: {e}");
        }
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
