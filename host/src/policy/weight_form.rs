//! In which form a model's packed (f16) matrices go to an executor: as stored, widened by the
//! kernels as they read, or widened to f32 once by the host. Measured on this 2-core VM
//! (Chromium 153, Whisper tiny.en's decoder, 68 greedy steps): the tab's wasm CPU executor
//! took 1.05–1.17 s with f32 weights and 1.49–1.64 s with f16 widened in the kernel — V8's
//! SIMD128 has no f16 conversion, and the widening made the 51864-row output projection 1.7×
//! slower — so a decode loop on a CPU executor gets f32 unless memory is asked for. WebGPU
//! widens halves with `unpack2x16float` at no measured cost; WebNN widens them at upload, so
//! they cross the socket at half the bytes either way.

use shared_proto::ExecBackend;

/// What travels for a packed weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightForm {
    /// As stored (f16): half the memory and the bytes on the socket.
    #[default]
    Stored,
    /// Widened to f32 by the host (exactly): what a CPU executor's decode loop runs fastest.
    F32,
}

/// Whether a decode loop's weights should be kept compact (`--decoder-weights f16`) or fast.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Preference {
    #[default]
    Fastest,
    Compact,
}

/// The form of a decode loop's weights on `exec` (the host's CPU executor is `ExecBackend::Cpu`
/// as a tab's wasm one is).
pub fn for_decoder(exec: &ExecBackend, pref: Preference) -> WeightForm {
    match (exec, pref) {
        (ExecBackend::Cpu, Preference::Fastest) => WeightForm::F32,
        _ => WeightForm::Stored,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_decoders_get_f32_unless_compact_and_the_others_keep_halves() {
        assert_eq!(for_decoder(&ExecBackend::Cpu, Preference::Fastest), WeightForm::F32);
        assert_eq!(for_decoder(&ExecBackend::Cpu, Preference::Compact), WeightForm::Stored);
        assert_eq!(for_decoder(&ExecBackend::WebGpu, Preference::Fastest), WeightForm::Stored);
        let nn = ExecBackend::WebNn { device: "cpu".into() };
        assert_eq!(for_decoder(&nn, Preference::Fastest), WeightForm::Stored);
    }
}
