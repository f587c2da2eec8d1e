//! Whisper tiny.en through the CLI as a user runs it, `tabpool transcribe --json`, in real
//! headless tabs: both reference clips (`tests/data/whisper`) must give the reference's ids
//! (faster-whisper's, equal to the float64 forward pass's) and transcript — on the tab's wasm
//! CPU executor (encoder and decoder), with the encoder on WebNN, the decoder on WebGPU or WebNN, and split by component over two
//! tabs (encoder in one, decoder with its KV cache and cross memory in the other). A file that
//! is not audio fails before any browser starts, naming the file.

use crate::support;

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_tabpool");
const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/whisper/");

fn reference() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(format!("{DIR}whisper_tiny_en.json")).unwrap()).unwrap()
}

/// Runs `tabpool transcribe --json ARGS… both clips`; checks every file; returns (backend, tabs)
/// and the decoder tab's threads (as `threads`).
fn transcribes_the_reference_on(args: &[&str]) -> (String, usize, u64) {
    let refj = reference();
    let cases = refj["cases"].as_array().unwrap();
    let files: Vec<String> = cases.iter().map(|c| format!("{DIR}{}", c["file"].as_str().unwrap())).collect();
    let out = Command::new(BIN).args(["transcribe", "--json"]).args(args).args(&files).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "transcribe {args:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    let got = v["files"].as_array().unwrap();
    assert_eq!(got.len(), cases.len());
    for ((g, c), f) in got.iter().zip(cases).zip(&files) {
        assert_eq!(g["path"].as_str(), Some(f.as_str()));
        assert_eq!(g["ids"], c["token_ids"], "{f} with {args:?}");
        assert_eq!(g["text"], c["transcript"]);
        let w = g["windows"].as_array().unwrap();
        assert_eq!(w.len(), 1);
        assert_eq!(w[0]["text"], c["transcript_raw"]);
        assert_eq!(w[0]["start_s"].as_f64(), Some(0.0));
        assert!(g["rtf"].as_f64().is_some_and(|r| r > 0.0));
        eprintln!("{args:?} {}: rtf {:.3} on {}", c["file"], g["rtf"].as_f64().unwrap(), v["backend"]);
    }
    let threads = v["threads"].as_u64().unwrap();
    (v["backend"].as_str().unwrap().to_string(), v["tabs"].as_array().unwrap().len(), threads)
}

/// [`transcribes_the_reference_on`] on one thread per tab (`--threads 1`): (backend, tabs).
fn transcribes_the_reference(args: &[&str]) -> (String, usize) {
    let args: Vec<&str> = args.iter().copied().chain(["--tab-threads", "1"]).collect();
    let (backend, tabs, threads) = transcribes_the_reference_on(&args);
    assert_eq!(threads, 1);
    (backend, tabs)
}

#[test]
fn wasm_cpu_tab_transcribes_the_reference_clips() {
    let _procs = support::process_guard();
    assert_eq!(transcribes_the_reference(&["--backend", "wasm-cpu"]), ("wasm-cpu".into(), 1));
}

/// The decoder on WebGPU (SwiftShader here): its self-attention KV cache and the cross-attention
/// memory `PutMemory` wrote live in the tab's GPU buffers; the encoder on WebNN in the same tab.
#[test]
fn webgpu_decoder_transcribes_the_reference_clips() {
    let _procs = support::process_guard();
    let args = ["--backend", "webnn", "--decoder-backend", "webgpu"];
    assert_eq!(transcribes_the_reference(&args), ("webnn-cpu+webgpu".into(), 1));
}

/// Both parts on WebNN: the decoder's self-attention cache in swapped WebNN tensors, its
/// cross-attention memories in tensors `PutMemory` wrote (`executors/webnn/memory.rs`).
#[test]
fn webnn_decoder_transcribes_the_reference_clips() {
    let _procs = support::process_guard();
    let args = ["--backend", "webnn", "--decoder-backend", "webnn"];
    assert_eq!(transcribes_the_reference(&args), ("webnn-cpu".into(), 1));
}

/// The threaded runtime (`--threads 2`: the page cross-origin isolated, two kernel threads
/// sharing the tab's wasm memory): the same ids as on one thread, for the f32 and the f16
/// decoder.
#[test]
fn two_thread_tab_transcribes_the_reference_clips() {
    let _procs = support::process_guard();
    for extra in [&[][..], &["--compact-decoder"][..]] {
        let args: Vec<&str> = ["--backend", "webnn", "--tab-threads", "2"].iter().chain(extra).copied().collect();
        assert_eq!(transcribes_the_reference_on(&args), ("webnn-cpu+wasm-cpu".into(), 1, 2));
    }
}

