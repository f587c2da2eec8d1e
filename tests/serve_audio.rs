//! Speech through `tabpool serve`, as OpenAI's users send it: the official `openai` Python
//! client's `audio.transcriptions.create` (`tests/clients/openai_audio.py`) on both reference clips
//! in every response format (ids equal to the reference's), with a prompt, on a longer clip of two
//! windows, and the refusals — a language other than English, not audio, an unknown model, a
//! truncated file, zero samples, silence, over 25 MiB, over 30 minutes — after which the server
//! still answers. Real headless tabs; the tab's model is the one `status` shows.

use crate::support;

use std::process::Command;

const KEY: &str = "k3y-for-tests-0123456789abcdef";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_client_transcribes_through_serve() {
    let _procs = support::process_guard();
    let (_serve, api) =
        support::start_serve(&[support::ONE_TAB, &["--model", "whisper", "--api-key", KEY]].concat()).await;
    let python = support::pyclients();
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/clients/openai_audio.py");
    let out = Command::new(&python).args([script, &format!("http://{api}/v1"), KEY, data]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(
        out.status.success() && stdout.trim_end().ends_with("ALL OK"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The model is listed, and status shows its replica and what it served.
    let (code, body) = support::http_keyed(&api, "GET", "/v1/models", "", Some(KEY)).await;
    assert!(code == 200 && body.contains("whisper-tiny.en"), "{code} {body}");
    let (code, body) = support::http_keyed(&api, "GET", "/status", "", Some(KEY)).await;
    assert_eq!(code, 200, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    eprintln!("{}", serde_json::to_string_pretty(&status["models"]).unwrap());
    let m = status["models"].as_array().unwrap().iter().find(|m| m["name"] == "whisper-tiny.en").expect("listed");
    assert!(m["served"].as_u64().unwrap() >= 14, "{m}");
}
