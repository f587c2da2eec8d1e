//! Which loader builds a model of each type: the one place a model family is named for the pool.
//! A new family adds one arm here (and its routes); nothing in `pool/`, `exec/` or
//! `policy/` changes.

use std::path::Path;
use std::sync::Arc;

use crate::family::{BatchModel, SessionModel};
use crate::policy::routing::ModelType;

/// A loaded model, by how the pool runs it.
pub enum Loaded {
    Batches(Arc<dyn BatchModel>),
    Sessions(Box<dyn SessionModel>),
    /// Speech to text: an encoder run once per 30-s window and a decoder session over its
    /// output (`exec::transcriber` runs the two wherever they are placed).
    Speech(Arc<super::whisper::Whisper>),
}

/// Load the built-in model of type `ty` from `dir` (its default install when `None`).
pub fn load(ty: ModelType, dir: Option<&Path>) -> anyhow::Result<Loaded> {
    Ok(match ty {
        ModelType::TextGeneration => Loaded::Sessions(load_sessions(ty, dir)?),
        ModelType::Audio => Loaded::Speech(Arc::new(super::whisper::Whisper::load(dir)?)),
        ModelType::TextEmbedding | ModelType::Vision => Loaded::Batches(load_batches(ty, dir)?),
    })
}

/// Load a model served in stateless batches from `dir` (its default install when `None`).
pub fn load_batches(ty: ModelType, dir: Option<&Path>) -> anyhow::Result<Arc<dyn BatchModel>> {
    Ok(match ty {
        ModelType::TextEmbedding => Arc::new(super::minilm::MiniLm::load(dir)?),
        ModelType::Vision => Arc::new(super::efficientnet::EfficientNet::load(dir)?),
        other => anyhow::bail!("no {other:?} model served in batches is built into tabpool yet"),
    })
}

/// Load a model served in sessions (generation) from `dir` (its default install when `None`).
pub fn load_sessions(ty: ModelType, dir: Option<&Path>) -> anyhow::Result<Box<dyn SessionModel>> {
    Ok(match ty {
        ModelType::TextGeneration => Box::new(super::smollm2::SmolLm2::load(dir)?),
        other => anyhow::bail!("no {other:?} model served in sessions is built into tabpool yet"),
    })
}
