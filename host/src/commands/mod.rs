//! CLI subcommands. Each takes a started [`Host`] (except `doctor`, which also reports what is
//! missing before a host can start) and prints human text or `--json`.

pub mod bench;
pub mod bench_generate;
pub mod bench_history;
pub mod bench_memory;
pub mod bench_pool;
pub mod bench_recovery;
pub mod chat;
pub mod doctor;
pub mod embed;
pub mod generate;
pub mod matmul;
pub mod pool_args;
pub mod report;
pub mod serve;

use std::time::Duration;

use rand::{Rng, SeedableRng};
use shared_proto::Capabilities;

/// Per-request timeout for kernel work: SwiftShader is slow (~0.15 GFLOP/s).
pub const KERNEL_TIMEOUT: Duration = Duration::from_secs(300);

/// Uniform values in [-1, 1) from a seeded generator: reproducible inputs.
pub fn random_values(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// "SwiftShader Device (Subzero) [Cpu, BrowserWebGpu]" or why there is no adapter.
pub fn adapter_line(caps: &Capabilities) -> String {
    match (&caps.webgpu.adapter, &caps.webgpu.error) {
        (Some(a), _) => {
            let name = [a.vendor.as_str(), a.architecture.as_str(), a.description.as_str()]
                .iter()
                .filter(|s| !s.is_empty())
                .copied()
                .collect::<Vec<_>>()
                .join(" ");
            let fallback = if a.is_fallback { ", fallback adapter" } else { "" };
            format!("{name} [{}{fallback}]", a.device_type)
        }
        (None, Some(e)) => format!("no adapter: {e}"),
        (None, None) => "no adapter".into(),
    }
}

pub fn webnn_line(caps: &Capabilities) -> String {
    if !caps.webnn.api_present {
        return "navigator.ml absent".into();
    }
    caps.webnn
        .contexts
        .iter()
        .map(|c| match (&c.error, c.ok) {
            (_, true) => format!("{}: ok", c.device_type),
            (Some(e), false) => format!("{}: {e}", c.device_type),
            (None, false) => format!("{}: failed", c.device_type),
        })
        .collect::<Vec<_>>()
        .join("; ")
}
