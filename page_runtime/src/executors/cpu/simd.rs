//! The one multiply-add every SIMD128 kernel of the CPU executor uses, so a build with relaxed
//! SIMD fuses them all: `f32x4.relaxed_madd` (one FMA where the CPU has it) in the page's
//! relaxed-SIMD build (`www/pkg-threads-relaxed`, loaded where `WebAssembly.validate` accepts a
//! probe module holding that instruction, `www/main.js`), a multiply then an add elsewhere.
//! Relaxed madd may round once or twice depending on the CPU, so results differ from the plain
//! build's within the kernels' f32 tolerances, never beyond; the integer kernels
//! (`i32x4.dot_i16x8_s`) do not use it and are exact either way.

use core::arch::wasm32::*;

/// `a · b + c`, four lanes.
#[inline(always)]
pub fn madd(a: v128, b: v128, c: v128) -> v128 {
    #[cfg(target_feature = "relaxed-simd")]
    return f32x4_relaxed_madd(a, b, c);
    #[cfg(not(target_feature = "relaxed-simd"))]
    f32x4_add(f32x4_mul(a, b), c)
}

/// Whether this build fuses multiply-adds (reported in the tab's capabilities).
pub const RELAXED: bool = cfg!(target_feature = "relaxed-simd");
