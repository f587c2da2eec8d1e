//! `tabpool chat` as a user runs it, stdin piped: each reply equals what `tabpool generate` gives
//! for the same conversation written out by hand in ChatML (so the history really is sent), on
//! the host CPU executor and in real tabs (wasm CPU, WebNN); Ctrl-C ends only the reply being streamed, and what
//! was said so far stays in the history.

use crate::support;

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_tabpool");
/// SmolLM2's default system prompt, as its GGUF chat template writes it.
const SYSTEM: &str = "You are a helpful AI assistant named SmolLM, trained by Hugging Face";

fn turn(role: &str, content: &str) -> String {
    format!("<|im_start|>{role}\n{content}<|im_end|>\n")
}

/// `generate --json` greedy reply text for `prompt` (with `--raw`: the prompt as it is).
fn generate(backend: &str, max_tokens: u32, raw: bool, prompt: &str) -> String {
    let max = max_tokens.to_string();
    let mut args = vec!["generate", "--backend", backend, "--json", "--temperature", "0", "--max-tokens", &max];
    if raw {
        args.push("--raw");
    }
    args.push(prompt);
    let out = Command::new(BIN).args(&args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "generate {args:?}: {err}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {err}"));
    v["text"].as_str().unwrap().to_string()
}

fn chat(backend: &str, max_tokens: u32, stdin: &str) -> (i32, String, String) {
    let max = max_tokens.to_string();
    let mut child = Command::new(BIN)
        .args(["chat", "--stats", "--backend", backend, "--temperature", "0", "--max-tokens", &max])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).unwrap();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

/// Per reply, from `--stats`: (prompt tokens, tokens from the prefix cache).
fn prompt_stats(stderr: &str) -> Vec<(usize, usize)> {
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix("(prompt "))
        .map(|l| {
            let (prompt, rest) = l.split_once(" tokens, ").unwrap();
            let cached = rest.split_once(' ').unwrap().0;
            (prompt.parse().unwrap(), cached.parse().unwrap())
        })
        .collect()
}

/// The second turn's prompt starts with everything the first session held (its prompt and the
/// reply fed back, up to the reply's last token): the prefix cache gives at least the first
/// prompt and most of the reply.
fn assert_second_turn_hits(stderr: &str) {
    let stats = prompt_stats(stderr);
    assert_eq!(stats.len(), 2, "{stderr}");
    assert_eq!(stats[0].1, 0, "nothing cached before the first turn: {stderr}");
    assert!(stats[1].1 > stats[0].0, "the second turn reused less than the first prompt: {stderr}");
    assert!(stats[1].1 < stats[1].0, "the new question is never cached: {stderr}");
}

const Q1: &str = "What is the capital of France?";
/// Only answerable from the first turn.
const Q2: &str = "And of Germany?";

#[test]
fn chat_on_the_host_cpu_sends_the_history() {
    let _procs = support::process_guard();
    let (code, out, err) = chat("cpu", 24, &format!("{Q1}\n{Q2}\n"));
    assert_eq!(code, 0, "{err}");
    let reply1 = generate("cpu", 24, false, Q1);
    let convo = [turn("system", SYSTEM), turn("user", Q1), turn("assistant", &reply1), turn("user", Q2)].concat();
    let reply2 = generate("cpu", 24, true, &format!("{convo}<|im_start|>assistant\n"));
    // No prompt decorations on a pipe: the replies, one per line. The second came from a cached
    // prefix, and equals `generate`'s from a full prefill.
    assert_eq!(out, format!("{reply1}\n{reply2}\n"), "stderr: {err}");
    assert_second_turn_hits(&err);
    // The second turn is answered differently without the first: the history made the difference.
    let alone = generate("cpu", 24, false, Q2);
    assert_ne!(alone, reply2, "the same reply with and without the history: the test shows nothing");
}

#[test]
fn chat_in_a_wasm_tab_reuses_the_first_turn_and_equals_the_host_cpu() {
    let _procs = support::process_guard();
    let (code, out, err) = chat("wasm-cpu", 24, &format!("{Q1}\n{Q2}\n"));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("on wasm-cpu"), "{err}");
    // Both executors are f32; the greedy reference's top-2 margins are far above their
    // differences. The second reply, from the tab's prefix cache, equals the host's full prefill.
    let reply1 = generate("cpu", 24, false, Q1);
    let convo = [turn("system", SYSTEM), turn("user", Q1), turn("assistant", &reply1), turn("user", Q2)].concat();
    let reply2 = generate("cpu", 24, true, &format!("{convo}<|im_start|>assistant\n"));
    assert_eq!(out, format!("{reply1}\n{reply2}\n"), "stderr: {err}");
    assert_second_turn_hits(&err);
}

#[test]
fn chat_on_webnn_equals_the_host_cpu() {
    let _procs = support::process_guard();
    let (code, out, err) = chat("webnn", 24, &format!("{Q1}\n"));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("on webnn-cpu"), "{err}");
    assert_eq!(out, format!("{}\n", generate("cpu", 24, false, Q1)), "stderr: {err}");
}

/// A pipe read on its own thread into a shared buffer.
fn collect(mut r: impl Read + Send + 'static) -> Arc<Mutex<Vec<u8>>> {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let b = buf.clone();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 256];
        while let Ok(n) = r.read(&mut chunk) {
            if n == 0 {
                break;
            }
            b.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    });
    buf
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool, child: &mut Child) {
    let t = Instant::now();
    while !ok() {
        assert!(t.elapsed() < timeout, "no {what} after {timeout:?}");
        assert!(child.try_wait().unwrap().is_none(), "chat exited before {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn ctrl_c_ends_the_reply_not_the_chat_and_keeps_what_was_said() {
    let _procs = support::process_guard();
    let q1 = "Write a long story about a dragon who learns to bake bread.";
    let q2 = "Give it a title.";
    let mut child = Command::new(BIN)
        .args(["chat", "--backend", "cpu", "--temperature", "0", "--max-tokens", "200"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let out = collect(child.stdout.take().unwrap());
    let err = collect(child.stderr.take().unwrap());
    let text = |b: &Arc<Mutex<Vec<u8>>>| String::from_utf8_lossy(&b.lock().unwrap()).into_owned();
    writeln!(stdin, "{q1}").unwrap();
    wait_for("reply text", Duration::from_secs(120), || out.lock().unwrap().len() >= 20, &mut child);
    // SAFETY: kill(2) on the child this test spawned and has not reaped.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    wait_for("'(reply stopped)'", Duration::from_secs(30), || text(&err).contains("(reply stopped)"), &mut child);
    // The reply's end (its newline) was written before the notice; let the reader catch up.
    std::thread::sleep(Duration::from_millis(300));
    let partial = text(&out)
        .strip_suffix('\n')
        .unwrap_or_else(|| panic!("no newline after the reply: {}", text(&out)))
        .to_string();
    writeln!(stdin, "{q2}").unwrap();
    drop(stdin);
    let status = child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(status.success(), "{status}: {}", text(&err));

    let full = generate("cpu", 200, false, q1);
    assert!(
        full.starts_with(&partial) && partial.len() < full.len(),
        "cut reply {partial:?} is not a prefix of {full:?}"
    );
    let convo = [turn("system", SYSTEM), turn("user", q1), turn("assistant", &partial), turn("user", q2)].concat();
    let reply2 = generate("cpu", 200, true, &format!("{convo}<|im_start|>assistant\n"));
    assert_eq!(text(&out), format!("{partial}\n{reply2}\n"), "stderr: {}", text(&err));
}
