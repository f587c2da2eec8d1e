//! The graph a model's files give is the same natively and in a browser: one test, run on the
//! host and (through `wasm-pack test --chrome`) in headless Chromium, checks a tiny BERT encoder
//! (1 layer, 8 wide, 12-token WordPiece vocabulary, `tests/data/tiny_bert/`) against one
//! expected graph hash and the same token ids — so the in-page runtime and the host can never
//! build different graphs from the same files.

use model_graphs::minilm::{Encoder, inputs_from_ids, tokenize, wrap_ids};
use shared_proto::content_hash;

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;
#[cfg(target_arch = "wasm32")]
wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_browser);

const SAFETENSORS: &[u8] = include_bytes!("data/tiny_bert/model.safetensors");
const CONFIG: &str = include_str!("data/tiny_bert/config.json");
const TOKENIZER: &[u8] = include_bytes!("data/tiny_bert/tokenizer.json");

/// blake3 of the graph's Debug form: nodes, inputs, and every weight's name, shape and content
/// hash. Recomputed and checked natively; the browser must give the same.
const GRAPH_HASH: &str = "71981b3b611363bdd59c27a0af1d298d6acf6f38efb250b9b2d5a1a91a21688b";

#[test]
fn the_tiny_encoder_builds_one_graph_and_tokenizes_alike() {
    let e = Encoder::from_bytes(SAFETENSORS, Some(CONFIG), TOKENIZER).unwrap();
    assert_eq!((e.config.hidden_size, e.config.num_hidden_layers, e.weights.len()), (8, 1, 21));
    assert_eq!(content_hash(format!("{:?}", e.graph).as_bytes()), GRAPH_HASH);
    // Lower-cased, split into word pieces, wrapped in [CLS] … [SEP], not padded to 128.
    let (ids, cut) = tokenize(&e.tokenizer, &["Hello, the seas.", "world"]).unwrap();
    assert_eq!(ids, vec![vec![2, 5, 11, 7, 8, 9, 10, 3], vec![2, 6, 3]]);
    assert_eq!(cut, vec![false, false]);
    assert!(tokenize(&e.tokenizer, &["  "]).unwrap_err().to_string().contains("empty"));
    assert_eq!(wrap_ids(&e.tokenizer, &[vec![5, 6]]).unwrap().0, vec![vec![2, 5, 6, 3]]);
    assert!(wrap_ids(&e.tokenizer, &[vec![12]]).unwrap_err().to_string().contains("outside the vocabulary"));
    // A batch pads to its longest text, the mask saying which positions are real.
    let inputs = inputs_from_ids(&ids);
    assert_eq!(inputs.len(), 4);
    assert_eq!(inputs[3].shape, vec![2, 8]);
    assert_eq!(inputs[3].to_f32().unwrap()[8..], [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
}

#[test]
fn files_that_do_not_belong_together_are_refused() {
    let mut tok: serde_json::Value = serde_json::from_slice(TOKENIZER).unwrap();
    tok["model"]["vocab"]["extra"] = 40.into();
    let err = Encoder::from_bytes(SAFETENSORS, Some(CONFIG), tok.to_string().as_bytes()).err().unwrap();
    assert!(format!("{err:#}").contains("word_embeddings has 12 rows"), "{err:#}");
    let err = Encoder::from_bytes(&SAFETENSORS[..100], Some(CONFIG), TOKENIZER).err().unwrap();
    assert!(format!("{err:#}").contains("model.safetensors"), "{err:#}");
}
