//! Token choice from logits: argmax and top-k / top-p sampling, one workgroup per row, so only
//! ids are read back.

use shared_proto::RemoteError;

use super::{GpuValue, Recorder, WebGpuExecutor, unsupported};

/// `logits[R, V]` → `[R]` i32.
pub(super) fn encode_argmax(
    ex: &WebGpuExecutor,
    rec: &mut Recorder,
    logits: &GpuValue,
) -> Result<GpuValue, RemoteError> {
    let (r, v) = (logits.shape[0], logits.shape[1]);
    if r > 65535 {
        return Err(unsupported(format!("argmax over {r} rows exceeds one dispatch dimension")));
    }
    let out = ex.output(&[r]);
    let p = ex.pipeline("argmax", || include_str!("argmax.wgsl").into());
    ex.dispatch(rec, p, &[&logits.buf, &out.buf], &[r, v, 0, 0], (r, 1, 1))?;
    Ok(GpuValue { dtype: shared_proto::DType::I32, ..out })
}

/// `logits[R, V]`, `params[R, 4]` = (temperature, top_k, top_p, u) → `[R]` i32.
pub(super) fn encode_sample(
    ex: &WebGpuExecutor,
    rec: &mut Recorder,
    logits: &GpuValue,
    params: &GpuValue,
) -> Result<GpuValue, RemoteError> {
    let (r, v) = (logits.shape[0], logits.shape[1]);
    if r > 65535 {
        return Err(unsupported(format!("sample over {r} rows exceeds one dispatch dimension")));
    }
    let out = ex.output(&[r]);
    let p = ex.pipeline("sample", || include_str!("sample.wgsl").into());
    ex.dispatch(rec, p, &[&logits.buf, &params.buf, &out.buf], &[r, v, 0, 0], (r, 1, 1))?;
    Ok(GpuValue { dtype: shared_proto::DType::I32, ..out })
}
