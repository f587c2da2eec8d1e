//! Matmul family: a 64×64-tiled kernel with workgroup-shared tiles, and the naive baseline.

use shared_proto::{MatMulVariant, RemoteError, Tensor};

use super::{KernelRun, WebGpuExecutor, check, groups};

const TILED: &str = include_str!("matmul_tiled.wgsl");
const NAIVE: &str = include_str!("matmul_naive.wgsl");
/// Output tile edge of the tiled kernel (16×16 invocations × 4×4 outputs each).
const TILE: u32 = 64;

pub(super) async fn run(
    ex: &WebGpuExecutor,
    variant: MatMulVariant,
    repeats: u32,
    inputs: &[Tensor],
) -> Result<KernelRun, RemoteError> {
    let d = check::matmul(inputs)?;
    let (key, src, workgroups) = match variant {
        MatMulVariant::Tiled => ("matmul_tiled", TILED, (groups(d.n, TILE), groups(d.m, TILE), 1)),
        MatMulVariant::Naive => ("matmul_naive", NAIVE, (groups(d.n, 16), groups(d.m, 16), 1)),
    };
    let pipeline = ex.pipeline(key, || src.to_string());
    let a = ex.upload(&inputs[0].data);
    let b = ex.upload(&inputs[1].data);
    let out_bytes = d.m as u64 * d.n as u64 * 4;
    let c = ex.output(out_bytes);
    let dims = ex.uniform(&[d.m, d.k, d.n, 0]);
    let bind_group = ex.bind(&pipeline, &[&a, &b, &c, &dims]);
    let (bytes, device_ms) = ex.submit_and_read(&pipeline, &bind_group, workgroups, repeats, &c, out_bytes).await?;
    Ok(KernelRun {
        outputs: vec![Tensor { dtype: shared_proto::DType::F32, shape: vec![d.m, d.n], data: bytes }],
        device_ms,
    })
}
