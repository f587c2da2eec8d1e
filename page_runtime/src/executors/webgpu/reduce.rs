//! Reduce family: layer norm, softmax and L2 normalise (one invocation per row: no barriers,
//! which software adapters pay dearly for), masked mean pooling (one invocation per output).

use shared_proto::{Op, RemoteError};

use super::{GpuValue, Recorder, WebGpuExecutor, unsupported};

pub(super) fn encode(
    ex: &WebGpuExecutor,
    rec: &mut Recorder,
    op: &Op,
    args: &[&GpuValue],
    out_shape: &[u32],
) -> Result<GpuValue, RemoteError> {
    let x = args[0];
    let out = ex.output(out_shape);
    let h = x.last_dim();
    let rows = x.elements() / h.max(1);
    // One invocation per row, 64 rows per workgroup.
    let row_groups = (rows.div_ceil(64), 1, 1);
    if row_groups.0 > 65535 {
        return Err(unsupported(format!("{}: {rows} rows exceed one dispatch dimension", op.name())));
    }
    match op {
        Op::LayerNorm { eps } => {
            let p = ex.pipeline("layer_norm", || include_str!("layer_norm.wgsl").into());
            let bufs: [&wgpu::Buffer; 4] = [&x.buf, &args[1].buf, &args[2].buf, &out.buf];
            ex.dispatch(rec, p, &bufs, &[rows, h, eps.to_bits(), 0], row_groups)?;
        }
        Op::Softmax => {
            let p = ex.pipeline("softmax", || include_str!("softmax.wgsl").into());
            ex.dispatch(rec, p, &[&x.buf, &out.buf], &[rows, h, 0, 0], row_groups)?;
        }
        Op::L2Normalize { eps } => {
            let p = ex.pipeline("l2_normalize", || include_str!("l2_normalize.wgsl").into());
            ex.dispatch(rec, p, &[&x.buf, &out.buf], &[rows, h, eps.to_bits(), 0], row_groups)?;
        }
        Op::MeanPool => {
            let (b, s) = (x.shape[0], x.shape[1]);
            let p = ex.pipeline("mean_pool", || include_str!("mean_pool.wgsl").into());
            ex.dispatch(rec, p, &[&x.buf, &args[1].buf, &out.buf], &[b, s, h, 0], (h.div_ceil(64), b, 1))?;
        }
        other => unreachable!("{} is not a reduce op", other.name()),
    }
    Ok(out)
}
