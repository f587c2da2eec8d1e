//! Sharding plans: which parts of a model each tab holds, and what that is predicted to give —
//! pure functions of the model's per-part costs, the tabs' measured speed and memory, and the
//! measured cost of a hop through the host.
//!
//! The prediction model (decode is memory-bound; every figure it uses is measured):
//! - A tab's step over `b` rows of the whole model takes `t(b) = t1 + (b − 1)·slope`, from its
//!   measured single-stream decode (`t1`) and its measured aggregate at `batch` rows.
//! - A stage holding a share `f` of the model's per-token weight reads takes `f·t(b)` on its tab.
//! - Every stage call is a round trip through the host: `hop_ms` each, per step.
//! - One stream: the stages run one after the other, so its token takes `Σ f_s·t(1) + S·hop`.
//!   Splitting a stream never makes it faster; it only buys memory per tab.
//! - Many streams, one step: `Σ f_s·t(B) + S·hop` (layer, component, attention-ffn). A pipeline
//!   splits the step's rows into `m` micro-batches following each other through the stages, so
//!   stages work at once: the step is bounded below by its slowest stage's `m` groups, and, on a
//!   shared machine, by all the stages' work divided by the parallelism the machine measured for
//!   two tabs working at once (`parallel`).
//! - Replicas: each of `R` tabs holds the whole model and takes `B/R` of the streams, at once,
//!   within the same measured parallelism.
//! - Two-sided splits (attention-ffn, component) put their heavier side on the faster tab.
//!   Attention-ffn pays `n_a` hops a token against layer ranges' `n_l` on the same tabs, so it
//!   wins only while `hop < (C_l − C_a) / (n_a − n_l)` (C: a stream's compute per token): never
//!   on equal tabs, where C_l = C_a; its plan's notes give the figure.

use serde::{Deserialize, Serialize};

/// What a stage of a sharded model computes (defined with the graphs that are split by it).
pub use model_graphs::Part;

/// Stages in model order as `(tab, parts)`, tabs numbered from 0 (two stages may share one).
pub type Layout = Vec<(usize, Vec<Part>)>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Contiguous layer ranges, sized by each tab's measured speed.
    Layer,
    /// Layer ranges with a step's sessions in micro-batches, so stages work at once.
    Pipeline,
    /// Every layer's attention on one tab and its FFN on another (two hops per layer).
    AttentionFfn,
    /// Embedding and head on one tab, the transformer body on another.
    Component,
    /// Every tab a whole copy (no sharding), the streams split between them.
    Replicas,
    /// The best predicted aggregate among the others that fit.
    Hybrid,
}

impl super::Named for Strategy {
    const ALL: &'static [Strategy] = &[
        Strategy::Layer,
        Strategy::Pipeline,
        Strategy::AttentionFfn,
        Strategy::Component,
        Strategy::Replicas,
        Strategy::Hybrid,
    ];
    fn name(self) -> &'static str {
        match self {
            Strategy::Layer => "layer",
            Strategy::Pipeline => "pipeline",
            Strategy::AttentionFfn => "attention-ffn",
            Strategy::Component => "component",
            Strategy::Replicas => "replicas",
            Strategy::Hybrid => "hybrid",
        }
    }
    fn help(self) -> &'static str {
        match self {
            Strategy::Layer => "contiguous layer ranges, sized by each tab's measured speed",
            Strategy::Pipeline => "layer ranges with a step's sessions in micro-batches, so stages work at once",
            Strategy::AttentionFfn => "every layer's attention on one tab and its FFN on another",
            Strategy::Component => "embedding and head on one tab, the transformer body on another",
            Strategy::Replicas => "every tab a whole copy, the streams split between them",
            Strategy::Hybrid => "the best predicted aggregate among the others that fit",
        }
    }
}

/// Bytes and work of one part.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PartCost {
    /// Weight bytes the part's tab holds.
    pub weight_bytes: u64,
    /// Weight bytes read per decoded token (the embedding reads one row of its table).
    pub read_bytes: u64,
    /// KV cache bytes per token of context.
    pub kv_bytes_per_token: u64,
}

/// A transformer's parts and their costs, as the model measures them from its real weights
/// (`family::SessionModel::part_costs`): the planner knows no model's anatomy.
#[derive(Debug, Clone, Serialize)]
pub struct ModelCosts {
    pub layers: u32,
    pub hidden: u32,
    /// The tied token-embedding table: held by the embedding and by the head.
    pub embed_table: u64,
    pub output_norm: u64,
    /// Per layer: (attention weight bytes, FFN weight bytes).
    pub per_layer: Vec<(u64, u64)>,
    /// KV bytes per token of one layer (keys and values, f32).
    pub kv_per_layer_token: u64,
}

impl ModelCosts {
    pub fn part(&self, p: Part) -> PartCost {
        let vocab_row = self.embed_table / self.embed_rows();
        match p {
            Part::Embed => PartCost { weight_bytes: self.embed_table, read_bytes: vocab_row, kv_bytes_per_token: 0 },
            Part::Head => PartCost {
                weight_bytes: self.embed_table + self.output_norm,
                read_bytes: self.embed_table + self.output_norm,
                kv_bytes_per_token: 0,
            },
            Part::Attention(l) => {
                let b = self.per_layer[l as usize].0;
                PartCost { weight_bytes: b, read_bytes: b, kv_bytes_per_token: self.kv_per_layer_token }
            }
            Part::Ffn(l) => {
                let b = self.per_layer[l as usize].1;
                PartCost { weight_bytes: b, read_bytes: b, kv_bytes_per_token: 0 }
            }
        }
    }

