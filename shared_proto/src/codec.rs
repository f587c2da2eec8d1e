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
use std::borrow::Cow;

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
    Ok(encode_pieces(frame, limits)?.concat())
}

/// The bytes of [`encode`] as pieces in order — the header and each tensor's description, then
/// each tensor's payload borrowed, not copied — for a sender that assembles the frame outside its
/// own memory (a tab writes a large reply straight into a JS buffer: its wasm heap, which never
/// shrinks, would otherwise hold the payload twice).
pub fn encode_pieces<'a, M: Serialize>(frame: &'a Frame<M>, limits: &Limits) -> Result<Vec<Cow<'a, [u8]>>, ProtoError> {
    let header =
        bincode::serde::encode_to_vec(&frame.msg, bincode_config()).map_err(|e| ProtoError::Encode(e.to_string()))?;
    if header.len() > limits.max_header_bytes {
        return Err(ProtoError::HeaderTooLarge { got: header.len(), limit: limits.max_header_bytes });
    }
    if frame.tensors.len() > limits.max_tensors {
        return Err(ProtoError::TooManyTensors { got: frame.tensors.len(), limit: limits.max_tensors });
    }
    let mut pieces = Vec::with_capacity(1 + 2 * frame.tensors.len());
    let mut meta = Vec::with_capacity(16 + header.len());
    meta.extend_from_slice(&MAGIC);
    meta.extend_from_slice(&(header.len() as u32).to_le_bytes());
    meta.extend_from_slice(&header);
    meta.extend_from_slice(&(frame.tensors.len() as u32).to_le_bytes());
    // Bytes in the pieces already taken: payloads are padded to 8 from the frame's start.
    let mut before = 0;
    for t in &frame.tensors {
        check_tensor_meta(t.dtype, &t.shape, t.data.len() as u64, limits)?;
        meta.push(t.dtype as u8);
        meta.push(t.shape.len() as u8);
        for d in &t.shape {
            meta.extend_from_slice(&d.to_le_bytes());
        }
        meta.extend_from_slice(&(t.data.len() as u64).to_le_bytes());
        meta.resize(meta.len() + pad_to_8(before + meta.len()), 0);
        before += meta.len() + t.data.len();
        pieces.push(Cow::Owned(std::mem::take(&mut meta)));
        pieces.push(Cow::Borrowed(&t.data[..]));
    }
    before += meta.len();
    if !meta.is_empty() {
        pieces.push(Cow::Owned(meta));
    }
    if before > limits.max_frame_bytes {
        return Err(ProtoError::FrameTooLarge { got: before, limit: limits.max_frame_bytes });
    }
    Ok(pieces)
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

/// bincode's own decode limit (the string bytes it lets a header claim, in all) is a
/// compile-time constant: the smallest of these at or above the header's length is used.
const HEADER_BUCKETS: [usize; 3] = [64 << 10, 1 << 20, u32::MAX as usize];

/// Decode a bincode header under a bincode limit that follows its length, with every string and
/// sequence claim bounded by the bytes left in it (see [`bounded`]). Returns the message and the
/// bytes it used.
fn decode_header<M: DeserializeOwned>(header: &[u8]) -> Result<(M, usize), bincode::error::DecodeError> {
    // A header is at most `max_header_bytes` long (checked by the caller), and what it decodes
    // can legitimately claim no more than its own length (string bytes are read from it; a
    // sequence's elements take a byte each at least), so no bucket is tighter than needed.
    match header.len() {
        n if n <= HEADER_BUCKETS[0] => decode_header_within::<M, { HEADER_BUCKETS[0] }>(header),
        n if n <= HEADER_BUCKETS[1] => decode_header_within::<M, { HEADER_BUCKETS[1] }>(header),
        _ => decode_header_within::<M, { HEADER_BUCKETS[2] }>(header),
    }
}

fn decode_header_within<M: DeserializeOwned, const LIMIT: usize>(
    header: &[u8],
) -> Result<(M, usize), bincode::error::DecodeError> {
    let h = bounded::Header::new(header);
    let mut decoder =
        bincode::serde::OwnedSerdeDecoder::from_reader(bounded::Reader(&h), bincode_config().with_limit::<LIMIT>());
    let msg = M::deserialize(bounded::De { inner: decoder.as_deserializer(), h: &h })?;
    Ok((msg, h.used()))
}

/// Claims bounded by what is left of the header. bincode allocates a string's claimed length
/// before reading its bytes (up to its limit, counted over the whole header), and serde
/// preallocates up to 1 MiB for a sequence of the length the header claims whatever bincode's
/// limit (`size_hint::cautious`), so a 20-byte header could make a decode allocate 1 MiB per
/// claim, under any `Limits`. This wrapper of bincode's deserializer (and of every visitor,
/// sequence, map, enum and seed it hands out, so nested values stay wrapped) refuses a string or
/// byte string longer than the bytes left, and caps a sequence's or map's size hint at the bytes
/// left (each element takes one at least; a zero-sized element allocates nothing): a decode
/// allocates in proportion to the header it was given.
mod bounded {
    use std::cell::Cell;
    use std::fmt;

