//! The generation loop of one replica: sessions join and leave between steps, and every step
//! advances all of them in one dispatch (continuous batching; which rows go in a step is
//! `policy::step_batching`). Tokens stream to each caller as they are sampled; a caller that
//! drops its stream cancels its session, whose KV rows are freed at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use shared_proto::{ErrorKind, Sampling, StepRow};
use tokio::sync::mpsc;

use super::gate::Gate;
use super::stepper::Stepper;
use crate::TabError;
use crate::policy::recovery::Category;
use crate::policy::step_batching::{self, Pending};

/// What a caller asks for.
#[derive(Debug, Clone)]
pub struct GenParams {
    pub max_tokens: u32,
    pub sampling: Sampling,
    /// Token ids that end the generation (not streamed).
    pub stop_ids: Vec<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Finish {
    /// A stop id was sampled.
    Stop,
    /// `max_tokens` were generated.
    Length,
}

impl Finish {
    /// The name APIs use (OpenAI's `finish_reason`).
    pub fn name(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum GenEvent {
    Token(u32),
    Done {
        finish: Finish,
        prompt_tokens: usize,
        generated: usize,
        /// Prompt tokens whose KV rows came from the replica's prefix cache (not prefilled).
        cached: usize,
    },
    /// The session failed; nothing more follows.
    Failed(GenFailure),
}

/// Why a session failed: the category says whether another replica could help.
#[derive(Debug, Clone, PartialEq)]
pub struct GenFailure {
    pub category: Category,
    /// The tab's own error kind when it refused (e.g. `Capacity`: its KV cache is full).
    pub remote: Option<ErrorKind>,
    pub message: String,
}

impl GenFailure {
    fn bad_input(message: impl Into<String>) -> GenFailure {
        GenFailure { category: Category::BadInput, remote: None, message: message.into() }
    }

    fn from_error(e: &anyhow::Error, context: &str) -> GenFailure {
        GenFailure {
            category: TabError::category(e),
            remote: TabError::remote_kind(e),
            message: format!("{context}: {e:#}"),
        }
    }
}

impl std::fmt::Display for GenFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Limits of one step.
#[derive(Debug, Clone, Copy)]
pub struct StepLimits {
    /// Tokens per step (decode rows + prompt chunks).
    pub max_tokens: usize,
    /// Sessions per step.
    pub max_rows: usize,
}

impl Default for StepLimits {
    fn default() -> Self {
        StepLimits { max_tokens: 256, max_rows: 16 }
    }
}

struct Job {
    prompt: Vec<u32>,
    params: GenParams,
    tx: mpsc::UnboundedSender<GenEvent>,
}

struct Active {
    session: u64,
    prompt: Vec<u32>,
    fed: usize,
    /// Prompt tokens the prefix cache gave (`fed` started there).
    cached: usize,
    /// The last sampled token, fed in the next step.
    last: Option<u32>,
    generated: usize,
    params: GenParams,
    tx: mpsc::UnboundedSender<GenEvent>,
}

/// Counters of a decoder, for benchmarks and status.
#[derive(Debug, Default)]
pub struct DecoderStats {
    pub steps: AtomicU64,
    pub rows: AtomicU64,
    pub tokens_in: AtomicU64,
    pub step_us: AtomicU64,
}

pub struct Decoder {
    jobs: mpsc::UnboundedSender<Job>,
    pub stats: Arc<DecoderStats>,
    task: tokio::task::JoinHandle<()>,
}

impl Decoder {
    /// Step sessions on `stepper`; with a `gate`, each step first lets pending short requests go.
    pub fn start(stepper: Arc<Stepper>, limits: StepLimits, gate: Option<Arc<Gate>>) -> Decoder {
        let (jobs, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(DecoderStats::default());
        let task = tokio::spawn(run(stepper, limits, rx, stats.clone(), gate));
        Decoder { jobs, stats, task }
    }

    /// Start generating after `prompt`; events arrive on the returned stream. Dropping it cancels.
    pub fn generate(&self, prompt: Vec<u32>, params: GenParams) -> mpsc::UnboundedReceiver<GenEvent> {
        let (tx, rx) = mpsc::unbounded_channel();
        if prompt.is_empty() {
            let _ = tx.send(GenEvent::Failed(GenFailure::bad_input("an empty prompt: there is nothing to continue")));
        } else if let Err(mpsc::error::SendError(job)) = self.jobs.send(Job { prompt, params, tx }) {
            let _ = job.tx.send(GenEvent::Failed(GenFailure {
                category: Category::ModelError,
                remote: None,
                message: "the decoder has stopped".into(),
            }));
        }
        rx
    }

    /// Stop the loop; sessions still running get `Failed`.
    pub async fn stop(self) {
        drop(self.jobs);
        let _ = self.task.await;
    }
}

static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

async fn run(
    stepper: Arc<Stepper>,
    limits: StepLimits,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    stats: Arc<DecoderStats>,
    gate: Option<Arc<Gate>>,
) {
    let mut active: Vec<Active> = Vec::new();
    let mut open = true;
    loop {
        // Idle: wait for work. Busy: take whatever arrived since the last step, without waiting.
        if active.is_empty() {
            match jobs.recv().await {
                Some(job) => admit(&stepper, &mut active, job).await,
                None => return,
            }
        }
        while open {
            match jobs.try_recv() {
                Ok(job) => admit(&stepper, &mut active, job).await,
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => open = false,
            }
        }
        // Callers gone: cancel before spending a step on them.
        let (gone, kept): (Vec<Active>, Vec<Active>) = active.drain(..).partition(|a| a.tx.is_closed());
        active = kept;
        for a in gone {
            let _ = stepper.close(a.session).await;
        }
        if active.is_empty() {
            if !open {
                return;
            }
            continue;
        }
        let pending: Vec<Pending> = active.iter().map(|a| Pending { prompt_left: a.prompt.len() - a.fed }).collect();
        let plan = step_batching::plan(&pending, limits.max_tokens, limits.max_rows);
        let rows: Vec<StepRow> = plan
            .iter()
            .map(|p| {
                let a = &active[p.session];
                let tokens = if a.fed < a.prompt.len() {
                    a.prompt[a.fed..a.fed + p.tokens].to_vec()
                } else {
                    vec![a.last.expect("a decoding session has sampled")]
                };
                StepRow { session: a.session, tokens, sampling: a.params.sampling }
            })
            .collect();
        if let Some(g) = &gate {
            g.yield_to_pending().await;
        }
        let t0 = Instant::now();
        let result = stepper.step(rows).await;
        stats.steps.fetch_add(1, Ordering::Relaxed);
        stats.rows.fetch_add(plan.len() as u64, Ordering::Relaxed);
        stats.tokens_in.fetch_add(plan.iter().map(|p| p.tokens as u64).sum(), Ordering::Relaxed);
        stats.step_us.fetch_add(t0.elapsed().as_micros() as u64, Ordering::Relaxed);
        let tokens = match result {
            Ok((tokens, _)) => tokens,
            Err(e) => {
                // The replica failed: every session on it ends (their KV cache is in doubt).
                let failure = GenFailure::from_error(&e, &format!("step failed on {}", stepper.backend()));
                for a in active.drain(..) {
                    let _ = a.tx.send(GenEvent::Failed(failure.clone()));
                    let _ = stepper.close(a.session).await;
                }
                continue;
            }
        };
        let mut finished = Vec::new();
        for (p, &tok) in plan.iter().zip(&tokens) {
            let a = &mut active[p.session];
            if a.fed < a.prompt.len() {
                a.fed += p.tokens;
            }
            if !p.samples {
                continue;
            }
            let done = if a.params.stop_ids.contains(&tok) {
                Some(Finish::Stop)
            } else {
                a.generated += 1;
                a.last = Some(tok);
                let _ = a.tx.send(GenEvent::Token(tok));
                (a.generated >= a.params.max_tokens as usize).then_some(Finish::Length)
            };
            if let Some(finish) = done {
                let _ = a.tx.send(GenEvent::Done {
                    finish,
                    prompt_tokens: a.prompt.len(),
                    generated: a.generated,
                    cached: a.cached,
                });
                finished.push(p.session);
            }
        }
        finished.sort_unstable_by(|a, b| b.cmp(a));
        for i in finished {
            let a = active.swap_remove(i);
            let _ = stepper.close(a.session).await;
        }
    }
}

/// Open a session for `job` (KV for its prompt and every token it may generate) and add it.
async fn admit(stepper: &Stepper, active: &mut Vec<Active>, job: Job) {
    let session = NEXT_SESSION.fetch_add(1, Ordering::Relaxed);
    let capacity = job.prompt.len() as u64 + job.params.max_tokens as u64;
    let Ok(capacity) = u32::try_from(capacity) else {
        let _ =
            job.tx.send(GenEvent::Failed(GenFailure::bad_input(format!("{capacity} tokens of context is too many"))));
        return;
    };
    if job.params.max_tokens == 0 {
        let _ = job.tx.send(GenEvent::Done {
            finish: Finish::Length,
            prompt_tokens: job.prompt.len(),
            generated: 0,
            cached: 0,
        });
        return;
    }
    match stepper.open_reusing(session, capacity, &job.prompt).await {
        Ok((_, reused)) => active.push(Active {
            session,
            prompt: job.prompt,
            // The tab never reuses the last prompt token (its logits give the first sample).
            fed: reused as usize,
            cached: reused as usize,
            last: None,
            generated: 0,
            params: job.params,
            tx: job.tx,
        }),
        Err(e) => {
            let _ = job.tx.send(GenEvent::Failed(GenFailure::from_error(&e, "opening a session")));
        }
    }
}
