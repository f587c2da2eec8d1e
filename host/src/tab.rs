//! A connected tab: send a request, await its reply by id.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shared_proto::{
    Capabilities, ErrorKind, Frame, Limits, ProtoError, RemoteError, Reply, Request, Tensor, ToTab, encode,
};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

use crate::policy::recovery::Category;

#[derive(Debug, Error)]
pub enum TabError {
    #[error("tab {0} is disconnected")]
    Closed(u64),
    #[error("tab {tab} did not answer within {after:?}")]
    Timeout { tab: u64, after: Duration },
    #[error("tab {tab}: {error}")]
    Remote { tab: u64, error: RemoteError },
    #[error("request not sendable: {0}")]
    Encode(#[from] ProtoError),
    #[error("tab {tab} sent a bad reply: {message}")]
    BadReply { tab: u64, message: String },
}

impl TabError {
    /// The failure category of a call's error, for recovery policy: how the tab failed (lost,
    /// slow, device gone, model broken) or whether the request itself was wrong.
    pub fn category(e: &anyhow::Error) -> Category {
        match e.downcast_ref::<TabError>() {
            Some(TabError::Closed(_)) => Category::Connection,
            Some(TabError::Timeout { .. }) => Category::Timeout,
            Some(TabError::Remote { error, .. }) => match error.kind {
                ErrorKind::BadInput => Category::BadInput,
                ErrorKind::DeviceLost | ErrorKind::OutOfMemory => Category::DeviceLost,
                ErrorKind::Unsupported | ErrorKind::Internal => Category::ModelError,
                // A tab's session or KV limits: the tab is fine, another replica (or later) helps.
                ErrorKind::Capacity => Category::ModelError,
            },
            _ => Category::ModelError,
        }
    }

    /// The tab's own error kind, when the tab answered with an error.
    pub fn remote_kind(e: &anyhow::Error) -> Option<ErrorKind> {
        match e.downcast_ref::<TabError>() {
            Some(TabError::Remote { error, .. }) => Some(error.kind),
            _ => None,
        }
    }
}

pub(crate) type ReplySender = oneshot::Sender<Result<(Reply, Vec<Tensor>), TabError>>;

pub(crate) struct TabShared {
    pub id: u64,
    pub caps: Capabilities,
    pub outbox: mpsc::UnboundedSender<Message>,
    pub pending: Mutex<HashMap<u64, ReplySender>>,
    pub next_request: AtomicU64,
    pub closed: AtomicBool,
    /// When the tab last sent anything (a reply, a pong): liveness without extra traffic.
    pub last_heard: Mutex<Instant>,
}

impl TabShared {
    /// Fail every request still waiting: the socket is gone.
    pub fn fail_all(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let pending: Vec<_> = self.pending.lock().expect("pending lock").drain().collect();
        for (_, tx) in pending {
            let _ = tx.send(Err(TabError::Closed(self.id)));
        }
    }
}

/// Cheap to clone; all clones talk to the same socket.
#[derive(Clone)]
pub struct Tab {
    pub(crate) shared: Arc<TabShared>,
}

impl std::fmt::Debug for Tab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tab").field("id", &self.shared.id).finish()
    }
}

impl Tab {
    pub fn id(&self) -> u64 {
        self.shared.id
    }

    pub fn caps(&self) -> &Capabilities {
        &self.shared.caps
    }

    pub fn is_connected(&self) -> bool {
        !self.shared.closed.load(Ordering::SeqCst)
    }

    /// How long since the tab last sent a frame.
    pub fn silent_for(&self) -> Duration {
        self.shared.last_heard.lock().expect("last_heard").elapsed()
    }

    /// Close this tab's socket from the host side (the page stays open). Requests waiting on it
    /// fail as `Closed`. Used when a tab is replaced, and by chaos tests to drop a socket.
    pub fn disconnect(&self) {
        self.close_with(
            tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Away,
            "host closed the socket",
        );
    }

    /// Send the tab away for breaking policy (a lent tab quarantined): `reason` (cut to 100
    /// characters: a close frame holds 123 bytes) is its close reason.
    pub fn disconnect_because(&self, reason: &str) {
        let reason: String = reason.chars().take(100).collect();
        self.close_with(tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Policy, &reason);
    }

    fn close_with(&self, code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode, reason: &str) {
        use tokio_tungstenite::tungstenite::protocol::CloseFrame;
        let close = CloseFrame { code, reason: reason.to_string().into() };
        let _ = self.shared.outbox.send(Message::Close(Some(close)));
        self.shared.fail_all();
    }

