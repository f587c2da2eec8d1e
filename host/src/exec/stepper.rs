//! One copy of a stateful (generation) model that sessions step on: in a tab (its KV cache lives
//! there, between calls) or on the host's CPU executor. Both speak the same three calls as the
//! protocol — open, step, close — so the decode loop above them does not care where it runs.

use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use page_runtime::executors::cpu::CpuModel;
use page_runtime::sessions::{self, Sessions};
use shared_proto::{ExecBackend, Graph, Reply, Request, StepRow, Tensor};

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
}

impl Stepper {
    /// The model on the host's CPU executor (takes the weights: one copy).
    pub fn on_host(graph: Graph, weights: Vec<Tensor>) -> anyhow::Result<Stepper> {
        let kv = graph.kv.context("a generation graph declares its KV cache")?;
        let vocab = sessions::vocab(&graph);
        let model = CpuModel::new(graph, weights).map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(Stepper::Host { model: Arc::new(model), sessions: Arc::new(Mutex::new(Sessions::new(kv))), vocab })
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
    pub fn backend(&self) -> String {
        match self {
            Stepper::Host { .. } => "cpu".into(),
            Stepper::Tab(tm) => tm.backend.to_string(),
        }
    }

    /// The tab it runs in (`None` on the host).
    pub fn tab_id(&self) -> Option<u64> {
        match self {
            Stepper::Host { .. } => None,
            Stepper::Tab(tm) => Some(tm.tab.id()),
        }
    }

    /// Host-side time of the load (0 on the host: nothing to upload).
    pub fn load_ms(&self) -> f64 {
        match self {
            Stepper::Host { .. } => 0.0,
            Stepper::Tab(tm) => tm.load_ms,
        }
    }

    /// Reserve `capacity` tokens of KV cache for `session`; the KV bytes reserved.
    pub async fn open(&self, session: u64, capacity: u32) -> anyhow::Result<u64> {
        match self {
            Stepper::Host { sessions, .. } => Ok(sessions.lock().expect("sessions").open(session, capacity)?),
            Stepper::Tab(tm) => {
                let req = Request::OpenSession { model: tm.name.clone(), session, capacity };
                match tm.tab.call(req, vec![], RUN_TIMEOUT).await? {
                    (Reply::SessionOpened { kv_bytes }, _) => Ok(kv_bytes),
                    (other, _) => bail!("tab {} answered {other:?} to OpenSession", tm.tab.id()),
                }
            }
        }
    }

    /// Advance `rows` together; one sampled token per row and the executor's time in ms.
    pub async fn step(&self, rows: Vec<StepRow>) -> anyhow::Result<(Vec<u32>, f64)> {
        match self {
            Stepper::Host { model, sessions, vocab } => {
                let (model, sessions, vocab) = (model.clone(), sessions.clone(), *vocab);
                // The CPU executor blocks for the whole step: keep it off the async workers.
                tokio::task::spawn_blocking(move || {
                    let plan = sessions.lock().expect("sessions").plan(&rows, vocab)?;
                    let t0 = std::time::Instant::now();
                    let out = model.run(&plan.inputs)?;
                    let ms = t0.elapsed().as_secs_f64() * 1e3;
                    sessions.lock().expect("sessions").commit(&plan);
                    let ids = out.first().context("a step outputs token ids")?;
                    Ok((
                        ids.data.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as u32).collect(),
                        ms,
                    ))
                })
                .await?
            }
            Stepper::Tab(tm) => {
                let n = rows.len();
                let req = Request::Step { model: tm.name.clone(), rows };
                match tm.tab.call(req, vec![], RUN_TIMEOUT).await? {
                    (Reply::Stepped { tokens, device_ms }, _) if tokens.len() == n => Ok((tokens, device_ms)),
                    (other, _) => bail!("tab {} answered {other:?} to a Step of {n} rows", tm.tab.id()),
                }
            }
        }
    }

    /// Free `session`'s KV rows.
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
        }
    }
}
