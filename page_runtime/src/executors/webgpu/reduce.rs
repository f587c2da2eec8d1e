//! Reduce family: layer norm, RMS norm, softmax and L2 normalise (one invocation per row: no barriers,
//! which software adapters pay dearly for), masked mean pooling (one invocation per output), global
//! average pooling (one invocation per plane).

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
    if let Op::GlobalAvgPool = op {
        return encode_global_avg_pool(ex, rec, x, out_shape);
    }
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
            let p = ex.pipeline("layer_norm", || layer_norm_source(false));
            let bufs: [&wgpu::Buffer; 4] = [&x.buf, &args[1].buf, &args[2].buf, &out.buf];
            ex.dispatch(rec, p, &bufs, &[rows, h, eps.to_bits(), 0], row_groups)?;
        }
        Op::RmsNorm { eps } => {
            let p = ex.pipeline("rms_norm", || include_str!("rms_norm.wgsl").into());
            ex.dispatch(rec, p, &[&x.buf, &args[1].buf, &out.buf], &[rows, h, eps.to_bits(), 0], row_groups)?;
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

fn layer_norm_source(residual: bool) -> String {
    let (binding, x) = if residual {
        ("@group(0) @binding(5) var<storage, read> r: array<f32>;\n", "x[i] + r[i]")
    } else {
        ("", "x[i]")
    };
    include_str!("layer_norm.wgsl").replace("{{R_BINDING}}", binding).replace("{{X}}", x)
}

/// LayerNorm(a + b) in one pass over the rows (a fused residual `Add → LayerNorm`; equal shapes).
pub(super) fn encode_add_layer_norm(
    ex: &WebGpuExecutor,
    rec: &mut Recorder,
    a: &GpuValue,
    b: &GpuValue,
    gamma: &GpuValue,
    beta: &GpuValue,
    eps: f32,
) -> Result<GpuValue, RemoteError> {
    let out = ex.output(&a.shape);
    let h = a.last_dim();
    let rows = a.elements() / h.max(1);
    let groups = (rows.div_ceil(64), 1, 1);
    if groups.0 > 65535 {
        return Err(unsupported(format!("layer_norm: {rows} rows exceed one dispatch dimension")));
    }
    let p = ex.pipeline("add_layer_norm", || layer_norm_source(true));
    let bufs: [&wgpu::Buffer; 4] = [&a.buf, &gamma.buf, &beta.buf, &out.buf];
    ex.dispatch_with_tail(rec, p, &bufs, &[rows, h, eps.to_bits(), 0], &[&b.buf], groups)?;
    Ok(out)
}

/// `x[N, C, H, W]` → `[N, C]`: each plane's mean, one invocation per plane.
pub(super) fn encode_global_avg_pool(
    ex: &WebGpuExecutor,
    rec: &mut Recorder,
    x: &GpuValue,
    out_shape: &[u32],
) -> Result<GpuValue, RemoteError> {
    let rows = x.shape[0] * x.shape[1];
    let len = x.shape[2] * x.shape[3];
    let out = ex.output(out_shape);
    let (groups, row_stride) = super::conv::wrapped_groups(rows, 64);
    let p = ex.pipeline("global_avg_pool", || include_str!("global_avg_pool.wgsl").into());
    ex.dispatch(rec, p, &[&x.buf, &out.buf], &[rows, len, row_stride, 0], groups)?;
    Ok(out)
}
