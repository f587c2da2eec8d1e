//! The two circuit breakers every call to a replica passes: the tab's and the (tab, model)
//! one. Batches (`scheduler`) and generation streams (`generation`) take and book them alike,
//! and a pipeline's stage calls take and book their stage tab's breaker through the same
//! `acquire_all` / `book_all` (`pipelines`).

use std::sync::Mutex;
use std::time::Instant;

use super::state::{ModelEntry, Replica, Shared};
use crate::policy::breaker::{self, Breaker, Outcome, Transition};
use crate::store::Record;

/// Breakers one call passes, each with the name its transitions are logged under.
pub(crate) type Named<'a> = (&'a str, &'a Mutex<Breaker>);

/// Ask `breakers` in order for one call at `now`, all or none: when one refuses, the probes the
/// ones before it took are handed back (or they would stay half-open waiting for them). Every
/// state change goes to `changed`. The piece replicas (tab, then (tab, model)) and pipeline
/// stage calls (the stage's tab) share.
pub(crate) fn acquire_all(breakers: &[Named], now: Instant, changed: &mut dyn FnMut(&str, &Transition)) -> bool {
    for (i, (which, b)) in breakers.iter().enumerate() {
        let (ok, t) = b.lock().expect("breaker").try_acquire(now);
        if let Some(t) = t {
            changed(which, &t);
        }
        if !ok {
            for (_, earlier) in &breakers[..i] {
                earlier.lock().expect("breaker").release();
            }
            return false;
        }
    }
    true
}

/// Book the outcome of a call `acquire_all` admitted in each of `breakers`; `None` books
/// nothing but hands back the call's probe (if it was one), so a half-open breaker still
/// resolves. Only admitted calls may be booked: a half-open breaker counts every outcome it is
/// given as one of its probes.
pub(crate) fn book_all(
    breakers: &[Named],
    outcome: Option<Outcome>,
    now: Instant,
    changed: &mut dyn FnMut(&str, &Transition),
) {
    for (which, b) in breakers {
        let mut b = b.lock().expect("breaker");
        let t = match outcome {
            Some(o) => b.record(o, now),
            None => {
                b.release();
                None
            }
        };
        drop(b);
        if let Some(t) = t {
            changed(which, &t);
        }
    }
}

/// A replica's two breakers: the tab's, then the (tab, model) one.
fn of_replica(r: &Replica) -> [Named<'_>; 2] {
    [("tab", &r.slot.breaker), ("model", &r.breaker)]
}

/// Ask the tab's and then the (tab, model) breaker for one call; both or neither.
pub(crate) fn acquire(shared: &Shared, m: &ModelEntry, r: &Replica) -> bool {
    acquire_all(&of_replica(r), Instant::now(), &mut |which, t| log_transition(shared, m, r, which, t))
}

/// Book a call's outcome in the tab's and the (tab, model) breakers; `None` books nothing but
/// hands back the call's probe (if it was one), so a half-open breaker still resolves.
pub(crate) fn book(shared: &Shared, m: &ModelEntry, r: &Replica, outcome: Option<Outcome>, now: Instant) {
    book_all(&of_replica(r), outcome, now, &mut |which, t| log_transition(shared, m, r, which, t));
}

/// Record a breaker's change of state in the history and the scaling log.
fn log_transition(shared: &Shared, m: &ModelEntry, r: &Replica, which: &str, t: &breaker::Transition) {
    let scope = if which == "tab" { format!("tab {}", r.slot.id) } else { format!("tab {} × {}", r.slot.id, m.name) };
    shared.keep(Record::Breaker {
        tab: r.slot.id,
        kind: r.slot.kind.name.clone(),
        scope: if which == "tab" { "tab".into() } else { m.name.clone() },
        from: format!("{:?}", t.from),
        to: format!("{:?}", t.to),
        reason: t.reason.to_string(),
    });
    shared.log(
        "breaker",
        Some(&r.slot.kind.name),
        Some(r.slot.id),
        &format!("{scope}: {:?} → {:?} ({})", t.from, t.to, t.reason),
    );
}
