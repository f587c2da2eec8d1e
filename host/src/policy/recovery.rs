//! Recovery: failure categories, and what to do about a failed request and a failed tab.
//!
//! Strategies by category: **simple** (retry on the same tab: the tab recovers a lost device
//! itself), **progressive** (another replica → a model on a new or spare tab; for the tab: reload
//! the page → restart the browser), **parallel** (hedge a slow batch to a second replica, the
//! first answer wins), **coordinated** (multi-tab work: pause, reassign, resume — for sharded
//! models). Retries are bounded and back off exponentially.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// The socket closed or dropped while the browser lives.
    Connection,
    /// The renderer or the whole browser process died.
    Crash,
    /// A call past its deadline, or missed heartbeats.
    Timeout,
    /// The GPU device was lost or memory ran out inside the tab.
    DeviceLost,
    /// The tab could not run the model (an internal error).
    ModelError,
    /// The request itself is wrong: no retry helps.
    BadInput,
}

impl Category {
    /// The name the history database and reports use.
    pub fn name(self) -> &'static str {
        match self {
            Category::Connection => "connection",
            Category::Crash => "crash",
            Category::Timeout => "timeout",
            Category::DeviceLost => "device_lost",
            Category::ModelError => "model_error",
            Category::BadInput => "bad_input",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    Simple,
    Progressive,
    Parallel,
    Coordinated,
}

/// Whether a stage of a sharded model that failed with `c` is lost, to be replaced by a new tab
/// with its KV cache rebuilt from the host's history (the other stages keep theirs): its tab is
/// gone, hung, or lost its device. Bad input, a full cache or a broken model are not helped by
/// another tab running the same stage.
pub fn stage_lost(c: Category) -> bool {
    matches!(c, Category::Connection | Category::Crash | Category::Timeout | Category::DeviceLost)
}

/// The strategy for a category (multi-tab work always coordinates).
pub fn strategy(c: Category, multi_tab: bool) -> Option<Strategy> {
    if multi_tab && c != Category::BadInput {
        return Some(Strategy::Coordinated);
    }
    match c {
        Category::BadInput => None,
        Category::DeviceLost => Some(Strategy::Simple),
        Category::Timeout => Some(Strategy::Parallel),
        Category::Connection | Category::Crash | Category::ModelError => Some(Strategy::Progressive),
    }
}

/// What happens to the requests of a failed batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestStep {
    /// Again on the same tab after the backoff (it reloads its model first).
    RetrySameTab { backoff: Duration },
    /// On any other replica after the backoff; the failed tab is avoided.
    RetryElsewhere { backoff: Duration },
    /// No attempts left, or retrying cannot help.
    Fail,
}

/// Backoff before attempt `attempt` (1 = the first retry): 25 ms doubling, at most 800 ms.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(25u64 << attempt.saturating_sub(1).min(5))
}

/// `attempts`: failures of this request so far (≥ 1); `max_retries`: retries allowed.
pub fn request_step(c: Category, attempts: u32, max_retries: u32) -> RequestStep {
    if attempts > max_retries {
        return RequestStep::Fail;
    }
    let backoff = backoff(attempts);
    match strategy(c, false) {
        None => RequestStep::Fail,
        Some(Strategy::Simple) if attempts == 1 => RequestStep::RetrySameTab { backoff },
        // Model errors are deterministic more often than not: one try elsewhere, then give up.
        Some(_) if c == Category::ModelError && attempts > 1 => RequestStep::Fail,
        Some(_) => RequestStep::RetryElsewhere { backoff },
    }
}

/// What happens to the failed tab.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TabStep {
    /// Healthy enough: keep it (its breaker judges it).
    Keep,
    /// Load the model again in the same page (lost device, out of memory).
    ReloadModel,
    /// Open the page again in the same browser: a new renderer and socket, models re-loaded.
    ReloadPage,
    /// Close the browser and start a new one of the same kind.
    RestartBrowser,
}

/// `browser_alive`: its main process still runs (or unknown, for remote tabs); `reloads`: page
/// reloads already tried for this failure.
pub fn tab_step(c: Category, connected: bool, browser_alive: bool, reloads: u32) -> TabStep {
    match c {
        Category::BadInput | Category::ModelError if connected => TabStep::Keep,
        Category::DeviceLost if connected => TabStep::ReloadModel,
        Category::Timeout if connected => TabStep::Keep,
        _ if !browser_alive || reloads >= 1 => TabStep::RestartBrowser,
        _ => TabStep::ReloadPage,
    }
}

/// Hedging settings (`hedge`, `hedge_factor`, `hedge_floor_ms` of the pool's config).
#[derive(Debug, Clone, Copy)]
pub struct Hedging {
    pub enabled: bool,
    pub factor: f64,
    pub floor: Duration,
}

/// When a call expected to take `expected` is copied to a second replica: past `factor` × its
/// expected time and never before `floor`. `None`: never (hedging off, or no measurement yet).
/// Every family's hedge — a batch, a stream's first token — waits by this rule.
pub fn hedge_after(expected: Option<Duration>, h: Hedging) -> Option<Duration> {
    match expected {
        Some(e) if h.enabled => Some(e.mul_f64(h.factor).max(h.floor)),
        _ => None,
    }
}

