//! TEMPORARY: the planner (helper branch `plan`) replaces this file; only `Part` is used here.

/// What a stage of a sharded model computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    Embed,
    Attention(u32),
    Ffn(u32),
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

/// TEMPORARY: contiguous, even layer ranges; embedding with the first, head with the last.
pub fn even_layers(layers: u32, shards: u32) -> Vec<Vec<Part>> {
    let shards = shards.clamp(1, layers.max(1));
    (0..shards)
        .map(|s| {
            let (a, b) = (layers * s / shards, layers * (s + 1) / shards);
            let mut parts = Vec::new();
            if s == 0 {
                parts.push(Part::Embed);
            }
            for l in a..b {
                parts.extend([Part::Attention(l), Part::Ffn(l)]);
            }
            if s + 1 == shards {
                parts.push(Part::Head);
            }
            parts
        })
        .collect()
}
