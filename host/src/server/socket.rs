//! The tab socket endpoint: Origin check at the HTTP upgrade, then a `Hello` that must carry the
//! protocol version and the per-tab secret from the page URL. Anything else is closed and
//! logged; one bad peer never affects the host or other tabs.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use shared_proto::{Frame, Limits, PROTOCOL_VERSION, RejectReason, ToHost, ToTab, decode, encode};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, http};

use crate::tab::{Tab, TabError, TabShared};

/// How long a peer may take between TCP accept and its `Hello`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(15);

/// What an unauthenticated peer may send: one `Hello`, under `Limits::PRE_AUTH` (64 KiB, no
/// tensors). Tungstenite buffers a whole message before we see it, so without this any local
/// process could make the host hold 256 MiB per connection before proving anything.
const HELLO_MAX_BYTES: usize = Limits::PRE_AUTH.max_frame_bytes;

/// Connections the endpoint holds that have not yet authenticated (from accept until their
/// `Hello` is judged). Past it a connection is closed at once and counted as refused, so a flood
/// of idle connections cannot exhaust the host's descriptors or memory; each one held gives its
/// place back within two `HELLO_TIMEOUT`s (upgrade, then `Hello`). Authenticated tabs are not
/// counted: the pool bounds those.
pub const PRE_AUTH_CONNECTIONS: usize = 64;

/// A non-binary first message is shown this long at most in the log.
const LOGGED_BYTES: usize = 120;

/// A tab the host launched and is waiting for.
pub(crate) struct Expected {
    pub token: String,
    pub arrived: oneshot::Sender<Tab>,
}

/// The path a lending page connects to (`serve --join`); every other path is for launched tabs.
pub const JOIN_PATH: &str = "/join";

pub(crate) struct Registry {
    pub allowed_origin: String,
    pub expected: Mutex<HashMap<u64, Expected>>,
    pub counters: Counters,
    /// Tab ids, for launched and joined tabs alike.
    pub next_tab: AtomicU64,
    /// Open only with `serve --join`.
    pub door: Option<JoinDoor>,
}

/// Where lending pages come in: their tokens, and the pool's end of the tabs that joined.
pub(crate) struct JoinDoor {
    pub tokens: super::join::TokenFile,
    pub arrivals: mpsc::UnboundedSender<Joined>,
    /// Tabs joined now, by token id (a token's `max_tabs`).
    pub joined: Mutex<HashMap<String, usize>>,
}

/// A tab a page lent: untrusted, from any origin, with what its token grants.
pub struct Joined {
    pub tab: Tab,
    pub grant: super::join::Grant,
    /// The lending page's Origin header, for the log and status.
    pub origin: String,
}

/// What the endpoint refused, for tests and `doctor`.
#[derive(Default)]
pub struct Counters {
    pub accepted: AtomicU64,
    pub refused: AtomicU64,
}