    use bincode::de::read::Reader as BincodeReader;
    use bincode::error::DecodeError;
    use serde::de::{DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor};

    /// The header being decoded and how far bincode has read it, shared by the reader and the
    /// wrappers.
    pub(super) struct Header<'a> {
        bytes: &'a [u8],
        pos: Cell<usize>,
    }

    impl<'a> Header<'a> {
        pub(super) fn new(bytes: &'a [u8]) -> Self {
            Header { bytes, pos: Cell::new(0) }
        }
        fn rest(&self) -> &'a [u8] {
            &self.bytes[self.pos.get()..]
        }
        pub(super) fn used(&self) -> usize {
            self.pos.get()
        }
        fn advance(&self, n: usize) {
            self.pos.set((self.pos.get() + n).min(self.bytes.len()));
        }
    }

    /// bincode's reader over the header.
    pub(super) struct Reader<'h>(pub(super) &'h Header<'h>);

    impl BincodeReader for Reader<'_> {
        fn read(&mut self, out: &mut [u8]) -> Result<(), DecodeError> {
            let rest = self.0.rest();
            let Some(src) = rest.get(..out.len()) else {
                return Err(DecodeError::UnexpectedEnd { additional: out.len() - rest.len() });
            };
            out.copy_from_slice(src);
            self.0.advance(out.len());
            Ok(())
        }
        fn peek_read(&mut self, n: usize) -> Option<&[u8]> {
            self.0.rest().get(..n)
        }
        fn consume(&mut self, n: usize) {
            self.0.advance(n);
        }
    }

    /// A deserializer reading the header, wrapped.
    pub(super) struct De<'h, D> {
        pub(super) inner: D,
        pub(super) h: &'h Header<'h>,
    }

    impl<'h, D> De<'h, D> {
        /// The length prefix of a string or byte string about to be read must not claim more
        /// bytes than follow it. (A prefix that does not parse is left for bincode to refuse.)
        fn check_claim<E: serde::de::Error>(&self) -> Result<(), E> {
            let rest = self.h.rest();
            if let Ok((len, prefix)) = bincode::decode_from_slice::<u64, _>(rest, super::bincode_config()) {
                let left = rest.len() - prefix;
                if len > left as u64 {
                    return Err(E::custom(format_args!("a string claims {len} bytes, {left} are left in the header")));
                }
            }
            Ok(())
        }
    }

    struct Vis<'h, V> {
        inner: V,
        h: &'h Header<'h>,
    }

    struct Seed<'h, T> {
        inner: T,
        h: &'h Header<'h>,
    }

    struct Access<'h, A> {
        inner: A,
        h: &'h Header<'h>,
    }

    impl<'h, A> Access<'h, A> {
        fn cap(&self, hint: Option<usize>) -> Option<usize> {
            hint.map(|n| n.min(self.h.rest().len()))
        }
    }

    macro_rules! forward_deserialize {
        ($($method:ident),*) => {$(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
                self.inner.$method(Vis { inner: visitor, h: self.h })
            }
        )*};
    }

    macro_rules! claim_then_deserialize {
        ($($method:ident),*) => {$(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
                self.check_claim()?;
                self.inner.$method(Vis { inner: visitor, h: self.h })
            }
        )*};
    }

    impl<'de, 'h, D: Deserializer<'de>> Deserializer<'de> for De<'h, D> {
        type Error = D::Error;

        forward_deserialize!(
            deserialize_any,
            deserialize_bool,
            deserialize_i8,
            deserialize_i16,
            deserialize_i32,
            deserialize_i64,
            deserialize_i128,
            deserialize_u8,
            deserialize_u16,
            deserialize_u32,
            deserialize_u64,
            deserialize_u128,
            deserialize_f32,
            deserialize_f64,
            deserialize_char,
            deserialize_option,
            deserialize_unit,
            deserialize_seq,
            deserialize_map,
            deserialize_identifier,
            deserialize_ignored_any
        );
        claim_then_deserialize!(deserialize_str, deserialize_string, deserialize_bytes, deserialize_byte_buf);

        fn deserialize_unit_struct<V: Visitor<'de>>(self, name: &'static str, v: V) -> Result<V::Value, D::Error> {
            self.inner.deserialize_unit_struct(name, Vis { inner: v, h: self.h })
        }
        fn deserialize_newtype_struct<V: Visitor<'de>>(self, name: &'static str, v: V) -> Result<V::Value, D::Error> {
            self.inner.deserialize_newtype_struct(name, Vis { inner: v, h: self.h })
        }
        fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, v: V) -> Result<V::Value, D::Error> {
            self.inner.deserialize_tuple(len, Vis { inner: v, h: self.h })
        }
        fn deserialize_tuple_struct<V: Visitor<'de>>(
            self,
            name: &'static str,
            len: usize,
            v: V,
        ) -> Result<V::Value, D::Error> {
            self.inner.deserialize_tuple_struct(name, len, Vis { inner: v, h: self.h })
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            name: &'static str,
            fields: &'static [&'static str],
            v: V,
        ) -> Result<V::Value, D::Error> {
            self.inner.deserialize_struct(name, fields, Vis { inner: v, h: self.h })
        }
        fn deserialize_enum<V: Visitor<'de>>(
            self,
            name: &'static str,
            variants: &'static [&'static str],
            v: V,
        ) -> Result<V::Value, D::Error> {
            self.inner.deserialize_enum(name, variants, Vis { inner: v, h: self.h })
        }
        fn is_human_readable(&self) -> bool {
            self.inner.is_human_readable()
        }
    }

    macro_rules! forward_visit {
        ($($method:ident($ty:ty)),*) => {$(
            fn $method<E: serde::de::Error>(self, v: $ty) -> Result<V::Value, E> {
                self.inner.$method(v)
            }
        )*};
    }

    impl<'de, 'h, V: Visitor<'de>> Visitor<'de> for Vis<'h, V> {
        type Value = V::Value;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            self.inner.expecting(f)
        }
        forward_visit!(
            visit_bool(bool),
            visit_i8(i8),
            visit_i16(i16),
            visit_i32(i32),
            visit_i64(i64),
            visit_i128(i128),
            visit_u8(u8),
            visit_u16(u16),
            visit_u32(u32),
            visit_u64(u64),
            visit_u128(u128),
            visit_f32(f32),
            visit_f64(f64),
            visit_char(char),
            visit_str(&str),
            visit_borrowed_str(&'de str),
            visit_string(String),
            visit_bytes(&[u8]),
            visit_borrowed_bytes(&'de [u8]),
            visit_byte_buf(Vec<u8>)
        );
        fn visit_none<E: serde::de::Error>(self) -> Result<V::Value, E> {
            self.inner.visit_none()
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<V::Value, E> {
            self.inner.visit_unit()
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
            self.inner.visit_some(De { inner: d, h: self.h })
        }
        fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
            self.inner.visit_newtype_struct(De { inner: d, h: self.h })
        }
        fn visit_seq<A: SeqAccess<'de>>(self, a: A) -> Result<V::Value, A::Error> {
            self.inner.visit_seq(Access { inner: a, h: self.h })
        }
        fn visit_map<A: MapAccess<'de>>(self, a: A) -> Result<V::Value, A::Error> {
            self.inner.visit_map(Access { inner: a, h: self.h })
        }
        fn visit_enum<A: EnumAccess<'de>>(self, a: A) -> Result<V::Value, A::Error> {
            self.inner.visit_enum(Access { inner: a, h: self.h })
        }
    }

    impl<'de, 'h, T: DeserializeSeed<'de>> DeserializeSeed<'de> for Seed<'h, T> {
        type Value = T::Value;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<T::Value, D::Error> {
            self.inner.deserialize(De { inner: d, h: self.h })
        }
    }

    impl<'de, 'h, A: SeqAccess<'de>> SeqAccess<'de> for Access<'h, A> {
        type Error = A::Error;
        fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, A::Error> {
            self.inner.next_element_seed(Seed { inner: seed, h: self.h })
        }
        fn size_hint(&self) -> Option<usize> {
            self.cap(self.inner.size_hint())
        }
    }

    impl<'de, 'h, A: MapAccess<'de>> MapAccess<'de> for Access<'h, A> {
        type Error = A::Error;
        fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, A::Error> {
            self.inner.next_key_seed(Seed { inner: seed, h: self.h })
        }
        fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, A::Error> {
            self.inner.next_value_seed(Seed { inner: seed, h: self.h })
        }
        fn size_hint(&self) -> Option<usize> {
            self.cap(self.inner.size_hint())
        }
    }

    impl<'de, 'h, A: EnumAccess<'de>> EnumAccess<'de> for Access<'h, A> {
        type Error = A::Error;
        type Variant = Access<'h, A::Variant>;
        fn variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<(T::Value, Self::Variant), A::Error> {
            let (value, variant) = self.inner.variant_seed(Seed { inner: seed, h: self.h })?;
            Ok((value, Access { inner: variant, h: self.h }))
        }
    }

    impl<'de, 'h, A: VariantAccess<'de>> VariantAccess<'de> for Access<'h, A> {
        type Error = A::Error;
        fn unit_variant(self) -> Result<(), A::Error> {
            self.inner.unit_variant()
        }
        fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, A::Error> {
            self.inner.newtype_variant_seed(Seed { inner: seed, h: self.h })
        }
        fn tuple_variant<V: Visitor<'de>>(self, len: usize, v: V) -> Result<V::Value, A::Error> {
            self.inner.tuple_variant(len, Vis { inner: v, h: self.h })
        }
        fn struct_variant<V: Visitor<'de>>(self, fields: &'static [&'static str], v: V) -> Result<V::Value, A::Error> {
            self.inner.struct_variant(fields, Vis { inner: v, h: self.h })
        }
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
    let (msg, used): (M, usize) = decode_header(header).map_err(|e| ProtoError::BadHeader(e.to_string()))?;
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
