//! `tabpool serve`: a pool of tabs with MiniLM (and any extra model folders) loaded, a control
//! endpoint for `tabpool status` and `POST /embed`, until Ctrl-C. `tabpool status` asks it.
//! `--model efficientnet-lite0` (or an EfficientNet-Lite0 `.pth`) serves image classification
//! (`/v1/images/classifications`, `/v2` infer).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use super::pool_args::PoolArgs;
use crate::api;
use crate::policy::routing::ModelType;
use crate::pool::{ModelSpec, Pool};
use crate::{Host, HostConfig};

/// Where `serve` listens and `status` asks unless told otherwise.
pub const DEFAULT_API: &str = "127.0.0.1:7878";

pub struct Args {
    pub pool: PoolArgs,
    /// Models by name (`minilm`, `smollm2`, `efficientnet-lite0`) or path (an encoder folder, a
    /// `.gguf` file, an EfficientNet-Lite0 `.pth`).
    pub models: Vec<String>,
    /// Load only the models named in `models` (none by default).
    pub no_default_model: bool,
    pub api: SocketAddr,
    /// API key and Host allow-list.
    pub security: api::Security,
    /// Request deadline, idle timeout, stream budget.
    pub limits: api::Limits,
}

/// How long a stopping `serve` waits for HTTP answers in flight to be written.
pub const DRAIN_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

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
    let server = std::sync::Mutex::new(None);
    let work = async {
        for spec in specs(&args.models, args.no_default_model)? {
            pool.load(spec).await?;
        }
        let (addr, api) = api::serve(pool.clone(), args.api, args.security.clone(), args.limits).await?;
        *server.lock().expect("server") = Some(api);
        println!("{}", pool.metrics().render());
        println!("tabpool serve: {} tab(s) ready", pool.metrics().connections);
        println!(
            "tabpool serve: models {:?}; `tabpool status --api {addr}`; OpenAI API at http://{addr}/v1 (embeddings, \
             chat/completions, completions, images/classifications, audio/transcriptions), Open Inference Protocol at \
             /v2; Ctrl-C to stop",
            pool.models()
        );
        if let Some(url) = pool.join_url() {
            println!(
                "tabpool serve: pages lend their tabs at {url} (`tabpool token create --models <names>` issues a join token)"
            );
        }
        std::future::pending::<()>().await;
        anyhow::Ok(())
    };
    let result = tokio::select! {
        r = work => r.map(|()| false),
        _ = &mut stop => Ok(true),
    };
    // Stop taking requests first; then the pool answers every accepted one (a result, or
    // "shutting down"); then the HTTP connections get to write those answers before we exit.
    let api = server.lock().expect("server").take();
    let draining = api.map(|api| tokio::spawn(api.drain(DRAIN_WITHIN)));
    pool.shutdown().await;
    if let Some(d) = draining
        && let Ok(cut) = d.await
        && cut > 0
    {
        tracing::warn!("{cut} API connection(s) still open {DRAIN_WITHIN:?} after shutdown began: closed");
    }
    result
}

/// The models to load: those named, else MiniLM and (when its GGUF is installed) SmolLM2.
pub fn specs(models: &[String], none_by_default: bool) -> anyhow::Result<Vec<ModelSpec>> {
    if models.is_empty() {
        if none_by_default {
            return Ok(vec![]);
        }
        let mut specs = vec![ModelSpec::minilm()];
        if crate::models::smollm2::default_path().is_file() {
            specs.push(ModelSpec::smollm2());
        } else {
            tracing::info!("SmolLM2 is not installed (bash scripts/setup.sh): serving embeddings only");
        }
        return Ok(specs);
    }
    models
        .iter()
        .map(|m| match m.as_str() {
            "minilm" => Ok(ModelSpec::minilm()),
            "smollm2" => Ok(ModelSpec::smollm2()),
            "efficientnet-lite0" | "efficientnet" => Ok(ModelSpec::of_type(ModelType::Vision)),
            "whisper-tiny.en" | "whisper" => Ok(ModelSpec::of_type(ModelType::Audio)),
            path => {
                let p = PathBuf::from(path);
                if p.extension().is_some_and(|e| e == "gguf") && p.is_file() {
                    Ok(ModelSpec { dir: Some(p), ..ModelSpec::smollm2() })
                } else if p.extension().is_some_and(|e| e == "pth") && p.is_file() {
                    Ok(ModelSpec { dir: Some(p), ..ModelSpec::of_type(ModelType::Vision) })
                } else if p.is_dir() {
                    Ok(ModelSpec::from_dir(p))
                } else {
                    anyhow::bail!(
                        "--model {path:?}: not minilm, smollm2, efficientnet-lite0, whisper-tiny.en, an encoder folder, \
                         a .gguf or an EfficientNet-Lite0 .pth file"
                    )
                }
            }
        })
        .collect()
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
