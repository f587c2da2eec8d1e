//! `tabpool generate`: text from SmolLM2-135M-Instruct, streamed token by token, in a real tab
//! (its KV cache lives there) or on the host's CPU executor; placement is `exec::placement`.

use std::io::Write;
use std::time::Instant;

use anyhow::bail;

use serde_json::json;

use crate::Host;
use crate::exec::placement::{GenOptions, Loaded, context_limit, finish_name, generate, load};
use crate::models::smollm2::{Message, SmolLm2};

pub struct Args {
    pub opts: GenOptions,
    pub prompt: String,
    /// Feed the prompt as it is instead of as a chat user turn.
    pub raw: bool,
    pub json: bool,
}

/// The prompt's ids, refused when it and `max_tokens` do not fit one session.
fn prompt_ids(model: &SmolLm2, args: &Args) -> anyhow::Result<Vec<u32>> {
    let ids = if args.raw {
        model.encode(&args.prompt)?
    } else {
        let mut messages: Vec<Message> = args.opts.system.iter().map(|s| Message::new("system", s)).collect();
        messages.push(Message::new("user", &args.prompt));
        model.chat_ids(&messages)?
    };
    let limit = context_limit(model);
    if ids.len() + args.opts.max_tokens as usize > limit {
        bail!(
            "the prompt ({} tokens) plus --max-tokens {} exceeds the context limit of {limit} tokens",
            ids.len(),
            args.opts.max_tokens
        );
    }
    Ok(ids)
}

pub async fn run(host: &mut Host, args: Args) -> anyhow::Result<()> {
    if args.prompt.trim().is_empty() {
        bail!("an empty prompt: give the text to continue or a question");
    }
    args.opts.check()?;
    let started = Instant::now();
    let model = SmolLm2::load(None)?;
    let prompt_ids = prompt_ids(&model, &args)?;
    let l = load(host, model, started, &args.opts, args.json).await?;
    if let Some(reason) = l.reason.as_ref().filter(|_| !args.json) {
        eprintln!("backend auto: {} — {reason}", l.backend);
    }
    if !args.json {
        for (i, (tab, parts, bytes)) in l.stages.iter().enumerate() {
            let tab = tab.map_or("the host".to_string(), |t| format!("tab {t}"));
            eprintln!(
                "stage {i} ({}) in {tab}: {parts}, {:.1} MiB of weights",
                args.opts.strategy.name(),
                *bytes as f64 / (1u64 << 20) as f64
            );
        }
    }
    let mut out = std::io::stdout();
    let json = args.json;
    let run = generate(&l.model, &l.decoder, prompt_ids, l.params.clone(), |piece| {
        if !json {
            let _ = write!(out, "{piece}");
            let _ = out.flush();
        }
    })
    .await?;
    let Loaded { model, decoder, backend, reason, tab, load_ms, stages, .. } = l;
    let stages: Vec<_> =
        stages.iter().map(|(tab, parts, bytes)| json!({"tab": tab, "parts": parts, "weight_bytes": bytes})).collect();
    decoder.stop().await;
    let finish = finish_name(run.finish);
    if args.json {
        println!(
            "{}",
            json!({
                "model": model.name, "backend": backend, "backend_reason": reason, "prompt_ids": run.prompt_ids,
                "ids": run.ids, "text": model.decode(&run.ids)?, "finish_reason": finish, "load_ms": load_ms,
                "ttft_ms": run.ttft_ms, "tokens_per_s": run.decode_tok_s, "tab": tab, "stages": stages,
            })
        );
    } else {
        println!();
        eprintln!(
            "{} on {backend}: load {load_ms:.0} ms; prompt {} tokens, first token after {:.0} ms; {} tokens, decode {:.1} tok/s; finish: {finish}",
            model.name,
            run.prompt_ids.len(),
            run.ttft_ms,
            run.ids.len(),
            run.decode_tok_s
        );
    }
    Ok(())
}
