//! An HTTP/1 server whose connections cannot outstay their welcome, nor crowd out others:
//!
//! - at most `max_connections` served at once, of which one client address holds at most
//!   `per_client` (`admit`, a pure function): a client that opens hundreds of connections, or
//!   trickles headers and reconnects for ever, uses up its own share, not everyone's;
//! - a connection past those limits gets a short answer of its own (`answer_overflow`) —
//!   `GET /health` still says ok, anything else 503 with Retry-After — from a small separate
//!   budget (64 at a time, each within 1 s), and is closed;
//! - request headers are read within `header_read`; a connection with no request in flight and
//!   no byte moved either way for `idle` is closed. A request in flight is never cut by the idle
//!   timer: its own deadline bounds it (the API's `deadline` layer answers 504 with a status);
//! - `Server::drain` stops accepting, lets every open connection finish the response it is
//!   writing (hyper's graceful shutdown; idle keep-alive connections close at once), and waits
//!   for them within a bound, so shutdown never drops an answer that was about to be written.
//!
//! Each request carries the client's address (`ClientAddr`) for per-client budgets above this
//! layer (the API's stream budget). Used by both of the host's HTTP servers (page and API).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub max_connections: usize,
    /// Connections one client address may hold of `max_connections`.
    pub per_client: usize,
    pub header_read: Duration,
    /// No request in flight and no byte either way for this long: closed.
    pub idle: Duration,
}

impl Bounds {
    /// The page server: a handful of tabs load a page and a wasm file.
    pub const PAGE: Bounds = Bounds {
        max_connections: 128,
        per_client: 128,
        header_read: Duration::from_secs(10),
        idle: Duration::from_secs(30),
    };
    /// The API: clients with keep-alive. One address may hold a quarter of the places.
    pub const API: Bounds = Bounds {
        max_connections: 256,
        per_client: 64,
        header_read: Duration::from_secs(10),
        idle: Duration::from_secs(120),
    };
}

/// Connections past the limits answered at once (then closed); past this many at a time, the
/// next ones wait in the backlog.
const OVERFLOW: usize = 64;
/// How long an over-limit connection has to send its request line.
const OVERFLOW_READ: Duration = Duration::from_secs(1);

/// The address of the client a request came from (an extension of every request).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientAddr(pub IpAddr);

/// Why a connection is not served normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Yes,
    /// Every place is taken.
    Full,
    /// This client holds its whole share.
    ClientFull,
}

/// Whether a new holder from a client holding `of_client` places may take one when `open` of
/// `max` are taken, with `per_client` the most one client may hold.
pub fn admit(open: usize, of_client: usize, max: usize, per_client: usize) -> Admit {
    if of_client >= per_client {
        Admit::ClientFull
    } else if open >= max {
        Admit::Full
    } else {
        Admit::Yes
    }
}

/// Places (connections here, event streams in the API) counted in all and per client address,
/// each given back when its `Place` is dropped.
#[derive(Clone)]
pub struct Places {
    max: usize,
    per_client: usize,
    taken: Arc<Mutex<Taken>>,
}

#[derive(Default)]
struct Taken {
    open: usize,
    by_client: HashMap<IpAddr, usize>,
}

/// A place taken; given back on drop.
pub struct Place {
    taken: Arc<Mutex<Taken>>,
    client: Option<IpAddr>,
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut t = self.taken.lock().expect("places");
        t.open -= 1;
        if let Some(ip) = self.client
            && let Some(n) = t.by_client.get_mut(&ip)
        {
            *n -= 1;
            if *n == 0 {
                t.by_client.remove(&ip);
            }
        }
    }
}

impl Places {
    pub fn new(max: usize, per_client: usize) -> Places {
        Places { max, per_client, taken: Arc::default() }
    }

    /// The most places, and the most one client may hold.
    pub fn limits(&self) -> (usize, usize) {
        (self.max, self.per_client)
    }

