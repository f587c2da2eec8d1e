//! Tensors on the wire: dtype + shape + raw little-endian bytes. Never JSON number lists.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[repr(u8)]
pub enum DType {
    F32 = 0,
    F16 = 1,
    I32 = 2,
    U32 = 3,
    U8 = 4,
    /// GGUF/ggml Q4_1 blocks along the last axis: 32 weights in 20 bytes
    /// ([`crate::quant::BlockQ4_1`]). The shape counts weights, not bytes.
    Q4_1 = 5,
    /// GGUF/ggml Q8_0 blocks along the last axis: 32 weights in 34 bytes ([`crate::quant::BlockQ8_0`]).
    Q8_0 = 6,
}

impl DType {
    /// Bytes per element of a plain dtype; for a block dtype, bytes per block (see [`DType::block`]).
    pub fn size(self) -> usize {
        match self {
            DType::F32 | DType::I32 | DType::U32 => 4,
            DType::F16 => 2,
            DType::U8 => 1,
            DType::Q4_1 => crate::quant::BlockQ4_1::BYTES,
            DType::Q8_0 => crate::quant::BlockQ8_0::BYTES,
        }
    }

    /// `(weights per block, bytes per block)` of a block-quantized dtype; `None` for plain ones.
    pub fn block(self) -> Option<(usize, usize)> {
        match self {
            DType::Q4_1 => Some((crate::quant::QK, crate::quant::BlockQ4_1::BYTES)),
            DType::Q8_0 => Some((crate::quant::QK, crate::quant::BlockQ8_0::BYTES)),
            _ => None,
        }
    }

    /// Stored narrower than f32 and widened by the kernels that read it: f16 and the block
    /// dtypes. Values of these dtypes are weights and feed only Linear and Gather.
    pub fn is_packed(self) -> bool {
        self.packing().is_some()
    }

    /// `(elements, bytes)` of a packed dtype's unit — a block, or one half — for code that
    /// widens any of them alike (`quant::dequantize_row`).
    pub fn packing(self) -> Option<(usize, usize)> {
        if self == DType::F16 { Some((1, 2)) } else { self.block() }
    }

    /// Bytes a tensor of `shape` takes, or `None` when a block dtype's last axis is not a whole
    /// number of blocks (or the shape is empty). Saturating, like [`element_count`].
    pub fn byte_len(self, shape: &[u32]) -> Option<u64> {
        let elements = element_count(shape);
        match self.block() {
            None => Some(elements.saturating_mul(self.size() as u64)),
            Some((per, bytes)) => {
                let last = *shape.last()? as usize;
                last.is_multiple_of(per).then(|| (elements / per as u64).saturating_mul(bytes as u64))
            }
        }
    }

    pub fn from_tag(tag: u8) -> Option<DType> {
        Some(match tag {
            0 => DType::F32,
            1 => DType::F16,
            2 => DType::I32,
            3 => DType::U32,
            4 => DType::U8,
            5 => DType::Q4_1,
            6 => DType::Q8_0,
            _ => return None,
        })
    }
}

/// A tensor whose bytes are shared, not copied: on the host, decoded tensors are slices of the
/// received frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub dtype: DType,
    pub shape: Vec<u32>,
    pub data: Bytes,
}

impl Tensor {
    pub fn elements(&self) -> u64 {
        element_count(&self.shape)
    }

    /// An f32 tensor from host values (one copy into little-endian bytes).
    pub fn from_f32(shape: Vec<u32>, values: &[f32]) -> Tensor {
        assert_eq!(
            element_count(&shape),
            values.len() as u64,
            "shape {shape:?} does not match {} values",
            values.len()
        );
        let mut data = Vec::with_capacity(values.len() * 4);
        for v in values {
            data.extend_from_slice(&v.to_le_bytes());
        }
        Tensor { dtype: DType::F32, shape, data: Bytes::from(data) }
    }

    /// Values of an f32 tensor, or `None` for another dtype.
    pub fn to_f32(&self) -> Option<Vec<f32>> {
        if self.dtype != DType::F32 {
            return None;
        }
        Some(self.data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    }
}

/// Saturating product of the dims: an absurd shape stays absurd instead of wrapping to small.
pub fn element_count(shape: &[u32]) -> u64 {
    shape.iter().fold(1u64, |acc, &d| acc.saturating_mul(d as u64))
}

/// Content hash of a weight's bytes (blake3, hex): how weights are addressed and verified.
pub fn content_hash(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// [`content_hash`] of bytes that arrive in pieces.
#[derive(Default)]
pub struct ContentHasher(blake3::Hasher);

impl ContentHasher {
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    pub fn finish(&self) -> String {
        self.0.finalize().to_hex().to_string()
    }
}
