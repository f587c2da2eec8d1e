//! Routing: which (browser kind, backend) should serve a model, from measured history.
//! Priors by model type order the candidates until enough samples exist; after that the score
//! decides: 0.7 · success rate + 0.3 · normalised latency (fastest candidate = 1).

/// What kind of model is being routed (the prior depends on it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelType {
    TextEmbedding,
    TextGeneration,
    Audio,
    Vision,
}

impl super::Named for ModelType {
    const ALL: &'static [ModelType] =
        &[ModelType::TextEmbedding, ModelType::TextGeneration, ModelType::Audio, ModelType::Vision];
    fn name(self) -> &'static str {
        match self {
            ModelType::TextEmbedding => "text-embedding",
            ModelType::TextGeneration => "text-generation",
            ModelType::Audio => "audio",
            ModelType::Vision => "vision",
        }
    }
    fn help(self) -> &'static str {
        match self {
            ModelType::TextEmbedding => "texts to vectors",
            ModelType::TextGeneration => "prompts to streamed tokens",
            ModelType::Audio => "speech to text",
            ModelType::Vision => "images to labels and features",
        }
    }
}

/// Browser kinds in prior order for a model type: audio prefers Firefox, vision Chromium's
/// WebGPU, text a WebNN-capable Chromium. Only an ordering; measurements override it.
pub fn prior(model: ModelType) -> &'static [&'static str] {
    match model {
        ModelType::Audio => &["firefox", "chromium-webnn", "chromium"],
        ModelType::Vision => &["chromium", "chromium-webnn", "firefox"],
        ModelType::TextEmbedding | ModelType::TextGeneration => &["chromium-webnn", "chromium", "firefox"],
    }
}

/// Measured history of one (model, browser kind, backend).
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct History {
    pub successes: u64,
    pub failures: u64,
    /// Mean latency of successful calls.
    pub mean_latency_ms: f64,
}

impl History {
    /// Add one observation: a success with its latency, or a failure.
    pub fn record(&mut self, ok: bool, latency_ms: f64) {
        if ok {
            self.successes += 1;
            self.mean_latency_ms += (latency_ms - self.mean_latency_ms) / self.successes as f64;
        } else {
            self.failures += 1;
        }
    }

    /// Two histories as one (e.g. every backend of a browser kind).
    pub fn merge(&self, o: &History) -> History {
        let successes = self.successes + o.successes;
        let mean_latency_ms = if successes == 0 {
            0.0
        } else {
            (self.mean_latency_ms * self.successes as f64 + o.mean_latency_ms * o.successes as f64) / successes as f64
        };
        History { successes, failures: self.failures + o.failures, mean_latency_ms }
    }

