//! End to end: host → chromedriver → headless Chromium → page runtime → WebGPU, and back.

use crate::support;

use std::time::Duration;

use page_runtime::executors::{cpu, tolerance};
use shared_proto::{DType, ErrorKind, Kernel, MatMulVariant, Tensor};
use tabpool::TabError;

const T: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernels_in_a_real_tab_match_the_cpu_executor() {
    let _procs = support::process_guard();
    let mut host = support::host().await;
    let tab = host.launch_tab().await.expect("a real tab joins");
    let adapter = tab.caps().webgpu.adapter.clone().expect("the tab has a WebGPU adapter");
    assert!(!adapter.vendor.is_empty() || !adapter.architecture.is_empty(), "adapter is described: {adapter:?}");

    for (i, (m, k, n)) in [(1usize, 1usize, 1usize), (37, 70, 19), (128, 64, 200), (30, 96, 44)].into_iter().enumerate()
    {
        let a = support::values(m * k, 10 + i as u64);
        let b = support::values(k * n, 20 + i as u64);
        for variant in [MatMulVariant::Register, MatMulVariant::Tiled, MatMulVariant::Naive] {
            let inputs =
                vec![Tensor::from_f32(vec![m as u32, k as u32], &a), Tensor::from_f32(vec![k as u32, n as u32], &b)];
            let (out, device_ms) = tab.kernel(Kernel::MatMul { variant, repeats: 1 }, inputs, T).await.unwrap();
            assert!(device_ms > 0.0, "device time is measured: {device_ms}");
            assert_eq!(out[0].shape, vec![m as u32, n as u32]);
            let c = tolerance::compare(
                &out[0].to_f32().unwrap(),
                &cpu::matmul(&a, &b, m, k, n),
                &tolerance::matmul_bound(&a, &b, m, k, n),
            );
            assert_eq!(c.violations, 0, "{variant:?} {m}x{k}x{n}: {c:?}");
        }
    }

    let (a, b) = (support::values(1000, 1), support::values(1000, 2));
    let (out, _) = tab
        .kernel(Kernel::Add, vec![Tensor::from_f32(vec![10, 100], &a), Tensor::from_f32(vec![10, 100], &b)], T)
        .await
        .unwrap();
    assert_eq!(out[0].to_f32().unwrap(), cpu::add(&a, &b), "add is exact");

    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_typed_errors_and_the_tab_keeps_serving() {
    let _procs = support::process_guard();
    let mut host = support::host().await;
    let tab = host.launch_tab().await.expect("a real tab joins");

    // Wrong inner dimension: the tab answers BadInput, it does not crash.
    let bad = vec![Tensor::from_f32(vec![2, 3], &[0.0; 6]), Tensor::from_f32(vec![2, 3], &[0.0; 6])];
    match tab.kernel(Kernel::MatMul { variant: MatMulVariant::Tiled, repeats: 1 }, bad, T).await {
        Err(TabError::Remote { error, .. }) => assert_eq!(error.kind, ErrorKind::BadInput, "{error:?}"),
        other => panic!("expected BadInput, got {other:?}"),
    }
    // Integer inputs to a float kernel.
    let ints = Tensor { dtype: DType::I32, shape: vec![4], data: vec![0u8; 16].into() };
    match tab.kernel(Kernel::Add, vec![ints.clone(), ints], T).await {
        Err(TabError::Remote { error, .. }) => assert_eq!(error.kind, ErrorKind::BadInput),
        other => panic!("expected BadInput, got {other:?}"),
    }
    // Over the element limit: refused before anything is sent, with the limit in the message.
    let huge = Tensor { dtype: DType::U8, shape: vec![1 << 14, 1 << 14], data: vec![0u8; 1 << 28].into() };
    match tab.call(shared_proto::Request::Sink, vec![huge], T).await {
        Err(TabError::Encode(e)) => assert!(e.to_string().contains("exceeds the limit"), "{e}"),
        other => panic!("expected a local limit error, got {other:?}"),
    }
    // Still healthy.
    tab.ping(T).await.expect("tab still answers");
    let (out, _) = tab
        .kernel(Kernel::Add, vec![Tensor::from_f32(vec![2], &[1.0, 2.0]), Tensor::from_f32(vec![2], &[3.0, 4.0])], T)
        .await
        .unwrap();
    assert_eq!(out[0].to_f32().unwrap(), vec![4.0, 6.0]);
    host.shutdown().await;
}
