//! Circuit breaker with resilience4j semantics, as a pure state machine (time is passed in).
//!
//! CLOSED: calls flow; outcomes fill a sliding window of the last `window` calls. Once it holds
//! `min_calls`, a failure rate ≥ `failure_rate` or a slow-call rate ≥ `slow_rate` (calls slower
//! than `slow_call`) opens the breaker. OPEN: calls are refused until `open_wait` has passed, then
//! the breaker goes HALF_OPEN and admits `half_open_probes` calls; when they are all back, it
//! closes if their failure and slow rates are below the thresholds, otherwise it opens again.
//!
//! A half-open breaker always resolves: a probe taken but not used (the caller gave up before
//! calling, or the call ended with an outcome that says nothing about the tab, such as bad input)
//! is handed back with [`Breaker::release`], and a probe with no outcome after `slow_call` counts
//! as failed (the breaker opens again and waits) instead of holding the breaker half-open forever.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    pub window: usize,
    pub min_calls: usize,
    pub failure_rate: f64,
    pub slow_call: Duration,
    pub slow_rate: f64,
    pub open_wait: Duration,
    pub half_open_probes: usize,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            window: 20,
            min_calls: 5,
            failure_rate: 0.5,
            slow_call: Duration::from_secs(30),
            slow_rate: 0.8,
            open_wait: Duration::from_secs(5),
            half_open_probes: 2,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    Success { took: Duration },
    Failure,
}

/// A state change, for the log.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub from: State,
    pub to: State,
    pub reason: String,
}

#[derive(Debug, Clone)]
pub struct Breaker {
    cfg: BreakerConfig,
    state: State,
    window: VecDeque<Outcome>,
    opened_at: Option<Instant>,
    /// HALF_OPEN: probes admitted, and the outcomes back so far.
    admitted: usize,
    probes: Vec<Outcome>,
    /// HALF_OPEN: when the latest probe was admitted (outstanding probes time out from it).
    probe_at: Option<Instant>,
}

impl Breaker {
    pub fn new(cfg: BreakerConfig) -> Breaker {
        Breaker {
            cfg,
            state: State::Closed,
            window: VecDeque::new(),
            opened_at: None,
            admitted: 0,
            probes: Vec::new(),
            probe_at: None,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// (failure rate, slow rate) over the window, or the half-open probes.
    pub fn rates(&self) -> (f64, f64) {
        let outcomes: Vec<&Outcome> =
            if self.state == State::HalfOpen { self.probes.iter().collect() } else { self.window.iter().collect() };
        rates(&outcomes, self.cfg.slow_call)
    }

    /// Whether a call may go through now; may move OPEN → HALF_OPEN. An admitted half-open call
    /// counts as a probe, so callers ask only when they will really call.
    pub fn try_acquire(&mut self, now: Instant) -> (bool, Option<Transition>) {
        let mut t = self.expire_probes(now);
        if self.state == State::Open && self.opened_at.is_some_and(|at| now.duration_since(at) >= self.cfg.open_wait) {
            t = Some(self.go(State::HalfOpen, format!("{:?} passed since opening", self.cfg.open_wait)));
        }
        let ok = match self.state {
            State::Closed => true,
            State::Open => false,
            State::HalfOpen if self.admitted < self.cfg.half_open_probes => {
                self.admitted += 1;
                self.probe_at = Some(now);
                true
            }
            State::HalfOpen => false,
        };
        (ok, t)
    }

    /// Hand back a call admitted by `try_acquire` that will not report an outcome (never made,
    /// or ended in a way that says nothing about the tab). Without this a half-open breaker
    /// would wait for that probe forever.
    pub fn release(&mut self) {
        if self.state == State::HalfOpen && self.admitted > self.probes.len() {
            self.admitted -= 1;
        }
    }

    /// HALF_OPEN probes out longer than `slow_call` with no outcome count as failed: the breaker
    /// opens again (and half-opens after `open_wait`) rather than stay stuck.
    pub fn expire_probes(&mut self, now: Instant) -> Option<Transition> {
        let outstanding = self.admitted.saturating_sub(self.probes.len());
        let deadline = self.probe_at.map(|at| at + self.cfg.slow_call);
        if self.state != State::HalfOpen || outstanding == 0 || deadline.is_none_or(|d| now < d) {
            return None;
        }
        // Opened when the probe expired (not when someone next looked), so `would_admit`, which
        // cannot change state, agrees with `try_acquire` on when the next half-open starts.
        self.opened_at = deadline;
        Some(self.go(State::Open, format!("{outstanding} half-open probe(s) unanswered for {:?}", self.cfg.slow_call)))
    }

    /// Whether a call would be admitted now, without taking a probe.
    pub fn would_admit(&self, now: Instant) -> bool {
        match self.state {
            State::Closed => true,
            State::Open => self.opened_at.is_some_and(|at| now.duration_since(at) >= self.cfg.open_wait),
            State::HalfOpen => {
                let outstanding = self.admitted.saturating_sub(self.probes.len());
                match self.probe_at.map(|at| at + self.cfg.slow_call) {
                    // Expired probes reopen the breaker as of their deadline (see expire_probes).
                    Some(d) if outstanding > 0 && now >= d => now >= d + self.cfg.open_wait,
                    _ => self.admitted < self.cfg.half_open_probes,
                }
            }
        }
    }

    pub fn record(&mut self, outcome: Outcome, now: Instant) -> Option<Transition> {
        match self.state {
            State::Closed => {
                self.window.push_back(outcome);
                while self.window.len() > self.cfg.window {
                    self.window.pop_front();
                }
                if self.window.len() < self.cfg.min_calls {
                    return None;
                }
                let (fail, slow) = self.rates();
                if fail >= self.cfg.failure_rate || slow >= self.cfg.slow_rate {
                    return Some(self.open(now, fail, slow));
                }
                None
            }
            // A late outcome of a call admitted before opening: the window is already judged.
            State::Open => None,
            State::HalfOpen => {
                self.probes.push(outcome);
                if self.probes.len() < self.cfg.half_open_probes {
                    return None;
                }
                let (fail, slow) = self.rates();
                if fail >= self.cfg.failure_rate || slow >= self.cfg.slow_rate {
                    Some(self.open(now, fail, slow))
                } else {
                    self.window.clear();
                    Some(self.go(State::Closed, format!("{} probes succeeded", self.probes.len())))
                }
            }
        }
    }

    fn open(&mut self, now: Instant, fail: f64, slow: f64) -> Transition {
        self.opened_at = Some(now);
        let of = if self.state == State::HalfOpen { "half-open probes" } else { "the window" };
        self.go(
            State::Open,
            format!("failure rate {:.0}%, slow-call rate {:.0}% over {of}", fail * 100.0, slow * 100.0),
        )
    }

    fn go(&mut self, to: State, reason: String) -> Transition {
        let from = self.state;
        self.state = to;
        self.admitted = 0;
        self.probes.clear();
        self.probe_at = None;
        Transition { from, to, reason }
    }
}

fn rates(outcomes: &[&Outcome], slow_call: Duration) -> (f64, f64) {
    if outcomes.is_empty() {
        return (0.0, 0.0);
    }
    let n = outcomes.len() as f64;
    let failed = outcomes.iter().filter(|o| matches!(o, Outcome::Failure)).count() as f64;
    let slow = outcomes.iter().filter(|o| matches!(o, Outcome::Success { took } if *took >= slow_call)).count() as f64;
    (failed / n, slow / n)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: Outcome = Outcome::Success { took: Duration::from_millis(10) };
    const SLOW: Outcome = Outcome::Success { took: Duration::from_secs(60) };

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            window: 10,
            min_calls: 4,
            failure_rate: 0.5,
            slow_call: Duration::from_secs(30),
            slow_rate: 0.75,
            open_wait: Duration::from_secs(5),
            half_open_probes: 2,
        }
    }