    /// Rows of the embedding table, estimated from its width (a row's size only weighs the
    /// embedding's tiny per-token read).
    fn embed_rows(&self) -> u64 {
        // Quantized or not, a row is about `hidden` weights of ≥ 1 byte: an upper bound on rows
        // keeps the per-token read a lower bound, and it is negligible either way.
        (self.embed_table / self.hidden.max(1) as u64).max(1)
    }

    /// Weight bytes read per token by the whole model.
    pub fn read_bytes(&self) -> u64 {
        Part::whole_model(self.layers).iter().map(|&p| self.part(p).read_bytes).sum()
    }

    /// Weight bytes of the whole model (the tied table once).
    pub fn weight_bytes(&self) -> u64 {
        self.embed_table + self.output_norm + self.per_layer.iter().map(|(a, f)| a + f).sum::<u64>()
    }
}

/// A tab's measured speed and memory room, for the model being planned.
#[derive(Debug, Clone, Serialize)]
pub struct TabProfile {
    pub backend: String,
    /// Single-stream decode of the whole model, measured.
    pub decode_tok_s: f64,
    /// Aggregate decode of `batch` streams in shared steps, measured.
    pub batch_tok_s: f64,
    pub batch: usize,
    /// Bytes this tab may hold for the model (weights and KV cache).
    pub mem_budget: u64,
}

impl TabProfile {
    /// Step time of the whole model over `b` rows, ms (affine between the two measurements).
    fn step_ms(&self, b: f64) -> f64 {
        let t1 = 1e3 / self.decode_tok_s;
        let tb = 1e3 * self.batch as f64 / self.batch_tok_s;
        let slope = if self.batch > 1 { ((tb - t1) / (self.batch as f64 - 1.0)).max(0.0) } else { 0.0 };
        t1 + (b - 1.0).max(0.0) * slope
    }
}