    /// A place for `client` (no address: counted in all only), or why not (`admit`).
    pub fn take(&self, client: Option<IpAddr>) -> Result<Place, Admit> {
        let mut t = self.taken.lock().expect("places");
        let mine = client.and_then(|ip| t.by_client.get(&ip).copied()).unwrap_or(0);
        match admit(t.open, mine, self.max, self.per_client) {
            Admit::Yes => {
                t.open += 1;
                if let Some(ip) = client {
                    *t.by_client.entry(ip).or_default() += 1;
                }
                Ok(Place { taken: self.taken.clone(), client })
            }
            refused => Err(refused),
        }
    }
}

/// A running server: `drain` it to stop.
pub struct Server {
    stop: watch::Sender<bool>,
    open: Arc<AtomicUsize>,
    pub task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Stop accepting, let open connections finish writing what they are answering, and wait
    /// for them to close, at most `within`. Returns how many were still open then.
    pub async fn drain(self, within: Duration) -> usize {
        let _ = self.stop.send(true);
        let deadline = Instant::now() + within;
        while self.open.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.task.abort();
        self.open.load(Ordering::SeqCst)
    }
}

/// Serve `app` on `listener` within `bounds` until drained (or the task is aborted).
pub fn serve(listener: TcpListener, app: Router, bounds: Bounds, name: &'static str) -> Server {
    let (stop, stopped) = watch::channel(false);
    let open = Arc::new(AtomicUsize::new(0));
    let task = tokio::spawn(accept_loop(listener, app, bounds, name, stopped, open.clone()));
    Server { stop, open, task }
}

