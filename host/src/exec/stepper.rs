//! One copy of a stateful (generation) model that sessions step on: in a tab (its KV cache lives
//! there, between calls) or on the host's CPU executor. Both speak the same three calls as the
//! protocol — open, step, close — so the decode loop above them does not care where it runs.

use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use page_runtime::executors::cpu::CpuModel;
use page_runtime::sessions::{self, Sessions};
use shared_proto::{DType, ExecBackend, Graph, Reply, Request, StepRow, Tensor};

use super::pipeline::Pipeline;
use super::tab_model::{RUN_TIMEOUT, TabModel, WeightUpload};
use crate::Tab;

pub enum Stepper {
    /// The host's CPU executor; its sessions are kept here as a tab keeps them.
    Host {
        model: Arc<CpuModel>,
        sessions: Arc<Mutex<Sessions>>,
        vocab: u32,
    },
    Tab(TabModel),
    /// A model sharded into stages (each a `Host` or `Tab` stepper holding some of its parts).
    Pipeline(Pipeline),
}

/// What a step of one stepper gave: sampled ids (a whole model, or a last stage) or the hidden
/// state of every token (a stage before the last).
#[derive(Debug)]
pub enum StepOut {
    Tokens(Vec<u32>),
    Hidden(Tensor),
}

impl Stepper {
    /// The model on the host's CPU executor (takes the weights: one copy).
    pub fn on_host(graph: Graph, weights: Vec<Tensor>) -> anyhow::Result<Stepper> {
        let kv = graph.kv.context("a generation graph declares its KV cache")?;
        let vocab = sessions::vocab(&graph);
        let model = CpuModel::new(graph, weights).map_err(|e| anyhow::anyhow!("{e}"))?;
        let sessions = Sessions::new(kv).with_prefix_cache();
        Ok(Stepper::Host { model: Arc::new(model), sessions: Arc::new(Mutex::new(sessions)), vocab })
    }

    /// Load the model into `tab` on `backend`.
    pub async fn in_tab(
        tab: &Tab,
        name: &str,
        graph: &Graph,
        weights: &[Tensor],
        backend: ExecBackend,
        progress: &dyn WeightUpload,
    ) -> anyhow::Result<Stepper> {
        anyhow::ensure!(graph.kv.is_some(), "a generation graph declares its KV cache");
        Ok(Stepper::Tab(TabModel::load(tab, name, graph, weights, backend, progress).await?))
    }

    /// Where it runs: "cpu" (the host), or the tab's backend ("webgpu", "wasm-cpu", "webnn-cpu").
    /// A pipeline names its stages' backends joined by `+` when they differ.
    pub fn backend(&self) -> String {
        match self {
            Stepper::Host { .. } => "cpu".into(),
            Stepper::Tab(tm) => tm.backend.to_string(),
            Stepper::Pipeline(p) => {
                let mut names: Vec<String> = p.stages().iter().map(|s| s.backend()).collect();
                names.dedup();
                names.join("+")
            }
        }
    }

    /// The tab it runs in (`None` on the host; a pipeline's first stage's tab).
    pub fn tab_id(&self) -> Option<u64> {
        match self {
            Stepper::Host { .. } => None,
            Stepper::Tab(tm) => Some(tm.tab.id()),
            Stepper::Pipeline(p) => p.stages().iter().find_map(|s| s.tab_id()),
        }
    }

    /// Every tab it runs in, in stage order.
    pub fn tab_ids(&self) -> Vec<u64> {
        match self {
            Stepper::Pipeline(p) => p.stages().iter().flat_map(|s| s.tab_ids()).collect(),
            other => other.tab_id().into_iter().collect(),
        }
    }

    /// Host-side time of the load (0 on the host: nothing to upload).
    pub fn load_ms(&self) -> f64 {
        match self {
            Stepper::Host { .. } => 0.0,
            Stepper::Tab(tm) => tm.load_ms,
            Stepper::Pipeline(p) => p.stages().iter().map(|s| s.load_ms()).sum(),
        }
    }

    /// Reserve `capacity` tokens of KV cache for `session`; the KV bytes reserved (a pipeline:
    /// on every stage, summed).
    pub async fn open(&self, session: u64, capacity: u32) -> anyhow::Result<u64> {
        Ok(self.open_reusing(session, capacity, &[]).await?.0)
    }

