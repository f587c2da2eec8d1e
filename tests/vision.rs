//! EfficientNet-Lite0 image classification through the CLI as a user runs it, `tabpool classify
//! --json`, against the float64 reference (`tests/data/efficientnet`): both reference images on
//! the host's CPU executor, on WebGPU (Chromium, SwiftShader) and on WebNN (the WebNN headless
//! shell) — per backend the reference's top 5 exactly and every logit within
//! `support::VISION_MAX_LOGIT_DIFF` (1e-3: why there). And a file that is not an image: a
//! non-zero exit naming the file, before any browser starts.

use crate::support;

use std::process::Command;
use std::time::Instant;

const BIN: &str = env!("CARGO_BIN_EXE_tabpool");

/// `tabpool classify --json --backend BACKEND` on both reference images: checks every image
/// and returns the max |logit diff| over them.
fn classify_matches_the_reference(backend: &str, want_backend: &str) -> f32 {
    let refs = support::efficientnet_reference();
    let t = Instant::now();
    let out = Command::new(BIN)
        .args(["classify", "--json", "--backend", backend])
        .args(refs.iter().map(|r| &r.path))
        .output()
        .unwrap();
    let secs = t.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "classify --backend {backend} failed ({}):\n{stderr}", out.status);
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    let ran_on = v["backend"].as_str().unwrap_or_default();
    assert!(ran_on.starts_with(want_backend), "asked for {backend}, ran on {ran_on:?}");
    let images = v["images"].as_array().unwrap();
    assert_eq!(images.len(), refs.len());
    let mut worst = 0f32;
    for (img, r) in images.iter().zip(&refs) {
        assert_eq!(img["path"].as_str(), Some(r.path.to_str().unwrap()));
        let logits: Vec<f32> = img["logits"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
        let diff = support::check_vision_logits(ran_on, &logits, r);
        let top: Vec<(usize, String, f32)> = img["top"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                let (c, l, p) = (&t["class"], &t["label"], &t["probability"]);
                (c.as_u64().unwrap() as usize, l.as_str().unwrap().to_string(), p.as_f64().unwrap() as f32)
            })
            .collect();
        support::check_vision_top5(ran_on, &top, r);
        let embedding = img["embedding"].as_array().unwrap();
        assert_eq!(embedding.len(), 1280, "the pooled features");
        assert!(embedding.iter().all(|x| x.as_f64().is_some_and(|x| x.is_finite() && x >= 0.0)), "ReLU6 features");
        eprintln!("{ran_on} {}: top-1 {:?}, max |logit diff| {diff:.2e}", r.file, top[0]);
        worst = worst.max(diff);
    }
    eprintln!("classify --backend {backend} ({ran_on}, tab {}): max |logit diff| {worst:.2e} in {secs:.1} s", v["tab"]);
    worst
}

#[test]
fn cpu_classifies_the_reference_images() {
    let _procs = support::process_guard();
    classify_matches_the_reference("cpu", "cpu");
}

#[test]
fn webgpu_tab_classifies_the_reference_images() {
    let _procs = support::process_guard();
    classify_matches_the_reference("webgpu", "webgpu");
}

#[test]
fn webnn_tab_classifies_the_reference_images() {
    let _procs = support::process_guard();
    classify_matches_the_reference("webnn", "webnn");
}

#[test]
fn a_file_that_is_not_an_image_is_refused_naming_it() {
    let _procs = support::process_guard();
    let dir = tempfile::tempdir().unwrap();
    let notes = dir.path().join("notes.txt");
    std::fs::write(&notes, "a shopping list, not a picture\n").unwrap();
    let cat = support::efficientnet_reference().remove(0).path;
    // The good image first: the bad one is still found before anything runs.
    let t = Instant::now();
    let out = Command::new(BIN).args(["classify", "--backend", "webgpu"]).arg(&cat).arg(&notes).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a text file was classified: {}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(notes.to_str().unwrap()) && stderr.contains("not an image"), "{stderr}");
    assert!(out.stdout.is_empty(), "nothing printed for the good image either");
    // Refused before a browser starts (a tab takes seconds).
    assert!(t.elapsed().as_secs_f64() < 20.0, "refused only after {:?}", t.elapsed());
    // A truncated PNG: named too, as corrupt.
    let half = dir.path().join("half.png");
    let bytes = std::fs::read(&cat).unwrap();
    std::fs::write(&half, &bytes[..bytes.len() / 2]).unwrap();
    let out = Command::new(BIN).args(["classify", "--backend", "cpu"]).arg(&half).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(half.to_str().unwrap()) && stderr.contains("truncated or corrupt"), "{stderr}");
    // A missing file: named.
    let gone = dir.path().join("gone.png");
    let out = Command::new(BIN).args(["classify", "--backend", "cpu"]).arg(&gone).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(gone.to_str().unwrap()), "{stderr}");
}
