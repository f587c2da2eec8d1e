//! Browser kinds are configuration: which browser, which binary and flags, launched locally or
//! asked of a remote WebDriver endpoint.

use std::path::PathBuf;

use crate::redact::SecretUrl;

/// The browser engine (and how it is started) behind a kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BrowserKind {
    /// Debian Chromium, launched by chromedriver: WebGPU (SwiftShader here), no WebNN.
    Chromium,
    /// The headless Chromium 153 from npm `@sparticuz/chromium` with WebNN enabled, started by the
    /// host and attached through `debuggerAddress`.
    ChromiumWebnn,
    /// Debian firefox-esr through geckodriver (one driver process per tab): WebGPU with the
    /// prefs below, no WebNN.
    Firefox,
    /// Any WebDriver endpoint (a Selenium Grid hub, a chromedriver or geckodriver elsewhere); its
    /// tab connects back to the host's advertised address.
    Remote,
}

impl BrowserKind {
    pub const LOCAL: [BrowserKind; 3] = [BrowserKind::ChromiumWebnn, BrowserKind::Chromium, BrowserKind::Firefox];

    pub fn name(self) -> &'static str {
        match self {
            BrowserKind::Chromium => "chromium",
            BrowserKind::ChromiumWebnn => "chromium-webnn",
            BrowserKind::Firefox => "firefox",
            BrowserKind::Remote => "remote",
        }
    }

    /// Chromium builds chromedriver cannot launch itself: we start them and attach.
    pub fn attach(self) -> bool {
        self == BrowserKind::ChromiumWebnn
    }

    pub fn flags(self) -> Vec<String> {
        match self {
            // `gc()` for the page runtime: it collects an unloaded model's garbage at once
            // (page_runtime serve.rs `collect_garbage`).
            BrowserKind::ChromiumWebnn => {
                vec!["--enable-features=WebMachineLearningNeuralNetwork".into(), "--js-flags=--expose-gc".into()]
            }
            BrowserKind::Chromium => vec!["--js-flags=--expose-gc".into()],
            _ => vec![],
        }
    }

    /// Where `scripts/setup.sh` unpacks the npm headless shell (`TABPOOL_CHROMIUM_WEBNN` overrides).
    pub fn default_webnn_binary() -> PathBuf {
        if let Some(p) = std::env::var_os("TABPOOL_CHROMIUM_WEBNN") {
            return PathBuf::from(p);
        }
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
        home.join(".cache/tabpool/browsers/sparticuz/ext/chromium")
    }
}

/// Firefox prefs (DESIGN.md): WebGPU on despite the blocklist (lavapipe here), and none of the
/// background traffic a closed network refuses.
pub const FIREFOX_PREFS: &[(&str, bool)] = &[
    ("dom.webgpu.enabled", true),
    ("gfx.webgpu.ignore-blocklist", true),
    ("app.update.enabled", false),
    ("app.normandy.enabled", false),
    ("browser.shell.checkDefaultBrowser", false),
    ("browser.safebrowsing.malware.enabled", false),
    ("browser.safebrowsing.phishing.enabled", false),
    ("datareporting.policy.dataSubmissionEnabled", false),
    ("datareporting.healthreport.uploadEnabled", false),
    ("toolkit.telemetry.enabled", false),
    ("network.captive-portal-service.enabled", false),
    ("network.connectivity-service.enabled", false),
    ("extensions.update.enabled", false),
];

