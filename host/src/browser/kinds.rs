//! Browser kinds are configuration: which binary, which flags, launched or attached.

use std::path::PathBuf;

/// A kind of browser tab the host can start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BrowserKind {
    /// Debian Chromium, launched by chromedriver: WebGPU (SwiftShader here), no WebNN.
    Chromium,
    /// The headless Chromium 153 from npm `@sparticuz/chromium` with WebNN enabled, started by the
    /// host and attached through `debuggerAddress`.
    ChromiumWebnn,
}

impl BrowserKind {
    pub const ALL: [BrowserKind; 2] = [BrowserKind::ChromiumWebnn, BrowserKind::Chromium];

    pub fn name(self) -> &'static str {
        match self {
            BrowserKind::Chromium => "chromium",
            BrowserKind::ChromiumWebnn => "chromium-webnn",
        }
    }

    pub fn attach(self) -> bool {
        self == BrowserKind::ChromiumWebnn
    }

    pub fn flags(self) -> Vec<String> {
        match self {
            BrowserKind::Chromium => vec![],
            BrowserKind::ChromiumWebnn => vec!["--enable-features=WebMachineLearningNeuralNetwork".into()],
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
