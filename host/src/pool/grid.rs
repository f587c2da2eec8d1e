//! The pool on Selenium Grids: which remote kinds are Grids, where each of their tabs landed
//! (node id and URI, from the session id in the hub's `/status`), whether a new session may be
//! asked for at all (a free slot that offers the kind's capabilities, nothing queued), and a
//! watcher that keeps idle sessions alive within the nodes' `--session-timeout`, moves tabs off
//! nodes the Grid reports DRAINING, and keeps the latest view for `/status`.
//!
//! A remote kind is taken for a Grid when its `/status` lists nodes; a plain WebDriver endpoint
//! (one chromedriver) is remote without any of this.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::browser::grid::{Availability, GridClient, GridView};
use crate::browser::session::KeepAlive;
use crate::browser::{BrowserKind, KindSpec};
use crate::policy::placement::node_has_room;

use super::state::{Shared, Slot};

/// How often the watcher reads each Grid.
const WATCH_EVERY: Duration = Duration::from_secs(5);

/// The node a tab's session landed on.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NodeRef {
    pub id: String,
    pub uri: String,
}

/// A remote tab's WebDriver session: its id, the node holding it (on a Grid) and when it last
/// had a WebDriver command.
pub(crate) struct Placement {
    pub session: String,
    pub node: Mutex<Option<NodeRef>>,
    keepalive: KeepAlive,
    touched: Mutex<Instant>,
}

impl Placement {
    pub fn node(&self) -> Option<NodeRef> {
        self.node.lock().expect("node").clone()
    }
}

/// The pool's Grids: a client per remote kind (until it proves not to be a Grid) and the latest
/// view of each.
#[derive(Default)]
pub(crate) struct Grids {
    clients: HashMap<String, GridClient>,
    /// Kinds whose endpoint answered `/status` without nodes: plain WebDriver, not a Grid.
    plain: Mutex<Vec<String>>,
    views: Mutex<HashMap<String, GridView>>,
}

impl Grids {
    pub fn new(kinds: &[KindSpec]) -> Grids {
        let clients = kinds
            .iter()
            .filter(|k| k.browser == BrowserKind::Remote)
            .filter_map(|k| k.url.as_ref().map(|u| (k.name.clone(), GridClient::new(u))))
            .collect();
        Grids { clients, ..Default::default() }
    }