#[test]
fn webnn_encoder_transcribes_the_reference_clips() {
    let _procs = support::process_guard();
    assert_eq!(transcribes_the_reference(&["--backend", "webnn"]), ("webnn-cpu+wasm-cpu".into(), 1));
}

#[test]
fn component_split_over_two_tabs_transcribes_the_reference_clips() {
    let _procs = support::process_guard();
    let args = ["--backend", "wasm-cpu", "--shards", "2", "--strategy", "component"];
    assert_eq!(transcribes_the_reference(&args), ("wasm-cpu".into(), 2));
}

#[test]
fn a_file_that_is_not_audio_is_refused_naming_it() {
    let _procs = support::process_guard();
    let bad = std::env::temp_dir().join(format!("tabpool-not-audio-{}.wav", std::process::id()));
    std::fs::write(&bad, b"this is not a sound file").unwrap();
    let out = Command::new(BIN).args(["transcribe"]).arg(&bad).output().unwrap();
    let _ = std::fs::remove_file(&bad);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains(bad.to_str().unwrap()), "names the file: {stderr}");
    let out = Command::new(BIN).args(["transcribe", "--shards", "2", "--strategy", "layer", "x.wav"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("component"), "names the strategy it needs");
}

/// Component split over two wasm-cpu tabs on a two-window input (the first clip, silence to
/// 30 s, the second clip): an undisturbed run, then one with the decoder tab's renderer killed
/// halfway through, then one with the encoder tab's killed. Each lost tab is replaced once (a new
/// tab for the part it held, the window re-encoded or the session replayed) and every run's ids
/// equal the undisturbed run's, whose window texts are the clips' transcripts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_encoder_and_decoder_tabs_are_replaced_with_the_same_transcript() {
    use std::sync::Arc;
    use tabpool::exec::Backend;
    use tabpool::exec::transcriber::{TabPlacement, Transcriber};
    use tabpool::models::whisper::{Whisper, audio};

    let _procs = support::process_guard();
    let mut host = support::host().await;
    let refj = reference();
    let cases = refj["cases"].as_array().unwrap();
    let clip = |i: usize| {
        let bytes = std::fs::read(format!("{DIR}{}", cases[i]["file"].as_str().unwrap())).unwrap();
        audio::decode(&bytes).unwrap().samples
    };
    let mut s = clip(0);
    s.resize(audio::N_SAMPLES, 0.0);
    s.extend(clip(1));
    let samples = Arc::new(s);
    let model = Arc::new(Whisper::load(None).unwrap());
    let placement = TabPlacement {
        encoder: Backend::WasmCpu,
        decoder: Backend::WasmCpu,
        two_tabs: true,
        weights: Default::default(),
    };
    let mut t = Transcriber::place(&mut host, model, placement).await.unwrap_or_else(|e| panic!("{e:#}"));
    let want = t.transcribe_recovering(&mut host, samples.clone()).await.unwrap();
    assert_eq!(want.tabs_replaced, 0);
    assert_eq!(want.windows.len(), 2);
    for (w, c) in want.windows.iter().zip(cases) {
        assert_eq!(w.text.trim(), c["transcript"].as_str().unwrap());
    }
    for part in ["decoder", "encoder"] {
        let before = t.tabs();
        assert_eq!(before.len(), 2);
        let victim = if part == "encoder" { before[0] } else { before[1] };
        let pids = host.tab_processes(victim);
        let delay = std::time::Duration::from_secs_f64(want.elapsed_s / 2.0);
        let killer = std::thread::spawn(move || {
            std::thread::sleep(delay);
            support::kill_renderers(&pids)
        });
        let got = t.transcribe_recovering(&mut host, samples.clone()).await.unwrap_or_else(|e| panic!("{e:#}"));
        assert!(killer.join().unwrap() > 0, "the {part} tab had a renderer");
        let after = t.tabs();
        eprintln!(
            "{part} tab {victim} killed after {delay:?}: tabs {before:?} → {after:?}, {} replaced, {:.1} s (undisturbed {:.1} s)",
            got.tabs_replaced, got.elapsed_s, want.elapsed_s
        );
        assert_eq!(got.ids, want.ids, "the transcript with the {part} tab lost");
        assert_eq!(got.text, want.text);
        assert_eq!(got.tabs_replaced, 1, "the {part} tab replaced once");
        assert!(!after.contains(&victim) && after.len() == 2, "{before:?} → {after:?}");
    }
    host.shutdown().await;
}
