//! `tabpool report`: the history database as Markdown or HTML (with SVG charts). Reads the file
//! directly; while a `serve` holds it (DuckDB allows one writing process), ask that pool's API.

use std::path::PathBuf;

use crate::report::Report;
pub use crate::report::render::{Format, render_as};
use crate::store::Store;

pub struct Args {
    pub history: Option<PathBuf>,
    pub format: Format,
    pub since: Option<String>,
    pub out: Option<PathBuf>,
    /// A running `serve`'s API: fetch its report instead of opening the file.
    pub api: Option<String>,
    /// Its API key, if it has one.
    pub key: Option<String>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let text = match &args.api {
        Some(api) => {
            let ext = match args.format {
                Format::Md => "md",
                Format::Html => "html",
                Format::Json => "json",
            };
            let q = args.since.as_deref().map(|s| format!("?since={s}")).unwrap_or_default();
            let (code, body) = crate::api::get_text(api, &format!("/report.{ext}{q}"), args.key.as_deref()).await?;
            anyhow::ensure!(code == 200, "{api} answered {code}: {body}");
            body
        }
        None => {
            let path = args.history.clone().unwrap_or_else(Store::default_path);
            let (format, since) = (args.format, args.since.clone());
            tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
                let store = Store::open_read_only(&path)?;
                let since = since.map(|s| crate::report::parse_since(&store, &s)).transpose()?;
                Ok(render_as(&Report::build(&store, since)?, format))
            })
            .await??
        }
    };
    match &args.out {
        Some(p) => {
            std::fs::write(p, &text).map_err(|e| anyhow::anyhow!("writing {}: {e}", p.display()))?;
            eprintln!("report written to {}", p.display());
        }
        None => print!("{text}"),
    }
    Ok(())
}
