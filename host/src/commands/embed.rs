//! `tabpool embed`: sentence embeddings with MiniLM in a real tab (or on the CPU executor).

use std::io::Read;

use anyhow::{Context, bail};
use serde_json::json;

use crate::Host;
use crate::exec::{Backend, CalibrationCache, Embedder, cosine};
use crate::models::minilm;

/// Texts per batch sent to the executor.
const BATCH: usize = 32;

pub struct Args {
    pub backend: Backend,
    /// With `auto`: measure every backend again instead of loading the one remembered.
    pub recalibrate: bool,
    pub json: bool,
    pub texts: Vec<String>,
}

/// Non-empty lines of standard input, which must be UTF-8.
fn stdin_texts() -> anyhow::Result<Vec<String>> {
    let mut bytes = Vec::new();
    std::io::stdin().read_to_end(&mut bytes).context("reading standard input")?;
    let text = String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!("standard input is not valid UTF-8 (first bad byte at offset {})", e.utf8_error().valid_up_to())
    })?;
    let lines: Vec<String> = text.lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect();
    if lines.is_empty() {
        bail!("no text given: pass TEXT arguments or lines on standard input");
    }
    Ok(lines)
}

/// "42 s", "7 min", "3 h", "2 d".
fn humantime_s(s: u64) -> String {
    match s {
        0..120 => format!("{s} s"),
        120..7200 => format!("{} min", s / 60),
        7200..172_800 => format!("{} h", s / 3600),
        _ => format!("{} d", s / 86_400),
    }
}

fn progress(json: bool) -> indicatif::ProgressBar {
    if json {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(0);
    pb.set_style(
        indicatif::ProgressStyle::with_template("uploading weights {bar:30} {bytes}/{total_bytes} {bytes_per_sec}")
            .expect("valid template"),
    );
    pb
}

pub async fn run(host: &mut Host, args: Args) -> anyhow::Result<()> {
    let texts = if args.texts.is_empty() || args.texts == ["-"] { stdin_texts()? } else { args.texts };
    for (i, t) in texts.iter().enumerate() {
        if t.trim().is_empty() {
            bail!("text {} is empty: nothing to embed", i + 1);
        }
    }
    let embedder = match args.backend {
        Backend::Auto => {
            let cache = CalibrationCache::new(CalibrationCache::default_path());
            Embedder::load_remembered(host, &cache, args.recalibrate, &progress(args.json)).await?
        }
        forced => Embedder::load(host, forced, &progress(args.json)).await?,
    };
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let (mut vectors, mut lengths, mut truncated, mut compute_ms) = (Vec::new(), Vec::new(), Vec::new(), 0.0);
    for chunk in refs.chunks(BATCH) {
        let e = embedder.embed(chunk).await?;
        vectors.extend(e.vectors);
        lengths.extend(e.lengths);
        truncated.extend(e.truncated);
        compute_ms += e.compute_ms;
    }
    if let Some(at) = embedder.load.remembered_at {
        let ago = crate::exec::remembered::now_s().saturating_sub(at);
        eprintln!("calibration: remembered from a run {} ago (--recalibrate measures again)", humantime_s(ago));
    }
    for m in &embedder.load.calibration {
        match (m.median_ms, &m.error) {
            (Some(ms), _) => eprintln!("calibration: {:<10} {ms:8.2} ms", m.backend),
            (None, e) => eprintln!("calibration: {:<10} failed: {}", m.backend, e.as_deref().unwrap_or("?")),
        }
    }
    for (i, t) in truncated.iter().enumerate() {
        if *t {
            eprintln!("note: text {} is longer than {} tokens and was truncated", i + 1, minilm::MAX_TOKENS);
        }
    }
    let sims: Vec<Vec<f32>> = if vectors.len() >= 2 {
        vectors.iter().map(|a| vectors.iter().map(|b| cosine(a, b)).collect()).collect()
    } else {
        vec![]
    };
    let load = &embedder.load;
    if args.json {
        let mut v = json!({
            "model": minilm::NAME, "backend": load.backend, "dims": minilm::HIDDEN,
            "embeddings": vectors, "tokens": lengths, "truncated": truncated,
            "load": load, "compute_ms": compute_ms,
        });
        if !sims.is_empty() {
            v["similarity"] = json!(sims);
        }
        println!("{v}");
        return Ok(());
    }
    let on = load.adapter.as_deref().map(|a| format!(" ({a})")).unwrap_or_default();
    println!(
        "{} on {}{on}: load {:.0} ms, {} text(s) in {:.1} ms",
        minilm::NAME,
        load.backend,
        load.read_ms + load.tab_start_ms + load.load_ms,
        texts.len(),
        compute_ms
    );
    for (i, (t, v)) in texts.iter().zip(&vectors).enumerate() {
        let head: Vec<String> = v.iter().take(6).map(|x| format!("{x:+.4}")).collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        let cut = if truncated[i] { ", truncated" } else { "" };
        println!(
            "[{}] {:?} ({} tokens{cut}): [{}, …] {}-d, norm {norm:.4}",
            i + 1,
            t,
            lengths[i],
            head.join(", "),
            v.len()
        );
    }
    if !sims.is_empty() {
        println!("cosine similarity:");
        print!("     ");
        for j in 0..sims.len() {
            print!(" {:>6}", format!("[{}]", j + 1));
        }
        println!();
        for (i, row) in sims.iter().enumerate() {
            print!("{:>5}", format!("[{}]", i + 1));
            for s in row {
                print!(" {s:>6.3}");
            }
            println!();
        }
    }
    println!("(--json prints the full vectors)");
    Ok(())
}
