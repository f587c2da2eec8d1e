//! Executors run kernels; they agree on what a kernel means through [`check`], which validates
//! inputs the same way for every backend.

pub mod check;
pub mod cpu;
pub mod inputs;
pub mod shapes;
pub mod tolerance;
#[cfg(target_arch = "wasm32")]
pub mod webgpu;
