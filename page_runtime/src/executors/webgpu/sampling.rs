//! Token choice from logits: argmax (and sampling), one workgroup per row so only ids are read
//! back.

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
