//! `tabpool transcribe FILE...`: speech to text with Whisper tiny.en in real tabs (or on the
//! host's CPU executor with `--backend cpu`); `--shards 2 --strategy component` puts the encoder
//! in one tab and the decoder in another, so only the encoder's outputs cross, once per window.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use serde_json::json;

use crate::Host;
use crate::exec::transcriber::{TabPlacement, Transcriber, Transcript};
use crate::models::whisper::Whisper;
use crate::models::whisper::audio;
use crate::policy::backend_choice::Backend;
use crate::policy::sharding::Strategy;
use crate::policy::threads;
use crate::policy::weight_form::Preference;

pub struct Args {
    pub backend: Backend,
    /// Where the decoder runs; `Auto`: as `decoder_backend` says for the encoder's backend.
    pub decoder_backend: Backend,
    /// f16 decoder weights on a CPU executor too (`policy::weight_form`).
    pub compact_decoder: bool,
    pub shards: u32,
    pub strategy: Strategy,
    pub json: bool,
    pub files: Vec<PathBuf>,
}

/// Where the decoder runs by default when the encoder runs on `backend`: the same CPU executor;
/// with WebNN or WebGPU the tab's wasm CPU executor — named in the output as `encoder+decoder` —
/// because its steps were the fastest measured here: 68 greedy steps took 1.35–1.47 s on wasm
/// (f32 weights) against 2.72 s on WebNN (Chromium 153, XNNPACK, 2026-12-07), and WebGPU's lose
/// on a software adapter as generation's do. `--decoder-backend webgpu|webnn` asks for either.
fn decoder_backend(backend: Backend) -> Backend {
    match backend {
        Backend::Cpu | Backend::WasmCpu => backend,
        _ => Backend::WasmCpu,
    }
}

pub async fn run(host: &mut Host, args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(!args.files.is_empty(), "no audio file given: pass FILE paths (WAV, FLAC, MP3, OGG/Vorbis)");
    match (args.shards, args.strategy) {
        (1, _) | (2, Strategy::Component) => {}
        (2, other) => {
            bail!("Whisper splits by component only (encoder | decoder): --strategy component, not {other:?}")
        }
        (n, _) => bail!("Whisper has two components: --shards 1 or 2, not {n}"),
    }
    // Bad files fail here, before any browser starts, naming the file.
    let mut inputs = Vec::new();
    for p in &args.files {
        let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
        let a = tokio::task::spawn_blocking(move || audio::decode(&bytes)).await?;
        inputs.push(Arc::new(a.with_context(|| p.display().to_string())?.samples));
    }
    let model = Arc::new(tokio::task::spawn_blocking(|| Whisper::load(None)).await??);
    // `auto`: the tab's CPU executor, the one backend every tab has (`bench speech` measures
    // the others; serve routes by what it measured).
    let enc = if args.backend == Backend::Auto { Backend::WasmCpu } else { args.backend };
    let dec = if args.decoder_backend == Backend::Auto { decoder_backend(enc) } else { args.decoder_backend };
    anyhow::ensure!(
        (enc == Backend::Cpu) == (dec == Backend::Cpu),
        "--backend cpu runs both parts on the host: a decoder in a tab needs an encoder in a tab"
    );
    let mut t = if enc == Backend::Cpu {
        anyhow::ensure!(args.shards == 1, "--backend cpu runs on the host: no tabs to shard over");
        anyhow::ensure!(!args.compact_decoder, "--compact-decoder applies to a decoder in a tab");
        Transcriber::on_host(model)?
    } else {
        let weights = if args.compact_decoder { Preference::Compact } else { Preference::Fastest };
        if host.tab_threads_asked().is_none() {
            host.set_tab_threads(threads::per_tab(threads::local_cores(), args.shards as usize));
        }
        let placement = TabPlacement { encoder: enc, decoder: dec, two_tabs: args.shards == 2, weights };
        Transcriber::place(host, model, placement).await?
    };
    let mut done: Vec<Transcript> = Vec::new();
    for (p, samples) in args.files.iter().zip(inputs) {
        let out =
            t.transcribe_recovering(host, samples).await.with_context(|| format!("transcribing {}", p.display()))?;
        if !args.json {
            println!("{}", out.text);
        }
        done.push(out);
    }
    if args.json {
        let files: Vec<_> = args
            .files
            .iter()
            .zip(&done)
            .map(|(p, t)| {
                let windows: Vec<_> =
                    t.windows.iter().map(|w| json!({ "start_s": w.start_s, "end_s": w.end_s, "text": w.text })).collect();
                // Where the time went: executor time of each part, and each part's calls end to end.
                let ms = json!({
                    "front": t.front_ms, "encoder": t.encode_ms, "decoder": t.decode_ms,
                    "encoder_calls": t.encode_wall_ms, "decoder_calls": t.decode_wall_ms,
                });
                json!({ "path": p.display().to_string(), "ids": t.ids, "text": t.text, "windows": windows, "rtf": t.rtf(), "ms": ms })
            })
            .collect();
        let out = json!({ "files": files, "backend": t.backend(), "tabs": t.tabs(), "threads": t.decoder_threads() });
        println!("{}", serde_json::to_string(&out)?);
    } else {
        let rtf: Vec<String> = done.iter().map(|t| format!("{:.3}", t.rtf())).collect();
        eprintln!("ran on {} (tabs {:?}); real-time factor {}", t.backend(), t.tabs(), rtf.join(", "));
    }
    Ok(())
}
