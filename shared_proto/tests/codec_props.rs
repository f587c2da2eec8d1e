//! Property tests of the frame codec: round trips, and rejection of malformed or oversized frames
//! without panicking.
#![cfg(not(target_arch = "wasm32"))]

use bytes::Bytes;
use proptest::prelude::*;
use shared_proto::*;

fn arb_dtype() -> impl Strategy<Value = DType> {
    prop_oneof![Just(DType::F32), Just(DType::F16), Just(DType::I32), Just(DType::U32), Just(DType::U8)]
}

fn arb_tensor() -> impl Strategy<Value = Tensor> {
    (arb_dtype(), prop::collection::vec(0u32..6, 0..4)).prop_flat_map(|(dtype, shape)| {
        let n = shape.iter().product::<u32>() as usize * dtype.size();
        prop::collection::vec(any::<u8>(), n).prop_map(move |data| Tensor {
            dtype,
            shape: shape.clone(),
            data: Bytes::from(data),
        })
    })
}

fn arb_request() -> impl Strategy<Value = Request> {
    prop_oneof![
        Just(Request::Ping),
        Just(Request::Sink),
        Just(Request::Kernel(Kernel::Add)),
        Just(Request::LoseDevice),
        any::<u32>().prop_map(|threads| Request::SetThreads { threads }),
        (".{0,20}", any::<u32>(), any::<u64>(), any::<u64>())
            .prop_map(|(model, index, offset, total)| Request::PutWeightPart { model, index, offset, total }),
        (0..3u8, any::<u32>()).prop_map(|(v, repeats)| Request::Kernel(Kernel::MatMul {
            variant: [MatMulVariant::Tiled, MatMulVariant::Naive, MatMulVariant::Register][v as usize],
            repeats
        })),
    ]
}

fn arb_to_tab() -> impl Strategy<Value = ToTab> {
    prop_oneof![
        any::<u64>().prop_map(|tab_id| ToTab::Welcome { tab_id }),
        ".{0,40}".prop_map(|message| ToTab::Reject { reason: RejectReason::BadToken, message }),
        (any::<u64>(), arb_request()).prop_map(|(id, req)| ToTab::Request { id, req }),
    ]
}

fn arb_to_host() -> impl Strategy<Value = ToHost> {
    let hello = (any::<u32>(), any::<u64>(), "[a-z0-9]{0,64}", ".{0,80}", any::<bool>()).prop_map(
        |(protocol_version, tab_id, token, user_agent, webnn)| {
            ToHost::Hello(Box::new(Hello {
                protocol_version,
                tab_id,
                token,
                caps: Capabilities {
                    user_agent,
                    hardware_concurrency: 2,
                    device_memory_gib: Some(8.0),
                    webgpu: WebGpuCaps {
                        api_present: true,
                        adapter: Some(AdapterInfo { name: "SwiftShader".into(), ..Default::default() }),
                        error: None,
                        limits: vec![("maxBufferSize".into(), 1 << 28)],
                        features: vec!["shader-f16".into()],
                    },
                    webnn: WebNnCaps {
                        api_present: webnn,
                        contexts: vec![WebNnContextProbe { device_type: "cpu".into(), ok: webnn, error: None }],
                    },
                    threads: 1,
                    activations: "f32".into(),
                    relaxed_simd: false,
                },
            }))
        },
    );
    let reply = (any::<u64>(), any::<f64>(), ".{0,40}", any::<bool>()).prop_map(|(id, ms, msg, ok)| ToHost::Reply {
        id,
        result: if ok {
            Ok(Reply::KernelDone { device_ms: ms })
        } else {
            Err(RemoteError::new(ErrorKind::DeviceLost, msg))
        },
    });
    prop_oneof![hello, reply]
}

