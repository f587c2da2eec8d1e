//! Helpers shared by the end-to-end tests. Nothing here fakes a browser: tests start the real
//! host, which starts real chromedriver and headless Chromium.

#![allow(dead_code)]

use tabpool::{Host, HostConfig};

/// Deterministic values in [-1, 1).
pub fn values(n: usize, seed: u64) -> Vec<f32> {
    tabpool::commands::random_values(n, seed)
}

/// A started host; panics with the reason (page not built, no browser) so the test fails loudly.
pub async fn host() -> Host {
    Host::start(HostConfig::default())
        .await
        .unwrap_or_else(|e| panic!("host did not start: {e:#} (run `bash scripts/setup.sh` first)"))
}

/// One sentence of `../shared/reference/minilm_embeddings.json` (float64 reference forward).
pub struct RefSentence {
    pub text: String,
    pub input_ids: Vec<u32>,
    pub embedding: Vec<f32>,
}

pub fn minilm_reference() -> Vec<RefSentence> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/reference/minilm_embeddings.json");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| RefSentence {
            text: s["text"].as_str().unwrap().to_string(),
            input_ids: s["input_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect(),
            embedding: s["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect(),
        })
        .collect()
}

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// The acceptance bar against the float64 reference.
pub const MIN_COSINE: f64 = 0.9999;
pub const MAX_ABS: f32 = 1e-3;

/// Panics unless `v` matches the reference sentence within the acceptance bar.
pub fn check_against_reference(v: &[f32], r: &RefSentence) {
    let (cos, diff) = (cosine(v, &r.embedding), max_abs_diff(v, &r.embedding));
    assert!(cos >= MIN_COSINE && diff <= MAX_ABS, "{:?}: cosine {cos}, max abs {diff}", r.text);
}
