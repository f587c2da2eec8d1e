//! The CPU executor: plain Rust, the same kernels as WebGPU. It is the host's fallback when no
//! browser can start and the reference the GPU kernels are tested against.

mod attention;
mod binary;
mod cached_attention;
mod conv;
mod erff;
mod expf;
mod graph;
pub mod half;
mod matmul;
mod par;
pub use par::threads;
/// The tab's worker threads (the threaded build only).
#[cfg(all(target_arch = "wasm32", target_feature = "atomics"))]
pub mod pool;
pub mod quantized;
pub mod quantized_int;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
pub mod quantized_simd128;
mod reduce;
mod reindex;
mod rope;
pub mod sample;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
pub mod simd;
mod unary;

pub use attention::{AttnDims, attention};
pub use binary::{add, mul, silu_mul};
pub use cached_attention::{CachedDims, KvCache, cached_attention};
pub use conv::{ConvDims, conv2d, global_avg_pool};
pub use graph::{CpuModel, last_uses};
pub use matmul::{dot, linear, matmul};
pub use reduce::{l2_normalize, layer_norm, mean_pool, rms_norm, softmax};
pub use reindex::{gather, transpose};
pub use rope::rope;
pub use sample::{argmax, sample};
pub use unary::{clamp, gelu};

use shared_proto::{Kernel, RemoteError, Tensor};

use super::check;

/// Run one kernel on the CPU; inputs are validated exactly as on WebGPU.
pub fn run_kernel(kernel: &Kernel, inputs: &[Tensor]) -> Result<Vec<Tensor>, RemoteError> {
    check::kernel(kernel, inputs)?;
    let values = |t: &Tensor| t.to_f32().expect("checked f32");
    match kernel {
        Kernel::MatMul { .. } => {
            let d = check::matmul(inputs)?;
            let c = matmul(&values(&inputs[0]), &values(&inputs[1]), d.m as usize, d.k as usize, d.n as usize);
            Ok(vec![Tensor::from_f32(vec![d.m, d.n], &c)])
        }
        Kernel::Add => {
            let c = add(&values(&inputs[0]), &values(&inputs[1]));
            Ok(vec![Tensor::from_f32(inputs[0].shape.clone(), &c)])
        }
    }
}