    #[test]
    fn closed_stays_closed_below_min_calls_even_if_all_fail() {
        let (mut b, t0) = (Breaker::new(cfg()), Instant::now());
        for _ in 0..3 {
            assert_eq!(b.record(Outcome::Failure, t0), None);
        }
        assert_eq!(b.state(), State::Closed);
        assert!(b.try_acquire(t0).0);
    }

    #[test]
    fn closed_to_open_on_failure_rate() {
        let (mut b, t0) = (Breaker::new(cfg()), Instant::now());
        b.record(OK, t0);
        b.record(OK, t0);
        b.record(Outcome::Failure, t0);
        let t = b.record(Outcome::Failure, t0).expect("2 of 4 failed = 50%");
        assert_eq!((t.from, t.to), (State::Closed, State::Open));
        assert!(t.reason.contains("failure rate 50%"), "{}", t.reason);
        assert!(!b.try_acquire(t0 + Duration::from_secs(1)).0, "open refuses");
    }

    #[test]
    fn closed_to_open_on_slow_calls() {
        let (mut b, t0) = (Breaker::new(cfg()), Instant::now());
        b.record(OK, t0);
        for _ in 0..2 {
            assert_eq!(b.record(SLOW, t0), None);
        }
        let t = b.record(SLOW, t0).expect("3 of 4 slow = 75%");
        assert_eq!(t.to, State::Open);
        assert!(t.reason.contains("slow-call rate 75%"));
    }

    #[test]
    fn the_window_slides() {
        let (mut b, t0) = (Breaker::new(cfg()), Instant::now());
        for _ in 0..10 {
            b.record(OK, t0);
        }
        // 4 failures among the last 10 calls: 40% < 50%.
        for _ in 0..4 {
            assert_eq!(b.record(Outcome::Failure, t0), None);
        }
        assert_eq!(b.rates().0, 0.4);
        assert!(b.record(Outcome::Failure, t0).is_some(), "5 of the last 10");
    }