/// The machine the tabs run on.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Machine {
    /// A host ↔ tab round trip of a step's frames, measured (ms).
    pub hop_ms: f64,
    /// Work two tabs get done at once relative to one (measured: 1.0 = they only take turns; 2.0 =
    /// fully parallel). Tabs on one machine share its cores.
    pub parallel: f64,
    /// KV tokens each tab must hold room for (sessions × context).
    pub kv_tokens: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Stage {
    /// Index into the tabs the plan was made for.
    pub tab: usize,
    pub parts: Vec<Part>,
    pub weight_bytes: u64,
    pub kv_bytes_per_token: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Prediction {
    pub stream_tok_s: f64,
    /// With the plan's `streams` concurrent streams.
    pub aggregate_tok_s: f64,
    /// Of a single stream's token time, the part spent in hops.
    pub hop_share: f64,
    /// Per tab used: weights plus its KV room.
    pub per_tab_bytes: Vec<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub strategy: Strategy,
    /// Stages in model order (for `Replicas`: one whole-model stage per tab).
    pub stages: Vec<Stage>,
    pub micro_batches: usize,
    pub streams: usize,
    pub predicted: Prediction,
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    #[error("no tabs to plan for")]
    NoTabs,
    #[error("{shards} shards need {shards} tabs, {tabs} given")]
    TooFewTabs { shards: usize, tabs: usize },
    #[error("{0} shards: a plan needs at least 1")]
    NoShards(usize),
    #[error("{shards} shards of a {layers}-layer model: at most one layer range per layer")]
    TooManyShards { shards: usize, layers: u32 },
    #[error("{strategy:?} needs exactly {need} tabs, {got} given")]
    WrongShardCount { strategy: Strategy, need: usize, got: usize },
    #[error("tab {tab} ({backend}) would hold {need} bytes, over its budget of {budget}")]
    OverBudget { tab: usize, backend: String, need: u64, budget: u64 },
    #[error("hybrid chooses by the tabs' measured speed: plan it with `tabpool shard plan`")]
    NeedsMeasurements,
    #[error("no plan fits the tabs' memory budgets")]
    NothingFits,
    #[error("weight {0}: not a llama tensor name")]
    Weight(String),
}

/// Contiguous layer ranges over `tabs` (in order), the embedding with the first and the head
/// with the last, each stage's per-token weight reads — the head's included: SmolLM2's tied
/// 49 152-row table weighs as much as 14 of its layers — sized to `shares[i]` of the whole
/// (a tab's share of the speed). Every stage keeps at least one layer.
pub fn layer_ranges(costs: &ModelCosts, shares: &[f64]) -> Vec<Vec<Part>> {
    let total = costs.read_bytes() as f64;
    let norm: f64 = shares.iter().sum();
    let mut out: Vec<Vec<Part>> = vec![Vec::new(); shares.len()];
    let first = costs.part(Part::Embed).read_bytes as f64;
    let (mut stage, mut done, mut goal) = (0, first, total * shares[0] / norm);
    for l in 0..costs.layers {
        let bytes = {
            let (a, f) = costs.per_layer[l as usize];
            (a + f) as f64
        };
        let left = costs.layers - l;
        let stages_left = shares.len() - stage;
        // Move on when this stage reached its share (by the layer's midpoint), keeping at least
        // one layer for every stage still to come.
        if stage + 1 < shares.len()
            && !out[stage].is_empty()
            && (done + bytes / 2.0 > goal || (left as usize) < stages_left)
        {
            stage += 1;
            goal += total * shares[stage] / norm;
        }
        out[stage].extend([Part::Attention(l), Part::Ffn(l)]);
        done += bytes;
    }
    out[0].insert(0, Part::Embed);
    out.last_mut().expect("a stage").push(Part::Head);
    out
}

/// Component: the embedding and head on tab 0, the body on tab 1 (`layout` puts the heavier
/// side on the faster tab).
pub fn components(layers: u32) -> Layout {
    let body = (0..layers).flat_map(|l| [Part::Attention(l), Part::Ffn(l)]).collect();
    vec![(0, vec![Part::Embed]), (1, body), (0, vec![Part::Head])]
}

/// Attention-FFN: every layer's attention on tab 0 (with the embedding), its FFN on tab 1 (with
/// the head; `layout` puts the heavier side on the faster tab).
pub fn attention_ffn(layers: u32) -> Layout {
    let mut out = Vec::new();
    for l in 0..layers {
        let mut attn = vec![Part::Attention(l)];
        if l == 0 {
            attn.insert(0, Part::Embed);
        }
        let mut ffn = vec![Part::Ffn(l)];
        if l + 1 == layers {
            ffn.push(Part::Head);
        }
        out.extend([(0, attn), (1, ffn)]);
    }
    out
}

/// A two-tab layout with its heavier side (per-token weight reads) on the faster tab: a token
/// takes both sides' times one after the other, least with the bulk on the faster one. Equal
/// speeds, or none, keep the layout's own order.
fn heavier_on_faster(costs: &ModelCosts, list: Layout, speed: Option<&[f64]>) -> Layout {
    let Some(&[s0, s1]) = speed else { return list };
    let reads = |tab: usize| -> u64 {
        list.iter().filter(|(t, _)| *t == tab).flat_map(|(_, p)| p).map(|&p| costs.part(p).read_bytes).sum()
    };
    let heavy = if reads(0) > reads(1) { 0 } else { 1 };
    let speeds = [s0, s1];
    if speeds[heavy] >= speeds[1 - heavy] {
        return list;
    }
    list.into_iter().map(|(t, p)| (1 - t, p)).collect()
}

fn stage(costs: &ModelCosts, tab: usize, parts: Vec<Part>) -> Stage {
    Stage {
        tab,
        weight_bytes: costs.stage_weight_bytes(&parts),
        kv_bytes_per_token: parts.iter().map(|&p| costs.part(p).kv_bytes_per_token).sum(),
        parts,
    }
}

impl ModelCosts {
    /// Weight bytes a stage of `parts` holds (a stage with both ends holds the tied table once).
    pub fn stage_weight_bytes(&self, parts: &[Part]) -> u64 {
        let shared = if parts.contains(&Part::Embed) && parts.contains(&Part::Head) { self.embed_table } else { 0 };
        parts.iter().map(|&p| self.part(p).weight_bytes).sum::<u64>() - shared
    }
}

/// Plan `strategy` for `shards` of `tabs` (the first `shards` are used; `Replicas` and `Hybrid`
/// may use every tab) and `streams` concurrent streams.
pub fn plan(
    strategy: Strategy,
    costs: &ModelCosts,
    tabs: &[TabProfile],
    machine: &Machine,
    shards: usize,
    streams: usize,
) -> Result<Plan, PlanError> {
    if tabs.is_empty() {
        return Err(PlanError::NoTabs);
    }
    if shards == 0 {
        return Err(PlanError::NoShards(shards));
    }
    let streams = streams.max(1);
    if strategy == Strategy::Hybrid {
        return hybrid(costs, tabs, machine, shards, streams);
    }
    if tabs.len() < shards && strategy != Strategy::Replicas {
        return Err(PlanError::TooFewTabs { shards, tabs: tabs.len() });
    }
    let shares: Vec<f64> = tabs.iter().map(|t| t.decode_tok_s).collect();
    let shares = if strategy == Strategy::Replicas { &shares[..] } else { &shares[..shards] };
    let (list, micro) = layout(strategy, costs, Some(shares), shards)?;
    let stages = list.into_iter().map(|(t, p)| stage(costs, t, p)).collect();
    let mut p = predict(strategy, costs, tabs, machine, stages, micro, streams)?;
    if strategy == Strategy::AttentionFfn {
        let layer = plan(Strategy::Layer, costs, tabs, machine, shards, streams).ok();
        p.notes.push(attention_ffn_note(&p, layer.as_ref(), machine.hop_ms));
    }
    Ok(p)
}

/// When attention-ffn pays, from the one-stream predictions: against layer ranges on the same
/// tabs it pays `n_a` hops a token instead of `n_l`, so it wins only if the compute it saves
/// (`C_l − C_a`: the heavier FFN side on the faster tab, where speed-sized layer ranges balance
/// the tabs instead) exceeds them: `hop < (C_l − C_a) / (n_a − n_l)`.
fn attention_ffn_note(af: &Plan, layer: Option<&Plan>, hop_ms: f64) -> String {
    let n_a = af.stages.len();
    let Some(layer) = layer else {
        return format!("{n_a} hops per token; layer ranges do not fit these tabs to compare with");
    };
    let n_l = layer.stages.len();
    let compute = |p: &Plan| 1e3 / p.predicted.stream_tok_s * (1.0 - p.predicted.hop_share);
    let saved = compute(layer) - compute(af);
    // Equal tabs give the same compute both ways, up to rounding.
    if saved <= compute(layer) * 1e-9 {
        return format!(
            "{n_a} hops per token against {n_l} for layer ranges on the same tabs, for no less compute: \
             never worth it on tabs this alike — it pays only on tabs of different speeds, with hops \
             cheaper than the compute it saves"
        );
    }
    let even = saved / (n_a - n_l) as f64;
    format!(
        "{n_a} hops per token against {n_l} for layer ranges on the same tabs: it saves {saved:.2} ms of compute \
         a token (its heavier FFN side on the faster tab), so it beats them only while a hop costs under {even:.3} ms — measured {hop_ms:.3} ms: {}",
        if hop_ms < even { "it pays here" } else { "it does not pay here" }
    )
}

/// Where each part goes: stages `(tab, parts)` in model order and the micro-batches of a step,
/// for `shards` tabs — layer ranges sized by each tab's relative `speed` when given, else
/// equally — by per-token weight reads. `Hybrid` has no layout of its own: it needs measured speeds (`plan`).
pub fn layout(
    strategy: Strategy,
    costs: &ModelCosts,
    speed: Option<&[f64]>,
    shards: usize,
) -> Result<(Layout, usize), PlanError> {
    if shards == 0 {
        return Err(PlanError::NoShards(shards));
    }
    let layers = costs.layers;
    Ok(match strategy {
        Strategy::Hybrid => return Err(PlanError::NeedsMeasurements),
        Strategy::Replicas => {
            let n = speed.map_or(shards, |s| s.len());
            ((0..n).map(|t| (t, Part::whole_model(layers))).collect(), 1)
        }
        Strategy::Layer | Strategy::Pipeline => {
            if shards > layers as usize {
                return Err(PlanError::TooManyShards { shards, layers });
            }
            let ranges = match speed {
                Some(shares) => layer_ranges(costs, shares),
                None => layer_ranges(costs, &vec![1.0; shards]),
            };
            let micro = if strategy == Strategy::Pipeline { shards } else { 1 };
            (ranges.into_iter().enumerate().collect(), micro)
        }
        Strategy::Component | Strategy::AttentionFfn => {
            if shards != 2 {
                return Err(PlanError::WrongShardCount { strategy, need: 2, got: shards });
            }
            let list = if strategy == Strategy::Component { components(layers) } else { attention_ffn(layers) };
            (heavier_on_faster(costs, list, speed), 1)
        }
    })
}

impl Strategy {
    /// The name the CLI and tables use.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Layer => "layer",
            Strategy::Pipeline => "pipeline",
            Strategy::AttentionFfn => "attention-ffn",
            Strategy::Component => "component",
            Strategy::Replicas => "replicas",
            Strategy::Hybrid => "hybrid",
        }
    }
}

