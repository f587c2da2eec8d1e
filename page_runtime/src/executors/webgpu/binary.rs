//! Binary element-wise family. One WGSL template; each op substitutes its expression.

use shared_proto::{DType, RemoteError, Tensor};

use super::{KernelRun, WebGpuExecutor, check, groups};

const TEMPLATE: &str = include_str!("binary.wgsl");
const WORKGROUP: u32 = 256;

#[derive(Debug, Clone, Copy)]
pub(super) enum BinaryOp {
    Add,
}

impl BinaryOp {
    fn key(self) -> &'static str {
        match self {
            BinaryOp::Add => "binary_add",
        }
    }
    fn expr(self) -> &'static str {
        match self {
            BinaryOp::Add => "x + y",
        }
    }
}

pub(super) async fn run(ex: &WebGpuExecutor, op: BinaryOp, inputs: &[Tensor]) -> Result<KernelRun, RemoteError> {
    let len = check::binary(op.key(), inputs)? as u32;
    let pipeline = ex.pipeline(op.key(), || TEMPLATE.replace("{{expr}}", op.expr()));
    let a = ex.upload(&inputs[0].data);
    let b = ex.upload(&inputs[1].data);
    let out_bytes = len as u64 * 4;
    let c = ex.output(out_bytes);
    // Past 65535 workgroups in x, wrap into y; the shader folds (x, y) back into one index.
    let total = groups(len, WORKGROUP);
    let (gx, gy) = if total <= 65535 { (total, 1) } else { (65535, total.div_ceil(65535)) };
    let params = ex.uniform(&[len, gx * WORKGROUP, 0, 0]);
    let bind_group = ex.bind(&pipeline, &[&a, &b, &c, &params]);
    let (bytes, device_ms) = ex.submit_and_read(&pipeline, &bind_group, (gx, gy, 1), 1, &c, out_bytes).await?;
    Ok(KernelRun {
        outputs: vec![Tensor { dtype: DType::F32, shape: inputs[0].shape.clone(), data: bytes }],
        device_ms,
    })
}
