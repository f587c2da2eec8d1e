//! The sharding planner's view of a llama-architecture GGUF: its parts (embedding, each layer's
//! attention and FFN, head) and their bytes, read from the weight list. The planner
//! (`policy::sharding`) only splits the costs it is given.

use crate::policy::sharding::{ModelCosts, PlanError};

/// From `(GGUF tensor name, bytes)` pairs: `token_embd.weight`, `output_norm.weight`,
/// `blk.{l}.attn_*` / `blk.{l}.ffn_*` (norms included with their part).
pub fn from_weights(
    layers: u32,
    hidden: u32,
    kv_width: u32,
    weights: &[(String, u64)],
) -> Result<ModelCosts, PlanError> {
    let mut c = ModelCosts {
        layers,
        hidden,
        embed_table: 0,
        output_norm: 0,
        per_layer: vec![(0, 0); layers as usize],
        kv_per_layer_token: 2 * 4 * kv_width as u64,
    };
    for (name, bytes) in weights {
        if name == "token_embd.weight" {
            c.embed_table = *bytes;
        } else if name == "output_norm.weight" {
            c.output_norm = *bytes;
        } else if let Some(rest) = name.strip_prefix("blk.") {
            let (l, kind) = rest.split_once('.').ok_or_else(|| PlanError::Weight(name.clone()))?;
            let l: usize = l.parse().map_err(|_| PlanError::Weight(name.clone()))?;
            let slot = c.per_layer.get_mut(l).ok_or_else(|| PlanError::Weight(name.clone()))?;
            if kind.starts_with("attn_") {
                slot.0 += bytes;
            } else if kind.starts_with("ffn_") {
                slot.1 += bytes;
            } else {
                return Err(PlanError::Weight(name.clone()));
            }
        }
    }
    if c.embed_table == 0 {
        return Err(PlanError::Weight("token_embd.weight missing".into()));
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::sharding::Part;

    /// SmolLM2-135M's weight list with its real byte counts (Q4_1 matrices, Q8_0 table, f32 norms).
    fn smollm2_weights() -> Vec<(String, u64)> {
        let q4 = |n: u64| n / 32 * 20;
        let mut w =
            vec![("token_embd.weight".to_string(), 49152 * 576 / 32 * 34), ("output_norm.weight".into(), 576 * 4)];
        for l in 0..30 {
            for (name, bytes) in [
                ("attn_norm", 576 * 4),
                ("attn_q", q4(576 * 576)),
                ("attn_k", q4(192 * 576)),
                ("attn_v", q4(192 * 576)),
                ("attn_output", q4(576 * 576)),
                ("ffn_norm", 576 * 4),
                ("ffn_gate", q4(1536 * 576)),
                ("ffn_up", q4(1536 * 576)),
                ("ffn_down", q4(576 * 1536)),
            ] {
                w.push((format!("blk.{l}.{name}.weight"), bytes));
            }
        }
        w
    }

    #[test]
    fn costs_come_from_the_weights() {
        let c = from_weights(30, 576, 192, &smollm2_weights()).unwrap();
        assert_eq!(c.weight_bytes(), smollm2_weights().iter().map(|w| w.1).sum::<u64>());
        let layer: u64 = smollm2_weights().iter().filter(|w| w.0.starts_with("blk.7.")).map(|w| w.1).sum();
        assert_eq!(c.part(Part::Attention(7)).weight_bytes + c.part(Part::Ffn(7)).weight_bytes, layer);
        assert_eq!(c.kv_per_layer_token, 2 * 4 * 192);
        let e = from_weights(2, 8, 8, &[("blk.0.mystery.weight".into(), 4), ("token_embd.weight".into(), 64)]);
        assert_eq!(e.unwrap_err(), PlanError::Weight("blk.0.mystery.weight".into()));
    }
}