    /// The latest view of every Grid, by kind (for `/status`).
    pub fn views(&self) -> Vec<(String, GridView)> {
        let mut v: Vec<(String, GridView)> =
            self.views.lock().expect("views").iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    fn client(&self, kind: &str) -> Option<&GridClient> {
        if self.plain.lock().expect("plain").iter().any(|k| k == kind) {
            return None;
        }
        self.clients.get(kind)
    }

    /// The Grid's view now, or `None` for a kind that is not a Grid. An endpoint that fails to
    /// answer is an error naming it.
    async fn read(&self, kind: &str) -> anyhow::Result<Option<GridView>> {
        let Some(client) = self.client(kind) else { return Ok(None) };
        match client.view().await {
            Ok(v) => {
                self.views.lock().expect("views").insert(kind.to_string(), v.clone());
                Ok(Some(v))
            }
            Err(e) if format!("{e}").contains("not a Selenium Grid") => {
                tracing::info!(kind, "{e}: a plain remote WebDriver endpoint");
                self.plain.lock().expect("plain").push(kind.to_string());
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

/// Before asking a Grid for a session of `kind`: a slot that offers what the kind asks for must
/// be free and nothing queued ahead, or the request would wait in the Grid's queue; and it must
/// be on a node with room — fewer of the pool's tabs than cores (`policy::placement`). The
/// Grid's slot selector puts a session on the least loaded node that matches, so the pool lands
/// on a node with room whenever one has a free slot.
pub(crate) async fn may_ask(shared: &Shared, kind: &KindSpec) -> anyhow::Result<()> {
    let Some(view) = shared.grids.read(&kind.name).await? else { return Ok(()) };
    let caps = kind.asked_capabilities();
    // The pool's tabs per node, and the cores their browsers report there.
    let mut ours: HashMap<String, (usize, u32)> = HashMap::new();
    for s in shared.slots() {
        if let Some(node) = s.placement.lock().expect("placement").as_ref().and_then(|p| p.node()) {
            let e = ours.entry(node.id).or_default();
            e.0 += 1;
            e.1 = e.1.max(s.tab.caps().hardware_concurrency);
        }
    }
    let room = |id: &str| ours.get(id).is_none_or(|&(tabs, cores)| node_has_room(tabs, Some(cores)));
    let free: usize =
        if view.queued > 0 { 0 } else { view.nodes.iter().filter(|n| room(&n.id)).map(|n| n.free(&caps)).sum() };
    if free > 0 {
        return Ok(());
    }
    let full = view.free_for(&caps);
    if full > 0 {
        anyhow::bail!(
            "the grid at {}: its {full} free slot(s) offering {} are on nodes whose cores the pool's tabs already use (a tab per core); not asking",
            kind.url.as_ref().map(|u| u.shown()).unwrap_or_default(),
            serde_json::Value::Object(caps),
        );
    }
    let up: Vec<&crate::browser::grid::GridNode> =
        view.nodes.iter().filter(|n| n.availability == Availability::Up).collect();
    let offering: usize =
        up.iter().flat_map(|n| &n.slots).filter(|s| crate::browser::grid::offers(&s.stereotype, &caps)).count();
    let used: usize = up
        .iter()
        .flat_map(|n| &n.slots)
        .filter(|s| s.session.is_some() && crate::browser::grid::offers(&s.stereotype, &caps))
        .count();
    anyhow::bail!(
        "the grid at {} has no free slot offering {}: {used} of {offering} such slots in use on {} UP node(s) of {}, {} request(s) queued; not asking (the request would wait in the grid's queue)",
        kind.url.as_ref().map(|u| u.shown()).unwrap_or_default(),
        serde_json::Value::Object(caps),
        up.len(),
        view.nodes.len(),
        view.queued
    )
}

/// After a remote tab of `kind` joined: its session id and keepalive handle, and on a Grid the
/// node that holds it. A tab without an API its kind asks for (`tabpool:webnn = true`, measured
/// in the tab) is an error. A Grid may place a request naming a custom capability on a node that does
/// not advertise it (its matcher ignores names a stereotype lacks): such a landing is an error,
/// and the caller closes the tab.
pub(crate) async fn place(
    shared: &Shared,
    kind: &KindSpec,
    tab_id: u64,
    caps: &shared_proto::Capabilities,
) -> anyhow::Result<Option<Arc<Placement>>> {
    if kind.browser != BrowserKind::Remote {
        return Ok(None);
    }
    let session = match shared.host.lock().await.as_ref() {
        Some(h) => h.webdriver_session(tab_id).await,
        None => None,
    };
    let Some((Some(session), keepalive)) = session else { return Ok(None) };
    if let Some(why) = crate::browser::grid::unmet(&kind.asked_capabilities(), caps) {
        anyhow::bail!("tab {tab_id} of kind {} was asked for what its browser lacks: {why}", kind.name);
    }
    let placement =
        Arc::new(Placement { session, node: Mutex::new(None), keepalive, touched: Mutex::new(Instant::now()) });
    if let Some(view) = shared.grids.read(&kind.name).await.unwrap_or(None)
        && let Some((node, slot)) = view.session(&placement.session)
    {
        let caps = kind.asked_capabilities();
        anyhow::ensure!(
            crate::browser::grid::offers(&slot.stereotype, &caps),
            "the grid placed tab {tab_id} on node {} whose slot does not advertise {} (its stereotype: {})",
            node.uri,
            serde_json::Value::Object(caps),
            serde_json::Value::Object(slot.stereotype.clone())
        );
        *placement.node.lock().expect("node") = Some(NodeRef { id: node.id.clone(), uri: node.uri.clone() });
    }
    Ok(Some(placement))
}

/// Every `WATCH_EVERY`: read each Grid the pool's tabs are on; resolve tabs whose node is not
/// known yet; touch sessions idle for a third of the nodes' session timeout; retire tabs on
/// DRAINING nodes (their requests finish first; the scaler refills `min_tabs` from free slots).
pub(crate) async fn run(shared: Arc<Shared>) {
    let kinds: Vec<String> = shared.grids.clients.keys().cloned().collect();
    if kinds.is_empty() {
        return;
    }
    loop {
        tokio::time::sleep(WATCH_EVERY).await;
        if shared.closed.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        for kind in &kinds {
            let view = match shared.grids.read(kind).await {
                Ok(Some(v)) => v,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(kind, "reading the grid: {e:#}");
                    continue;
                }
            };
            reap_orphans(&shared, kind, &view).await;
            let every = view.keepalive_every();
            let slots: Vec<Arc<Slot>> = shared.slots().into_iter().filter(|s| s.kind.name == *kind).collect();
            for slot in slots {
                let Some(p) = slot.placement.lock().expect("placement").clone() else { continue };
                let Some((node, _)) = view.session(&p.session) else { continue };
                *p.node.lock().expect("node") = Some(NodeRef { id: node.id.clone(), uri: node.uri.clone() });
                if node.availability == Availability::Draining && slot.usable() {
                    let (s, why) = (shared.clone(), format!("grid node {} is draining", node.uri));
                    shared.spawn_background(async move { s.retire(&slot, "drain", &why).await });
                    continue;
                }
                let due = p.touched.lock().expect("touched").elapsed() >= every;
                if due {
                    // Bounded (10 s) and on its own task: a slow node holds nobody.
                    tokio::spawn(async move {
                        match p.keepalive.touch().await {
                            Ok(()) => *p.touched.lock().expect("touched") = Instant::now(),
                            Err(e) => tracing::warn!(tab = slot.id, "{e:#}"),
                        }
                    });
                }
            }
        }
    }
}

/// Delete the Grid sessions this host asked for and no longer holds (an abandoned new-session
/// request served later, a delete that failed while the node was unreachable). Read while no
/// launch runs (launches hold the host), so a session being set up is never taken for one.
async fn reap_orphans(shared: &Shared, kind: &str, view: &GridView) {
    let orphans = {
        let Ok(host) = shared.host.try_lock() else { return };
        let Some(host) = host.as_ref() else { return };
        let Some(held) = host.webdriver_sessions().await else { return };
        view.orphans(host.owner(), &held)
    };
    let Some(client) = shared.grids.clients.get(kind) else { return };
    for (session, node) in orphans {
        match client.delete_session(&session).await {
            Ok(()) => {
                shared.log("reap", Some(kind), None, &format!("deleted session {session} on {node}: no tab holds it"))
            }
            Err(e) => tracing::debug!(kind, "deleting orphaned session {session} on {node}: {e:#}"),
        }
    }
}