    /// [`Stepper::open`] for a session that starts with `prompt`: a replica with a prefix cache
    /// copies the KV rows of the longest prefix it keeps. Returns the KV bytes reserved and the
    /// prompt tokens reused (the session is that long: step the rest). A pipeline reuses none —
    /// its stages would each have to hold the same prefix.
    pub async fn open_reusing(&self, session: u64, capacity: u32, prompt: &[u32]) -> anyhow::Result<(u64, u32)> {
        match self {
            Stepper::Host { model, sessions, .. } => {
                let mut sessions = sessions.lock().expect("sessions");
                let opened = sessions.open_reusing(session, capacity, prompt)?;
                let Some(c) = opened.copy else { return Ok((opened.kv_bytes, 0)) };
                // Rows of a few hundred tokens: a memcpy, not worth leaving the async worker.
                match model.copy_kv_rows(c.from, c.to, c.rows) {
                    Ok(()) => Ok((opened.kv_bytes, c.rows)),
                    Err(e) => {
                        tracing::warn!("prefix copy failed, prefilling in full: {e}");
                        sessions.rewind(session);
                        Ok((opened.kv_bytes, 0))
                    }
                }
            }
            Stepper::Tab(tm) => {
                let req = Request::OpenSession { model: tm.name.clone(), session, capacity, prompt: prompt.to_vec() };
                match tm.tab.call(req, vec![], RUN_TIMEOUT).await? {
                    // Never the whole prompt: its last token is stepped for the first sample.
                    (Reply::SessionOpened { kv_bytes, reused }, _)
                        if reused == 0 || (reused as usize) < prompt.len() =>
                    {
                        Ok((kv_bytes, reused))
                    }
                    (other, _) => bail!("tab {} answered {other:?} to OpenSession", tm.tab.id()),
                }
            }
            Stepper::Pipeline(p) => Ok((Box::pin(p.open(session, capacity)).await?, 0)),
        }
    }

    /// Write `session`'s fixed memory (`[layers, 2, rows, width]`, an encoder–decoder model's
    /// cross-attention keys and values) into KV layers `first_layer..` of its rows; bytes written.
    pub async fn put_memory(&self, session: u64, first_layer: u32, memory: Tensor) -> anyhow::Result<u64> {
        match self {
            Stepper::Host { model, sessions, .. } => {
                let (start, capacity) =
                    sessions.lock().expect("sessions").range(session).context("the session is not open")?;
                anyhow::ensure!(
                    memory.shape.get(2).is_some_and(|&r| r <= capacity),
                    "a memory {:?} does not fit the session's {capacity} rows",
                    memory.shape
                );
                let model = model.clone();
                Ok(tokio::task::spawn_blocking(move || model.put_memory(first_layer as usize, start as usize, &memory))
                    .await??)
            }
            Stepper::Tab(tm) => {
                let req = Request::PutMemory { model: tm.name.clone(), session, first_layer };
                match tm.tab.call(req, vec![memory], RUN_TIMEOUT).await? {
                    (Reply::MemoryStored { bytes }, _) => Ok(bytes),
                    (other, _) => bail!("tab {} answered {other:?} to PutMemory", tm.tab.id()),
                }
            }
            Stepper::Pipeline(_) => bail!("a sharded pipeline keeps no cross-attention memory"),
        }
    }

    /// Advance `rows` together; one sampled token per row and the executor's time in ms (a
    /// pipeline: summed over its stages).
    pub async fn step(&self, rows: Vec<StepRow>) -> anyhow::Result<(Vec<u32>, f64)> {
        let n = rows.len();
        match self.step_with(rows, Vec::new()).await? {
            (StepOut::Tokens(t), ms) if t.len() == n => Ok((t, ms)),
            (other, _) => bail!("a step of {n} rows gave {other:?}"),
        }
    }

