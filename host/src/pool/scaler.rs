//! The scaler: every interval, observe the pool (utilisation, queue wait, queue depth, idle
//! tabs, free memory), ask `policy::scaling::decide`, and act. Failed tabs are the watchdog's;
//! a tab under recovery still counts, and one that could not be recovered is gone, so the same
//! decision refills the pool to `min_tabs`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::state::{ModelEntry, Shared, Slot};
use crate::policy::scaling::{self, Decision, Observation};
use crate::store::Record;

const GROW_BACKOFF_MIN: Duration = Duration::from_secs(1);
const GROW_BACKOFF_MAX: Duration = Duration::from_secs(10);

pub(crate) async fn run(shared: Arc<Shared>) {
    let interval = Duration::from_millis(shared.cfg.scaling.interval_ms.max(10));
    let policy = shared.cfg.scaling_policy();
    let mut last_hold = String::new();
    let sample_every = Duration::from_secs_f64(shared.cfg.history.health_sample_s);
    let mut last_sample = Instant::now();
    // After a failed grow (no browser starts, a Grid without a free slot) the next try waits,
    // doubling up to GROW_BACKOFF_MAX: a pool that cannot grow does not hammer its endpoint.
    let mut backoff: Option<(Instant, Duration)> = None;
    loop {
        tokio::time::sleep(interval).await;
        if shared.closed.load(Ordering::SeqCst) {
            return;
        }
        if shared.recorder.is_some() && last_sample.elapsed() >= sample_every {
            last_sample = Instant::now();
            sample_health(&shared);
        }
        let obs = observe(&shared);
        let decision = if shared.cfg.scaling.enabled {
            scaling::decide(&obs, &policy)
        } else if obs.tabs < shared.cfg.min_tabs {
            Decision::Grow { by: shared.cfg.min_tabs - obs.tabs, reason: "below min_tabs (scaling off)".into() }
        } else {
            Decision::Hold { reason: "scaling off".into() }
        };
        match decision {
            Decision::Grow { by, reason } => {
                if backoff.is_some_and(|(at, wait)| at.elapsed() < wait) {
                    continue;
                }
                let pressured = most_pressured(&shared);
                for _ in 0..by {
                    match shared.grow(pressured.as_ref(), &reason).await {
                        Ok(_) => backoff = None,
                        Err(e) => {
                            let wait = backoff.map_or(GROW_BACKOFF_MIN, |(_, w)| (w * 2).min(GROW_BACKOFF_MAX));
                            backoff = Some((Instant::now(), wait));
                            shared.log(
                                "hold",
                                None,
                                None,
                                &format!("{reason}; could not grow (next try in {wait:?}): {e:#}"),
                            );
                            break;
                        }
                    }
                }
                last_hold.clear();
            }
            Decision::Shrink { tab, reason } => {
                if let Some(slot) = live(&shared).get(tab) {
                    shared.retire(slot, "shrink", &reason).await;
                }
                last_hold.clear();
            }
            Decision::Hold { reason } => {
                // Holds worth reading (at max, memory pressure) are logged once per change.
                if reason != "within bounds" && reason != "scaling off" && strip_numbers(&reason) != last_hold {
                    last_hold = strip_numbers(&reason);
                    shared.log("hold", None, None, &reason);
                }
            }
        }
        balance_threads(&shared).await;
    }
}

/// Give every tab on this machine its share of the cores (`policy::threads::shares`), older
/// tabs first: a tab alone gets them all, a second one halves them — wasm threads past the
/// cores spin against each other. Lent and remote (Grid) tabs run on other machines and are
/// not counted; a tab that does not answer keeps what it had until the next tick.
async fn balance_threads(shared: &Shared) {
    let Some(cores) = shared.thread_budget else { return };
    let mut local: Vec<Arc<Slot>> =
        live(shared).into_iter().filter(|s| s.kind.browser != crate::browser::BrowserKind::Remote).collect();
    local.sort_by_key(|s| s.serial);
    let shares = crate::policy::threads::shares(cores, local.len());
    for (s, share) in local.iter().zip(shares) {
        let want = share.min(s.tab.caps().threads).max(1);
        if s.threads.load(Ordering::Relaxed) == want || !s.tab.is_connected() || s.recovering.load(Ordering::SeqCst) {
            continue;
        }
        match s.tab.set_threads(want, Duration::from_secs(5)).await {
            Ok(now) => {
                s.threads.store(now, Ordering::Relaxed);
                let why = format!("{now} threads: {} tabs on this machine share its {cores} cores", local.len());
                shared.log("threads", Some(&s.kind.name), Some(s.id), &why);
            }
            Err(e) => tracing::debug!(tab = s.id, "setting threads: {e}"),
        }
    }
}

