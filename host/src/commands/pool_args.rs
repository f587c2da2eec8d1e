//! Pool flags shared by `serve` and `bench pool`: a TOML file, overridden by flags.

use std::path::PathBuf;

use crate::browser::{BrowserKind, KindSpec};
use crate::exec::Backend;
use crate::pool::PoolConfig;

#[derive(Debug, Clone, Default, clap::Args)]
pub struct PoolArgs {
    /// Pool configuration file (TOML; see pool.example.toml). Flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Tabs kept up at all times.
    #[arg(long, visible_alias = "tabs")]
    pub min_tabs: Option<usize>,
    #[arg(long)]
    pub max_tabs: Option<usize>,
    /// A local browser kind, optionally with its cap: chromium-webnn, chromium=2, firefox=1.
    /// Repeatable; replaces the file's kinds. Default: every installed kind.
    #[arg(long = "kind", visible_alias = "browser", value_name = "KIND[=MAX]")]
    pub kinds: Vec<String>,
    /// A remote WebDriver endpoint as another kind: [firefox@]http://host:4444 — a chromedriver,
    /// or a Selenium Grid 4 hub (`--grid`); also needs --bind/--advertise so its tabs can reach
    /// this host. Repeatable.
    #[arg(long = "remote", visible_alias = "grid", value_name = "[ENGINE@]URL")]
    pub remotes: Vec<String>,
    /// Requests waiting per model before new ones are refused as busy.
    #[arg(long)]
    pub max_queue: Option<usize>,
    /// Most texts per batch.
    #[arg(long)]
    pub max_batch: Option<usize>,
    #[arg(long)]
    pub batch_wait_ms: Option<u64>,
    /// Backend for models in tabs: auto (calibrate per tab), webnn, webgpu, wasm-cpu.
    #[arg(long, value_parser = super::cli::named::<Backend>())]
    pub backend: Option<Backend>,
    /// Close tabs idle this many seconds (never below --min-tabs).
    #[arg(long)]
    pub idle_cooldown_s: Option<f64>,
    /// Keep the pool at --min-tabs (still replacing tabs that die).
    #[arg(long)]
    pub no_scaling: bool,
    /// Record executions, tab events, breaker transitions, scaling decisions and recoveries in
    /// this DuckDB file, and read its history back into routing at start. `serve` default:
    /// $TABPOOL_HISTORY or ~/.local/share/tabpool/history.duckdb.
    #[arg(long, value_name = "FILE")]
    pub history: Option<PathBuf>,
    /// Tabs per generation replica: above 1 each replica is a pipeline of this many stage tabs,
    /// each holding only its share of the model (`[generation] shards`). A speech model takes
    /// 2 with strategy component: its encoder in one tab, its decoder in another.
    #[arg(long)]
    pub shards: Option<u32>,
    /// How a sharded replica splits: layer, pipeline, component, attention-ffn (`[generation] strategy`).
    #[arg(long, value_parser = super::cli::named::<crate::policy::sharding::Strategy>())]
    pub strategy: Option<crate::policy::sharding::Strategy>,
    /// Record nothing (and start with no measured history).
    #[arg(long, conflicts_with = "history")]
    pub no_history: bool,
}

/// `chromium=2` → the chromium kind capped at 2 tabs.
pub fn parse_kind(s: &str) -> anyhow::Result<KindSpec> {
    let (name, cap) = match s.split_once('=') {
        Some((n, c)) => {
            (n, Some(c.parse::<usize>().map_err(|_| anyhow::anyhow!("--kind {s}: {c:?} is not a number"))?))
        }
        None => (s, None),
    };
    let browser = <BrowserKind as clap::ValueEnum>::from_str(name, true).map_err(|_| {
        anyhow::anyhow!("--kind {name}: unknown; one of chromium, chromium-webnn, firefox (remote kinds: --remote URL)")
    })?;
    anyhow::ensure!(browser != BrowserKind::Remote, "--kind remote needs a URL: use --remote URL");
    let mut k = KindSpec::local(browser);
    k.max_tabs = cap;
    Ok(k)
}

