//! Tabs that pages lend (`serve --join`): admitted with what their join token grants, loaded
//! with the models it names, checked against trusted tabs (`policy::verification`), and sent
//! away — quarantined — at the first result that disagrees.
//!
//! A lent tab is a page someone else controls. It sees the weights of the models its token names
//! and the inputs of the batches and streams it runs; it never sees the API key (the API is the
//! host's, not the tab socket's), nor any other tab's traffic. The pool never answers a client
//! from a lent tab's result that a check found wrong: a checked batch is answered only after the
//! trusted run agreed (else from the trusted run), a checked stream's tokens are released only
//! once the trusted copy produced the same ones. Unchecked results (after `verify_first`, at
//! `1 − verify_rate`) are answered as they come: that is the price of lending, stated in the
//! README.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use super::state::{ModelEntry, Replica, Shared, Slot};
use crate::browser::{BrowserKind, KindSpec};
use crate::server::socket::Joined;
use crate::store::Record;

/// The kind name of every lent tab.
pub const LENT_KIND: &str = "joined";

/// What the pool keeps about a lent tab.
pub(crate) struct Lent {
    pub token: String,
    pub models: Vec<String>,
    pub origin: String,
    /// Results it produced that were answered or checked (the sampling's count).
    pub served: AtomicU64,
    /// Results checked on a trusted tab, and how many of those agreed.
    pub checked: AtomicU64,
    pub agreed: AtomicU64,
    pub quarantined: AtomicBool,
}

impl Lent {
    pub fn allows(&self, model: &str) -> bool {
        self.models.iter().any(|m| m.eq_ignore_ascii_case(model))
    }
}

/// Take lent tabs as they join, each admitted on its own (loading weights takes a while).
pub(crate) async fn run(shared: Arc<Shared>, mut arrivals: tokio::sync::mpsc::UnboundedReceiver<Joined>) {
    while let Some(j) = arrivals.recv().await {
        if shared.closed.load(Ordering::SeqCst) {
            j.tab.disconnect();
            continue;
        }
        let s = shared.clone();
        shared.spawn_background(async move { admit(&s, j).await });
    }
}

fn lent_kind() -> KindSpec {
    KindSpec { name: LENT_KIND.into(), ..KindSpec::local(BrowserKind::Remote) }
}

/// A lent tab joins: a slot of kind `joined`, a replica of each model its token names and the
/// pool holds; routable once they are loaded.
async fn admit(shared: &Arc<Shared>, j: Joined) {
    let lent = Lent {
        token: j.grant.token_id.clone(),
        models: j.grant.models.clone(),
        origin: j.origin.clone(),
        served: AtomicU64::new(0),
        checked: AtomicU64::new(0),
        agreed: AtomicU64::new(0),
        quarantined: AtomicBool::new(false),
    };
    shared.keep(Record::Tab {
        tab: Some(j.tab.id()),
        kind: LENT_KIND.into(),
        event: "joined".into(),
        detail: format!(
            "token {} from {}; WebGPU: {}; WebNN: {}",
            j.grant.token_id,
            j.origin,
            crate::tab::adapter_line(j.tab.caps()),
            crate::tab::webnn_line(j.tab.caps())
        ),
        capabilities: serde_json::to_string(j.tab.caps()).ok(),
    });
    let slot = shared.new_slot_lent(j.tab, lent_kind(), Some(lent));
    slot.recovering.store(true, Ordering::SeqCst);
    shared.tabs.lock().expect("tabs").push(slot.clone());
    let models: Vec<Arc<ModelEntry>> = shared.models.lock().expect("models").clone();
    let mut loaded = Vec::new();
    for m in models.iter().filter(|m| m.may_hold(&slot) && !shared.spans_tabs(&m.family)) {
        if shared.add_replica(m, &slot).await {
            loaded.push(m.name.clone());
        }
    }
    *slot.last_active.lock().expect("slot") = Instant::now();
    slot.recovering.store(false, Ordering::SeqCst);
    shared.log(
        "join",
        Some(LENT_KIND),
        Some(slot.id),
        &format!("lent by {} with token {}: serving {loaded:?}", j.origin, j.grant.token_id),
    );
    shared.wake_all();
}

