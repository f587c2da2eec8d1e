//! Adaptive scaling: grow the pool when requests wait or tabs are saturated, shrink tabs idle past
//! a cooldown, never below `min_tabs` or above `max_tabs`, and never grow under memory pressure.
//! Every decision carries its reason, for the log.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub struct ScalingConfig {
    pub min_tabs: usize,
    pub max_tabs: usize,
    /// Grow when the mean queue wait over the window exceeds this.
    pub wait_high: Duration,
    /// Grow when this fraction of tabs is busy over the window.
    pub utilisation_high: f64,
    /// Shrink a tab idle at least this long.
    pub idle_cooldown: Duration,
    /// Hold growth when less than this fraction of system memory is available.
    pub min_free_memory: f64,
}

impl Default for ScalingConfig {
    fn default() -> Self {
        ScalingConfig {
            min_tabs: 1,
            max_tabs: 4,
            wait_high: Duration::from_millis(200),
            utilisation_high: 0.85,
            idle_cooldown: Duration::from_secs(60),
            min_free_memory: 0.15,
        }
    }
}

/// What the pool looks like over the last window.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub tabs: usize,
    /// Mean fraction of tabs busy over the window (0..=1).
    pub utilisation: f64,
    pub mean_queue_wait: Duration,
    pub queue_depth: usize,
    /// How long each tab has been idle (zero when busy).
    pub idle: Vec<Duration>,
    /// Fraction of system memory available (0..=1).
    pub free_memory: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Grow { by: usize, reason: String },
    Shrink { tab: usize, reason: String },
    Hold { reason: String },
}

pub fn decide(o: &Observation, c: &ScalingConfig) -> Decision {
    if o.tabs < c.min_tabs {
        return Decision::Grow {
            by: c.min_tabs - o.tabs,
            reason: format!("{} tabs, below min_tabs {}", o.tabs, c.min_tabs),
        };
    }
    let pressured = o.mean_queue_wait > c.wait_high || (o.utilisation >= c.utilisation_high && o.queue_depth > 0);
    if pressured {
        let why = format!(
            "queue wait {:?} (high {:?}), utilisation {:.0}%, {} queued",
            o.mean_queue_wait,
            c.wait_high,
            o.utilisation * 100.0,
            o.queue_depth
        );
        if o.tabs >= c.max_tabs {
            return Decision::Hold { reason: format!("{why}; already at max_tabs {}", c.max_tabs) };
        }
        if o.free_memory < c.min_free_memory {
            return Decision::Hold {
                reason: format!(
                    "{why}; memory pressure: {:.0}% free < {:.0}%",
                    o.free_memory * 100.0,
                    c.min_free_memory * 100.0
                ),
            };
        }
        return Decision::Grow { by: 1, reason: why };
    }
    if o.tabs > c.min_tabs && o.queue_depth == 0 {
        // The longest-idle tab goes first.
        if let Some((tab, idle)) = o.idle.iter().enumerate().max_by_key(|(_, d)| **d)
            && *idle >= c.idle_cooldown
        {
            return Decision::Shrink { tab, reason: format!("tab idle {idle:?} ≥ cooldown {:?}", c.idle_cooldown) };
        }
    }
    Decision::Hold { reason: "within bounds".into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(tabs: usize) -> Observation {
        Observation {
            tabs,
            utilisation: 0.5,
            mean_queue_wait: Duration::from_millis(10),
            queue_depth: 0,
            idle: vec![Duration::ZERO; tabs],
            free_memory: 0.5,
        }
    }

    #[test]
    fn fills_up_to_min_tabs() {
        let c = ScalingConfig { min_tabs: 2, ..Default::default() };
        assert!(matches!(decide(&obs(0), &c), Decision::Grow { by: 2, .. }));
    }

    #[test]
    fn grows_on_long_waits_or_saturation() {
        let c = ScalingConfig::default();
        let waiting = Observation { mean_queue_wait: Duration::from_millis(500), queue_depth: 3, ..obs(1) };
        assert!(matches!(decide(&waiting, &c), Decision::Grow { by: 1, .. }));
        let saturated = Observation { utilisation: 0.95, queue_depth: 1, ..obs(2) };
        assert!(matches!(decide(&saturated, &c), Decision::Grow { by: 1, .. }));
        let busy_but_empty_queue = Observation { utilisation: 0.95, queue_depth: 0, ..obs(2) };
        assert!(matches!(decide(&busy_but_empty_queue, &c), Decision::Hold { .. }));
    }

    #[test]
    fn holds_at_max_and_under_memory_pressure() {
        let c = ScalingConfig { max_tabs: 2, ..Default::default() };
        let waiting = Observation { mean_queue_wait: Duration::from_secs(1), queue_depth: 5, ..obs(2) };
        match decide(&waiting, &c) {
            Decision::Hold { reason } => assert!(reason.contains("max_tabs"), "{reason}"),
            d => panic!("{d:?}"),
        }
        let low_mem = Observation { free_memory: 0.05, ..waiting.clone() };
        match decide(&Observation { tabs: 1, idle: vec![Duration::ZERO], ..low_mem }, &c) {
            Decision::Hold { reason } => assert!(reason.contains("memory pressure"), "{reason}"),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn shrinks_the_longest_idle_tab_after_cooldown_but_not_below_min() {
        let c = ScalingConfig { min_tabs: 1, idle_cooldown: Duration::from_secs(30), ..Default::default() };
        let idle = Observation {
            idle: vec![Duration::from_secs(5), Duration::from_secs(90), Duration::from_secs(40)],
            ..obs(3)
        };
        assert!(matches!(decide(&idle, &c), Decision::Shrink { tab: 1, .. }));
        let recent = Observation { idle: vec![Duration::from_secs(5), Duration::from_secs(10)], ..obs(2) };
        assert!(matches!(decide(&recent, &c), Decision::Hold { .. }));
        let at_min = Observation { idle: vec![Duration::from_secs(500)], ..obs(1) };
        assert!(matches!(decide(&at_min, &c), Decision::Hold { .. }));
    }
}
