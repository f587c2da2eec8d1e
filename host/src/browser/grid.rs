//! Selenium Grid 4 as the pool sees it: the hub's `/status` (its nodes, their availability, slots,
//! stereotypes and the sessions in them) and its GraphQL (`grid { sessionQueueSize … }`), read with
//! a bounded timeout. What the pool may ask of a Grid follows from that view by pure functions
//! (free slots that offer the capabilities a kind asks for, the node a session landed on, how often
//! an idle session must be touched), unit-tested on what a real Grid 4.48 answered
//! (`tests/data/grid/`).
//!
//! Why the pool counts free slots itself: a new-session request no slot matches waits in the
//! Grid's queue until `--session-request-timeout` (300 s by default), holding the launch and
//! piling up behind it — the Grid's users' best-known failure. The pool asks only when a slot that
//! offers what it needs is free, so "no slot" is a scaling decision, not a queue.

use std::time::Duration;

use serde_json::{Map, Value};

use crate::redact::SecretUrl;

/// How long one read of the hub may take.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// A node's state as the hub reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Availability {
    Up,
    /// Finishing its sessions, taking no new ones; it leaves when they are done.
    Draining,
    /// Anything else (`DOWN`, `UNAVAILABLE`): not to be asked.
    Down,
}

/// One slot of a node: what it offers and the session in it, if any.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GridSlot {
    pub stereotype: Map<String, Value>,
    pub session: Option<String>,
    /// The session's [`OWNER_CAP`]: which host asked for it.
    pub owner: Option<String>,
}

/// A capability every session the host asks of a Grid carries: its host's random id. The Grid
/// echoes it in the session's capabilities (measured on 4.48), so sessions the host no longer
/// holds — a new-session request abandoned at its timeout and served later, a delete that failed
/// while a node's link was down — can be told apart from other users' and deleted.
pub const OWNER_CAP: &str = "tabpool:owner";

#[derive(Debug, Clone, serde::Serialize)]
pub struct GridNode {
    pub id: String,
    pub uri: String,
    pub availability: Availability,
    pub max_sessions: usize,
    /// Sessions idle (no WebDriver command) this long are ended by the node.
    pub session_timeout_s: Option<f64>,
    pub slots: Vec<GridSlot>,
}

impl GridNode {
    pub fn sessions(&self) -> usize {
        self.slots.iter().filter(|s| s.session.is_some()).count()
    }

    /// Slots free to start a session in: at most `max_sessions` run at once on a node, whatever
    /// its slots.
    pub fn free(&self, caps: &Map<String, Value>) -> usize {
        if self.availability != Availability::Up {
            return 0;
        }
        let offering = self.slots.iter().filter(|s| s.session.is_none() && offers(&s.stereotype, caps)).count();
        offering.min(self.max_sessions.saturating_sub(self.sessions()))
    }
}

/// The hub's view: `/status` with the queue length from GraphQL.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GridView {
    pub ready: bool,
    pub message: String,
    pub nodes: Vec<GridNode>,
    /// New-session requests waiting in the Grid's queue.
    pub queued: usize,
}

/// Whether a slot of `stereotype` gives what `caps` ask for. The Grid's own matcher takes a
/// request naming a custom capability (`tabpool:webnn`) to any slot whose stereotype does not
/// name it; the pool is stricter: every `tabpool:` capability asked for must be advertised with
/// the same value, so a node that does not say it has WebNN is not asked for WebNN.
pub fn offers(stereotype: &Map<String, Value>, caps: &Map<String, Value>) -> bool {
    caps.get("browserName").is_none_or(|b| stereotype.get("browserName") == Some(b))
        && caps.iter().filter(|(k, _)| k.starts_with("tabpool:")).all(|(k, v)| stereotype.get(k) == Some(v))
}

/// What a tab measured against the `tabpool:webnn` / `tabpool:webgpu` capabilities it was asked
/// for: a node that advertises an API its browser does not give (no secure context, a flag
/// missing) is named, instead of a model landing on a tab that cannot run it. `None` when the
/// tab has everything asked for.
pub fn unmet(caps: &Map<String, Value>, tab: &shared_proto::Capabilities) -> Option<String> {
    let asked = |k: &str| caps.get(k) == Some(&Value::Bool(true));
    let mut missing = Vec::new();
    if asked("tabpool:webnn") && !tab.webnn.contexts.iter().any(|c| c.ok) {
        missing
            .push(format!("WebNN (navigator.ml {})", if tab.webnn.api_present { "has no context" } else { "absent" }));
    }
    if asked("tabpool:webgpu") && tab.webgpu.adapter.is_none() {
        missing.push(format!("WebGPU ({})", tab.webgpu.error.as_deref().unwrap_or("no adapter")));
    }
    (!missing.is_empty()).then(|| missing.join(", "))
}

