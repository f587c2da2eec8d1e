//! `tabpool embed` (`--backend auto`) remembers the backend calibration chose, so later runs load
//! it directly instead of starting and timing every backend again; a stale memory never pins a
//! backend: when the browser reports another version, or the remembered backend does not load in
//! the real tab, the run calibrates in full and remembers the new choice.

use crate::support;

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_tabpool");

/// `tabpool embed --json` on the reference sentences, with the history (and so the calibration
/// file beside it) in `dir`; every vector is checked against the float64 reference.
fn embed(dir: &Path, extra: &[&str]) -> (serde_json::Value, String) {
    let refs = support::minilm_reference();
    let out = Command::new(BIN)
        .args(["embed", "--json"])
        .args(extra)
        .args(refs.iter().map(|r| r.text.as_str()))
        .env("TABPOOL_HISTORY", dir.join("history.duckdb"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for (e, r) in v["embeddings"].as_array().unwrap().iter().zip(&refs) {
        let e: Vec<f32> = e.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
        support::check_against_reference(&e, r);
    }
    (v, err)
}

/// The one remembered entry: (key, entry).
fn remembered(dir: &Path) -> (String, serde_json::Value) {
    let text = std::fs::read_to_string(dir.join("calibrations.json")).unwrap();
    let all: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text).unwrap();
    assert_eq!(all.len(), 1, "{text}");
    all.into_iter().next().unwrap()
}

fn edit(dir: &Path, field: &str, value: &str) {
    let (key, mut entry) = remembered(dir);
    entry[field] = value.into();
    let all = serde_json::json!({ key: entry });
    std::fs::write(dir.join("calibrations.json"), serde_json::to_vec(&all).unwrap()).unwrap();
}

/// A full calibration ran: every candidate measured now, nothing remembered.
fn assert_calibrated(v: &serde_json::Value) {
    assert!(v["load"]["remembered_at"].is_null(), "{}", v["load"]);
    let measured: Vec<&str> =
        v["load"]["calibration"].as_array().unwrap().iter().map(|m| m["backend"].as_str().unwrap()).collect();
    assert_eq!(measured, ["webnn-cpu", "webgpu", "cpu"], "{}", v["load"]);
}

#[test]
fn auto_remembers_its_choice_and_calibrates_again_when_it_is_stale() {
    let _procs = support::process_guard();
    let dir = tempfile::tempdir().unwrap();

    // Nothing remembered: every backend is loaded and timed, and the choice is written down.
    let (first, _) = embed(dir.path(), &[]);
    assert_calibrated(&first);
    let (key, entry) = remembered(dir.path());
    assert_eq!(entry["backend"], first["backend"], "{entry}");
    assert!(key.contains("chromium-webnn") && key.contains("all-MiniLM-L6-v2"), "{key}");

    // Remembered: the chosen backend is loaded directly; the figures shown are the remembered ones.
    let (second, err) = embed(dir.path(), &[]);
    assert!(err.contains("remembered from a run"), "{err}");
    assert_eq!(second["backend"], first["backend"]);
    assert_eq!(second["load"]["remembered_at"], entry["at"]);
    assert_eq!(second["load"]["calibration"], first["load"]["calibration"], "nothing was timed again");

    // --recalibrate measures again even though a choice is remembered.
    let (third, _) = embed(dir.path(), &["--recalibrate"]);
    assert_calibrated(&third);

    // Another browser version than the one measured: calibrate again, remember the new entry.
    // (A remembered tab backend: a remembered host `cpu` starts no browser, so there is no version
    // to compare — calibration may pick the host CPU on a busy machine.)
    edit(dir.path(), "backend", "webnn-cpu");
    edit(dir.path(), "user_agent", "HeadlessChrome/1.0");
    let (fourth, err) = embed(dir.path(), &[]);
    assert!(err.contains("calibrating every backend again") && err.contains("HeadlessChrome/1.0"), "{err}");
    assert_calibrated(&fourth);
    assert_ne!(remembered(dir.path()).1["user_agent"], "HeadlessChrome/1.0");

    // A remembered backend that no longer loads (a WebNN device type this browser refuses, tried
    // in the real tab) is not pinned: the run calibrates in full and remembers a working one.
    edit(dir.path(), "backend", "webnn-tpu");
    let (fifth, err) = embed(dir.path(), &[]);
    assert!(err.contains("the remembered backend webnn-tpu no longer loads"), "{err}");
    assert_calibrated(&fifth);
    assert_eq!(remembered(dir.path()).1["backend"], fifth["backend"]);
}