/// A stream's next token is never called late before this: the gaps between tokens vary with
/// what else a tab runs (a batch of embeddings between two steps), and a copy re-reads the
/// whole prompt on another replica.
pub const STALL_FLOOR: Duration = Duration::from_secs(2);

/// When a stream whose largest gap between tokens so far is `largest_gap` has waited long enough
/// for its next token to be copied to another replica: the hedge rule on that gap, never before
/// [`STALL_FLOOR`]. `None` with hedging off.
pub fn stall_after(largest_gap: Duration, h: Hedging) -> Option<Duration> {
    hedge_after(Some(largest_gap), h).map(|d| d.max(STALL_FLOOR))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_is_stalled_past_its_own_rhythm_and_never_within_the_floor() {
        let h = Hedging { enabled: true, factor: 4.0, floor: Duration::from_millis(250) };
        // Tokens every 100 ms: late past the floor, not at 400 ms.
        assert_eq!(stall_after(Duration::from_millis(100), h), Some(STALL_FLOOR));
        // A stream that has seen a 1.5 s gap (a batch between steps) waits 6 s.
        assert_eq!(stall_after(Duration::from_millis(1500), h), Some(Duration::from_secs(6)));
        assert_eq!(stall_after(Duration::from_secs(1), Hedging { enabled: false, ..h }), None);
    }

    #[test]
    fn a_stage_is_replaced_only_when_its_tab_failed() {
        for c in [Category::Connection, Category::Crash, Category::Timeout, Category::DeviceLost] {
            assert!(stage_lost(c), "{c:?}");
        }
        for c in [Category::BadInput, Category::ModelError] {
            assert!(!stage_lost(c), "{c:?}");
        }
    }

    #[test]
    fn strategies_by_category() {
        assert_eq!(strategy(Category::DeviceLost, false), Some(Strategy::Simple));
        assert_eq!(strategy(Category::Crash, false), Some(Strategy::Progressive));
        assert_eq!(strategy(Category::Connection, false), Some(Strategy::Progressive));
        assert_eq!(strategy(Category::Timeout, false), Some(Strategy::Parallel));
        assert_eq!(strategy(Category::Crash, true), Some(Strategy::Coordinated));
        assert_eq!(strategy(Category::BadInput, true), None);
    }

    #[test]
    fn retries_are_bounded_and_back_off() {
        assert_eq!(backoff(1), Duration::from_millis(25));
        assert_eq!(backoff(3), Duration::from_millis(100));
        assert_eq!(backoff(40), Duration::from_millis(800));
        assert_eq!(request_step(Category::Crash, 1, 2), RequestStep::RetryElsewhere { backoff: backoff(1) });
        assert_eq!(request_step(Category::Crash, 2, 2), RequestStep::RetryElsewhere { backoff: backoff(2) });
        assert_eq!(request_step(Category::Crash, 3, 2), RequestStep::Fail);
        assert_eq!(request_step(Category::BadInput, 1, 9), RequestStep::Fail);
    }

    #[test]
    fn a_lost_device_retries_in_place_once_then_moves() {
        assert_eq!(request_step(Category::DeviceLost, 1, 3), RequestStep::RetrySameTab { backoff: backoff(1) });
        assert_eq!(request_step(Category::DeviceLost, 2, 3), RequestStep::RetryElsewhere { backoff: backoff(2) });
        assert_eq!(request_step(Category::ModelError, 1, 3), RequestStep::RetryElsewhere { backoff: backoff(1) });
        assert_eq!(request_step(Category::ModelError, 2, 3), RequestStep::Fail);
    }

    #[test]
    fn tabs_escalate_from_reload_to_restart() {
        assert_eq!(tab_step(Category::Connection, false, true, 0), TabStep::ReloadPage);
        assert_eq!(tab_step(Category::Connection, false, true, 1), TabStep::RestartBrowser);
        assert_eq!(tab_step(Category::Crash, false, false, 0), TabStep::RestartBrowser);
        assert_eq!(tab_step(Category::Crash, false, true, 0), TabStep::ReloadPage);
        assert_eq!(tab_step(Category::DeviceLost, true, true, 0), TabStep::ReloadModel);
        assert_eq!(tab_step(Category::Timeout, true, true, 0), TabStep::Keep);
        assert_eq!(tab_step(Category::Timeout, false, true, 0), TabStep::ReloadPage, "missed heartbeats");
        assert_eq!(tab_step(Category::BadInput, true, true, 0), TabStep::Keep);
    }

    #[test]
    fn hedging_waits_for_a_multiple_of_the_expected_time() {
        let ms = Duration::from_millis;
        let h = Hedging { enabled: true, factor: 3.0, floor: ms(50) };
        assert_eq!(hedge_after(Some(ms(100)), h), Some(ms(300)));
        assert_eq!(hedge_after(Some(ms(10)), h), Some(ms(50)), "never before the floor");
        assert_eq!(hedge_after(None, h), None, "unknown cost: no hedge");
        assert_eq!(hedge_after(Some(ms(100)), Hedging { enabled: false, ..h }), None, "off");
    }
}