impl GridView {
    /// Parse the hub's `/status` answer. Anything else — a plain WebDriver endpoint's status
    /// (no `nodes`), an HTML error page — is an error naming what was found.
    pub fn from_status(status: &Value) -> anyhow::Result<GridView> {
        let v = &status["value"];
        let nodes = v["nodes"].as_array().ok_or_else(|| {
            anyhow::anyhow!("not a Selenium Grid: its /status has no `value.nodes` ({})", short(&status.to_string()))
        })?;
        let nodes = nodes
            .iter()
            .map(|n| {
                let slots = n["slots"]
                    .as_array()
                    .map(|slots| {
                        slots
                            .iter()
                            .map(|s| GridSlot {
                                stereotype: s["stereotype"].as_object().cloned().unwrap_or_default(),
                                session: s["session"]["sessionId"].as_str().map(str::to_string),
                                owner: s["session"]["capabilities"][OWNER_CAP].as_str().map(str::to_string),
                            })
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default();
                GridNode {
                    id: n["id"].as_str().unwrap_or_default().to_string(),
                    uri: n["uri"].as_str().unwrap_or_default().to_string(),
                    availability: match n["availability"].as_str() {
                        Some("UP") => Availability::Up,
                        Some("DRAINING") => Availability::Draining,
                        _ => Availability::Down,
                    },
                    max_sessions: n["maxSessions"].as_u64().map_or(slots.len(), |m| m as usize),
                    session_timeout_s: n["sessionTimeout"].as_f64().map(|ms| ms / 1e3),
                    slots,
                }
            })
            .collect();
        Ok(GridView {
            ready: v["ready"].as_bool().unwrap_or(false),
            message: v["message"].as_str().unwrap_or_default().to_string(),
            nodes,
            queued: 0,
        })
    }

    /// Sessions `owner` asked for that are not in `held` (the sessions its host has open, read
    /// while no launch runs): (session, node URI), to delete.
    pub fn orphans(&self, owner: &str, held: &std::collections::HashSet<String>) -> Vec<(String, String)> {
        self.nodes
            .iter()
            .flat_map(|n| n.slots.iter().map(move |s| (n, s)))
            .filter(|(_, s)| s.owner.as_deref() == Some(owner))
            .filter_map(|(n, s)| s.session.clone().filter(|id| !held.contains(id)).map(|id| (id, n.uri.clone())))
            .collect()
    }

    /// The queue length from the hub's GraphQL answer to [`QUERY`].
    pub fn with_graphql(mut self, answer: &Value) -> anyhow::Result<GridView> {
        let grid = &answer["data"]["grid"];
        self.queued = grid["sessionQueueSize"].as_u64().ok_or_else(|| {
            anyhow::anyhow!("the Grid's GraphQL gave no `grid.sessionQueueSize` ({})", short(&answer.to_string()))
        })? as usize;
        Ok(self)
    }

    /// Sessions that could start now for `caps`, across the Grid. None while requests wait in
    /// the Grid's queue: they would take the slot first.
    pub fn free_for(&self, caps: &Map<String, Value>) -> usize {
        if self.queued > 0 {
            return 0;
        }
        self.nodes.iter().map(|n| n.free(caps)).sum()
    }

    /// The node and slot holding session `id`.
    pub fn session(&self, id: &str) -> Option<(&GridNode, &GridSlot)> {
        self.nodes.iter().find_map(|n| n.slots.iter().find(|s| s.session.as_deref() == Some(id)).map(|s| (n, s)))
    }

    /// How often an idle session must get a WebDriver command so that no node ends it: a third
    /// of the shortest node session timeout, within 5 s … 60 s.
    pub fn keepalive_every(&self) -> Duration {
        let shortest = self.nodes.iter().filter_map(|n| n.session_timeout_s).fold(f64::INFINITY, f64::min);
        let third = if shortest.is_finite() { shortest / 3.0 } else { 60.0 };
        Duration::from_secs_f64(third.clamp(5.0, 60.0))
    }

    /// One line per node, for `doctor --grid` and logs.
    pub fn describe(&self) -> String {
        let mut o = format!(
            "grid: {} ({}), {} node(s), {} queued\n",
            if self.ready { "ready" } else { "not ready" },
            self.message,
            self.nodes.len(),
            self.queued
        );
        for n in &self.nodes {
            let offers: Vec<String> = n
                .slots
                .iter()
                .map(|s| {
                    let mut caps: Vec<String> = s
                        .stereotype
                        .iter()
                        .filter(|(k, _)| *k == "browserName" || k.starts_with("tabpool:"))
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect();
                    caps.sort();
                    caps.join(" ")
                })
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            o.push_str(&format!(
                "  node {} at {}: {:?}, {} of {} sessions in use{}; offers {}\n",
                n.id,
                n.uri,
                n.availability,
                n.sessions(),
                n.max_sessions,
                n.session_timeout_s.map(|s| format!(", session timeout {s:.0} s")).unwrap_or_default(),
                offers.join(" | ")
            ));
        }
        o
    }
}

/// The GraphQL query the pool sends: the queue, and the totals to cross-check `/status`.
pub const QUERY: &str = "{ grid { totalSlots sessionCount maxSession sessionQueueSize } }";

fn short(s: &str) -> String {
    let s: String = s.chars().take(200).collect();
    crate::redact::text(&s)
}

/// A Selenium Grid hub, read over HTTP.
#[derive(Clone)]
pub struct GridClient {
    url: SecretUrl,
}

impl std::fmt::Debug for GridClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GridClient").field("url", &self.url).finish()
    }
}