    /// One step of a whole model: the sampled ids, the graph's further outputs (after its ids),
    /// and the executor's time.
    pub async fn step_with_outputs(&self, rows: Vec<StepRow>) -> anyhow::Result<(Vec<u32>, Vec<Tensor>, f64)> {
        let n = rows.len();
        match self {
            Stepper::Host { model, sessions, vocab } => {
                let (mut out, ms) = host_step(model, sessions, *vocab, rows, Vec::new()).await?;
                let extra = out.split_off(1);
                match step_out(out.swap_remove(0), n)? {
                    StepOut::Tokens(t) => Ok((t, extra, ms)),
                    other => bail!("a step of {n} rows gave {other:?}"),
                }
            }
            Stepper::Tab(tm) => {
                let req = Request::Step { model: tm.name.clone(), rows };
                match tm.tab.call(req, Vec::new(), RUN_TIMEOUT).await? {
                    (Reply::Stepped { tokens, device_ms }, extra) if tokens.len() == n => {
                        Ok((tokens, extra, device_ms))
                    }
                    (other, _) => bail!("tab {} answered {other:?} to a Step of {n} rows", tm.tab.id()),
                }
            }
            Stepper::Pipeline(_) => bail!("a pipeline's steps give ids only"),
        }
    }

    /// One step with `hidden` (a stage's input from the stage before it; empty for a model or
    /// first stage that embeds the rows' ids).
    pub async fn step_with(&self, rows: Vec<StepRow>, hidden: Vec<Tensor>) -> anyhow::Result<(StepOut, f64)> {
        match self {
            Stepper::Host { model, sessions, vocab } => {
                let n = rows.len();
                let (mut out, ms) = host_step(model, sessions, *vocab, rows, hidden).await?;
                Ok((step_out(out.swap_remove(0), n)?, ms))
            }
            Stepper::Tab(tm) => {
                let n = rows.len();
                let req = Request::Step { model: tm.name.clone(), rows };
                match tm.tab.call(req, hidden, RUN_TIMEOUT).await? {
                    (Reply::Stepped { tokens, device_ms }, _) if tokens.len() == n => {
                        Ok((StepOut::Tokens(tokens), device_ms))
                    }
                    (Reply::Stepped { tokens, device_ms }, mut t) if tokens.is_empty() && t.len() == 1 => {
                        Ok((StepOut::Hidden(t.swap_remove(0)), device_ms))
                    }
                    (other, _) => bail!("tab {} answered {other:?} to a Step of {n} rows", tm.tab.id()),
                }
            }
            Stepper::Pipeline(p) => Box::pin(p.step(rows)).await,
        }
    }

    /// Free `session`'s KV rows (a pipeline: on every stage).
    pub async fn close(&self, session: u64) -> anyhow::Result<()> {
        match self {
            Stepper::Host { sessions, .. } => {
                sessions.lock().expect("sessions").close(session);
                Ok(())
            }
            Stepper::Tab(tm) => {
                let req = Request::CloseSession { model: tm.name.clone(), session };
                match tm.tab.call(req, vec![], RUN_TIMEOUT).await? {
                    (Reply::SessionClosed, _) => Ok(()),
                    (other, _) => bail!("tab {} answered {other:?} to CloseSession", tm.tab.id()),
                }
            }
            Stepper::Pipeline(p) => Box::pin(p.close(session)).await,
        }
    }
}

/// A step's first output: ids `[rows]` (i32) or a hidden state (f32).
/// One step on the host's CPU executor: every output of the graph (at least one), and the run's
/// ms. The executor blocks for the whole step, so it runs off the async workers.
async fn host_step(
    model: &Arc<CpuModel>,
    sessions: &Arc<Mutex<Sessions>>,
    vocab: u32,
    rows: Vec<StepRow>,
    hidden: Vec<Tensor>,
) -> anyhow::Result<(Vec<Tensor>, f64)> {
    let (model, sessions) = (model.clone(), sessions.clone());
    tokio::task::spawn_blocking(move || {
        let plan = sessions.lock().expect("sessions").plan_stage(model.graph(), &rows, vocab, hidden)?;
        let t0 = std::time::Instant::now();
        let out = model.run(&plan.inputs)?;
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        sessions.lock().expect("sessions").commit(&plan);
        anyhow::ensure!(!out.is_empty(), "a step has an output");
        Ok((out, ms))
    })
    .await?
}

fn step_out(t: Tensor, rows: usize) -> anyhow::Result<StepOut> {
    match t.dtype {
        DType::I32 if t.shape == [rows as u32] => Ok(StepOut::Tokens(
            t.data.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as u32).collect(),
        )),
        DType::F32 => Ok(StepOut::Hidden(t)),
        _ => bail!("a step output {:?} {:?}: neither ids for {rows} rows nor a hidden state", t.dtype, t.shape),
    }
}
