// Shared WGSL snippet, prepended to kernels that compute the exact GELU.

// Abramowitz & Stegun 7.1.26: |erf error| ≤ 1.5e-7, well inside f32 tolerance of the GELU.
fn erf_approx(v: f32) -> f32 {
    let s = sign(v);
    let a = abs(v);
    let t = 1.0 / (1.0 + 0.3275911 * a);
    let poly = ((((1.061405429 * t - 1.453152027) * t + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t;
    return s * (1.0 - poly * exp(-a * a));
}