impl GridClient {
    /// The hub at `url` (its WebDriver URL; a `/wd/hub` suffix is dropped for `/status`).
    pub fn new(url: &SecretUrl) -> GridClient {
        GridClient { url: url.clone() }
    }

    pub fn url(&self) -> &SecretUrl {
        &self.url
    }

    /// `/status` and the GraphQL queue length, now.
    pub async fn view(&self) -> anyhow::Result<GridView> {
        let status = self.json("GET", "/status", None).await?;
        let view = GridView::from_status(&status)?;
        let query = serde_json::json!({ "query": QUERY }).to_string();
        let answer = self.json("POST", "/graphql", Some(query)).await?;
        view.with_graphql(&answer)
    }

    /// Ask the hub to drain node `id` (it takes no new sessions and leaves when its sessions
    /// end). For tests and operators; the pool only reacts to it.
    pub async fn drain(&self, node_id: &str) -> anyhow::Result<()> {
        self.json("POST", &format!("/se/grid/distributor/node/{node_id}/drain"), None).await.map(|_| ())
    }

    /// End session `id` through the hub (WebDriver `DELETE /session/{id}`): its slot is free.
    pub async fn delete_session(&self, id: &str) -> anyhow::Result<()> {
        self.json("DELETE", &format!("/session/{id}"), None).await.map(|_| ())
    }

    async fn json(&self, method: &str, path: &str, body: Option<String>) -> anyhow::Result<Value> {
        use http_body_util::BodyExt;
        let shown = self.url.shown();
        let (base, auth) = split_userinfo(self.url.expose());
        let base = base.trim_end_matches('/').trim_end_matches("/wd/hub");
        let uri: hyper::Uri = format!("{base}{path}").parse().map_err(|e| anyhow::anyhow!("grid URL {shown}: {e}"))?;
        let mut req = hyper::Request::builder().method(method).uri(uri);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        if body.is_some() {
            // The Grid refuses JSON without the charset (measured, DESIGN.md).
            req = req.header("content-type", "application/json; charset=utf-8");
        }
        // The registration secret header (empty: the default Grid has none) lets `drain` through.
        let req = req
            .header("x-registration-secret", "")
            .body(http_body_util::Full::new(bytes::Bytes::from(body.unwrap_or_default())))?;
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http::<http_body_util::Full<bytes::Bytes>>();
        let resp = tokio::time::timeout(READ_TIMEOUT, client.request(req))
            .await
            .map_err(|_| anyhow::anyhow!("the grid at {shown} did not answer {path} within {READ_TIMEOUT:?}"))?
            .map_err(|e| {
                anyhow::anyhow!("the grid at {shown} is unreachable ({path}): {}", crate::redact::text(&e.to_string()))
            })?;
        let code = resp.status().as_u16();
        let bytes = tokio::time::timeout(READ_TIMEOUT, resp.into_body().collect())
            .await
            .map_err(|_| {
                anyhow::anyhow!("the grid at {shown} did not finish answering {path} within {READ_TIMEOUT:?}")
            })??
            .to_bytes();
        let text = String::from_utf8_lossy(&bytes);
        anyhow::ensure!(
            (200..300).contains(&code),
            "the grid at {shown} answered {path} with HTTP {code}: {}",
            short(&text)
        );
        serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("the grid at {shown} answered {path} with no JSON ({e}): {}", short(&text)))
    }
}