fn predict(
    strategy: Strategy,
    costs: &ModelCosts,
    tabs: &[TabProfile],
    machine: &Machine,
    stages: Vec<Stage>,
    micro: usize,
    streams: usize,
) -> Result<Plan, PlanError> {
    let used = stages.iter().map(|s| s.tab).max().map_or(0, |m| m + 1);
    let mut per_tab = vec![0u64; used];
    for s in &stages {
        per_tab[s.tab] += s.weight_bytes + s.kv_bytes_per_token * machine.kv_tokens;
    }
    // Each stage is its own model in its tab: two stages of one tab both holding the tied table
    // (component) hold two copies.
    for (t, &need) in per_tab.iter().enumerate() {
        if need > tabs[t].mem_budget {
            return Err(PlanError::OverBudget {
                tab: t,
                backend: tabs[t].backend.clone(),
                need,
                budget: tabs[t].mem_budget,
            });
        }
    }
    let whole = costs.read_bytes() as f64;
    let share = |s: &Stage| s.parts.iter().map(|&p| costs.part(p).read_bytes).sum::<u64>() as f64 / whole;
    let hop = machine.hop_ms;
    let b = streams as f64;
    let mut notes = Vec::new();
    let (stream_ms, step_ms, hops) = if strategy == Strategy::Replicas {
        let r = stages.len() as f64;
        let per = (b / r).ceil();
        let slowest = stages.iter().map(|s| tabs[s.tab].step_ms(per)).fold(0.0, f64::max);
        // R replicas at once on a machine that runs `parallel` tabs' worth of work at a time.
        let step = slowest * (r / machine.parallel.max(1.0)).max(1.0) + hop;
        let single = stages.iter().map(|s| tabs[s.tab].step_ms(1.0)).fold(f64::INFINITY, f64::min) + hop;
        (single, step, 1.0)
    } else {
        let n = stages.len() as f64;
        let single: f64 = stages.iter().map(|s| share(s) * tabs[s.tab].step_ms(1.0)).sum::<f64>() + n * hop;
        let step = if micro > 1 {
            let m = micro as f64;
            let group = (b / m).ceil();
            let work: Vec<f64> = stages.iter().map(|s| share(s) * tabs[s.tab].step_ms(group)).collect();
            let slowest = work.iter().cloned().fold(0.0, f64::max);
            let total: f64 = work.iter().sum();
            // The groups fill the pipeline (one stage after another for the first), then the
            // slowest stage paces; all the stages' work can go no faster than the machine runs
            // tabs at once.
            let fill = total + (m - 1.0) * slowest;
            fill.max(m * total / machine.parallel.max(1.0)) + n * hop
        } else {
            stages.iter().map(|s| share(s) * tabs[s.tab].step_ms(b)).sum::<f64>() + n * hop
        };
        (single, step, n)
    };
    // The whole model on the fastest tab the plan uses: what a split stream is up against.
    let one_tab = stages.iter().map(|s| tabs[s.tab].step_ms(1.0)).fold(f64::INFINITY, f64::min) + hop;
    if stages.len() > 1 && strategy != Strategy::Replicas && stream_ms > one_tab {
        notes.push(format!(
            "one stream: {:.1} tok/s here vs {:.1} with the whole model on its fastest tab — splitting a stream buys memory per tab, not speed",
            1e3 / stream_ms,
            1e3 / one_tab
        ));
    }
    Ok(Plan {
        strategy,
        micro_batches: micro,
        streams,
        predicted: Prediction {
            stream_tok_s: 1e3 / stream_ms,
            aggregate_tok_s: 1e3 * b / step_ms,
            hop_share: hops * hop / stream_ms,
            per_tab_bytes: per_tab,
        },
        stages,
        notes,
    })
}

