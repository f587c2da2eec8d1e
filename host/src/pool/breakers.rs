//! The two circuit breakers every call to a replica passes: the tab's and the (tab, model)
//! one. Batches (`scheduler`) and generation streams (`generation`) take and book them alike.

use std::time::Instant;

use super::state::{ModelEntry, Replica, Shared};
use crate::policy::breaker::{self, Outcome};
use crate::store::Record;

/// Ask the tab's and then the (tab, model) breaker for one call; both or neither.
pub(crate) fn acquire(shared: &Shared, m: &ModelEntry, r: &Replica) -> bool {
    let now = Instant::now();
    let breakers = [("tab", &r.slot.breaker), ("model", &r.breaker)];
    for (i, (which, b)) in breakers.iter().enumerate() {
        let (ok, t) = b.lock().expect("breaker").try_acquire(now);
        if let Some(t) = t {
            log_transition(shared, m, r, which, &t);
        }
        if !ok {
            // The breakers before this one admitted a call that will not happen: hand their
            // (possibly half-open) probe back, or they stay half-open waiting for it.
            for (_, earlier) in &breakers[..i] {
                earlier.lock().expect("breaker").release();
            }
            return false;
        }
    }
    true
}

/// Book a call's outcome in the tab's and the (tab, model) breakers; `None` books nothing but
/// hands back the call's probe (if it was one), so a half-open breaker still resolves.
pub(crate) fn book(shared: &Shared, m: &ModelEntry, r: &Replica, outcome: Option<Outcome>, now: Instant) {
    for (which, b) in [("tab", &r.slot.breaker), ("model", &r.breaker)] {
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
            log_transition(shared, m, r, which, &t);
        }
    }
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
