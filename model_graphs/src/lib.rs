//! tabpool's model families as operator graphs ([`shared_proto::Graph`] + weights), built from a
//! model's own files. Pure: bytes in, graph, weights and token ids out — no files, no network —
//! so the host (which reads the files from its model cache) and the in-page runtime (which gets
//! them from a URL or the page's own bytes) build the same graph, byte for byte.

pub mod builder;
pub mod minilm;
pub mod session;
pub mod smollm2;

pub use session::{KvLimits, Message, Part};

/// The tokenizer crate the graphs' tokenizers come from, for callers that keep one.
pub use tokenizers;
