//! Every end-to-end test in one binary: one link of DuckDB, tokenizers and fantoccini instead of
//! one per file. Each module is one file of this folder (a capability, with its own doc);
//! `cargo test -p tabpool --test e2e pool_generation::` runs one. Tests that start processes
//! hold `support::process_guard()`, so they take turns and each one's leftovers are exactly its
//! own; `scripts/test.sh` also runs this binary one test at a time, because tests that start no
//! process can still load both cores and slow a timing-sensitive neighbour.

mod support;

mod abuse;
mod api_bounds;
mod api_locked;
mod auth;
mod chaos;
mod chat;
mod cli_errors;
mod device_lost;
mod driver_lost;
mod embed_remembered;
mod grid;
mod history;
mod hung_tab;
mod lending;
mod matmul_in_tab;
mod minilm_cpu;
mod minilm_webgpu;
mod minilm_webnn;
mod oip_api;
mod openai_api;
mod page_library;
mod pool;
mod pool_generation;
mod pool_kinds;
mod pool_scaling;
mod pool_shards;
mod serve_audio;
mod serve_generate;
mod serve_status;
mod shard_pipeline;
mod shutdown;
mod smollm2_cpu;
mod smollm2_load;
mod smollm2_tab;
mod socket_flood;
mod vision;
mod webnn_ops;
mod weight_cache;
mod whisper;
