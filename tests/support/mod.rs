//! Helpers shared by the end-to-end tests. Nothing here fakes a browser: tests start the real
//! host, which starts real chromedriver and headless Chromium.

#![allow(dead_code)]

use tabpool::{Host, HostConfig};

/// Deterministic values in [-1, 1).
pub fn values(n: usize, seed: u64) -> Vec<f32> {
    tabpool::commands::random_values(n, seed)
}

/// A started host; panics with the reason (page not built, no browser) so the test fails loudly.
pub async fn host() -> Host {
    Host::start(HostConfig::default())
        .await
        .unwrap_or_else(|e| panic!("host did not start: {e:#} (run `bash scripts/setup.sh` first)"))
}
