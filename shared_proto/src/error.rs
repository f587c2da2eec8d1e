use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Why a frame could not be decoded. Any of these closes the socket it came from.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ProtoError {
    #[error("frame of {got} bytes exceeds the limit of {limit}")]
    FrameTooLarge { got: usize, limit: usize },
    #[error("frame truncated: needed {needed} bytes at offset {offset}, frame has {len}")]
    Truncated { needed: usize, offset: usize, len: usize },
    #[error("bad magic {0:?}: not a tabpool frame")]
    BadMagic([u8; 4]),
    #[error("header of {got} bytes exceeds the limit of {limit}")]
    HeaderTooLarge { got: usize, limit: usize },
    #[error("header does not decode: {0}")]
    BadHeader(String),
    #[error("{got} tensors exceed the limit of {limit}")]
    TooManyTensors { got: usize, limit: usize },
    #[error("unknown dtype tag {0}")]
    BadDType(u8),
    #[error("tensor rank {got} exceeds the limit of {limit}")]
    RankTooLarge { got: usize, limit: usize },
    #[error("tensor of {got} elements exceeds the limit of {limit}")]
    TooManyElements { got: u64, limit: u64 },
    #[error("tensor payload is {got} bytes, its shape and dtype need {expected}")]
    PayloadSize { got: u64, expected: u64 },
    #[error("a {dtype:?} tensor of shape {shape:?} is not a whole number of blocks along its last axis")]
    PartialBlock { dtype: crate::tensor::DType, shape: Vec<u32> },
    #[error("{0} trailing bytes after the last tensor")]
    TrailingBytes(usize),
    #[error("header does not encode: {0}")]
    Encode(String),
}

/// The category of a failed request, carried as a value so the host's recovery policy can act
/// on it without parsing text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The request itself is wrong (shapes, arguments); retrying elsewhere will not help.
    BadInput,
    /// The tab cannot do this (no WebGPU adapter, missing feature).
    Unsupported,
    /// The GPU device was lost; the tab may recover by re-creating it.
    DeviceLost,
    OutOfMemory,
    /// A limit of the tab is full (sessions per model, KV-cache tokens): another replica, or this
    /// one later, may have room. Nothing was changed.
    Capacity,
    /// A bug or an unexpected browser error.
    Internal,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Error)]
#[error("{kind:?}: {message}")]
pub struct RemoteError {
    pub kind: ErrorKind,
    pub message: String,
}

impl RemoteError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        RemoteError { kind, message: message.into() }
    }
}
