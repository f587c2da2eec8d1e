//! `tabpool chat`: a conversation with SmolLM2 in the terminal. The model is loaded once and its
//! tab kept for the whole conversation; each turn sends the whole history (ChatML) as the prompt
//! and streams the reply. Ctrl-C during a reply ends that reply; at the prompt it ends the chat.

use std::io::{BufRead, IsTerminal, Write};
use std::time::Instant;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use crate::Host;
use crate::exec::placement::{self, GenOptions};
use crate::models::smollm2::{Message, SmolLm2};

pub struct Args {
    pub opts: GenOptions,
    /// Print each reply's figures to stderr.
    pub stats: bool,
}

/// Lines of standard input, read on their own thread so that waiting for one can be raced
/// against Ctrl-C. The channel closes at end of input.
fn stdin_lines() -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Drop the oldest exchanges of `history` (it alternates user, assistant, … and ends with a
/// user message) until `tokens(history)` plus `max_tokens` fits `limit`; the system prompt is
/// not part of `history`, so it always stays. Returns the messages dropped; an error when the
/// last user message alone does not fit (`history` is then left as it was).
pub fn fit_history(
    history: &mut Vec<Message>,
    max_tokens: usize,
    limit: usize,
    tokens: impl Fn(&[Message]) -> anyhow::Result<usize>,
) -> anyhow::Result<usize> {
    let mut first = 0;
    loop {
        let n = tokens(&history[first..])?;
        if n + max_tokens <= limit {
            history.drain(..first);
            return Ok(first);
        }
        if history.len() - first <= 1 {
            anyhow::bail!(
                "this message makes a prompt of {n} tokens, which with --max-tokens {max_tokens} exceeds the context limit of {limit} tokens"
            );
        }
        // A whole exchange at a time, so the history still starts with a user message.
        first += 2.min(history.len() - first - 1);
    }
}

fn prompt_ids(model: &SmolLm2, system: Option<&str>, history: &[Message]) -> anyhow::Result<Vec<u32>> {
    let messages: Vec<Message> =
        system.map(|s| Message::new("system", s)).into_iter().chain(history.iter().cloned()).collect();
    model.chat_ids(&messages)
}

pub async fn run(host: &mut Host, args: Args) -> anyhow::Result<()> {
    let interactive = std::io::stdin().is_terminal();
    args.opts.check()?;
    // Registered before anything slow, so a Ctrl-C is never the default (process-killing) one.
    let mut interrupts = signal(SignalKind::interrupt())?;
    let started = Instant::now();
    let model = SmolLm2::load(None)?;
    let l = placement::load(host, model, started, &args.opts, false).await?;
    match &l.reason {
        Some(reason) => eprintln!("{} on {} (auto: {reason}), loaded in {:.0} ms", l.model.name, l.backend, l.load_ms),
        None => eprintln!("{} on {}, loaded in {:.0} ms", l.model.name, l.backend, l.load_ms),
    }
    if interactive {
        eprintln!("Type a message. Ctrl-C stops a reply; Ctrl-C, Ctrl-D or /exit at the prompt ends the chat.");
    }
    let system = args.opts.system.as_deref();
    let limit = placement::context_limit(&l.model);
    let mut lines = stdin_lines();
    let mut history: Vec<Message> = Vec::new();
    let mut out = std::io::stdout();
    loop {
        if interactive {
            write!(out, "> ")?;
            out.flush()?;
        }
        let line = tokio::select! {
            line = lines.recv() => line,
            _ = interrupts.recv() => None,
        };
        let Some(line) = line else {
            if interactive {
                writeln!(out)?;
            }
            break;
        };
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        if text == "/exit" {
            break;
        }
        history.push(Message::new("user", text));
        let count = |h: &[Message]| prompt_ids(&l.model, system, h).map(|ids| ids.len());
        match fit_history(&mut history, args.opts.max_tokens as usize, limit, count) {
            Ok(0) => {}
            Ok(n) => eprintln!(
                "(the history and --max-tokens outgrew the context limit of {limit} tokens: dropped its {} oldest exchange(s))",
                n.div_ceil(2)
            ),
            Err(e) => {
                eprintln!("{e:#}");
                history.pop();
                continue;
            }
        }
        let ids = prompt_ids(&l.model, system, &history)?;
        let cancel = async {
            interrupts.recv().await;
        };
        let run = placement::generate_until(&l.model, &l.decoder, ids, l.params.clone(), cancel, |piece| {
            let _ = write!(out, "{piece}");
            let _ = out.flush();
        })
        .await?;
        writeln!(out)?;
        if run.finish.is_none() {
            eprintln!("(reply stopped)");
        }
        if args.stats {
            eprintln!(
                "(prompt {} tokens, {} from the prefix cache; first token after {:.0} ms; {} tokens at {:.1} tok/s)",
                run.prompt_ids.len(),
                run.cached_tokens,
                run.ttft_ms,
                run.ids.len(),
                run.decode_tok_s
            );
        }
        history.push(Message::new("assistant", &l.model.decode(&run.ids)?));
    }
    l.decoder.stop().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One token per word, plus 3 per message (its role and markers).
    fn words(h: &[Message]) -> anyhow::Result<usize> {
        Ok(h.iter().map(|m| 3 + m.content.split_whitespace().count()).sum())
    }

    fn convo(turns: &[&str]) -> Vec<Message> {
        turns.iter().enumerate().map(|(i, t)| Message::new(if i % 2 == 0 { "user" } else { "assistant" }, t)).collect()
    }

    #[test]
    fn a_history_that_fits_is_kept_whole() {
        let mut h = convo(&["a b", "c d e", "f"]);
        assert_eq!(fit_history(&mut h, 10, 4 + 5 + 6 + 10, words).unwrap(), 0);
        assert_eq!(h.len(), 3);
    }

    #[test]
    fn oldest_exchanges_go_first_and_the_history_still_starts_with_a_user() {
        let mut h = convo(&["one two", "three four five", "six", "seven eight", "nine"]);
        // Whole: 5+6+4+5+4 = 24 tokens; without the first exchange 13; without two 4.
        assert_eq!(fit_history(&mut h, 10, 23, words).unwrap(), 2);
        assert_eq!(h, convo(&["six", "seven eight", "nine"]));
        let mut h = convo(&["one two", "three four five", "six", "seven eight", "nine"]);
        assert_eq!(fit_history(&mut h, 10, 14, words).unwrap(), 4);
        assert_eq!(h, convo(&["nine"]));
    }

    #[test]
    fn a_message_too_long_alone_is_an_error_and_changes_nothing() {
        let mut h = convo(&["a", "b", "c d e f g h"]);
        let before = h.clone();
        let e = fit_history(&mut h, 10, 12, words).unwrap_err();
        assert!(e.to_string().contains("9 tokens"), "{e}");
        assert_eq!(h, before);
    }
}
