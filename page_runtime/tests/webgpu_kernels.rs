//! WebGPU kernels in a real headless Chromium tab (wasm-bindgen-test-runner + chromedriver),
//! each checked against the CPU executor. Run with `cargo test-wasm`.
#![cfg(target_arch = "wasm32")]

#[path = "common/op_cases.rs"]
mod op_cases;

use page_runtime::executors::{cpu, tolerance};
use page_runtime::webgpu::{self, WebGpuExecutor};
use shared_proto::{ErrorKind, Kernel, MatMulVariant, Tensor};
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

/// Deterministic inputs in [-1, 1).
fn values(n: usize, seed: u32) -> Vec<f32> {
    op_cases::values(n, seed, 1.0)
}

async fn executor() -> WebGpuExecutor {
    match webgpu::init().await {
        Ok(gpu) => WebGpuExecutor::new(gpu),
        Err(caps) => panic!("no WebGPU device in this browser: {:?}", caps.error),
    }
}

/// (m, k, n): edge sizes, exact tiles, ragged tiles and k not a multiple of the K step.
const MATMUL_SHAPES: [(usize, usize, usize); 7] =
    [(1, 1, 1), (3, 5, 7), (64, 64, 64), (65, 33, 130), (128, 256, 96), (17, 300, 5), (33, 100, 36)];

async fn check_matmul(ex: &WebGpuExecutor, variant: MatMulVariant) {
    for (i, &(m, k, n)) in MATMUL_SHAPES.iter().enumerate() {
        let a = values(m * k, 2 * i as u32 + 1);
        let b = values(k * n, 2 * i as u32 + 2);
        let inputs = [Tensor::from_f32(vec![m as u32, k as u32], &a), Tensor::from_f32(vec![k as u32, n as u32], &b)];
        let run = ex.run_kernel(&Kernel::MatMul { variant, repeats: 1 }, &inputs).await.expect("kernel runs");
        assert_eq!(run.outputs[0].shape, vec![m as u32, n as u32]);
        let got = run.outputs[0].to_f32().unwrap();
        let want = cpu::matmul(&a, &b, m, k, n);
        let c = tolerance::compare(&got, &want, &tolerance::matmul_bound(&a, &b, m, k, n));
        assert_eq!(c.violations, 0, "{variant:?} {m}x{k}x{n}: {c:?}");
    }
}

#[wasm_bindgen_test]
async fn matmul_tiled_matches_cpu() {
    check_matmul(&executor().await, MatMulVariant::Tiled).await;
}

#[wasm_bindgen_test]
async fn matmul_register_matches_cpu() {
    // Shapes with k or n not divisible by 4 fall back to the tiled kernel; both paths checked.
    check_matmul(&executor().await, MatMulVariant::Register).await;
}

#[wasm_bindgen_test]
async fn matmul_naive_matches_cpu() {
    check_matmul(&executor().await, MatMulVariant::Naive).await;
}

#[wasm_bindgen_test]
async fn add_is_exact() {
    let ex = executor().await;
    // 65535·256 + 1000 elements: past one dispatch row, so the 2-D wrap is exercised.
    for n in [1usize, 255, 257, 65535 * 256 + 1000] {
        let (a, b) = (values(n, 7), values(n, 8));
        let inputs = [Tensor::from_f32(vec![n as u32], &a), Tensor::from_f32(vec![n as u32], &b)];
        let run = ex.run_kernel(&Kernel::Add, &inputs).await.expect("add runs");
        // IEEE addition is exact per element whatever the device: tolerance 0.
        assert!(run.outputs[0].to_f32().unwrap() == cpu::add(&a, &b), "add of {n} differs");
    }
}

#[wasm_bindgen_test]
async fn buffers_are_pooled_across_calls() {
    let ex = executor().await;
    let a = Tensor::from_f32(vec![8, 8], &values(64, 1));
    let inputs = [a.clone(), a];
    let kernel = Kernel::MatMul { variant: MatMulVariant::Tiled, repeats: 1 };
    ex.run_kernel(&kernel, &inputs).await.unwrap();
    let after_first = ex.pooled_buffers();
    assert!(after_first >= 5, "a, b, c, dims and staging return to the pool: {after_first}");
    ex.run_kernel(&kernel, &inputs).await.unwrap();
    assert_eq!(ex.pooled_buffers(), after_first, "second call reuses, not allocates");
}

#[wasm_bindgen_test]
async fn bad_shapes_are_bad_input() {
    let ex = executor().await;
    let inputs = [Tensor::from_f32(vec![2, 3], &[0.0; 6]), Tensor::from_f32(vec![2, 3], &[0.0; 6])];
    let e = ex
        .run_kernel(&Kernel::MatMul { variant: MatMulVariant::Tiled, repeats: 1 }, &inputs)
        .await
        .err()
        .expect("mismatched inner dims must fail");
    assert_eq!(e.kind, ErrorKind::BadInput);
}