    /// Send `req` with `tensors`; wait for the reply up to `timeout`.
    pub async fn call(
        &self,
        req: Request,
        tensors: Vec<Tensor>,
        timeout: Duration,
    ) -> Result<(Reply, Vec<Tensor>), TabError> {
        let s = &self.shared;
        let id = s.next_request.fetch_add(1, Ordering::Relaxed);
        let bytes = encode(&Frame::with_tensors(ToTab::Request { id, req }, tensors), &Limits::DEFAULT)?;
        let (tx, rx) = oneshot::channel();
        s.pending.lock().expect("pending lock").insert(id, tx);
        if s.closed.load(Ordering::SeqCst) || s.outbox.send(Message::Binary(bytes.into())).is_err() {
            s.pending.lock().expect("pending lock").remove(&id);
            // The writer is gone: the socket is dead even if the reader has not noticed yet.
            s.fail_all();
            return Err(TabError::Closed(s.id));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(TabError::Closed(s.id)),
            Err(_) => {
                s.pending.lock().expect("pending lock").remove(&id);
                Err(TabError::Timeout { tab: s.id, after: timeout })
            }
        }
    }

    /// No-op round trip.
    pub async fn ping(&self, timeout: Duration) -> Result<(), TabError> {
        match self.call(Request::Ping, Vec::new(), timeout).await? {
            (Reply::Pong, _) => Ok(()),
            (other, _) => Err(TabError::BadReply { tab: self.id(), message: format!("{other:?} to Ping") }),
        }
    }

    /// Run a kernel; returns its outputs and the in-tab device time.
    pub async fn kernel(
        &self,
        kernel: shared_proto::Kernel,
        inputs: Vec<Tensor>,
        timeout: Duration,
    ) -> Result<(Vec<Tensor>, f64), TabError> {
        match self.call(Request::Kernel(kernel), inputs, timeout).await? {
            (Reply::KernelDone { device_ms }, outputs) => Ok((outputs, device_ms)),
            (other, _) => Err(TabError::BadReply { tab: self.id(), message: format!("{other:?} to Kernel") }),
        }
    }

    /// Destroy the tab's WebGPU device and WebNN contexts, as a driver reset would lose them
    /// (fault injection). Returns how many were destroyed.
    pub async fn lose_device(&self, timeout: Duration) -> Result<u32, TabError> {
        match self.call(Request::LoseDevice, Vec::new(), timeout).await? {
            (Reply::DeviceDestroyed { webgpu, webnn_contexts }, _) => Ok(webgpu as u32 + webnn_contexts),
            (other, _) => Err(TabError::BadReply { tab: self.id(), message: format!("{other:?} to LoseDevice") }),
        }
    }
}

impl Tab {
    /// Let the tab's CPU executor use at most `threads` threads; the count now in force (at most
    /// what the page started).
    pub async fn set_threads(&self, threads: u32, timeout: Duration) -> Result<u32, TabError> {
        match self.call(Request::SetThreads { threads }, Vec::new(), timeout).await? {
            (Reply::ThreadsSet { threads }, _) => Ok(threads),
            (other, _) => Err(TabError::BadReply { tab: self.id(), message: format!("{other:?} to SetThreads") }),
        }
    }
}

/// "SwiftShader Device (Subzero) [Cpu, BrowserWebGpu]" or why there is no adapter.
pub fn adapter_line(caps: &Capabilities) -> String {
    match (&caps.webgpu.adapter, &caps.webgpu.error) {
        (Some(a), _) => {
            let name = [a.vendor.as_str(), a.architecture.as_str(), a.description.as_str()]
                .iter()
                .filter(|s| !s.is_empty())
                .copied()
                .collect::<Vec<_>>()
                .join(" ");
            let fallback = if a.is_fallback { ", fallback adapter" } else { "" };
            format!("{name} [{}{fallback}]", a.device_type)
        }
        (None, Some(e)) => format!("no adapter: {e}"),
        (None, None) => "no adapter".into(),
    }
}

pub fn webnn_line(caps: &Capabilities) -> String {
    if !caps.webnn.api_present {
        return "navigator.ml absent".into();
    }
    caps.webnn
        .contexts
        .iter()
        .map(|c| match (&c.error, c.ok) {
            (_, true) => format!("{}: ok", c.device_type),
            (Some(e), false) => format!("{}: {e}", c.device_type),
            (None, false) => format!("{}: failed", c.device_type),
        })
        .collect::<Vec<_>>()
        .join("; ")
}
