//! The in-page library API (feature `api`) in headless Chromium and Firefox: a tiny BERT
//! encoder's files (`model_graphs/tests/data/tiny_bert/`) loaded with `Runtime.loadEncoder`,
//! embedded in the page — tokenised there — equal to the CPU executor running the same graph on
//! the same ids; "auto" times every backend the tab has and keeps one; bad input is an `Error`
//! named by its kind.
#![cfg(all(target_arch = "wasm32", feature = "api"))]

use model_graphs::minilm;
use page_runtime::api::Runtime;
use page_runtime::executors::cpu::CpuModel;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

const SAFETENSORS: &[u8] = include_bytes!("../../model_graphs/tests/data/tiny_bert/model.safetensors");
const CONFIG: &str = include_str!("../../model_graphs/tests/data/tiny_bert/config.json");
const TOKENIZER: &str = include_str!("../../model_graphs/tests/data/tiny_bert/tokenizer.json");

/// |page − cpu| ≤ ATOL + RTOL·|cpu| (f32 kernels on other backends; unit vectors).
const ATOL: f32 = 1e-5;
const RTOL: f32 = 1e-4;

const TEXTS: [&str; 3] = ["Hello, world.", "the seas", "hello the world, the sea."];

/// The CPU executor on the same graph and the ids the host's tokenizer setup gives.
fn reference() -> Vec<Vec<f32>> {
    let e = minilm::Encoder::from_bytes(SAFETENSORS, Some(CONFIG), TOKENIZER.as_bytes()).unwrap();
    let (ids, _) = minilm::tokenize(&e.tokenizer, &TEXTS).unwrap();
    let out = CpuModel::new(e.graph, e.weights).unwrap().run(&minilm::inputs_from_ids(&ids)).unwrap();
    out[0].to_f32().unwrap().chunks(8).map(<[f32]>::to_vec).collect()
}

fn error_name(e: JsValue) -> String {
    e.dyn_into::<js_sys::Error>().map(|e| String::from(e.name())).unwrap_or_default()
}

async fn embed_with(backend: &str) -> (String, Vec<Vec<f32>>, JsValue) {
    let rt = Runtime::create(backend.into()).await.unwrap_or_else(|e| panic!("{backend}: {e:?}"));
    let bytes = js_sys::Uint8Array::from(SAFETENSORS);
    let m = rt.load_encoder(bytes, TOKENIZER.into(), Some(CONFIG.into())).await.unwrap();
    assert_eq!(m.dimensions(), 8);
    let texts: Vec<String> = TEXTS.iter().map(|t| t.to_string()).collect();
    let vs = m.embed(texts).await.unwrap().iter().map(|v| v.to_vec()).collect();
    (m.backend(), vs, m.calibration())
}

fn check(what: &str, got: &[Vec<f32>], want: &[Vec<f32>]) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (g, w) in got.iter().zip(want) {
        let norm: f32 = g.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "{what}: a unit vector, norm {norm}");
        for (a, b) in g.iter().zip(w) {
            assert!((a - b).abs() <= ATOL + RTOL * b.abs(), "{what}: {g:?} vs {w:?}");
        }
    }
}

#[wasm_bindgen_test]
async fn the_cpu_backend_embeds_like_the_cpu_executor() {
    let (backend, got, _) = embed_with("cpu").await;
    assert_eq!(backend, "wasm-cpu");
    check("cpu", &got, &reference());
}

#[wasm_bindgen_test]
async fn auto_times_every_backend_the_tab_has_and_keeps_the_fastest() {
    let (backend, got, calibration) = embed_with("auto").await;
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(&String::from(js_sys::JSON::stringify(&calibration).unwrap())).unwrap();
    let timed: Vec<(&str, f64)> =
        rows.iter().filter_map(|r| Some((r["backend"].as_str()?, r["ms"].as_f64()?))).collect();
    // The CPU executor is always there; this browser's WebGPU adapter too (SwiftShader / lavapipe).
    assert!(timed.iter().any(|(b, _)| *b == "wasm-cpu") && timed.iter().any(|(b, _)| *b == "webgpu"), "{rows:?}");
    let fastest = timed.iter().min_by(|a, b| a.1.total_cmp(&b.1)).unwrap().0;
    assert_eq!(backend, fastest, "{rows:?}");
    check(&backend, &got, &reference());
}

#[wasm_bindgen_test]
async fn bad_input_is_an_error_named_by_its_kind() {
    assert_eq!(error_name(Runtime::create("tpu".into()).await.err().unwrap()), "BadInput");
    let rt = Runtime::create("cpu".into()).await.unwrap();
    let short = js_sys::Uint8Array::from(&SAFETENSORS[..64]);
    let err = rt.load_encoder(short, TOKENIZER.into(), None).await.err().unwrap();
    assert_eq!(error_name(err), "BadInput");
    let m =
        rt.load_encoder(js_sys::Uint8Array::from(SAFETENSORS), TOKENIZER.into(), Some(CONFIG.into())).await.unwrap();
    assert_eq!(error_name(m.embed(vec![]).await.err().unwrap()), "BadInput");
    assert_eq!(error_name(m.embed(vec!["  ".into()]).await.err().unwrap()), "BadInput");
}
