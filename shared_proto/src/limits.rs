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

    /// What a peer that has not yet authenticated may send: one `Hello` (a real one,
    /// capabilities included, is a few KiB) and no tensors. The host reads a socket's first
    /// frame under these, so an unknown local process can make it hold and decode 64 KiB, not
    /// 256 MiB; the decoder's allocations follow the header it is given (see `codec::decode`).
    pub const PRE_AUTH: Limits =
        Limits { max_frame_bytes: 64 << 10, max_header_bytes: 64 << 10, max_tensors: 0, max_rank: 0, max_elements: 0 };
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}
