//! Decoding before authentication (issue 13): a peer that has proven nothing sends the host one
//! frame, decoded under `Limits::PRE_AUTH` (64 KiB). What decoding it may allocate must follow
//! the header it is given: a length prefix alone must not size an allocation. Before the codec
//! bounded claims by the bytes left, both crafted frames below made a decode allocate 1 MiB
//! (bincode's limit was a compile-time 1 MiB whatever the `Limits`, and serde preallocates up to
//! 1 MiB for a claimed sequence whatever bincode's limit).
#![cfg(not(target_arch = "wasm32"))]

#[path = "../fuzz/src/counting.rs"]
mod counting;

use bytes::Bytes;
use shared_proto::*;

#[global_allocator]
static ALLOC: counting::Counting = counting::Counting;

/// A frame of `header` bytes and no tensors.
fn frame(header: &[u8]) -> Vec<u8> {
    let mut f = b"TBP1".to_vec();
    f.extend_from_slice(&(header.len() as u32).to_le_bytes());
    f.extend_from_slice(header);
    f.extend_from_slice(&0u32.to_le_bytes());
    f
}

/// The start of a `Hello` in bincode's standard encoding: variant 0, protocol version 2, tab 1.
const HELLO: [u8; 3] = [0, 2, 1];

/// Little: the error message and bincode's bookkeeping, whatever a header claims.
const LITTLE: usize = 4 << 10;

/// Decode `f` as a first frame under the pre-auth limits, and under the default ones too (the
/// claim is bounded by the header, not by which limits are set): it must be refused as a bad
/// header having allocated little.
fn refused_having_allocated_little(f: &[u8], what: &str) {
    for limits in [Limits::PRE_AUTH, Limits::DEFAULT] {
        let bytes = Bytes::copy_from_slice(f);
        let (res, peak) = counting::measure(move || decode::<ToHost>(bytes, &limits));
        eprintln!(
            "a {}-byte frame whose {what}, max header {} B: {peak} B at peak, {res:?}",
            f.len(),
            limits.max_header_bytes
        );
        assert!(matches!(res, Err(ProtoError::BadHeader(_))), "{res:?}");
        assert!(peak <= LITTLE, "{peak} B allocated for a {}-byte frame under {limits:?}", f.len());
    }
}

#[test]
fn a_pre_auth_string_claiming_a_mebibyte_allocates_little() {
    // The token claims 2^20 - 64 bytes (varint marker 252: a u32 follows) in a 20-byte frame.
    let mut header = HELLO.to_vec();
    header.extend_from_slice(&[252, 0xc0, 0xff, 0x0f, 0]);
    refused_having_allocated_little(&frame(&header), "token claims 2^20 - 64 bytes");
}

#[test]
fn a_pre_auth_sequence_claiming_millions_allocates_little() {
    // Empty token and user agent, no concurrency, no device memory, no WebGPU API, no adapter, no
    // error, then `webgpu.limits: Vec<(String, u64)>` claiming 2^32 - 1 entries.
    let mut header = HELLO.to_vec();
    header.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 252, 0xff, 0xff, 0xff, 0xff]);
    refused_having_allocated_little(&frame(&header), "WebGPU limits list claims 2^32 - 1 entries");
}

#[test]
fn a_real_hello_still_decodes_under_the_pre_auth_limits() {
    let caps = Capabilities {
        user_agent: "Mozilla/5.0 (X11; Linux x86_64) HeadlessChrome/141.0.0.0".into(),
        hardware_concurrency: 2,
        webgpu: WebGpuCaps {
            api_present: true,
            limits: (0..40).map(|i| (format!("maxLimit{i}"), 1 << i)).collect(),
            features: (0..20).map(|i| format!("feature-{i}")).collect(),
            ..Default::default()
        },
        ..Default::default()
    };
    let hello =
        ToHost::Hello(Box::new(Hello { protocol_version: PROTOCOL_VERSION, tab_id: 7, token: "ab".repeat(16), caps }));
    let f = Frame::new(hello);
    let bytes = encode(&f, &Limits::PRE_AUTH).expect("a Hello fits the pre-auth limits");
    assert_eq!(decode::<ToHost>(Bytes::from(bytes), &Limits::PRE_AUTH).expect("decodes"), f);
}
