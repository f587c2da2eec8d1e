//! `tabpool classify IMAGE...`: ImageNet labels for images with EfficientNet-Lite0, run by the
//! pool in a real tab (the same admission, batching and execution as `serve`), or on the host's
//! CPU executor with `--backend cpu`.

use std::path::PathBuf;

use anyhow::Context;
use serde_json::json;

use crate::HostConfig;
use crate::browser::{BrowserKind, KindSpec};
use crate::exec::Backend;
use crate::family::{self, BatchModel, Input};
use crate::models::efficientnet::EfficientNet;
use crate::policy::routing::ModelType;
use crate::pool::{ModelSpec, Pool, PoolConfig};

pub struct Args {
    pub backend: Backend,
    pub top: usize,
    pub json: bool,
    pub images: Vec<PathBuf>,
}

/// Per image: (logits, features); and where they ran (backend, tab).
struct Outcome {
    rows: Vec<(Vec<f32>, Vec<f32>)>,
    backend: String,
    tab: Option<u64>,
}

pub async fn run(host_cfg: HostConfig, args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(!args.images.is_empty(), "no image given: pass IMAGE paths");
    anyhow::ensure!((1..=1000).contains(&args.top), "--top must be 1 to 1000");
    let mut files = Vec::new();
    for p in &args.images {
        files.push(bytes::Bytes::from(std::fs::read(p).with_context(|| format!("reading {}", p.display()))?));
    }
    // Bad images fail here, before any browser starts, naming the file.
    let model = tokio::task::spawn_blocking(|| EfficientNet::load(None)).await??;
    for (p, f) in args.images.iter().zip(&files) {
        model.prepare(Input::Images(vec![f.clone()])).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
    }
    let labels = model.labels.clone();
    let outcome = match args.backend {
        Backend::Cpu => on_host_cpu(model, files).await?,
        backend => in_pool(host_cfg, backend, files).await?,
    };
    if args.json {
        let images: Vec<_> = args
            .images
            .iter()
            .zip(&outcome.rows)
            .map(|(p, (logits, features))| {
                let top: Vec<_> = crate::stats::top_k_softmax(logits, args.top)
                    .into_iter()
                    .map(|(c, prob)| json!({ "class": c, "label": labels[c], "probability": prob }))
                    .collect();
                json!({ "path": p.display().to_string(), "top": top, "logits": logits, "embedding": features })
            })
            .collect();
        let out = json!({ "images": images, "backend": outcome.backend, "tab": outcome.tab });
        println!("{}", serde_json::to_string(&out)?);
    } else {
        for (p, (logits, _)) in args.images.iter().zip(&outcome.rows) {
            println!("{}", p.display());
            for (c, prob) in crate::stats::top_k_softmax(logits, args.top) {
                println!("  {:>6.2} %  {:>4}  {}", prob * 100.0, c, labels[c]);
            }
        }
        let tab = outcome.tab.map(|t| format!(", tab {t}")).unwrap_or_default();
        eprintln!("ran on {}{tab}", outcome.backend);
    }
    Ok(())
}

/// The CPU executor on the host: the reference the tabs are checked against.
async fn on_host_cpu(mut model: EfficientNet, files: Vec<bytes::Bytes>) -> anyhow::Result<Outcome> {
    tokio::task::spawn_blocking(move || {
        let prepared = model.prepare(Input::Images(files)).map_err(|e| anyhow::anyhow!("{e}"))?;
        let rows: Vec<&shared_proto::Tensor> = prepared.rows.iter().collect();
        let inputs = model.inputs(&rows)?;
        let widths = model.output_widths();
        let cpu = page_runtime::executors::cpu::CpuModel::new(model.graph.clone(), model.take_weights())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let outputs = cpu.run(&inputs).map_err(|e| anyhow::anyhow!("{e}"))?;
        let per_row = family::split_rows(&outputs, rows.len(), &widths)?;
        Ok(Outcome { rows: per_row.into_iter().map(pair).collect(), backend: "cpu".into(), tab: None })
    })
    .await?
}

/// One tab in a pool of one: WebNN in the WebNN-capable Chromium, WebGPU in Chromium, `auto`
/// calibrating both there.
async fn in_pool(host_cfg: HostConfig, backend: Backend, files: Vec<bytes::Bytes>) -> anyhow::Result<Outcome> {
    let browser = if backend == Backend::Webgpu { BrowserKind::Chromium } else { BrowserKind::ChromiumWebnn };
    let mut kind = KindSpec::local(browser);
    kind.backend = Some(backend);
    let mut cfg = PoolConfig { min_tabs: 1, max_tabs: 1, kinds: vec![kind], ..PoolConfig::default() };
    cfg.scaling.enabled = false;
    let pool = Pool::with_host(crate::Host::start(host_cfg).await?, cfg).await?;
    let run = async {
        let name = pool.load(ModelSpec::of_type(ModelType::Vision)).await?;
        let served = pool.submit(&name, Input::Images(files), None).await?;
        let rows =
            served.vectors.into_iter().zip(served.extra).map(|(l, e)| (l, e.into_iter().next().unwrap_or_default()));
        anyhow::Ok(Outcome { rows: rows.collect(), backend: served.backend, tab: Some(served.tab) })
    }
    .await;
    pool.shutdown().await;
    run
}

fn pair(mut outputs: Vec<Vec<f32>>) -> (Vec<f32>, Vec<f32>) {
    let features = if outputs.len() > 1 { outputs.swap_remove(1) } else { vec![] };
    (outputs.swap_remove(0), features)
}