pub(crate) async fn listen(
    registry: Arc<Registry>,
    ip: std::net::IpAddr,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind((ip, 0)).await?;
    let addr = listener.local_addr()?;
    let places = Arc::new(Semaphore::new(PRE_AUTH_CONNECTIONS));
    let task = tokio::spawn(async move {
        // Over-cap refusals are logged at most once a second (a flood must not flood the log).
        let mut over_cap = 0u64;
        let mut logged: Option<std::time::Instant> = None;
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => match places.clone().try_acquire_owned() {
                    Ok(place) => {
                        tokio::spawn(handle(stream, peer, registry.clone(), place));
                    }
                    Err(_) => {
                        drop(stream);
                        registry.counters.refused.fetch_add(1, Ordering::Relaxed);
                        over_cap += 1;
                        if logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                            tracing::warn!(
                                %peer,
                                "refused socket peer: {PRE_AUTH_CONNECTIONS} connections are already waiting to \
                                 authenticate ({over_cap} refused so far for this)"
                            );
                            logged = Some(std::time::Instant::now());
                        }
                    }
                },
                Err(e) => {
                    tracing::warn!("socket accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
    Ok((addr, task))
}

fn refuse(registry: &Registry, peer: SocketAddr, why: &str) {
    registry.counters.refused.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(%peer, "refused socket peer: {why}");
}

/// One connection, from accept; `place` (one of [`PRE_AUTH_CONNECTIONS`]) is held until its
/// `Hello` is judged.
async fn handle(stream: TcpStream, peer: SocketAddr, registry: Arc<Registry>, place: OwnedSemaphorePermit) {
    let allowed = registry.allowed_origin.clone();
    let door_open = registry.door.is_some();
    // A lending page (`/join`) comes from any origin: its join token is what admits it. Every
    // other path is for the pages this host opened, from its own page server only.
    let lender_origin: Arc<Mutex<Option<String>>> = Arc::default();
    let lender = lender_origin.clone();
    // The callback signature is tungstenite's; its error type is not ours to shrink.
    #[allow(clippy::result_large_err)]
    let check_origin = move |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        let origin = req.headers().get("origin").and_then(|o| o.to_str().ok());
        if req.uri().path() == JOIN_PATH {
            if !door_open {
                let mut e =
                    ErrorResponse::new(Some("this host takes no lent tabs (start it with serve --join)".into()));
                *e.status_mut() = http::StatusCode::NOT_FOUND;
                return Err(e);
            }
            *lender.lock().expect("lender") = Some(origin.unwrap_or("none").to_string());
            return Ok(resp);
        }
        match origin {
            Some(o) if o == allowed => Ok(resp),
            other => {
                let mut e = ErrorResponse::new(Some(format!("origin {other:?} is not allowed")));
                *e.status_mut() = http::StatusCode::FORBIDDEN;
                Err(e)
            }
        }
    };
    let small =
        WebSocketConfig::default().max_message_size(Some(HELLO_MAX_BYTES)).max_frame_size(Some(HELLO_MAX_BYTES));
    let mut ws = match tokio::time::timeout(
        HELLO_TIMEOUT,
        tokio_tungstenite::accept_hdr_async_with_config(stream, check_origin, Some(small)),
    )
    .await
    {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => return refuse(&registry, peer, &format!("upgrade failed: {e}")),
        Err(_) => return refuse(&registry, peer, "no upgrade in time"),
    };

    let hello = match tokio::time::timeout(HELLO_TIMEOUT, ws.next()).await {
        Ok(Some(Ok(Message::Binary(b)))) => match decode::<ToHost>(b, &Limits::PRE_AUTH) {
            Ok(Frame { msg: ToHost::Hello(h), .. }) => *h,
            Ok(_) => return refuse(&registry, peer, "first frame is not Hello"),
            Err(e) => return refuse(&registry, peer, &format!("malformed first frame: {e}")),
        },
        Ok(Some(Ok(other))) => {
            return refuse(&registry, peer, &format!("non-binary first message: {}", shorten(&other)));
        }
        Ok(Some(Err(e))) => return refuse(&registry, peer, &format!("socket error before Hello: {e}")),
        Ok(None) => return refuse(&registry, peer, "closed before Hello"),
        Err(_) => return refuse(&registry, peer, "no Hello in time"),
    };
    // Authenticated tabs get the protocol's full frame size. Tungstenite cannot change a
    // socket's limits in place, so the stream is wrapped again; nothing is lost, because a tab
    // sends nothing after `Hello` until our `Welcome`.
    let full = WebSocketConfig::default()
        .max_message_size(Some(Limits::DEFAULT.max_frame_bytes))
        .max_frame_size(Some(Limits::DEFAULT.max_frame_bytes));
    let (mut sink, mut stream) =
        tokio_tungstenite::WebSocketStream::from_raw_socket(ws.into_inner(), Role::Server, Some(full)).await.split();

    let lender_origin = lender_origin.lock().expect("lender").take();
    let verdict = if hello.protocol_version != PROTOCOL_VERSION {
        Err((
            RejectReason::VersionMismatch,
            format!("tab speaks protocol {}, host speaks {PROTOCOL_VERSION}: rebuild the page", hello.protocol_version),
        ))
    } else if let (Some(origin), Some(door)) = (&lender_origin, &registry.door) {
        // Judged and counted under one lock: two pages racing for a token's last place cannot
        // both get it.
        let mut joined = door.joined.lock().expect("joined");
        match door.tokens.check(&hello.token, |id| joined.get(id).copied().unwrap_or(0)) {
            Ok(grant) => {
                *joined.entry(grant.token_id.clone()).or_default() += 1;
                let id = registry.next_tab.fetch_add(1, Ordering::SeqCst);
                Ok(Arrival::Lent { id, grant, origin: origin.clone() })
            }
            Err(refusal) => Err((RejectReason::BadToken, refusal.to_string())),
        }
    } else {
        let mut expected = registry.expected.lock().expect("registry lock");
        match expected.get(&hello.tab_id) {
            None => Err((RejectReason::UnknownTab, format!("tab {} was not launched or already joined", hello.tab_id))),
            Some(e) if !crate::secret::same(&hello.token, &e.token) => {
                Err((RejectReason::BadToken, format!("wrong token for tab {}", hello.tab_id)))
            }
            Some(_) => Ok(Arrival::Launched(hello.tab_id, expected.remove(&hello.tab_id).expect("present"))),
        }
    };
    let arrival = match verdict {
        Ok(e) => {
            // Authenticated: the pool bounds tabs from here on.
            drop(place);
            e
        }
        Err((reason, message)) => {
            refuse(&registry, peer, &message);
            let frame = Frame::new(ToTab::Reject { reason, message: message.clone() });
            if let Ok(bytes) = encode(&frame, &Limits::DEFAULT) {
                let _ = sink.send(Message::Binary(bytes.into())).await;
            }
            let _ =
                sink.send(Message::Close(Some(CloseFrame { code: CloseCode::Policy, reason: message.into() }))).await;
            return;
        }
    };

    let tab_id = match &arrival {
        Arrival::Launched(id, _) | Arrival::Lent { id, .. } => *id,
    };
    // A lent tab's place under its token is given back whenever this connection ends.
    let _place = match &arrival {
        Arrival::Lent { grant, .. } => Some(TokenPlace { registry: registry.clone(), token: grant.token_id.clone() }),
        Arrival::Launched(..) => None,
    };
    let welcome = encode(&Frame::new(ToTab::Welcome { tab_id }), &Limits::DEFAULT).expect("small frame");
    if sink.send(Message::Binary(welcome.into())).await.is_err() {
        return refuse(&registry, peer, "closed before Welcome");
    }
    registry.counters.accepted.fetch_add(1, Ordering::Relaxed);
    tracing::info!(%peer, tab = tab_id, lent = matches!(arrival, Arrival::Lent { .. }), "tab joined");

    let (outbox, mut outbox_rx) = mpsc::unbounded_channel::<Message>();
    let shared = Arc::new(TabShared {
        id: tab_id,
        caps: hello.caps,
        outbox,
        pending: Mutex::default(),
        next_request: AtomicU64::new(1),
        closed: AtomicBool::new(false),
        last_heard: Mutex::new(std::time::Instant::now()),
    });
    // Writer: everything for this tab goes through one task, in order.
    let writer_shared = Arc::downgrade(&shared);
    let mut writer = tokio::spawn(async move {
        while let Some(msg) = outbox_rx.recv().await {
            let is_close = matches!(msg, Message::Close(_));
            if sink.send(msg).await.is_err() || is_close {
                break;
            }
        }
        // A dead socket fails its waiting requests now, not at their timeouts.
        if let Some(s) = writer_shared.upgrade() {
            s.fail_all();
        }
        let _ = sink.close().await;
    });
    match arrival {
        Arrival::Launched(_, expected) => {
            let _ = expected.arrived.send(Tab { shared: shared.clone() });
        }
        Arrival::Lent { grant, origin, .. } => {
            let tab = Tab { shared: shared.clone() };
            let door = registry.door.as_ref().expect("a lent tab came through the door");
            if door.arrivals.send(Joined { tab, grant, origin }).is_err() {
                // No pool takes lent tabs any more (shutting down).
                let _ = shared.outbox.send(Message::Close(Some(CloseFrame {
                    code: CloseCode::Away,
                    reason: "the pool is shutting down".into(),
                })));
            }
        }
    }

    // Reader: route replies to their waiters; a protocol violation closes this socket only.
    while let Some(msg) = stream.next().await {
        *shared.last_heard.lock().expect("last_heard") = std::time::Instant::now();
        let bytes: Bytes = match msg {
            Ok(Message::Binary(b)) => b,
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            Ok(other) => {
                violation(&shared, &format!("unexpected message {}", shorten(&other)));
                break;
            }
        };
        match decode::<ToHost>(bytes, &Limits::DEFAULT) {
            Ok(Frame { msg: ToHost::Reply { id, result }, tensors }) => {
                let waiter = shared.pending.lock().expect("pending lock").remove(&id);
                match waiter {
                    Some(tx) => {
                        let _ = tx.send(
                            result.map(|r| (r, tensors)).map_err(|error| TabError::Remote { tab: shared.id, error }),
                        );
                    }
                    // A reply after its request timed out: harmless, but worth seeing.
                    None => tracing::debug!(tab = shared.id, id, "reply for no waiting request"),
                }
            }
            Ok(Frame { msg: ToHost::Hello(_), .. }) => {
                violation(&shared, "second Hello");
                break;
            }
            Err(e) => {
                violation(&shared, &format!("malformed frame: {e}"));
                break;
            }
        }
    }
    tracing::info!(tab = shared.id, "tab disconnected");
    shared.fail_all();
    drop(shared);
    // Let a queued Close go out, then stop: `Tab` clones may keep the channel open forever.
    let _ = tokio::time::timeout(Duration::from_secs(2), &mut writer).await;
    writer.abort();
}

/// Who a good `Hello` came from.
enum Arrival {
    Launched(u64, Expected),
    Lent { id: u64, grant: super::join::Grant, origin: String },
}

/// A lent tab's place under its token, held while its connection lasts.
struct TokenPlace {
    registry: Arc<Registry>,
    token: String,
}

impl Drop for TokenPlace {
    fn drop(&mut self) {
        if let Some(door) = &self.registry.door {
            let mut joined = door.joined.lock().expect("joined");
            if let Some(n) = joined.get_mut(&self.token) {
                *n = n.saturating_sub(1);
            }
        }
    }
}

/// A message for the log: its kind and at most `LOGGED_BYTES` of it (a peer chooses its size).
fn shorten(m: &Message) -> String {
    let (kind, bytes): (&str, &[u8]) = match m {
        Message::Text(t) => ("text", t.as_bytes()),
        Message::Ping(b) => ("ping", b),
        Message::Pong(b) => ("pong", b),
        Message::Close(_) => ("close", &[]),
        Message::Frame(f) => ("frame", f.payload()),
        Message::Binary(b) => ("binary", b),
    };
    let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(LOGGED_BYTES)]).into_owned();
    let more = if bytes.len() > LOGGED_BYTES { format!("… ({} bytes in all)", bytes.len()) } else { String::new() };
    format!("{kind} {shown:?}{more}")
}

fn violation(shared: &TabShared, why: &str) {
    tracing::warn!(tab = shared.id, "closing tab socket: {why}");
    let _ = shared
        .outbox
        .send(Message::Close(Some(CloseFrame { code: CloseCode::Protocol, reason: "protocol violation".into() })));
}

#[cfg(test)]
mod tests {
    #[test]
    fn what_a_peer_sent_is_logged_short() {
        use tokio_tungstenite::tungstenite::Message;
        let shown = super::shorten(&Message::Text("A".repeat(100_000).into()));
        assert!(
            shown.len() < 200 && shown.starts_with("text \"AAA") && shown.ends_with("(100000 bytes in all)"),
            "{shown}"
        );
        assert_eq!(super::shorten(&Message::Text("hello?".into())), "text \"hello?\"");
    }
}
