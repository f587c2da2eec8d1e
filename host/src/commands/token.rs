//! `tabpool token create|list|revoke`: the join tokens a `serve --join` admits lent tabs with
//! (`server::join`). The file is read at every join, so these act on a running serve.

use std::path::PathBuf;
use std::time::Duration;

use crate::server::join::TokenFile;

#[derive(clap::Subcommand)]
pub enum What {
    /// Issue a token; prints it once (only its hash is kept).
    Create {
        /// How long it admits tabs: 30m, 1h, 7d (default: until revoked).
        #[arg(long)]
        ttl: Option<String>,
        /// Tabs joined with it at once.
        #[arg(long, default_value_t = 1)]
        max_tabs: usize,
        /// Models (as `serve` names them, comma-separated) whose weights a lent tab may receive.
        #[arg(long, value_delimiter = ',', required = true)]
        models: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// The tokens kept, with their state.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token (by id, or the token itself): it admits no new tab.
    Revoke { id: String },
}

#[derive(clap::Args)]
pub struct Args {
    /// The token file (default: $TABPOOL_JOIN_TOKENS or ~/.local/share/tabpool/join_tokens.json).
    #[arg(long, value_name = "FILE", global = true)]
    pub tokens: Option<PathBuf>,
    #[command(subcommand)]
    pub what: What,
}

/// A span such as 30m, 1h, 7d (s, m, h, d, w).
pub fn span(s: &str) -> anyhow::Result<Duration> {
    let bad = || anyhow::anyhow!("{s:?}: expected a positive span: a number followed by s, m, h, d or w (30m, 1h, 7d)");
    let c = s.chars().last().ok_or_else(bad)?;
    let unit = match c {
        's' => 1.0,
        'm' => 60.0,
        'h' => 3600.0,
        'd' => 86_400.0,
        'w' => 604_800.0,
        _ => return Err(bad()),
    };
    let n: f64 = s[..s.len() - 1].parse().map_err(|_| bad())?;
    let secs = n * unit;
    anyhow::ensure!(secs.is_finite() && (1.0..=3650.0 * 86_400.0).contains(&secs), bad());
    Ok(Duration::from_secs_f64(secs))
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let file = TokenFile::at(args.tokens.unwrap_or_else(TokenFile::default_path));
    match args.what {
        What::Create { ttl, max_tabs, models, json } => {
            let ttl = ttl.as_deref().map(span).transpose()?;
            let (t, token) = file.create(ttl, max_tabs, models)?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"token": token, "id": t.id, "expires_unix": t.expires_unix,
                        "max_tabs": t.max_tabs, "models": t.models, "file": file.path})
                );
            } else {
                println!("{token}");
                eprintln!(
                    "join token {} for {:?}, up to {} tab(s), {}; kept (hashed) in {}. A page lends its tab with \
                     `await rt.join(\"ws://<host>:<port>/join\", {{ token }})` to a `tabpool serve --join`.",
                    t.id,
                    t.models,
                    t.max_tabs,
                    ttl.map_or("until revoked".to_string(), |d| format!("expires in {} s", d.as_secs())),
                    file.path.display()
                );
            }
        }
        What::List { json } => {
            let tokens = file.list()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&tokens)?);
            } else {
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
                println!("{:<10} {:<12} {:>8}  models", "id", "state", "max_tabs");
                for t in tokens {
                    let state = match t.expires_unix {
                        _ if t.revoked => "revoked".to_string(),
                        Some(e) if e <= now => "expired".to_string(),
                        Some(e) => format!("{} s left", e - now),
                        None => "valid".to_string(),
                    };
                    println!("{:<10} {:<12} {:>8}  {}", t.id, state, t.max_tabs, t.models.join(","));
                }
            }
        }
        What::Revoke { id } => {
            anyhow::ensure!(file.revoke(&id)?, "no join token {id:?} in {}", file.path.display());
            println!("revoked {id}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn spans_are_parsed_and_nonsense_refused() {
        assert_eq!(super::span("1h").unwrap().as_secs(), 3600);
        assert_eq!(super::span("30m").unwrap().as_secs(), 1800);
        assert_eq!(super::span("2d").unwrap().as_secs(), 172_800);
        for bad in ["", "h", "0h", "-1h", "NaNh", "1e30d", "1x", "0.1s"] {
            assert!(super::span(bad).is_err(), "{bad:?}");
        }
    }
}