proptest! {
    #[test]
    fn to_tab_round_trips(msg in arb_to_tab(), tensors in prop::collection::vec(arb_tensor(), 0..5)) {
        let f = Frame::with_tensors(msg, tensors);
        let bytes = encode(&f, &Limits::DEFAULT).unwrap();
        let back: Frame<ToTab> = decode(Bytes::from(bytes), &Limits::DEFAULT).unwrap();
        prop_assert_eq!(back, f);
    }

    #[test]
    fn to_host_round_trips(msg in arb_to_host(), tensors in prop::collection::vec(arb_tensor(), 0..5)) {
        // NaN != NaN: compare re-encoded bytes instead of values.
        let f = Frame::with_tensors(msg, tensors);
        let bytes = encode(&f, &Limits::DEFAULT).unwrap();
        let back: Frame<ToHost> = decode(Bytes::from(bytes.clone()), &Limits::DEFAULT).unwrap();
        prop_assert_eq!(encode(&back, &Limits::DEFAULT).unwrap(), bytes);
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode::<ToTab>(Bytes::from(data.clone()), &Limits::DEFAULT);
        let _ = decode::<ToHost>(Bytes::from(data), &Limits::DEFAULT);
    }

    #[test]
    fn every_truncation_is_rejected(msg in arb_to_tab(), tensors in prop::collection::vec(arb_tensor(), 1..4), cut in any::<prop::sample::Index>()) {
        let bytes = encode(&Frame::with_tensors(msg, tensors), &Limits::DEFAULT).unwrap();
        let cut = cut.index(bytes.len());
        prop_assert!(decode::<ToTab>(Bytes::copy_from_slice(&bytes[..cut]), &Limits::DEFAULT).is_err());
    }

    #[test]
    fn single_byte_corruption_never_panics(msg in arb_to_host(), tensors in prop::collection::vec(arb_tensor(), 0..3), at in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut bytes = encode(&Frame::with_tensors(msg, tensors), &Limits::DEFAULT).unwrap();
        let i = at.index(bytes.len());
        bytes[i] = byte;
        let _ = decode::<ToHost>(Bytes::from(bytes), &Limits::DEFAULT);
    }
}

fn frame_with(tensors: Vec<Tensor>) -> Vec<u8> {
    encode(&Frame::with_tensors(ToTab::Request { id: 1, req: Request::Sink }, tensors), &Limits::DEFAULT).unwrap()
}

#[test]
fn oversized_frame_is_rejected_before_parsing() {
    let small = Limits { max_frame_bytes: 64, ..Limits::DEFAULT };
    let bytes = frame_with(vec![Tensor::from_f32(vec![32], &[0.0; 32])]);
    assert!(matches!(decode::<ToTab>(Bytes::from(bytes), &small), Err(ProtoError::FrameTooLarge { limit: 64, .. })));
}

#[test]
fn too_many_elements_is_rejected_from_the_shape_alone() {
    // A header that claims a huge tensor but carries no payload: must fail on the shape, not
    // try to read or allocate 2^40 elements.
    let mut bytes = frame_with(vec![Tensor::from_f32(vec![1], &[1.0])]);
    // Rebuild by hand: dtype f32, rank 2, dims 2^20 x 2^20, byte_len 4.
    let header_end = 8 + u32::from_le_bytes(bytes[4..8].try_into().unwrap()) as usize;
    bytes.truncate(header_end);
    bytes.extend_from_slice(&1u32.to_le_bytes());
    bytes.extend_from_slice(&[0, 2]);
    bytes.extend_from_slice(&(1u32 << 20).to_le_bytes());
    bytes.extend_from_slice(&(1u32 << 20).to_le_bytes());
    bytes.extend_from_slice(&4u64.to_le_bytes());
    assert!(matches!(
        decode::<ToTab>(Bytes::from(bytes), &Limits::DEFAULT),
        Err(ProtoError::TooManyElements { got, .. }) if got == 1u64 << 40
    ));
}

#[test]
fn rank_limit_is_enforced() {
    let t = Tensor { dtype: DType::U8, shape: vec![1; 9], data: Bytes::from_static(&[7]) };
    let f = Frame::with_tensors(ToTab::Request { id: 1, req: Request::Sink }, vec![t]);
    assert!(matches!(encode(&f, &Limits::DEFAULT), Err(ProtoError::RankTooLarge { got: 9, limit: 8 })));
}

#[test]
fn payload_size_must_match_shape() {
    let t = Tensor { dtype: DType::F32, shape: vec![2], data: Bytes::from_static(&[0; 7]) };
    let f = Frame::with_tensors(ToTab::Request { id: 1, req: Request::Sink }, vec![t]);
    assert!(matches!(encode(&f, &Limits::DEFAULT), Err(ProtoError::PayloadSize { got: 7, expected: 8 })));
}

#[test]
fn trailing_bytes_and_bad_magic_are_rejected() {
    let mut bytes = frame_with(vec![]);
    bytes.push(0);
    assert_eq!(decode::<ToTab>(Bytes::from(bytes), &Limits::DEFAULT), Err(ProtoError::TrailingBytes(1)));
    let mut bytes = frame_with(vec![]);
    bytes[0] = b'X';
    assert!(matches!(decode::<ToTab>(Bytes::from(bytes), &Limits::DEFAULT), Err(ProtoError::BadMagic(_))));
}

#[test]
fn a_tab_message_is_not_a_host_message() {
    // Direction confusion must be an error, not a misparse.
    let bytes = encode(&Frame::new(ToHost::Reply { id: 3, result: Ok(Reply::Pong) }), &Limits::DEFAULT).unwrap();
    assert!(decode::<ToTab>(Bytes::from(bytes), &Limits::DEFAULT).is_err());
}
