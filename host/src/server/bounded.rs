//! An HTTP/1 server whose connections cannot outstay their welcome: at most `max_connections`
//! open at once (further clients wait in the kernel's backlog, not on our descriptors), request
//! headers read within `header_read`, and a connection silent for `idle` (no byte either way)
//! closed. A slow or idle client therefore cannot hold the descriptors that tab sockets and
//! DuckDB need. Used by both of the host's HTTP servers (the page and the API).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub max_connections: usize,
    pub header_read: Duration,
    pub idle: Duration,
}

impl Bounds {
    /// The page server: a handful of tabs load a page and a wasm file.
    pub const PAGE: Bounds =
        Bounds { max_connections: 128, header_read: Duration::from_secs(10), idle: Duration::from_secs(30) };
    /// The API: clients with keep-alive; a request may wait for its batch (idle counts bytes,
    /// so a long computation with no byte sent is bounded by the request's own deadline).
    pub const API: Bounds =
        Bounds { max_connections: 256, header_read: Duration::from_secs(10), idle: Duration::from_secs(120) };
}

/// Serve `app` on `listener` within `bounds` until the task is aborted.
pub async fn serve(listener: TcpListener, app: Router, bounds: Bounds, name: &'static str) {
    let permits = Arc::new(tokio::sync::Semaphore::new(bounds.max_connections));
    let started = Instant::now();
    loop {
        // Take a place before accepting: at the cap, new clients queue in the backlog.
        let permit = permits.clone().acquire_owned().await.expect("the semaphore is never closed");
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!("{name}: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let app = app.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let last = Arc::new(AtomicU64::new(0));
            let io = TokioIo::new(Watched { inner: stream, last: last.clone(), started });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(bounds.header_read)
                .serve_connection(io, TowerToHyperService::new(app));
            tokio::pin!(conn);
            let tick = (bounds.idle / 4).max(Duration::from_millis(100));
            loop {
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!("{name}: connection ended: {e}");
                        }
                        return;
                    }
                    () = tokio::time::sleep(tick) => {
                        let quiet = started.elapsed().saturating_sub(Duration::from_millis(last.load(Ordering::Relaxed)));
                        if quiet >= bounds.idle {
                            tracing::debug!("{name}: closing a connection idle for {quiet:?}");
                            return; // dropping the connection closes the socket
                        }
                    }
                }
            }
        });
    }
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