    pub fn samples(&self) -> u64 {
        self.successes + self.failures
    }
    pub fn success_rate(&self) -> f64 {
        if self.samples() == 0 { 0.0 } else { self.successes as f64 / self.samples() as f64 }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub kind: String,
    pub backend: String,
    pub history: History,
}

/// 0.7 · success rate + 0.3 · (fastest mean latency / this mean latency).
pub fn score(h: &History, fastest_ms: f64) -> f64 {
    let latency = if h.successes == 0 || h.mean_latency_ms.is_nan() || h.mean_latency_ms <= 0.0 {
        0.0
    } else {
        (fastest_ms / h.mean_latency_ms).min(1.0)
    };
    0.7 * h.success_rate() + 0.3 * latency
}

/// Candidates in the order to try them (the first is the route, the rest the fallback list):
/// those with at least `min_samples` by score, best first; then the rest by the prior for
/// `model`, then by name for a stable order.
pub fn rank(model: ModelType, candidates: &[Candidate], min_samples: u64) -> Vec<usize> {
    let confident: Vec<usize> =
        (0..candidates.len()).filter(|&i| candidates[i].history.samples() >= min_samples).collect();
    let fastest = confident
        .iter()
        .map(|&i| candidates[i].history)
        .filter(|h| h.successes > 0 && h.mean_latency_ms > 0.0)
        .map(|h| h.mean_latency_ms)
        .fold(f64::INFINITY, f64::min);
    let mut scored: Vec<(usize, f64)> =
        confident.iter().map(|&i| (i, score(&candidates[i].history, fastest))).collect();
    scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let prior = prior(model);
    let prior_pos = |k: &str| prior.iter().position(|p| *p == k).unwrap_or(prior.len());
    let mut rest: Vec<usize> = (0..candidates.len()).filter(|i| !confident.contains(i)).collect();
    rest.sort_by(|&a, &b| {
        let (ca, cb) = (&candidates[a], &candidates[b]);
        prior_pos(&ca.kind).cmp(&prior_pos(&cb.kind)).then(ca.kind.cmp(&cb.kind)).then(ca.backend.cmp(&cb.backend))
    });
    scored.into_iter().map(|(i, _)| i).chain(rest).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(kind: &str, backend: &str, ok: u64, fail: u64, ms: f64) -> Candidate {
        Candidate {
            kind: kind.into(),
            backend: backend.into(),
            history: History { successes: ok, failures: fail, mean_latency_ms: ms },
        }
    }

    #[test]
    fn score_weights_success_over_speed() {
        let fast_flaky = History { successes: 50, failures: 50, mean_latency_ms: 5.0 };
        let slow_sure = History { successes: 100, failures: 0, mean_latency_ms: 20.0 };
        assert!((score(&fast_flaky, 5.0) - (0.35 + 0.3)).abs() < 1e-12);
        assert!((score(&slow_sure, 5.0) - (0.7 + 0.075)).abs() < 1e-12);
        assert!(score(&slow_sure, 5.0) > score(&fast_flaky, 5.0));
    }

    #[test]
    fn without_history_the_prior_orders() {
        let cands = [
            c("chromium", "webgpu", 0, 0, 0.0),
            c("chromium-webnn", "webnn-cpu", 0, 0, 0.0),
            c("firefox", "webgpu", 0, 0, 0.0),
        ];
        assert_eq!(rank(ModelType::TextEmbedding, &cands, 10), [1, 0, 2]);
        assert_eq!(rank(ModelType::Audio, &cands, 10), [2, 1, 0]);
        assert_eq!(rank(ModelType::Vision, &cands, 10), [0, 1, 2]);
    }

    #[test]
    fn measured_history_overrides_the_prior_once_confident() {
        let cands = [c("chromium-webnn", "webnn-cpu", 20, 0, 50.0), c("chromium", "webgpu", 20, 0, 8.0)];
        assert_eq!(rank(ModelType::TextEmbedding, &cands, 10), [1, 0], "faster with equal success wins");
        assert_eq!(rank(ModelType::TextEmbedding, &cands, 30), [0, 1], "below the minimum count the prior rules");
    }

    #[test]
    fn confident_candidates_come_before_unmeasured_ones() {
        let cands = [c("chromium-webnn", "webnn-cpu", 2, 0, 1.0), c("firefox", "webgpu", 40, 10, 30.0)];
        assert_eq!(rank(ModelType::TextEmbedding, &cands, 10), [1, 0]);
    }

    #[test]
    fn record_keeps_a_running_mean_of_successes_only() {
        let mut h = History { successes: 0, failures: 0, mean_latency_ms: 0.0 };
        h.record(true, 10.0);
        h.record(true, 20.0);
        h.record(false, 1000.0);
        assert_eq!((h.successes, h.failures), (2, 1));
        assert!((h.mean_latency_ms - 15.0).abs() < 1e-12);
        let m = h.merge(&History { successes: 2, failures: 0, mean_latency_ms: 5.0 });
        assert_eq!((m.successes, m.failures), (4, 1));
        assert!((m.mean_latency_ms - 10.0).abs() < 1e-12);
    }

    #[test]
    fn all_failures_score_zero() {
        assert_eq!(score(&History { successes: 0, failures: 9, mean_latency_ms: 0.0 }, 1.0), 0.0);
    }
}

/// A replica as dispatch sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReplicaLoad {
    /// It can take a batch now.
    pub free: bool,
    /// Measured (or calibrated) cost per text; `None` when unknown (it is tried optimistically).
    pub ms_per_text: Option<f64>,
    /// Estimated time until its current work is done (0 when free).
    pub busy_remaining_ms: f64,
}

/// How much slower replicas may run while they help each other with a backlog. Tabs of one
/// machine share its cores: measured on 2 cores, a SwiftShader tab helping a WebNN tab with a
/// 512-text backlog halved the pool (221 → 108 sent/s), although the estimate without contention
/// promised a small gain.
pub const SHARED_SLOWDOWN: f64 = 2.0;

