//! What a session model (a decoder whose KV cache stays where it runs) is built with, shared by
//! the host's pool and the in-page runtime.

use serde::Serialize;

/// The KV cache a copy of a session model is given: token rows shared by its sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvLimits {
    pub max_tokens: u32,
    pub max_sessions: u32,
}

/// A chat message: `role` is "system", "user" or "assistant".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Message {
        Message { role: role.into(), content: content.into() }
    }
}

/// What a stage of a sharded model computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Part {
    /// The token embedding (a gather of the prompt's rows).
    Embed,
    /// Layer l's attention: norm, q/k/v, rope, cached attention, output projection, residual.
    Attention(u32),
    /// Layer l's feed-forward: norm, gate/up, SwiGLU, down, residual.
    Ffn(u32),
    /// The output norm, the LM head over the tied embedding, and sampling.
    Head,
}

impl Part {
    /// Every part of a `layers`-layer model, in order: one stage holding the whole model.
    pub fn whole_model(layers: u32) -> Vec<Part> {
        let mut parts = vec![Part::Embed];
        for l in 0..layers {
            parts.extend([Part::Attention(l), Part::Ffn(l)]);
        }
        parts.push(Part::Head);
        parts
    }
}
