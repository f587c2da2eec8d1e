//! The watchdog: notices failed tabs and starts their recovery. A closed socket (renderer crash,
//! browser exit, dropped connection, WebDriver session gone with its browser) is seen at once;
//! a hung tab by heartbeats — a tab silent for `heartbeat_interval_ms` is pinged, and
//! `heartbeat_misses` unanswered pings in a row make it unresponsive.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::state::{Shared, Slot};
use crate::policy::recovery::Category;

pub(crate) async fn run(shared: Arc<Shared>) {
    let h = &shared.cfg.health;
    let interval = Duration::from_millis(h.heartbeat_interval_ms.max(20));
    // Socket loss needs no ping to be seen: look often, ping only silent tabs.
    let tick = interval.min(Duration::from_millis(100));
    loop {
        tokio::time::sleep(tick).await;
        if shared.closed.load(Ordering::SeqCst) {
            return;
        }
        for slot in shared.slots() {
            if slot.retired.load(Ordering::SeqCst) || slot.recovering.load(Ordering::SeqCst) {
                continue;
            }
            if !slot.tab.is_connected() {
                let s = shared.clone();
                shared.spawn_background(async move { s.recover(slot, Category::Connection, "socket closed").await });
            } else if slot.tab.silent_for() >= interval && !slot.pinging.swap(true, Ordering::SeqCst) {
                shared.spawn_background(heartbeat(shared.clone(), slot));
            }
        }
    }
}

async fn heartbeat(shared: Arc<Shared>, slot: Arc<Slot>) {
    let h = &shared.cfg.health;
    let ok = slot.tab.ping(Duration::from_millis(h.heartbeat_timeout_ms.max(1))).await.is_ok();
    slot.pinging.store(false, Ordering::SeqCst);
    if ok {
        slot.missed_heartbeats.store(0, Ordering::SeqCst);
        return;
    }
    let missed = slot.missed_heartbeats.fetch_add(1, Ordering::SeqCst) + 1;
    tracing::warn!(tab = slot.id, missed, "missed heartbeat");
    if missed >= h.heartbeat_misses && slot.tab.is_connected() {
        let detail = format!("{missed} heartbeats missed ({} ms each)", h.heartbeat_timeout_ms);
        shared.recover(slot, Category::Timeout, &detail).await;
    }
}
