//! Which loader builds a model of each type: the one place a model family is named for the pool.
//! A new stateless family adds one arm here (and its routes); nothing in `pool/`, `exec/` or
//! `policy/` changes.

use std::path::Path;
use std::sync::Arc;

use crate::family::BatchModel;
use crate::policy::routing::ModelType;

/// Load a model served in stateless batches from `dir` (its default install when `None`).
pub fn load_batches(ty: ModelType, dir: Option<&Path>) -> anyhow::Result<Arc<dyn BatchModel>> {
    Ok(match ty {
        ModelType::TextEmbedding => Arc::new(super::minilm::MiniLm::load(dir)?),
        ModelType::Vision => Arc::new(super::efficientnet::EfficientNet::load(dir)?),
        other => anyhow::bail!("no {other:?} model served in batches is built into tabpool yet"),
    })
}