async fn accept_loop(
    listener: TcpListener,
    app: Router,
    bounds: Bounds,
    name: &'static str,
    mut stopped: watch::Receiver<bool>,
    open: Arc<AtomicUsize>,
) {
    let places = Places::new(bounds.max_connections, bounds.per_client);
    let overflow = Arc::new(tokio::sync::Semaphore::new(OVERFLOW));
    let started = Instant::now();
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!("{name}: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            // Draining: the listener closes with this loop; new clients are refused by the kernel.
            () = drained(&mut stopped) => return,
        };
        let place = match places.take(Some(peer.ip())) {
            Ok(p) => p,
            Err(why) => {
                tracing::debug!(%peer, "{name}: connection over the limits ({why:?})");
                // Each such connection is answered within OVERFLOW_READ; past OVERFLOW of them at
                // once, further clients wait in the kernel's backlog (no descriptor of ours).
                let Ok(permit) = overflow.clone().acquire_owned().await else { continue };
                tokio::spawn(async move {
                    let _permit = permit;
                    answer_overflow(stream, why, &bounds).await;
                });
                continue;
            }
        };
        let (app, stopped) = (app.clone(), stopped.clone());
        open.fetch_add(1, Ordering::SeqCst);
        let open = open.clone();
        tokio::spawn(async move {
            connection(stream, peer, app, bounds, name, stopped, started).await;
            drop(place);
            open.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// Resolves once the server is drained; never if nobody can drain it any more (its `Server`
/// was dropped: the page server runs until its task is aborted).
async fn drained(stopped: &mut watch::Receiver<bool>) {
    if stopped.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Requests of one connection between the service call and its response head.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn start(n: &Arc<AtomicUsize>) -> InFlight {
        n.fetch_add(1, Ordering::SeqCst);
        InFlight(n.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    bounds: Bounds,
    name: &'static str,
    mut stopped: watch::Receiver<bool>,
    started: Instant,
) {
    let last = Arc::new(AtomicU64::new(started.elapsed().as_millis() as u64));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let io = TokioIo::new(Watched { inner: stream, last: last.clone(), started });
    let counter = in_flight.clone();
    let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(ClientAddr(peer.ip()));
        let busy = InFlight::start(&counter);
        let app = app.clone();
        async move {
            let resp = tower::ServiceExt::oneshot(app, req).await;
            drop(busy);
            resp
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(bounds.header_read)
        .serve_connection(io, service);
    tokio::pin!(conn);
    let tick = (bounds.idle / 4).clamp(Duration::from_millis(20), Duration::from_secs(1));
    let mut draining = *stopped.borrow();
    if draining {
        conn.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!("{name}: connection ended: {e}");
                }
                return;
            }
            () = drained(&mut stopped), if !draining => {
                // Finish the response being written, take no new request, close.
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            () = tokio::time::sleep(tick) => {
                let quiet = started.elapsed().saturating_sub(Duration::from_millis(last.load(Ordering::Relaxed)));
                if in_flight.load(Ordering::SeqCst) == 0 && quiet >= bounds.idle {
                    tracing::debug!("{name}: closing a connection idle for {quiet:?}");
                    return; // dropping the connection closes the socket
                }
            }
        }
    }
}

/// A short answer for a connection past the limits, then close: `/health` is answered (a
/// monitor must tell "busy" from "down"), anything else gets 503 naming the limit.
async fn answer_overflow(mut stream: TcpStream, why: Admit, bounds: &Bounds) {
    let mut buf = [0u8; 256];
    let mut got = 0;
    let _ = tokio::time::timeout(OVERFLOW_READ, async {
        while got < buf.len() && !buf[..got].contains(&b'\n') {
            match stream.read(&mut buf[got..]).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
    })
    .await;
    let line = String::from_utf8_lossy(&buf[..got]);
    let path = line.split_whitespace().nth(1).unwrap_or("");
    let (status, body) = if line.starts_with("GET ") && path == "/health" {
        ("200 OK", r#"{"status":"ok","connections":"full"}"#.to_string())
    } else {
        let limit = match why {
            Admit::ClientFull => {
                format!("this client already holds {} connections (the limit per client)", bounds.per_client)
            }
            _ => format!("{} connections are open (the limit)", bounds.max_connections),
        };
        let message = format!("server busy: {limit}; retry shortly");
        let body = if path.starts_with("/v1/") {
            serde_json::json!({"error": {"message": message, "type": "server_error", "param": null, "code": "too_many_connections"}})
        } else {
            serde_json::json!({"error": message, "kind": "too_many_connections"})
        };
        ("503 Service Unavailable", body.to_string())
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\nretry-after: 1\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(OVERFLOW_READ, stream.write_all(resp.as_bytes())).await;
    let _ = stream.shutdown().await;
}

/// A TCP stream that notes when it last moved a byte.
struct Watched {
    inner: TcpStream,
    /// Milliseconds since `started` of the last read or write.
    last: Arc<AtomicU64>,
    started: Instant,
}

impl Watched {
    fn touch(&self) {
        self.last.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl AsyncRead for Watched {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_gets_its_share_and_no_more() {
        assert_eq!(admit(0, 0, 10, 4), Admit::Yes);
        assert_eq!(admit(3, 3, 10, 4), Admit::Yes);
        assert_eq!(admit(4, 4, 10, 4), Admit::ClientFull, "its share is taken, others still get in");
        assert_eq!(admit(9, 0, 10, 4), Admit::Yes);
        assert_eq!(admit(10, 0, 10, 4), Admit::Full);
    }

    #[test]
    fn places_are_given_back() {
        let places = Places::new(3, 2);
        let (a, c): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let a1 = places.take(Some(a)).unwrap();
        let _a2 = places.take(Some(a)).unwrap();
        assert_eq!(places.take(Some(a)).err(), Some(Admit::ClientFull));
        let _c1 = places.take(Some(c)).unwrap();
        assert_eq!(places.take(Some(c)).err(), Some(Admit::Full));
        drop(a1);
        places.take(Some(c)).unwrap();
        assert_eq!(places.taken.lock().unwrap().open, 2, "the last place dropped at the end of the statement");
    }
}
