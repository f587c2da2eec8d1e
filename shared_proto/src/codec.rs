//! Frame layout (all integers little-endian):
//!
//! ```text
//! "TBP1" | u32 header_len | header (bincode, standard config)
//! | u32 tensor_count
//! | per tensor: u8 dtype | u8 rank | rank × u32 dim | u64 byte_len | zero pad to 8 | bytes
//! ```
//!
//! Payloads start 8-aligned relative to the frame so a receiver can view them as `f32`/`u32`
//! without copying when its buffer is aligned. Decoding takes a [`Bytes`] and hands out tensor
//! data as slices of it: no copy on the host. This module is the only place that knows the wire
//! codec, so bincode can be swapped without touching callers.

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::ProtoError;
use crate::limits::Limits;
use crate::tensor::{DType, Tensor, element_count};
use crate::version::MAGIC;

/// A header message plus the tensors that travel with it.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame<M> {
    pub msg: M,
    pub tensors: Vec<Tensor>,
}

impl<M> Frame<M> {
    pub fn new(msg: M) -> Self {
        Frame { msg, tensors: Vec::new() }
    }

    pub fn with_tensors(msg: M, tensors: Vec<Tensor>) -> Self {
        Frame { msg, tensors }
    }
}

fn bincode_config() -> bincode::config::Configuration {
    bincode::config::standard()
}

fn pad_to_8(len: usize) -> usize {
    (8 - len % 8) % 8
}

/// Encode a frame. Fails only if the frame would break `limits` (so a sender learns before its
/// peer closes the socket) or the header cannot be encoded.
pub fn encode<M: Serialize>(frame: &Frame<M>, limits: &Limits) -> Result<Vec<u8>, ProtoError> {
    let header =
        bincode::serde::encode_to_vec(&frame.msg, bincode_config()).map_err(|e| ProtoError::Encode(e.to_string()))?;
    if header.len() > limits.max_header_bytes {
        return Err(ProtoError::HeaderTooLarge { got: header.len(), limit: limits.max_header_bytes });
    }
    if frame.tensors.len() > limits.max_tensors {
        return Err(ProtoError::TooManyTensors { got: frame.tensors.len(), limit: limits.max_tensors });
    }
    let payload: usize = frame.tensors.iter().map(|t| t.data.len() + 16 + 4 * t.shape.len()).sum();
    let mut out = Vec::with_capacity(12 + header.len() + payload);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(&(frame.tensors.len() as u32).to_le_bytes());
    for t in &frame.tensors {
        check_tensor_meta(t.dtype, &t.shape, t.data.len() as u64, limits)?;
        out.push(t.dtype as u8);
        out.push(t.shape.len() as u8);
        for d in &t.shape {
            out.extend_from_slice(&d.to_le_bytes());
        }
        out.extend_from_slice(&(t.data.len() as u64).to_le_bytes());
        out.resize(out.len() + pad_to_8(out.len()), 0);
        out.extend_from_slice(&t.data);
    }
    if out.len() > limits.max_frame_bytes {
        return Err(ProtoError::FrameTooLarge { got: out.len(), limit: limits.max_frame_bytes });
    }
    Ok(out)
}

fn check_tensor_meta(dtype: DType, shape: &[u32], byte_len: u64, limits: &Limits) -> Result<(), ProtoError> {
    if shape.len() > limits.max_rank {
        return Err(ProtoError::RankTooLarge { got: shape.len(), limit: limits.max_rank });
    }
    let elements = element_count(shape);
    if elements > limits.max_elements {
        return Err(ProtoError::TooManyElements { got: elements, limit: limits.max_elements });
    }
    // Block dtypes: the last axis must be whole blocks, and the payload is checked per block.
    let Some(expected) = dtype.byte_len(shape) else {
        return Err(ProtoError::PartialBlock { dtype, shape: shape.to_vec() });
    };
    if byte_len != expected {
        return Err(ProtoError::PayloadSize { got: byte_len, expected });
    }
    Ok(())
}

/// A bounds-checked reader over the frame.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtoError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len()).ok_or(ProtoError::Truncated {
            needed: n,
            offset: self.pos,
            len: self.buf.len(),
        })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, ProtoError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, ProtoError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Result<u64, ProtoError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
}

/// Decode a frame, enforcing every limit before allocating anything the peer sized.
pub fn decode<M: DeserializeOwned>(frame: Bytes, limits: &Limits) -> Result<Frame<M>, ProtoError> {
    if frame.len() > limits.max_frame_bytes {
        return Err(ProtoError::FrameTooLarge { got: frame.len(), limit: limits.max_frame_bytes });
    }
    let mut c = Cursor { buf: &frame, pos: 0 };
    let magic: [u8; 4] = c.take(4)?.try_into().expect("4 bytes");
    if magic != MAGIC {
        return Err(ProtoError::BadMagic(magic));
    }
    let header_len = c.u32()? as usize;
    if header_len > limits.max_header_bytes {
        return Err(ProtoError::HeaderTooLarge { got: header_len, limit: limits.max_header_bytes });
    }
    let header = c.take(header_len)?;
    let (msg, used): (M, usize) = bincode::serde::decode_from_slice(
        header,
        bincode_config().with_limit::<{ Limits::DEFAULT.max_header_bytes }>(),
    )
    .map_err(|e| ProtoError::BadHeader(e.to_string()))?;
    if used != header.len() {
        return Err(ProtoError::BadHeader(format!("{} unused header bytes", header.len() - used)));
    }
    let count = c.u32()? as usize;
    if count > limits.max_tensors {
        return Err(ProtoError::TooManyTensors { got: count, limit: limits.max_tensors });
    }
    let mut tensors = Vec::with_capacity(count);
    for _ in 0..count {
        let tag = c.u8()?;
        let dtype = DType::from_tag(tag).ok_or(ProtoError::BadDType(tag))?;
        let rank = c.u8()? as usize;
        if rank > limits.max_rank {
            return Err(ProtoError::RankTooLarge { got: rank, limit: limits.max_rank });
        }
        let mut shape = Vec::with_capacity(rank);
        for _ in 0..rank {
            shape.push(c.u32()?);
        }
        let byte_len = c.u64()?;
        check_tensor_meta(dtype, &shape, byte_len, limits)?;
        c.take(pad_to_8(c.pos))?;
        let start = c.pos;
        c.take(byte_len as usize)?;
        tensors.push(Tensor { dtype, shape, data: frame.slice(start..c.pos) });
    }
    if c.pos != frame.len() {
        return Err(ProtoError::TrailingBytes(frame.len() - c.pos));
    }
    Ok(Frame { msg, tensors })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{Request, ToTab};

    #[test]
    fn payloads_are_eight_aligned_and_shared() {
        let t = Tensor::from_f32(vec![3], &[1.0, 2.0, 3.0]);
        let f = Frame::with_tensors(ToTab::Request { id: 7, req: Request::Sink }, vec![t.clone(), t]);
        let bytes = Bytes::from(encode(&f, &Limits::DEFAULT).unwrap());
        let back: Frame<ToTab> = decode(bytes.clone(), &Limits::DEFAULT).unwrap();
        assert_eq!(back, f);
        for t in &back.tensors {
            let offset = t.data.as_ptr() as usize - bytes.as_ptr() as usize;
            assert_eq!(offset % 8, 0, "payload at offset {offset}");
        }
    }
}
