//! Model loaders: weights and tokenizers read with maintained crates, turned into an operator
//! graph plus weight tensors (the graph builder is `model_graphs::builder`, shared with the
//! in-page runtime).

pub use model_graphs::builder;
pub mod efficientnet;
pub mod generated;
pub mod minilm;
pub mod registry;
pub mod smollm2;
pub mod whisper;

use std::path::PathBuf;

/// The local model cache: `$TABPOOL_MODELS`, else `~/.cache/tabpool/models`. `scripts/setup.sh`
/// installs the PyPI model packages here; nothing is downloaded at run time.
pub fn cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("TABPOOL_MODELS") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    home.join(".cache/tabpool/models")
}