/// What one tab of a backend measured, the planner's inputs come from.
#[derive(Debug, Clone)]
pub struct Measured {
    pub backend: String,
    /// One stream's decode and the share of its token time outside the tab's run.
    pub decode_tok_s: f64,
    pub hop_share: f64,
    /// `batch` streams in shared steps on the tab.
    pub batch_tok_s: f64,
    pub batch: usize,
    /// The same `batch` streams split over two whole copies in two tabs at once.
    pub two_tabs_tok_s: f64,
}

impl Measured {
    /// The tab's profile (room unbounded: a tab's memory limit is not known without filling
    /// it) and the machine: a hop is the time outside the tab per token, and the parallelism is
    /// read back from the two-tab run.
    pub fn inputs(&self, kv_tokens: u64) -> (TabProfile, Machine) {
        let profile = TabProfile {
            backend: self.backend.clone(),
            decode_tok_s: self.decode_tok_s,
            batch_tok_s: self.batch_tok_s,
            batch: self.batch,
            mem_budget: u64::MAX,
        };
        let hop_ms = self.hop_share * 1e3 / self.decode_tok_s;
        let parallel = parallel_from(&profile, 2, self.batch, self.two_tabs_tok_s, hop_ms);
        (profile, Machine { hop_ms, parallel, kv_tokens })
    }
}

/// The machine's parallelism (`Machine::parallel`) from a measurement: `replicas` whole-model
/// tabs of `tab` together decoding `streams` streams at `measured_tok_s`, as `predict` models
/// replicas (clamped to 1 ..= replicas).
pub fn parallel_from(tab: &TabProfile, replicas: usize, streams: usize, measured_tok_s: f64, hop_ms: f64) -> f64 {
    let r = replicas.max(1) as f64;
    let per = (streams.max(1) as f64 / r).ceil();
    let step = 1e3 * streams.max(1) as f64 / measured_tok_s - hop_ms;
    (r * tab.step_ms(per) / step).clamp(1.0, r)
}

/// Every strategy that fits, ranked by predicted aggregate (ties: fewer hops); the best, with
/// why in its notes.
fn hybrid(
    costs: &ModelCosts,
    tabs: &[TabProfile],
    machine: &Machine,
    shards: usize,
    streams: usize,
) -> Result<Plan, PlanError> {
    let mut candidates = Vec::new();
    for s in [Strategy::Replicas, Strategy::Layer, Strategy::Pipeline, Strategy::Component, Strategy::AttentionFfn] {
        if let Ok(p) = plan(s, costs, tabs, machine, shards, streams) {
            candidates.push(p);
        }
    }
    let hops = |p: &Plan| if p.strategy == Strategy::Replicas { 1 } else { p.stages.len() };
    candidates.sort_by(|a, b| {
        b.predicted.aggregate_tok_s.total_cmp(&a.predicted.aggregate_tok_s).then(hops(a).cmp(&hops(b)))
    });
    let mut best = candidates.first().cloned().ok_or(PlanError::NothingFits)?;
    let others: Vec<String> =
        candidates[1..].iter().map(|p| format!("{:?} {:.1}", p.strategy, p.predicted.aggregate_tok_s)).collect();
    best.notes.insert(
        0,
        format!(
            "hybrid chose {:?}: {:.1} tok/s predicted for {streams} streams (others: {})",
            best.strategy,
            best.predicted.aggregate_tok_s,
            if others.is_empty() { "none fit".into() } else { others.join(", ") }
        ),
    );
    best.strategy = Strategy::Hybrid;
    Ok(best)
}

