//! Reindex family: gather (embedding lookup; f32, f16 or block-quantized tables) and transpose. Reshape needs no kernel.

use shared_proto::{Op, RemoteError};

use super::{GpuValue, Recorder, WebGpuExecutor, flat_groups, unsupported};

pub(super) fn encode(
    ex: &WebGpuExecutor,
    rec: &mut Recorder,
    op: &Op,
    args: &[&GpuValue],
    out_shape: &[u32],
) -> Result<GpuValue, RemoteError> {
    let out = ex.output(out_shape);
    let len = out.elements();
    let (groups, stride) = flat_groups(len);
    match op {
        Op::Gather => {
            let (table, ids) = (args[0], args[1]);
            let p = if table.dtype.is_packed() {
                super::linear_quant::check_rows(table.dtype, table.shape[1])?;
                let key = format!("gather_{:?}", table.dtype);
                ex.pipeline(&key, || {
                    include_str!("gather_quant.wgsl")
                        .replace("{{FORMAT}}", super::linear_quant::format_source(table.dtype))
                })
            } else {
                ex.pipeline("gather", || include_str!("gather.wgsl").into())
            };
            let words = [len, stride, table.shape[1], table.shape[0]];
            ex.dispatch(rec, p, &[&table.buf, &ids.buf, &out.buf], &words, groups)?;
        }
        Op::Transpose { perm } => {
            let x = args[0];
            let rank = x.shape.len();
            if rank > 4 {
                return Err(unsupported(format!("transpose of rank {rank} (WebGPU kernel handles ≤ 4)")));
            }
            let mut strides = vec![1u32; rank];
            for i in (0..rank.saturating_sub(1)).rev() {
                strides[i] = strides[i + 1] * x.shape[i + 1];
            }
            // Left-pad to rank 4: leading dims of size 1 with stride 0.
            let pad = 4 - rank;
            let mut out_dims = [1u32; 4];
            let mut src_strides = [0u32; 4];
            for (d, &p) in perm.iter().enumerate() {
                out_dims[pad + d] = x.shape[p as usize];
                src_strides[pad + d] = strides[p as usize];
            }
            let mut words = vec![len, stride, 0, 0];
            words.extend(out_dims);
            words.extend(src_strides);
            let p = ex.pipeline("transpose", || include_str!("transpose.wgsl").into());
            ex.dispatch(rec, p, &[&x.buf, &out.buf], &words, groups)?;
        }
        other => unreachable!("{} is not a reindex op", other.name()),
    }
    Ok(out)
}