/// Record every live tab's health score and breaker state in the history.
fn sample_health(shared: &Shared) {
    let free = super::metrics::system_memory().map(|m| m.available_fraction()).unwrap_or(1.0);
    for s in live(shared) {
        shared.keep(Record::Health {
            tab: s.id,
            kind: s.kind.name.clone(),
            health: s.health(free),
            breaker: format!("{:?}", s.breaker.lock().expect("breaker").state()),
            missed_heartbeats: s.missed_heartbeats.load(Ordering::SeqCst),
            in_flight: s.in_flight.load(Ordering::SeqCst) as u32,
        });
    }
}

/// The pool's tabs for scaling: serving or being recovered (a tab under recovery is not replaced
/// twice). Lent tabs come and go as their pages do: the scaler neither counts nor retires them.
fn live(shared: &Shared) -> Vec<Arc<Slot>> {
    shared.slots().into_iter().filter(|s| s.counted() && s.lent.is_none()).collect()
}

/// The model with the longest queue, if any is queued.
fn most_pressured(shared: &Shared) -> Option<Arc<ModelEntry>> {
    let models = shared.models.lock().expect("models").clone();
    models
        .into_iter()
        .map(|m| {
            let n = m.queue.lock().expect("queue").len();
            (n, m)
        })
        .filter(|(n, _)| *n > 0)
        .max_by_key(|(n, _)| *n)
        .map(|(_, m)| m)
}

pub(crate) fn observe(shared: &Shared) -> Observation {
    let window = Duration::from_secs_f64(shared.cfg.scaling.window_s.max(0.1));
    let now = Instant::now();
    let slots = live(shared);
    let busy = slots.iter().filter(|s| s.in_flight.load(Ordering::SeqCst) > 0).count();
    let util_now = if slots.is_empty() { 0.0 } else { busy as f64 / slots.len() as f64 };
    let utilisation = {
        let mut u = shared.utilisation.lock().expect("utilisation");
        u.push_back((now, util_now));
        while u.front().is_some_and(|(t, _)| now - *t > window) {
            u.pop_front();
        }
        u.iter().map(|(_, x)| x).sum::<f64>() / u.len() as f64
    };
    let models = shared.models.lock().expect("models").clone();
    let mut waits: Vec<Duration> = {
        let mut w = shared.waits.lock().expect("waits");
        while w.front().is_some_and(|(t, _)| now - *t > window) {
            w.pop_front();
        }
        w.iter().map(|(_, d)| *d).collect()
    };
    let mut queue_depth = 0;
    for m in &models {
        let q = m.queue.lock().expect("queue");
        queue_depth += q.len();
        // Requests still waiting count with their age so far: a stuck queue shows.
        waits.extend(q.iter().map(|j| j.enqueued.elapsed()));
    }
    let mean_queue_wait =
        if waits.is_empty() { Duration::ZERO } else { waits.iter().sum::<Duration>() / waits.len() as u32 };
    Observation {
        tabs: slots.len(),
        utilisation,
        mean_queue_wait,
        queue_depth,
        idle: slots.iter().map(|s| if s.usable() { s.idle_for() } else { Duration::ZERO }).collect(),
        free_memory: super::metrics::system_memory().map(|m| m.available_fraction()).unwrap_or(1.0),
    }
}

/// A hold reason without its figures, so the same situation is logged once, not every tick.
fn strip_numbers(s: &str) -> String {
    s.chars().filter(|c| !c.is_ascii_digit() && *c != '.').collect()
}