/// Which free replica takes a batch of `rows` texts now, or `None` to wait for a busy one.
///
/// Among free replicas the soonest finisher wins (ties: `rank`, the routing order). It takes the
/// batch if no replica, busy ones included, would finish this batch sooner. Otherwise it only
/// helps with a backlog: its finish, slowed by `SHARED_SLOWDOWN`, must still come before the best
/// replica would finish *all* queued work (`queued_rows`, this batch included). So a slow free tab
/// never holds a batch a busy fast tab finishes sooner, and helps only where the gain is clear.
pub fn dispatch(replicas: &[ReplicaLoad], rank: &[usize], rows: usize, queued_rows: usize) -> Option<usize> {
    let known_fastest = replicas.iter().filter_map(|r| r.ms_per_text).fold(f64::INFINITY, f64::min);
    // Unknown costs are optimistic (the fastest known, or zero) so new replicas get measured.
    let ms = |r: &ReplicaLoad| r.ms_per_text.unwrap_or(if known_fastest.is_finite() { known_fastest } else { 0.0 });
    let pos = |i: usize| rank.iter().position(|&x| x == i).unwrap_or(usize::MAX);
    let best_free = (0..replicas.len())
        .filter(|&i| replicas[i].free)
        .map(|i| (i, rows as f64 * ms(&replicas[i])))
        .min_by(|a, b| a.1.total_cmp(&b.1).then(pos(a.0).cmp(&pos(b.0))).then(a.0.cmp(&b.0)))?;
    let soonest =
        |n: usize| replicas.iter().map(|r| r.busy_remaining_ms + n as f64 * ms(r)).fold(f64::INFINITY, f64::min);
    if best_free.1 <= soonest(rows) {
        return Some(best_free.0);
    }
    (best_free.1 * SHARED_SLOWDOWN <= soonest(queued_rows.max(rows))).then_some(best_free.0)
}

#[cfg(test)]
mod dispatch_tests {
    use super::*;

    fn r(free: bool, ms: Option<f64>, remaining: f64) -> ReplicaLoad {
        ReplicaLoad { free, ms_per_text: ms, busy_remaining_ms: remaining }
    }

    #[test]
    fn the_fastest_free_replica_takes_the_batch() {
        let reps = [r(true, Some(10.0), 0.0), r(true, Some(2.0), 0.0), r(false, Some(1.0), 50.0)];
        assert_eq!(dispatch(&reps, &[0, 1, 2], 8, 8), Some(1));
        // ... unless a busy one is about to finish and is faster still.
        let reps = [r(true, Some(10.0), 0.0), r(true, Some(2.0), 0.0), r(false, Some(1.0), 5.0)];
        assert_eq!(dispatch(&reps, &[0, 1, 2], 8, 8), None);
    }

    #[test]
    fn a_slow_free_replica_does_not_hold_a_batch_a_busy_fast_one_finishes_sooner() {
        // Fast: 13 ms/text, busy 100 ms more. Slow: 174 ms/text, free. 32 texts queued.
        let reps = [r(false, Some(13.0), 100.0), r(true, Some(174.0), 0.0)];
        assert_eq!(dispatch(&reps, &[0, 1], 32, 32), None, "wait for the fast tab");
        // A backlog the fast tab needs ~6.8 s for: the slow one's 5.6 s would help only if the
        // two did not slow each other down; not a clear gain, so wait.
        assert_eq!(dispatch(&reps, &[0, 1], 32, 512), None);
        // A deep backlog (~13.4 s for the fast tab): the slow one helps even at half speed.
        assert_eq!(dispatch(&reps, &[0, 1], 32, 1024), Some(1));
    }

    #[test]
    fn regression_mixed_pool_swiftshader_beside_webnn_waits_for_webnn() {
        // Measured in `bench pool` (mixed row, 2 cores): webnn-cpu 10.4 ms/text busy with a batch
        // of 32, SwiftShader WebGPU 151 ms/text free, 512 texts queued. Handing 32 to the slow tab
        // halved the pool's throughput; it must wait for the WebNN tab.
        let reps = [r(false, Some(10.4), 330.0), r(true, Some(151.0), 0.0)];
        assert_eq!(dispatch(&reps, &[0, 1], 32, 512), None);
    }

    #[test]
    fn unknown_replicas_are_tried_and_ties_follow_the_rank() {
        let reps = [r(true, None, 0.0), r(true, Some(5.0), 0.0)];
        assert_eq!(dispatch(&reps, &[1, 0], 4, 4), Some(1), "equal estimates: routing order decides");
        assert_eq!(dispatch(&reps, &[0, 1], 4, 4), Some(0));
        assert_eq!(dispatch(&[r(true, None, 0.0)], &[0], 4, 4), Some(0));
        assert_eq!(dispatch(&[r(false, Some(1.0), 0.0)], &[0], 4, 4), None, "nothing free");
        assert_eq!(dispatch(&[], &[], 4, 4), None);
    }
}