/// "embed + layers 0–14", "attn 3", "ffn 3 + head": a stage's parts, runs of whole layers joined.
pub fn describe(parts: &[Part]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < parts.len() {
        match parts[i] {
            Part::Embed => out.push("embed".into()),
            Part::Head => out.push("head".into()),
            Part::Attention(a) if parts.get(i + 1) == Some(&Part::Ffn(a)) => {
                let mut b = a;
                while parts.get(i + 2) == Some(&Part::Attention(b + 1)) && parts.get(i + 3) == Some(&Part::Ffn(b + 1)) {
                    b += 1;
                    i += 2;
                }
                i += 1;
                out.push(if a == b { format!("layer {a}") } else { format!("layers {a}–{b}") });
            }
            Part::Attention(l) => out.push(format!("attn {l}")),
            Part::Ffn(l) => out.push(format!("ffn {l}")),
        }
        i += 1;
    }
    out.join(" + ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SmolLM2-135M's shape with its real byte counts (Q4_1 matrices, Q8_0 table, f32 norms;
    /// `models::smollm2::costs` derives the same from the GGUF's weight list).
    fn smollm2() -> ModelCosts {
        let q4 = |n: u64| n / 32 * 20;
        let attn = 576 * 4 + 2 * q4(576 * 576) + 2 * q4(192 * 576);
        let ffn = 576 * 4 + 3 * q4(1536 * 576);
        ModelCosts {
            layers: 30,
            hidden: 576,
            embed_table: 49152 * 576 / 32 * 34,
            output_norm: 576 * 4,
            per_layer: vec![(attn, ffn); 30],
            kv_per_layer_token: 2 * 4 * 192,
        }
    }

    /// Measured on this VM (bench shard, 1 wasm-cpu tab): 42 tok/s alone, 59 with 8 streams.
    fn tab(decode: f64) -> TabProfile {
        TabProfile {
            backend: "wasm-cpu".into(),
            decode_tok_s: decode,
            batch_tok_s: decode * 1.41,
            batch: 8,
            mem_budget: 1 << 30,
        }
    }

    fn machine() -> Machine {
        Machine { hop_ms: 0.5, parallel: 1.3, kv_tokens: 4096 }
    }

    #[test]
    fn part_costs_come_from_the_model_costs() {
        let c = smollm2();
        let layer = c.per_layer[7].0 + c.per_layer[7].1;
        assert_eq!(c.part(Part::Attention(7)).weight_bytes + c.part(Part::Ffn(7)).weight_bytes, layer);
        assert_eq!(c.part(Part::Head).read_bytes, c.embed_table + 576 * 4);
        assert!(c.part(Part::Embed).read_bytes < 1000, "the embedding reads one row per token");
        assert_eq!(c.part(Part::Attention(0)).kv_bytes_per_token, 2 * 4 * 192);
    }

    #[test]
    fn layer_ranges_follow_the_tabs_speed_and_cover_the_model_once() {
        let c = smollm2();
        let layer = c.per_layer[0].0 + c.per_layer[0].1;
        // Shares the head fits in (a last stage smaller than the head alone cannot be met).
        for shares in [vec![1.0, 1.0], vec![1.0, 1.0, 1.0], vec![1.0, 3.0], vec![3.0, 2.0]] {
            let r = layer_ranges(&c, &shares);
            let all: Vec<Part> = r.iter().flatten().copied().collect();
            assert_eq!(all, Part::whole_model(30), "{shares:?}");
            let norm: f64 = shares.iter().sum();
            for (parts, s) in r.iter().zip(&shares) {
                let reads: u64 = parts.iter().map(|&p| c.part(p).read_bytes).sum();
                let goal = c.read_bytes() as f64 * s / norm;
                assert!((reads as f64 - goal).abs() <= layer as f64, "{shares:?}: {reads} vs {goal:.0}");
            }
        }
        // Equal tabs: the last stage, holding the head, gets fewer layers.
        let r = layer_ranges(&c, &[1.0, 1.0]);
        let layers = |p: &[Part]| p.iter().filter(|p| matches!(p, Part::Ffn(_))).count();
        assert!(layers(&r[1]) < layers(&r[0]), "{} vs {}", layers(&r[0]), layers(&r[1]));
        // At least one layer each, however slow a tab.
        let r = layer_ranges(&c, &[1.0, 1000.0]);
        assert!(layers(&r[0]) >= 1 && layers(&r[1]) >= 1);
    }

    #[test]
    fn each_strategy_places_every_part_and_counts_its_hops() {
        let c = smollm2();
        let tabs = [tab(42.0), tab(42.0), tab(42.0)];
        for (s, shards, stages, tabs_used) in [
            (Strategy::Layer, 2, 2, 2),
            (Strategy::Layer, 3, 3, 3),
            (Strategy::Pipeline, 3, 3, 3),
            (Strategy::Component, 2, 3, 2),
            (Strategy::AttentionFfn, 2, 60, 2),
        ] {
            let p = plan(s, &c, &tabs, &machine(), shards, 8).unwrap();
            assert_eq!(p.stages.len(), stages, "{s:?}");
            assert_eq!(p.predicted.per_tab_bytes.len(), tabs_used, "{s:?}");
            let parts: Vec<Part> = p.stages.iter().flat_map(|s| s.parts.clone()).collect();
            assert_eq!(parts, Part::whole_model(30), "{s:?}");
            // Every weight is held; the tied table twice when the ends are on different stages.
            let held: u64 = p.stages.iter().map(|s| s.weight_bytes).sum();
            assert_eq!(held, c.weight_bytes() + c.embed_table, "{s:?}");
            assert!((p.predicted.hop_share - stages as f64 * 0.5 / (1e3 / p.predicted.stream_tok_s)).abs() < 1e-9);
        }
    }

    #[test]
    fn a_whole_copy_holds_the_tied_table_once() {
        let c = smollm2();
        let p = plan(Strategy::Replicas, &c, &[tab(42.0), tab(42.0)], &machine(), 1, 8).unwrap();
        assert!(p.stages.iter().all(|s| s.weight_bytes == c.weight_bytes()));
        assert_eq!(p.predicted.per_tab_bytes, vec![c.weight_bytes() + 4096 * 30 * 2 * 4 * 192; 2]);
    }

    #[test]
    fn a_split_stream_is_never_faster_than_one_tab_and_says_so() {
        let c = smollm2();
        let tabs = [tab(42.0), tab(42.0), tab(42.0)];
        let one = plan(Strategy::Replicas, &c, &tabs[..1], &machine(), 1, 1).unwrap();
        for s in [Strategy::Layer, Strategy::Pipeline] {
            let p = plan(s, &c, &tabs, &machine(), 3, 1).unwrap();
            assert!(p.predicted.stream_tok_s < one.predicted.stream_tok_s);
            assert!(p.notes.iter().any(|n| n.contains("buys memory")), "{:?}", p.notes);
        }
        // Attention-FFN pays 60 hops: slower than two layer ranges on equal tabs.
        let af = plan(Strategy::AttentionFfn, &c, &tabs, &machine(), 2, 1).unwrap();
        let layer = plan(Strategy::Layer, &c, &tabs, &machine(), 2, 1).unwrap();
        assert!(af.predicted.stream_tok_s < layer.predicted.stream_tok_s);
        assert!(af.notes.iter().any(|n| n.contains("60 hops") && n.contains("never worth it")), "{:?}", af.notes);
        // Measured against the fastest tab, not the first: 42 + 84 tok/s tabs split one stream
        // faster than the first tab alone, slower than the second.
        let p = plan(Strategy::Layer, &c, &[tab(42.0), tab(84.0)], &machine(), 2, 1).unwrap();
        let fast = plan(Strategy::Replicas, &c, &[tab(84.0)], &machine(), 1, 1).unwrap();
        assert!(p.predicted.stream_tok_s > 42.0 && p.predicted.stream_tok_s < fast.predicted.stream_tok_s);
        let against = format!("vs {:.1} with the whole model on its fastest tab", fast.predicted.stream_tok_s);
        assert!(p.notes.iter().any(|n| n.contains(&against)), "{:?}", p.notes);
    }

    /// Per-token weight reads of a stage.
    fn reads(c: &ModelCosts, s: &Stage) -> f64 {
        s.parts.iter().map(|&p| c.part(p).read_bytes).sum::<u64>() as f64
    }

    #[test]
    fn unequal_tabs_get_layer_ranges_they_take_equally_long_over() {
        let c = smollm2();
        let (whole, layer) = (c.read_bytes() as f64, (c.per_layer[0].0 + c.per_layer[0].1) as f64);
        // Speeds whose last tab can hold the head (its share is over the head's reads).
        for speeds in [vec![84.0, 42.0], vec![42.0, 84.0], vec![42.0, 42.0, 84.0], vec![30.0, 60.0, 90.0]] {
            let tabs: Vec<TabProfile> = speeds.iter().map(|&s| tab(s)).collect();
            // Each stage's share of a token on its tab, were the split exact: 1 / Σ speeds.
            let even_ms = 1e3 / speeds.iter().sum::<f64>();
            for s in [Strategy::Layer, Strategy::Pipeline] {
                let p = plan(s, &c, &tabs, &machine(), speeds.len(), 8).unwrap();
                assert_eq!(p.stages.iter().map(|st| st.tab).collect::<Vec<_>>(), (0..speeds.len()).collect::<Vec<_>>());
                for st in &p.stages {
                    let t = tabs[st.tab].step_ms(1.0);
                    let ms = reads(&c, st) / whole * t;
                    assert!(
                        (ms - even_ms).abs() <= layer / whole * t,
                        "{s:?} {speeds:?}: tab {} {ms:.2} ms vs {even_ms:.2}",
                        st.tab
                    );
                }
            }
        }
        // Twice as fast, about twice the reads.
        let p = plan(Strategy::Layer, &c, &[tab(84.0), tab(42.0)], &machine(), 2, 1).unwrap();
        let ratio = reads(&c, &p.stages[0]) / reads(&c, &p.stages[1]);
        assert!((1.7..2.3).contains(&ratio), "{ratio}");
    }

    #[test]
    fn a_two_sided_split_puts_its_heavier_side_on_the_faster_tab() {
        let c = smollm2();
        // FFN + head outweigh the attention side; the body outweighs embedding + head.
        for (s, heavy) in [(Strategy::AttentionFfn, Part::Ffn(0)), (Strategy::Component, Part::Attention(0))] {
            for (speeds, fast) in [([42.0, 84.0], 1), ([84.0, 42.0], 0)] {
                let tabs = speeds.map(tab);
                let p = plan(s, &c, &tabs, &machine(), 2, 8).unwrap();
                let on = p.stages.iter().find(|st| st.parts.contains(&heavy)).unwrap().tab;
                assert_eq!(on, fast, "{s:?} {speeds:?}");
                let tab_reads = |t| p.stages.iter().filter(|st| st.tab == t).map(|st| reads(&c, st)).sum::<f64>();
                assert!(tab_reads(fast) > tab_reads(1 - fast), "{s:?} {speeds:?}");
                // The same stages on the other tabs are predicted slower.
                let swapped = p.stages.iter().map(|st| stage(&c, 1 - st.tab, st.parts.clone())).collect();
                let q = predict(s, &c, &tabs, &machine(), swapped, 1, 8).unwrap();
                assert!(q.predicted.stream_tok_s < p.predicted.stream_tok_s, "{s:?} {speeds:?}");
                assert!(q.predicted.aggregate_tok_s < p.predicted.aggregate_tok_s, "{s:?} {speeds:?}");
            }
        }
        // Without speeds (generate's layouts) the order is the layout's own.
        assert_eq!(layout(Strategy::AttentionFfn, &c, None, 2).unwrap().0, attention_ffn(30));
        assert_eq!(layout(Strategy::Component, &c, Some(&[42.0, 42.0]), 2).unwrap().0, components(30));
    }

    #[test]
    fn attention_ffn_pays_only_on_unequal_tabs_with_cheap_hops_and_says_which() {
        let c = smollm2();
        let verdict = |p: &Plan| p.notes.iter().find(|n| n.contains("hops per token")).cloned().unwrap();
        let tabs = [tab(84.0), tab(42.0)];
        for (hop_ms, pays) in [(0.005, true), (0.5, false)] {
            let m = Machine { hop_ms, ..machine() };
            let af = plan(Strategy::AttentionFfn, &c, &tabs, &m, 2, 1).unwrap();
            let layer = plan(Strategy::Layer, &c, &tabs, &m, 2, 1).unwrap();
            let (a, l) = (af.predicted.stream_tok_s, layer.predicted.stream_tok_s);
            assert_eq!(a > l, pays, "hop {hop_ms} ms: attention-ffn {a:.2} vs layer {l:.2} tok/s");
            let v = verdict(&af);
            assert!(v.contains(if pays { "it pays here" } else { "it does not pay here" }), "{v}");
        }
    }

    #[test]
    fn a_pipeline_lets_stages_work_at_once() {
        let c = smollm2();
        let tabs = [tab(42.0), tab(42.0)];
        let parallel = Machine { parallel: 2.0, ..machine() };
        let layer = plan(Strategy::Layer, &c, &tabs, &parallel, 2, 8).unwrap();
        let pipe = plan(Strategy::Pipeline, &c, &tabs, &parallel, 2, 8).unwrap();
        assert!(pipe.predicted.aggregate_tok_s > layer.predicted.aggregate_tok_s);
        // On a machine that runs one tab at a time there is nothing to overlap.
        let serial = Machine { parallel: 1.0, ..machine() };
        let pipe1 = plan(Strategy::Pipeline, &c, &tabs, &serial, 2, 8).unwrap();
        assert!(pipe1.predicted.aggregate_tok_s < pipe.predicted.aggregate_tok_s);
    }

    #[test]
    fn hybrid_prefers_replicas_when_they_fit_and_shards_when_memory_forces_it() {
        let c = smollm2();
        let tabs = [tab(42.0), tab(42.0)];
        let p = plan(Strategy::Hybrid, &c, &tabs, &machine(), 2, 16).unwrap();
        assert_eq!(p.strategy, Strategy::Hybrid);
        assert!(p.notes[0].contains("hybrid chose Replicas"), "{:?}", p.notes);
        // Tabs that cannot hold the whole model: replicas do not fit, a split does.
        let small: Vec<TabProfile> =
            tabs.iter().map(|t| TabProfile { mem_budget: c.weight_bytes() * 3 / 4, ..t.clone() }).collect();
        let m = Machine { kv_tokens: 0, ..machine() };
        let p = plan(Strategy::Hybrid, &c, &small, &m, 2, 16).unwrap();
        assert!(!p.notes[0].contains("chose Replicas"), "{:?}", p.notes);
        assert!(p.predicted.per_tab_bytes.iter().all(|&b| b <= c.weight_bytes() * 3 / 4));
        let e = plan(Strategy::Replicas, &c, &small, &m, 2, 16).unwrap_err();
        assert!(matches!(e, PlanError::OverBudget { .. }), "{e}");
    }

    #[test]
    fn parallelism_read_back_from_a_replicas_measurement_predicts_it() {
        let c = smollm2();
        let t = tab(42.0);
        for parallel in [1.0, 1.3, 2.0] {
            let m = Machine { parallel, ..machine() };
            let p = plan(Strategy::Replicas, &c, &[t.clone(), t.clone()], &m, 2, 8).unwrap();
            let back = parallel_from(&t, 2, 8, p.predicted.aggregate_tok_s, m.hop_ms);
            assert!((back - parallel).abs() < 1e-9, "{parallel} → {back}");
        }
    }

    #[test]
    fn bad_requests_are_refused() {
        let c = smollm2();
        let tabs = [tab(42.0), tab(42.0)];
        assert_eq!(plan(Strategy::Layer, &c, &[], &machine(), 1, 1).unwrap_err(), PlanError::NoTabs);
        assert_eq!(plan(Strategy::Layer, &c, &tabs, &machine(), 0, 1).unwrap_err(), PlanError::NoShards(0));
        assert_eq!(
            plan(Strategy::Layer, &c, &tabs, &machine(), 3, 1).unwrap_err(),
            PlanError::TooFewTabs { shards: 3, tabs: 2 }
        );
        let many: Vec<TabProfile> = (0..31).map(|_| tab(42.0)).collect();
        assert_eq!(
            plan(Strategy::Layer, &c, &many, &machine(), 31, 1).unwrap_err(),
            PlanError::TooManyShards { shards: 31, layers: 30 }
        );
        assert!(matches!(
            plan(Strategy::Component, &c, &many, &machine(), 3, 1).unwrap_err(),
            PlanError::WrongShardCount { need: 2, got: 3, .. }
        ));
    }
}