/// One configured kind of tab: a name (used by routing history, caps and metrics), the browser,
/// and where it comes from.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KindSpec {
    pub name: String,
    pub browser: BrowserKind,
    /// Most tabs of this kind at once; the pool's `max_tabs` when absent.
    #[serde(default)]
    pub max_tabs: Option<usize>,
    /// Browser binary (local kinds; for `remote`, the path on the remote machine, if needed).
    #[serde(default)]
    pub binary: Option<PathBuf>,
    /// Extra browser flags for this kind.
    #[serde(default)]
    pub flags: Vec<String>,
    /// `remote` only: the WebDriver URL, e.g. `http://grid:4444` or `http://host:9515`; may carry
    /// credentials (`http://user:password@grid:4444`), so it is shown only redacted.
    #[serde(default)]
    pub url: Option<SecretUrl>,
    /// `remote` only: the engine to ask for, `chromium` (default) or `firefox`.
    #[serde(default)]
    pub remote_engine: Option<BrowserKind>,
    /// Backend for models on tabs of this kind; the pool's default (`auto`: calibrate) if absent.
    #[serde(default)]
    pub backend: Option<crate::policy::backend_choice::Backend>,
    /// `remote` only: capabilities asked for beside the browser's, e.g. `{ "tabpool:webnn" =
    /// true }`. On a Selenium Grid only nodes whose stereotype advertises every `tabpool:` one
    /// with the same value are asked ([`super::grid::offers`]).
    #[serde(default)]
    pub capabilities: serde_json::Map<String, serde_json::Value>,
}

impl KindSpec {
    /// A built-in local kind under its own name.
    pub fn local(browser: BrowserKind) -> KindSpec {
        KindSpec {
            name: browser.name().into(),
            browser,
            max_tabs: None,
            binary: None,
            flags: vec![],
            url: None,
            remote_engine: None,
            backend: None,
            capabilities: serde_json::Map::new(),
        }
    }

    /// What a session of this remote kind asks for, as a Grid matches it: the browser's name and
    /// the kind's own capabilities.
    pub fn asked_capabilities(&self) -> serde_json::Map<String, serde_json::Value> {
        let browser = match self.remote_engine {
            Some(BrowserKind::Firefox) => "firefox",
            _ => "chrome",
        };
        let mut caps = self.capabilities.clone();
        caps.insert("browserName".into(), browser.into());
        caps
    }

    /// A remote WebDriver endpoint asked for `engine` tabs.
    pub fn remote(name: &str, url: &str, engine: BrowserKind) -> KindSpec {
        KindSpec { url: Some(url.into()), remote_engine: Some(engine), ..KindSpec::local(BrowserKind::Remote) }
            .named(name)
    }

    pub fn named(mut self, name: &str) -> KindSpec {
        self.name = name.into();
        self
    }

    pub fn with_max_tabs(mut self, n: usize) -> KindSpec {
        self.max_tabs = Some(n);
        self
    }

    /// Structural checks a config file can get wrong.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(!self.name.trim().is_empty(), "a browser kind needs a name");
        match self.browser {
            BrowserKind::Remote => {
                let url = self.url.as_ref().map(SecretUrl::expose).unwrap_or("");
                anyhow::ensure!(
                    url.starts_with("http://") || url.starts_with("https://"),
                    "kind {:?}: remote needs `url = \"http://…\"` (a WebDriver endpoint), got {:?}",
                    self.name,
                    crate::redact::url(url)
                );
                anyhow::ensure!(
                    !matches!(self.remote_engine, Some(BrowserKind::Remote | BrowserKind::ChromiumWebnn)),
                    "kind {:?}: remote_engine is chromium or firefox",
                    self.name
                );
            }
            _ => anyhow::ensure!(self.url.is_none(), "kind {:?}: `url` is only for browser = \"remote\"", self.name),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_needs_a_url_and_locals_refuse_one() {
        assert!(KindSpec::local(BrowserKind::Remote).validate().is_err());
        assert!(KindSpec::remote("grid", "http://10.0.0.2:4444", BrowserKind::Firefox).validate().is_ok());
        assert!(KindSpec::remote("grid", "ftp://x", BrowserKind::Chromium).validate().is_err());
        let mut local = KindSpec::local(BrowserKind::Chromium);
        assert!(local.validate().is_ok());
        local.url = Some("http://x".into());
        assert!(local.validate().is_err());
    }
}
