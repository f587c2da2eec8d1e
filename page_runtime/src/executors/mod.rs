//! Executors run kernels; they agree on what a kernel means through [`check`], which validates
//! inputs the same way for every backend.

pub mod buckets;
pub mod check;
pub mod cpu;
pub mod inputs;
pub mod layout;
pub mod shapes;
pub mod tolerance;
#[cfg(target_arch = "wasm32")]
pub mod webgpu;
#[cfg(target_arch = "wasm32")]
pub mod webnn;

/// What a run of any executor returns.
pub struct RunOutput {
    pub outputs: Vec<shared_proto::Tensor>,
    /// Executor time: submit → results mapped (WebGPU), dispatch → read back (WebNN).
    pub device_ms: f64,
}