/// `firefox@http://h:4444` → a remote kind named `remote-1` (numbered in flag order).
pub fn parse_remote(s: &str, n: usize) -> anyhow::Result<KindSpec> {
    let (engine, url) = match s.split_once('@') {
        Some((e, u)) if !e.contains("://") => {
            let engine = <BrowserKind as clap::ValueEnum>::from_str(e, true)
                .map_err(|_| anyhow::anyhow!("--remote {s}: engine {e:?} is chromium or firefox"))?;
            (engine, u)
        }
        _ => (BrowserKind::Chromium, s),
    };
    let k = KindSpec::remote(&format!("remote-{n}"), url, engine);
    k.validate()?;
    Ok(k)
}

impl PoolArgs {
    /// The configuration, recording history only where asked (`bench`).
    pub fn resolve(&self) -> anyhow::Result<PoolConfig> {
        self.resolve_recording(false)
    }

    /// The configuration; `by_default`: record in `Store::default_path()` unless the file, a flag
    /// or `--no-history` says otherwise (`serve`).
    pub fn resolve_recording(&self, by_default: bool) -> anyhow::Result<PoolConfig> {
        let mut cfg = match &self.config {
            Some(p) => PoolConfig::from_file(p)?,
            None => PoolConfig::default(),
        };
        if let Some(n) = self.min_tabs {
            cfg.min_tabs = n;
            cfg.max_tabs = cfg.max_tabs.max(n);
        }
        if let Some(n) = self.max_tabs {
            cfg.max_tabs = n;
        }
        if !self.kinds.is_empty() || !self.remotes.is_empty() {
            cfg.kinds = self.kinds.iter().map(|k| parse_kind(k)).collect::<anyhow::Result<_>>()?;
            for (i, r) in self.remotes.iter().enumerate() {
                cfg.kinds.push(parse_remote(r, i + 1)?);
            }
        }
        if let Some(n) = self.max_queue {
            cfg.max_queue = n;
        }
        if let Some(n) = self.max_batch {
            cfg.max_batch = n;
        }
        if let Some(n) = self.batch_wait_ms {
            cfg.batch_wait_ms = n;
        }
        if let Some(b) = self.backend {
            cfg.backend = b;
        }
        if let Some(s) = self.idle_cooldown_s {
            cfg.scaling.idle_cooldown_s = s;
        }
        if let Some(n) = self.shards {
            cfg.generation.shards = n;
        }
        if let Some(s) = self.strategy {
            cfg.generation.strategy = s;
        }
        if self.no_scaling {
            cfg.scaling.enabled = false;
        }
        if let Some(p) = &self.history {
            cfg.history.path = Some(p.clone());
        } else if self.no_history {
            cfg.history.path = None;
        } else if by_default && cfg.history.path.is_none() {
            cfg.history.path = Some(crate::store::Store::default_path());
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_and_parse() {
        let args = PoolArgs {
            min_tabs: Some(3),
            kinds: vec!["chromium-webnn=2".into(), "chromium".into()],
            remotes: vec!["firefox@http://10.0.0.9:4444".into()],
            ..Default::default()
        };
        let cfg = args.resolve().unwrap();
        assert_eq!((cfg.min_tabs, cfg.max_tabs), (3, 4));
        assert_eq!(cfg.kinds[0].max_tabs, Some(2));
        assert_eq!(cfg.kinds[1].browser, BrowserKind::Chromium);
        assert_eq!(cfg.kinds[2].remote_engine, Some(BrowserKind::Firefox));
        assert_eq!(cfg.kinds[2].url.as_ref().map(|u| u.expose()), Some("http://10.0.0.9:4444"));
        assert!(parse_kind("safari").is_err());
        assert!(parse_kind("chromium=x").is_err());
        assert_eq!(parse_remote("http://h:1", 1).unwrap().remote_engine, Some(BrowserKind::Chromium));
        let bad = PoolArgs { min_tabs: Some(5), max_tabs: Some(2), ..Default::default() };
        assert!(bad.resolve().is_err());
    }
}
