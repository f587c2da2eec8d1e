//! Which backend runs a model on a tab: the fastest one measured by a short calibration run at
//! load — not a fixed table. A backend that failed to load or run is never chosen.

/// One calibration measurement: median ms of the calibration input, or why it failed.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Measured {
    pub backend: String,
    pub median_ms: Option<f64>,
    pub error: Option<String>,
}

impl Measured {
    pub fn ok(backend: impl Into<String>, ms: f64) -> Self {
        Measured { backend: backend.into(), median_ms: Some(ms), error: None }
    }
    pub fn failed(backend: impl Into<String>, error: impl Into<String>) -> Self {
        Measured { backend: backend.into(), median_ms: None, error: Some(error.into()) }
    }
}

/// Index of the backend to use: the lowest finite median; on a tie the earlier candidate (the
/// caller lists candidates in preference order). `None` when everything failed.
pub fn choose(measured: &[Measured]) -> Option<usize> {
    measured
        .iter()
        .enumerate()
        .filter_map(|(i, m)| m.median_ms.filter(|v| v.is_finite() && *v >= 0.0).map(|v| (i, v)))
        .fold(None, |best: Option<(usize, f64)>, (i, v)| match best {
            Some((_, b)) if b <= v => best,
            _ => Some((i, v)),
        })
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fastest_wins() {
        let m = [Measured::ok("webnn-cpu", 6.0), Measured::ok("webgpu", 200.0), Measured::ok("cpu", 15.0)];
        assert_eq!(choose(&m), Some(0));
        let m = [Measured::ok("webnn-cpu", 30.0), Measured::ok("webgpu", 2.0), Measured::ok("cpu", 15.0)];
        assert_eq!(choose(&m), Some(1), "on a GPU machine WebGPU leads");
    }

    #[test]
    fn failures_and_nonsense_are_never_chosen() {
        let m = [
            Measured::failed("webnn-cpu", "op gelu unsupported"),
            Measured::ok("webgpu", f64::NAN),
            Measured::ok("cpu", 15.0),
        ];
        assert_eq!(choose(&m), Some(2));
        assert_eq!(choose(&[Measured::failed("webgpu", "no adapter")]), None);
        assert_eq!(choose(&[]), None);
    }

    #[test]
    fn ties_keep_preference_order() {
        let m = [Measured::ok("webnn-cpu", 5.0), Measured::ok("cpu", 5.0)];
        assert_eq!(choose(&m), Some(0));
    }
}
