//! One enum per direction. Tensors never sit inside these headers: they travel after the
//! header in the frame ([`crate::codec::Frame::tensors`]) and messages refer to them by position.

use serde::{Deserialize, Serialize};

use crate::caps::Capabilities;
use crate::error::RemoteError;

/// Host → tab.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToTab {
    /// The handshake succeeded; the tab may now serve requests.
    Welcome { tab_id: u64 },
    /// The handshake failed; the host closes the socket after this.
    Reject { reason: RejectReason, message: String },
    /// Work for the tab. Input tensors are the frame's tensors, in order.
    Request { id: u64, req: Request },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RejectReason {
    VersionMismatch,
    BadToken,
    UnknownTab,
    DuplicateTab,
}

/// Tab → host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToHost {
    Hello(Box<Hello>),
    /// The answer to `Request { id }`. Output tensors are the frame's tensors, in order.
    Reply {
        id: u64,
        result: Result<Reply, RemoteError>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol_version: u32,
    /// The tab id and secret the host put in the page URL for this launch.
    pub tab_id: u64,
    pub token: String,
    pub caps: Capabilities,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// No-op round trip.
    Ping,
    /// Accept the attached tensors and report their size: host→tab throughput.
    Sink,
    Kernel(Kernel),
}

/// A single kernel on the tab's WebGPU device (the operator graph comes later).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Kernel {
    /// `C[m,n] = A[m,k] · B[k,n]`, inputs `[A, B]` f32, output `[C]`. `repeats > 1` re-runs the
    /// dispatch within one submission so timing covers compute rather than transfer.
    MatMul { variant: MatMulVariant, repeats: u32 },
    /// Element-wise `C = A + B`, same shapes.
    Add,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MatMulVariant {
    /// Workgroup-shared 64×64 tiles, 4×4 outputs per invocation.
    Tiled,
    /// One invocation per output, straight from global memory: the baseline.
    Naive,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Reply {
    Pong,
    Sunk {
        bytes: u64,
    },
    /// `device_ms`: in-tab time from submit to results mapped, divided by `repeats`.
    KernelDone {
        device_ms: f64,
    },
}