    #[test]
    fn open_to_half_open_after_the_wait_then_limited_probes() {
        let (mut b, t0) = (Breaker::new(cfg()), Instant::now());
        for _ in 0..4 {
            b.record(Outcome::Failure, t0);
        }
        assert!(!b.would_admit(t0 + Duration::from_secs(4)));
        let later = t0 + Duration::from_secs(5);
        assert!(b.would_admit(later));
        let (ok, t) = b.try_acquire(later);
        assert!(ok);
        assert_eq!(t.map(|t| (t.from, t.to)), Some((State::Open, State::HalfOpen)));
        assert!(b.try_acquire(later).0, "second probe");
        assert!(!b.try_acquire(later).0, "only two probes");
    }

    #[test]
    fn half_open_to_closed_when_probes_succeed() {
        let (mut b, t0) = (Breaker::new(cfg()), Instant::now());
        for _ in 0..4 {
            b.record(Outcome::Failure, t0);
        }
        let later = t0 + Duration::from_secs(6);
        b.try_acquire(later);
        b.try_acquire(later);
        assert_eq!(b.record(OK, later), None, "waits for every probe");
        let t = b.record(OK, later).unwrap();
        assert_eq!((t.from, t.to), (State::HalfOpen, State::Closed));
        assert_eq!(b.rates(), (0.0, 0.0), "a fresh window");
    }

    #[test]
    fn half_open_to_open_when_a_probe_fails() {
        let (mut b, t0) = (Breaker::new(cfg()), Instant::now());
        for _ in 0..4 {
            b.record(Outcome::Failure, t0);
        }
        let later = t0 + Duration::from_secs(6);
        b.try_acquire(later);
        b.try_acquire(later);
        b.record(OK, later);
        let t = b.record(Outcome::Failure, later).unwrap();
        assert_eq!((t.from, t.to), (State::HalfOpen, State::Open));
        assert!(!b.try_acquire(later + Duration::from_secs(1)).0, "the wait starts again");
        assert!(b.try_acquire(later + Duration::from_secs(5)).0);
    }

    fn half_open(t0: Instant) -> Breaker {
        let mut b = Breaker::new(cfg());
        for _ in 0..4 {
            b.record(Outcome::Failure, t0);
        }
        b
    }

    #[test]
    fn a_released_probe_is_admitted_again_and_the_breaker_resolves() {
        // The pool takes a probe on the tab breaker, then the (tab, model) breaker refuses: the
        // unused probe must come back, or the tab breaker stays half-open for ever.
        let t0 = Instant::now();
        let mut b = half_open(t0);
        let later = t0 + Duration::from_secs(6);
        assert!(b.try_acquire(later).0);
        assert!(b.try_acquire(later).0);
        assert!(!b.try_acquire(later).0, "both probes out");
        b.release();
        assert!(b.would_admit(later), "a released probe frees its place");
        assert!(b.try_acquire(later).0);
        assert_eq!(b.record(OK, later), None);
        let t = b.record(OK, later).expect("both probes answered");
        assert_eq!(t.to, State::Closed);
    }

    #[test]
    fn release_never_frees_a_probe_that_reported() {
        let t0 = Instant::now();
        let mut b = half_open(t0);
        let later = t0 + Duration::from_secs(6);
        b.try_acquire(later);
        b.record(OK, later);
        b.release();
        b.release();
        assert!(b.try_acquire(later).0, "the second probe place");
        assert!(!b.try_acquire(later).0, "no third: the answered probe keeps its place");
        // Releasing while closed or open changes nothing.
        let mut c = Breaker::new(cfg());
        c.release();
        assert_eq!(c.state(), State::Closed);
    }

    #[test]
    fn an_unanswered_probe_times_out_and_reopens() {
        let t0 = Instant::now();
        let mut b = half_open(t0);
        let later = t0 + Duration::from_secs(6);
        assert!(b.try_acquire(later).0);
        assert!(b.try_acquire(later).0);
        // Stuck before slow_call (30 s) has passed: nothing more is admitted.
        assert!(!b.would_admit(later + Duration::from_secs(29)));
        assert!(!b.would_admit(later + Duration::from_secs(31)), "expired: open until 30 s + the open wait");
        assert!(b.would_admit(later + Duration::from_secs(36)), "routing sees it half-open again");
        let (ok, t) = b.try_acquire(later + Duration::from_secs(31));
        assert!(!ok);
        let t = t.expect("the probes expired");
        assert_eq!((t.from, t.to), (State::HalfOpen, State::Open));
        assert!(t.reason.contains("unanswered"), "{}", t.reason);
        // After the open wait it half-opens again: the breaker never sticks.
        assert!(b.try_acquire(later + Duration::from_secs(37)).0);
        assert_eq!(b.state(), State::HalfOpen);
    }

    #[test]
    fn late_outcomes_while_open_are_ignored() {
        let (mut b, t0) = (Breaker::new(cfg()), Instant::now());
        for _ in 0..4 {
            b.record(Outcome::Failure, t0);
        }
        assert_eq!(b.record(OK, t0), None);
        assert_eq!(b.state(), State::Open);
    }
}
