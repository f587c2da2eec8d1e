//! Health score 0–100 of a tab, from what the pool observes of it. 100 is a tab that never
//! fails, answers heartbeats, runs at its own baseline speed with memory to spare.

/// What the score is computed from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Signals {
    /// Failure rate over the breaker window (0..=1).
    pub failure_rate: f64,
    /// Recent latency per text divided by the tab's own baseline (its early calls); 1 = as usual.
    pub latency_ratio: f64,
    /// Heartbeats missed in a row.
    pub missed_heartbeats: u32,
    /// Share of system memory available (0..=1).
    pub free_memory: f64,
}

/// Weights: failures matter most (40), then heartbeats (25), latency drift (20), memory (15).
pub fn score(s: &Signals) -> u8 {
    let failures = 40.0 * s.failure_rate.clamp(0.0, 1.0);
    // Twice as slow as usual costs half the latency weight, four times as slow all of it.
    let drift = if s.latency_ratio.is_finite() { ((s.latency_ratio - 1.0) / 3.0).clamp(0.0, 1.0) } else { 1.0 };
    let latency = 20.0 * drift;
    let heartbeats = 25.0 * (s.missed_heartbeats.min(3) as f64 / 3.0);
    // Below 30% free memory the penalty grows linearly to the full weight at 0%.
    let memory = 15.0 * ((0.3 - s.free_memory.clamp(0.0, 1.0)) / 0.3).clamp(0.0, 1.0);
    (100.0 - failures - latency - heartbeats - memory).round().clamp(0.0, 100.0) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    const WELL: Signals = Signals { failure_rate: 0.0, latency_ratio: 1.0, missed_heartbeats: 0, free_memory: 0.8 };

    #[test]
    fn a_well_tab_scores_100_and_faster_than_usual_is_no_bonus() {
        assert_eq!(score(&WELL), 100);
        assert_eq!(score(&Signals { latency_ratio: 0.5, ..WELL }), 100);
    }

    #[test]
    fn each_signal_costs_its_weight() {
        assert_eq!(score(&Signals { failure_rate: 1.0, ..WELL }), 60);
        assert_eq!(score(&Signals { failure_rate: 0.25, ..WELL }), 90);
        assert_eq!(score(&Signals { latency_ratio: 4.0, ..WELL }), 80);
        assert_eq!(score(&Signals { latency_ratio: 2.5, ..WELL }), 90);
        assert_eq!(score(&Signals { missed_heartbeats: 1, ..WELL }), 92);
        assert_eq!(score(&Signals { missed_heartbeats: 9, ..WELL }), 75);
        assert_eq!(score(&Signals { free_memory: 0.0, ..WELL }), 85);
        assert_eq!(score(&Signals { free_memory: 0.15, ..WELL }), 93);
    }

    #[test]
    fn everything_wrong_is_zero_and_nan_is_not_healthy() {
        let dead = Signals { failure_rate: 1.0, latency_ratio: f64::INFINITY, missed_heartbeats: 3, free_memory: 0.0 };
        assert_eq!(score(&dead), 0);
        assert_eq!(score(&Signals { latency_ratio: f64::NAN, ..WELL }), 80);
    }
}