/// `http://user:pass@host/…` → (`http://host/…`, `Basic …`).
fn split_userinfo(url: &str) -> (String, Option<String>) {
    use base64::Engine;
    let Some((scheme, rest)) = url.split_once("://") else { return (url.to_string(), None) };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rsplit_once('@') {
        Some((userinfo, host)) => {
            let auth = base64::engine::general_purpose::STANDARD.encode(userinfo);
            (format!("{scheme}://{host}{}", &rest[authority_end..]), Some(format!("Basic {auth}")))
        }
        None => (url.to_string(), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(name: &str) -> Value {
        let p = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/grid/");
        serde_json::from_str(&std::fs::read_to_string(format!("{p}{name}")).unwrap()).unwrap()
    }

    fn caps(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn a_real_status_gives_nodes_slots_sessions_and_the_queue() {
        // A hub with one node of two chrome slots, both in use (Grid 4.48).
        let view =
            GridView::from_status(&data("status_busy.json")).unwrap().with_graphql(&data("gql_busy.json")).unwrap();
        // A Grid with no free slot calls itself not ready.
        assert!(!view.ready, "{}", view.message);
        assert_eq!(view.nodes.len(), 1);
        let n = &view.nodes[0];
        assert_eq!(n.uri, "http://127.0.0.1:5555");
        assert_eq!((n.availability.clone(), n.max_sessions, n.sessions()), (Availability::Up, 2, 2));
        assert_eq!(n.session_timeout_s, Some(60.0));
        assert_eq!(view.queued, 0);
        let chrome = caps(serde_json::json!({"browserName": "chrome"}));
        assert_eq!(view.free_for(&chrome), 0, "both slots hold sessions");
        let id = n.slots[0].session.clone().unwrap();
        assert_eq!(view.session(&id).unwrap().0.id, n.id);
        assert!(view.session("no-such-session").is_none());
        assert_eq!(view.keepalive_every(), Duration::from_secs(20));
    }

    #[test]
    fn sessions_a_host_asked_for_and_no_longer_holds_are_orphans() {
        // The Grid echoes a requested custom capability in the session's capabilities: the
        // recorded busy session carries `tabpool:webgpu`, asked for, advertised by no stereotype.
        let mut status = data("status_busy.json");
        let slots = status["value"]["nodes"][0]["slots"].as_array_mut().unwrap();
        assert_eq!(slots[0]["session"]["capabilities"]["tabpool:webgpu"], true);
        assert!(slots[0]["stereotype"].get("tabpool:webgpu").is_none());
        // Both sessions asked by host "a1"; so the owner is recorded as the Grid would echo it.
        let ids: Vec<String> = slots.iter().map(|s| s["session"]["sessionId"].as_str().unwrap().to_string()).collect();
        for s in slots.iter_mut() {
            s["session"]["capabilities"][OWNER_CAP] = "a1".into();
        }
        let view = GridView::from_status(&status).unwrap();
        let held = |ids: &[&String]| ids.iter().map(|s| s.to_string()).collect();
        // Held by the host: nothing to delete; one dropped: that one; another host's: none.
        assert!(view.orphans("a1", &held(&[&ids[0], &ids[1]])).is_empty());
        assert_eq!(view.orphans("a1", &held(&[&ids[1]])), vec![(ids[0].clone(), "http://127.0.0.1:5555".to_string())]);
        assert!(view.orphans("b2", &held(&[])).is_empty());
        // Sessions without the capability (other clients of the Grid) are never touched.
        let plain = GridView::from_status(&data("status_busy.json")).unwrap();
        assert!(plain.orphans("a1", &held(&[])).is_empty());
    }

    #[test]
    fn a_draining_node_offers_nothing() {
        let view = GridView::from_status(&data("status_draining.json")).unwrap();
        assert!(!view.ready);
        assert_eq!(view.nodes[0].availability, Availability::Draining);
        let mut free = view.clone();
        free.nodes[0].slots.iter_mut().for_each(|s| s.session = None);
        assert_eq!(free.free_for(&caps(serde_json::json!({"browserName": "chrome"}))), 0);
        free.nodes[0].availability = Availability::Up;
        assert_eq!(free.free_for(&caps(serde_json::json!({"browserName": "chrome"}))), 2);
        // Queued requests take free slots first.
        free.queued = 1;
        assert_eq!(free.free_for(&caps(serde_json::json!({"browserName": "chrome"}))), 0);
    }

    #[test]
    fn custom_capabilities_must_be_advertised_with_the_same_value() {
        // The recorded node advertises `tabpool:webnn: false`.
        let view = GridView::from_status(&data("status_draining.json")).unwrap();
        let st = &view.nodes[0].slots[0].stereotype;
        assert!(offers(st, &caps(serde_json::json!({"browserName": "chrome"}))));
        assert!(offers(st, &caps(serde_json::json!({"browserName": "chrome", "tabpool:webnn": false}))));
        assert!(!offers(st, &caps(serde_json::json!({"browserName": "chrome", "tabpool:webnn": true}))));
        // Not advertised at all: not asked (the Grid itself would place it there).
        assert!(!offers(st, &caps(serde_json::json!({"browserName": "chrome", "tabpool:webgpu": true}))));
        assert!(!offers(st, &caps(serde_json::json!({"browserName": "firefox"}))));
        // Other vendors' capabilities are the Grid's business.
        assert!(offers(st, &caps(serde_json::json!({"browserName": "chrome", "goog:chromeOptions": {"args": []}}))));
    }

    #[test]
    fn a_tab_without_the_api_its_node_advertises_is_named() {
        use shared_proto::{AdapterInfo, Capabilities, WebNnContextProbe};
        let asked = caps(serde_json::json!({"browserName": "chrome", "tabpool:webnn": true, "tabpool:webgpu": true}));
        let mut tab = Capabilities::default();
        let why = unmet(&asked, &tab).unwrap();
        assert!(why.contains("WebNN (navigator.ml absent)") && why.contains("WebGPU"), "{why}");
        tab.webnn.api_present = true;
        tab.webnn.contexts.push(WebNnContextProbe { device_type: "cpu".into(), ok: true, error: None });
        tab.webgpu.adapter = Some(AdapterInfo::default());
        assert_eq!(unmet(&asked, &tab), None);
        // Nothing asked, nothing required.
        assert_eq!(unmet(&caps(serde_json::json!({"browserName": "chrome"})), &Capabilities::default()), None);
    }

    #[test]
    fn what_is_not_a_grid_is_named() {
        // A plain chromedriver's /status.
        let e = GridView::from_status(&serde_json::json!({"value": {"ready": true, "message": "ChromeDriver ready"}}))
            .unwrap_err();
        assert!(format!("{e}").contains("not a Selenium Grid"), "{e}");
        let e = GridView::from_status(&data("status_busy.json"))
            .unwrap()
            .with_graphql(&serde_json::json!({"errors": [{"message": "bad"}]}))
            .unwrap_err();
        assert!(format!("{e}").contains("sessionQueueSize"), "{e}");
    }

    #[test]
    fn credentials_become_basic_auth_and_never_appear_in_errors() {
        let (base, auth) = split_userinfo("http://ann:s3cret@grid:4444/wd/hub");
        assert_eq!(base, "http://grid:4444/wd/hub");
        assert_eq!(auth.as_deref(), Some("Basic YW5uOnMzY3JldA=="));
        assert_eq!(split_userinfo("http://grid:4444").1, None);
    }

    /// A hub that is not there, one that answers 502, one that answers HTML: each a clear error
    /// naming the grid (its credentials redacted) and what went wrong.
    #[tokio::test]
    async fn a_hub_that_fails_is_named_with_what_it_did() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // Nothing listens on a port just closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let gone = GridClient::new(&SecretUrl::new(format!("http://u:pw@127.0.0.1:{port}")));
        let e = format!("{:#}", gone.view().await.unwrap_err());
        assert!(e.contains("unreachable") && !e.contains("pw"), "{e}");

        for (reply, want) in [
            ("HTTP/1.1 502 Bad Gateway\r\ncontent-length: 7\r\n\r\nupstrm!", "HTTP 502"),
            ("HTTP/1.1 200 OK\r\ncontent-length: 13\r\n\r\n<html></html>", "no JSON"),
        ] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let server = tokio::spawn(async move {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 2048];
                let _ = s.read(&mut buf).await;
                s.write_all(reply.as_bytes()).await.unwrap();
            });
            let e = format!(
                "{:#}",
                GridClient::new(&SecretUrl::new(format!("http://u:pw@{addr}"))).view().await.unwrap_err()
            );
            assert!(e.contains(want) && e.contains("***@") && !e.contains("pw"), "{e}");
            server.await.unwrap();
        }
    }
}
