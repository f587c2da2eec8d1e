//! Hard limits checked by the decoder before any allocation sized by the peer.

/// Limits applied to every decoded frame. Both sides use [`Limits::DEFAULT`] unless a test
/// narrows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Whole frame, header and payloads.
    pub max_frame_bytes: usize,
    /// The bincode header alone.
    pub max_header_bytes: usize,
    /// Tensors attached to one frame.
    pub max_tensors: usize,
    /// Dimensions of one tensor.
    pub max_rank: usize,
    /// Elements of one tensor.
    pub max_elements: u64,
}

impl Limits {
    pub const DEFAULT: Limits = Limits {
        max_frame_bytes: 256 << 20,
        max_header_bytes: 1 << 20,
        max_tensors: 64,
        max_rank: 8,
        max_elements: 1 << 26,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}
