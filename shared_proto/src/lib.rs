//! The tabpool wire protocol, defined once and shared by the host (native) and the page runtime
//! (wasm32).
//!
//! A frame is a bincode-encoded header message followed by raw little-endian tensor payloads;
//! see [`codec`] for the byte layout. Every limit in [`limits`] is enforced while decoding, on
//! both sides, so a hostile or broken peer can only get its own socket closed.

pub mod caps;
pub mod codec;
pub mod error;
pub mod graph;
pub mod limits;
pub mod messages;
pub mod quant;
pub mod tensor;
pub mod version;

pub use caps::{AdapterInfo, Capabilities, WebGpuCaps, WebNnCaps, WebNnContextProbe};
pub use codec::{Frame, decode, encode};
pub use error::{ErrorKind, ProtoError, RemoteError};
pub use graph::{Dim, Graph, GraphError, InputDecl, KvDecl, Node, Op, STAGE_INPUT, STEP_INPUTS, ValueRef, WeightDecl};
pub use limits::Limits;
pub use messages::{
    ExecBackend, Hello, Kernel, MatMulVariant, RejectReason, Reply, Request, Sampling, StepRow, ToHost, ToTab,
};
pub use tensor::{ContentHasher, DType, Tensor, content_hash};
pub use version::PROTOCOL_VERSION;
