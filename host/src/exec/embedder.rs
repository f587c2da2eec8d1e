//! Sentence embeddings with MiniLM on a chosen backend.

use std::time::Instant;

use anyhow::{Context, bail};
use page_runtime::executors::cpu::CpuModel;

use super::tab_model::{TabModel, WeightUpload};
use crate::Host;
use crate::models::minilm::{self, MiniLm};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// WebGPU in a real tab; if no tab can start (no browser, no adapter), the CPU executor,
    /// with a warning that says why.
    Auto,
    /// A real headless tab's WebGPU device; fails if there is none.
    Webgpu,
    /// The CPU executor in this process.
    Cpu,
}

enum Exec {
    Cpu(CpuModel),
    Tab(TabModel),
}

pub struct Embedder {
    model: MiniLm,
    exec: Exec,
    pub load: LoadReport,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadReport {
    pub backend: Backend,
    /// Reading safetensors + tokenizer and building the graph.
    pub read_ms: f64,
    /// Tab start (launch → authenticated Hello); 0 on the CPU.
    pub tab_start_ms: f64,
    /// Declaring the graph, uploading weights and compiling pipelines (a warm-up run).
    pub load_ms: f64,
    pub prepare_ms: f64,
    pub weight_bytes: u64,
    pub adapter: Option<String>,
}

pub struct Embeddings {
    /// One L2-normalised vector per text.
    pub vectors: Vec<Vec<f32>>,
    pub lengths: Vec<usize>,
    pub truncated: Vec<bool>,
    /// Executor time for the batch: the tab's device time, or the CPU run.
    pub compute_ms: f64,
}

impl Embedder {
    /// Load MiniLM (default cache) onto `backend`; a tab is launched through `host` if needed.
    pub async fn load(host: &mut Host, backend: Backend, progress: &dyn WeightUpload) -> anyhow::Result<Embedder> {
        if backend == Backend::Auto {
            return match Box::pin(Self::load(host, Backend::Webgpu, progress)).await {
                Ok(e) => Ok(e),
                Err(e) => {
                    eprintln!("warning: no WebGPU tab ({e:#}); falling back to the CPU executor");
                    Box::pin(Self::load(host, Backend::Cpu, progress)).await
                }
            };
        }
        let t = Instant::now();
        let model = MiniLm::load(None)?;
        let read_ms = t.elapsed().as_secs_f64() * 1e3;
        let weight_bytes = model.weights.iter().map(|w| w.data.len() as u64).sum();
        let (exec, tab_start_ms, load_ms, prepare_ms, adapter) = match backend {
            Backend::Cpu => {
                let t = Instant::now();
                let cpu =
                    CpuModel::new(model.graph.clone(), model.weights.clone()).map_err(|e| anyhow::anyhow!("{e}"))?;
                (Exec::Cpu(cpu), 0.0, t.elapsed().as_secs_f64() * 1e3, 0.0, None)
            }
            Backend::Auto => unreachable!("resolved above"),
            Backend::Webgpu => {
                let t = Instant::now();
                let tab = host.launch_tab().await?;
                let tab_start = t.elapsed().as_secs_f64() * 1e3;
                if tab.caps().webgpu.adapter.is_none() {
                    bail!("tab {} has no WebGPU device: {}", tab.id(), crate::commands::adapter_line(tab.caps()));
                }
                let adapter = crate::commands::adapter_line(tab.caps());
                let tm = TabModel::load(&tab, minilm::NAME, &model.graph, &model.weights, progress)
                    .await
                    .context("loading MiniLM into the tab")?;
                let (l, p) = (tm.load_ms, tm.prepare_ms);
                (Exec::Tab(tm), tab_start, l, p, Some(adapter))
            }
        };
        let load = LoadReport { backend, read_ms, tab_start_ms, load_ms, prepare_ms, weight_bytes, adapter };
        Ok(Embedder { model, exec, load })
    }

    pub fn model(&self) -> &MiniLm {
        &self.model
    }

    /// Embed `texts` as one batch (padded to its longest text, masked).
    pub async fn embed(&self, texts: &[&str]) -> anyhow::Result<Embeddings> {
        let batch = self.model.batch(texts)?;
        let t = Instant::now();
        let (outputs, compute_ms) = match &self.exec {
            Exec::Cpu(cpu) => {
                let out = tokio::task::block_in_place(|| cpu.run(&batch.inputs)).map_err(|e| anyhow::anyhow!("{e}"))?;
                (out, t.elapsed().as_secs_f64() * 1e3)
            }
            Exec::Tab(tm) => tm.run(batch.inputs).await?,
        };
        let flat = outputs.first().and_then(|t| t.to_f32()).context("model returned no f32 output")?;
        if flat.len() != texts.len() * minilm::HIDDEN {
            bail!("model returned {} values for {} texts", flat.len(), texts.len());
        }
        Ok(Embeddings {
            vectors: flat.chunks_exact(minilm::HIDDEN).map(<[f32]>::to_vec).collect(),
            lengths: batch.lengths,
            truncated: batch.truncated,
            compute_ms,
        })
    }
}

/// Cosine similarity of two vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb).max(f32::MIN_POSITIVE)
}
