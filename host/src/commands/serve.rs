//! `tabpool serve`: a pool of tabs with MiniLM (and any extra model folders) loaded, a control
//! endpoint for `tabpool status` and `POST /embed`, until Ctrl-C. `tabpool status` asks it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use super::pool_args::PoolArgs;
use crate::pool::{ModelSpec, Pool};
use crate::server::api;
use crate::{Host, HostConfig};

/// Where `serve` listens and `status` asks unless told otherwise.
pub const DEFAULT_API: &str = "127.0.0.1:7878";

pub struct Args {
    pub pool: PoolArgs,
    /// Extra sentence-encoder folders (config.json + model.safetensors + tokenizer.json).
    pub models: Vec<PathBuf>,
    /// Skip loading all-MiniLM-L6-v2.
    pub no_default_model: bool,
    pub api: SocketAddr,
    /// API key and Host allow-list.
    pub security: api::Security,
}

/// Runs until `stop` resolves (Ok(true): stopped by it) or fails.
pub async fn run(
    host_cfg: HostConfig,
    args: Args,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<bool> {
    let cfg = args.pool.resolve_recording(true)?;
    // Refuse an open API before any browser starts.
    args.security.check_bind(args.api)?;
    let host = Host::start(host_cfg).await?;
    let mut stop = std::pin::pin!(stop);
    let pool = tokio::select! {
        p = Pool::with_host(host, cfg) => Arc::new(p?),
        // Dropping the half-built pool drops its host, which kills what it started.
        _ = &mut stop => return Ok(true),
    };
    let work = async {
        if !args.no_default_model {
            pool.load(ModelSpec::minilm()).await?;
        }
        for dir in &args.models {
            pool.load(ModelSpec::from_dir(dir)).await?;
        }
        let (addr, _api) = api::serve(pool.clone(), args.api, args.security.clone()).await?;
        println!("{}", pool.metrics().render());
        println!("tabpool serve: {} tab(s) ready", pool.metrics().connections);
        println!(
            "tabpool serve: models {:?}; `tabpool status --api {addr}`; POST http://{addr}/embed {{\"texts\": [...]}}; Ctrl-C to stop",
            pool.models()
        );
        std::future::pending::<()>().await;
        anyhow::Ok(())
    };
    let result = tokio::select! {
        r = work => r.map(|()| false),
        _ = &mut stop => Ok(true),
    };
    pool.shutdown().await;
    result
}

/// `tabpool status`: the metrics of a running `serve`.
pub async fn status(api_addr: &str, json: bool, key: Option<&str>) -> anyhow::Result<()> {
    let (code, body) = api::get_text(api_addr, if json { "/status" } else { "/status.txt" }, key).await?;
    anyhow::ensure!(code == 200, "{api_addr} answered {code}: {body}");
    print!("{body}");
    if json {
        println!();
    }
    Ok(())
}
