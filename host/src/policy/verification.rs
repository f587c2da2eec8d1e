//! Checking lent tabs: which of a lent tab's results are re-run on a trusted tab, and whether
//! two results agree. A lent tab is a page someone else controls; it may compute badly or lie.

/// How much of a lent tab's work is checked (`[lending]` in the pool config).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// Every result of a lent tab's first `first` batches and streams is checked.
    pub first: u64,
    /// After those, this fraction of them, drawn at random (so a lender cannot tell which).
    pub rate: f64,
}

/// Whether a lent tab's next result is checked, having served `served` results so far;
/// `draw` is uniform in [0, 1).
pub fn due(s: Sampling, served: u64, draw: f64) -> bool {
    served < s.first || draw < s.rate
}

/// Whether `got` (from a lent tab) agrees with `want` (the same row on a trusted tab): relative
/// L2 error ‖got − want‖ / max(‖want‖, 1e-6) within `tolerance`, every value finite, same length.
/// Backends differ in rounding (WebNN, WebGPU, wasm), not in the answer: the models' outputs
/// agree across them to ~1e-4 relative, so a tolerance of 1e-2 leaves room for rounding while a
/// perturbed or wrong result is far outside it.
pub fn rows_agree(got: &[f32], want: &[f32], tolerance: f64) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!("{} values where {} were expected", got.len(), want.len()));
    }
    if let Some(i) = got.iter().position(|v| !v.is_finite()) {
        return Err(format!("value {i} is {}", got[i]));
    }
    let (mut diff, mut norm) = (0.0f64, 0.0f64);
    for (g, w) in got.iter().zip(want) {
        diff += (f64::from(*g) - f64::from(*w)).powi(2);
        norm += f64::from(*w).powi(2);
    }
    let rel = diff.sqrt() / norm.sqrt().max(1e-6);
    if rel <= tolerance { Ok(()) } else { Err(format!("relative error {rel:.3e} over the tolerance {tolerance:e}")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_results_are_all_checked_then_a_sample() {
        let s = Sampling { first: 3, rate: 0.25 };
        assert!((0..3).all(|n| due(s, n, 0.99)));
        assert!(!due(s, 3, 0.25) && due(s, 3, 0.2499) && due(s, 100, 0.0));
        let never = Sampling { first: 0, rate: 0.0 };
        assert!(!due(never, 0, 0.0));
        // Over many draws the sampled fraction is the rate.
        let n = 10_000;
        let hits = (0..n).filter(|i| due(s, 10, (*i as f64 + 0.5) / n as f64)).count();
        assert_eq!(hits, 2500);
    }

    #[test]
    fn rows_agree_within_rounding_and_not_beyond() {
        let want: Vec<f32> = (0..384).map(|i| ((i as f32) * 0.37).sin() / 20.0).collect();
        let rounded: Vec<f32> = want.iter().map(|v| v * (1.0 + 1e-4)).collect();
        assert!(rows_agree(&rounded, &want, 1e-2).is_ok());
        let perturbed: Vec<f32> =
            want.iter().enumerate().map(|(i, v)| if i % 7 == 0 { v + 0.05 } else { *v }).collect();
        assert!(rows_agree(&perturbed, &want, 1e-2).unwrap_err().contains("relative error"));
        let mut nan = want.clone();
        nan[5] = f32::NAN;
        assert!(rows_agree(&nan, &want, 1e-2).unwrap_err().contains("value 5"));
        assert!(rows_agree(&want[1..], &want, 1e-2).unwrap_err().contains("383 values"));
        let zeros = vec![0.0f32; 4];
        assert!(rows_agree(&zeros, &zeros, 1e-2).is_ok());
    }
}