/// A lent tab is gone (its page closed, its socket dropped, or it was quarantined): out of the
/// pool at once; its requests were failed with its socket and are retried elsewhere.
pub(crate) fn leave(shared: &Shared, slot: &Arc<Slot>, why: &str) {
    slot.retired.store(true, Ordering::SeqCst);
    for m in shared.models.lock().expect("models").iter() {
        m.replicas.lock().expect("replicas").retain(|r| !Arc::ptr_eq(&r.slot, slot));
    }
    shared.tabs.lock().expect("tabs").retain(|s| !Arc::ptr_eq(s, slot));
    if slot.tab.is_connected() {
        slot.tab.disconnect();
    }
    shared.keep(Record::Tab {
        tab: Some(slot.id),
        kind: LENT_KIND.into(),
        event: "left".into(),
        detail: crate::redact::text(why),
        capabilities: None,
    });
    shared.log("leave", Some(LENT_KIND), Some(slot.id), why);
    shared.wake_all();
}

/// Whether the result `r` is about to produce must be checked on a trusted tab (counted as
/// served either way). Trusted tabs' results never are.
pub(crate) fn check_due(shared: &Shared, r: &Replica) -> bool {
    let Some(lent) = &r.slot.lent else { return false };
    let served = lent.served.fetch_add(1, Ordering::SeqCst);
    crate::policy::verification::due(shared.cfg.lending.sampling(), served, rand::random::<f64>())
}

/// Book a check's outcome; a disagreement quarantines the tab: it is closed with the reason and
/// leaves the pool, so everything it was running is retried or replayed on other tabs.
pub(crate) fn checked(shared: &Shared, m: &ModelEntry, slot: &Arc<Slot>, outcome: Result<(), String>) {
    let Some(lent) = &slot.lent else { return };
    lent.checked.fetch_add(1, Ordering::SeqCst);
    let result = if outcome.is_ok() { "agreed" } else { "disagreed" };
    shared.telemetry.count("tabpool_lent_checks_total", &[("model", m.name.as_str()), ("result", result)], 1);
    match outcome {
        Ok(()) => {
            lent.agreed.fetch_add(1, Ordering::SeqCst);
        }
        Err(why) => {
            if lent.quarantined.swap(true, Ordering::SeqCst) {
                return;
            }
            let why = format!("quarantined: {} disagreed with a trusted tab ({why})", m.name);
            tracing::warn!(tab = slot.id, token = lent.token, origin = lent.origin, "lent tab {why}");
            shared.telemetry.count("tabpool_lent_quarantined_total", &[("model", m.name.as_str())], 1);
            slot.tab.disconnect_because("quarantined: its results disagreed with a trusted tab");
            leave(shared, slot, &why);
        }
    }
}

/// A trusted replica (not lent) of `m` other than `not`, usable now, fewest in flight first: where
/// a lent tab's batch is checked. It runs beside that replica's own work (a tab takes more than
/// one call at once), so a check never waits for a free place.
pub(crate) fn trusted_replica(m: &ModelEntry, not: u64) -> Option<Arc<Replica>> {
    let reps = m.replicas.lock().expect("replicas");
    reps.iter()
        .filter(|r| r.slot.lent.is_none() && r.slot.serial != not && r.slot.usable())
        .min_by_key(|r| (r.slot.in_flight.load(Ordering::SeqCst), r.slot.id))
        .cloned()
}

/// Whether a lent replica may take work: only while a trusted replica of the same model could
/// check it.
pub(crate) fn checkable(m: &ModelEntry, r: &Replica) -> bool {
    r.slot.lent.is_none() || trusted_replica(m, r.slot.serial).is_some()
}
