//! CLI subcommands. Each takes a started [`Host`] (except `doctor`, which also reports what is
//! missing before a host can start) and prints human text or `--json`.

pub mod bench;
pub mod bench_generate;
pub mod bench_grid;
pub mod bench_history;
pub mod bench_lending;
pub mod bench_memory;
pub mod bench_multimodal;
pub mod bench_pool;
pub mod bench_recovery;
pub mod bench_shard;
pub mod bench_transcribe;
pub mod bench_vision;
pub mod chat;
pub mod classify;
pub mod cli;
pub mod doctor;
pub mod embed;
pub mod generate;
pub mod matmul;
pub mod pool_args;
pub mod report;
pub mod serve;
pub mod shard_plan;
pub mod token;
pub mod transcribe;

use std::time::Duration;

use rand::{Rng, SeedableRng};

/// Per-request timeout for kernel work: SwiftShader is slow (~0.15 GFLOP/s).
pub const KERNEL_TIMEOUT: Duration = Duration::from_secs(300);

/// Uniform values in [-1, 1) from a seeded generator: reproducible inputs.
pub fn random_values(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

pub use crate::tab::{adapter_line, webnn_line};
