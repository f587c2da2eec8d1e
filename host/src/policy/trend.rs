//! Trend analysis: is the recent window of a (model, browser kind, backend) latency series worse
//! than its baseline, by how much, and how sure are we? Welch's t-test (unequal variances) with a
//! 95 % confidence interval on the difference of means; a regression is classified only when
//! the test is significant. Pure functions over plain series.

use statrs::distribution::{ContinuousCDF, StudentsT};

/// The outcome of Welch's t-test of `recent` against `baseline`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Welch {
    pub baseline_mean: f64,
    pub recent_mean: f64,
    /// recent − baseline.
    pub diff: f64,
    pub t: f64,
    /// Welch–Satterthwaite degrees of freedom.
    pub df: f64,
    /// Two-sided p-value.
    pub p: f64,
    /// 95 % confidence interval of `diff`.
    pub ci95: (f64, f64),
}

fn mean_var(x: &[f64]) -> (f64, f64) {
    let n = x.len() as f64;
    let m = x.iter().sum::<f64>() / n;
    let v = x.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (n - 1.0);
    (m, v)
}

/// Welch's t-test; `None` with fewer than 2 points on either side.
pub fn welch(baseline: &[f64], recent: &[f64]) -> Option<Welch> {
    if baseline.len() < 2 || recent.len() < 2 {
        return None;
    }
    let (ma, va) = mean_var(baseline);
    let (mb, vb) = mean_var(recent);
    let (na, nb) = (baseline.len() as f64, recent.len() as f64);
    let (sa, sb) = (va / na, vb / nb);
    let se = (sa + sb).sqrt();
    let diff = mb - ma;
    if se == 0.0 {
        // Constant series: any difference is certain, none is no evidence.
        let p = if diff == 0.0 { 1.0 } else { 0.0 };
        let t = if diff == 0.0 { 0.0 } else { diff.signum() * f64::INFINITY };
        return Some(Welch { baseline_mean: ma, recent_mean: mb, diff, t, df: na + nb - 2.0, p, ci95: (diff, diff) });
    }
    let df = (sa + sb).powi(2) / (sa.powi(2) / (na - 1.0) + sb.powi(2) / (nb - 1.0));
    let t = diff / se;
    let dist = StudentsT::new(0.0, 1.0, df).ok()?;
    // The survival function keeps tiny p-values (1 - cdf rounds them to 0).
    let p = 2.0 * dist.sf(t.abs());
    let q = dist.inverse_cdf(0.975);
    Some(Welch { baseline_mean: ma, recent_mean: mb, diff, t, df, p, ci95: (diff - q * se, diff + q * se) })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Severity {
    Minor,
    Moderate,
    Severe,
    Critical,
}

impl Severity {
    /// By the relative slowdown in percent: > 25 critical, 15–25 severe, 5–15 moderate, < 5 minor.
    pub fn of_change(pct: f64) -> Severity {
        if pct > 25.0 {
            Severity::Critical
        } else if pct > 15.0 {
            Severity::Severe
        } else if pct > 5.0 {
            Severity::Moderate
        } else {
            Severity::Minor
        }
    }
}

/// What a comparison concluded.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// Too few points to test.
    Insufficient,
    /// No significant difference at the chosen level.
    Stable { test: Welch },
    /// Significantly faster.
    Improved { test: Welch, change_pct: f64 },
    /// Significantly slower.
    Regressed { test: Welch, change_pct: f64, severity: Severity },
}

/// Compare a latency series' recent window with its baseline (lower is better). Significant at
/// `alpha` (two-sided); each side needs at least `min_points`.
pub fn classify(baseline: &[f64], recent: &[f64], alpha: f64, min_points: usize) -> Verdict {
    if baseline.len() < min_points.max(2) || recent.len() < min_points.max(2) {
        return Verdict::Insufficient;
    }
    let Some(test) = welch(baseline, recent) else { return Verdict::Insufficient };
    if test.p >= alpha || test.baseline_mean <= 0.0 {
        return Verdict::Stable { test };
    }
    let change_pct = test.diff / test.baseline_mean * 100.0;
    if change_pct > 0.0 {
        Verdict::Regressed { test, change_pct, severity: Severity::of_change(change_pct) }
    } else {
        Verdict::Improved { test, change_pct }
    }
}

/// Split a time-ordered series: the last `recent` points against up to `baseline_max` before them.
pub fn split(series: &[f64], recent: usize, baseline_max: usize) -> (&[f64], &[f64]) {
    let r = recent.min(series.len());
    let (before, last) = series.split_at(series.len() - r);
    let b = baseline_max.min(before.len());
    (&before[before.len() - b..], last)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic series around `mean` with spread ±`spread` (a fixed pseudo-random walk).
    fn series(n: usize, mean: f64, spread: f64, seed: u64) -> Vec<f64> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let u = (s >> 11) as f64 / (1u64 << 53) as f64; // [0, 1)
                mean + spread * (2.0 * u - 1.0)
            })
            .collect()
    }

    #[test]
    fn welch_matches_a_hand_worked_example() {
        // a: mean 20, sample variance 10/4 = 2.5; b: mean 23, variance 2.5. se = sqrt(0.5+0.5) = 1.
        let a = [18.0, 19.0, 20.0, 21.0, 22.0];
        let b = [21.0, 22.0, 23.0, 24.0, 25.0];
        let w = welch(&a, &b).unwrap();
        assert!((w.diff - 3.0).abs() < 1e-12 && (w.t - 3.0).abs() < 1e-12, "{w:?}");
        assert!((w.df - 8.0).abs() < 1e-12, "equal variances and sizes: df = n1 + n2 - 2 = 8: {w:?}");
        // t = 3 on 8 df: two-sided p = 0.017071 (Student's t table); t(0.975, 8) = 2.306004.
        assert!((w.p - 0.017071).abs() < 2e-5, "{w:?}");
        assert!((w.ci95.0 - (3.0 - 2.306004)).abs() < 1e-5 && (w.ci95.1 - (3.0 + 2.306004)).abs() < 1e-5, "{w:?}");
    }

    #[test]
    fn overwhelming_evidence_keeps_a_positive_p() {
        // t ≈ 27 on 30 df: two-sided p ≈ 1e-21, which 1 - cdf rounded to exactly 0.
        let a: Vec<f64> = (0..16).map(|i| 5.0 + 0.1 * (i % 4) as f64).collect();
        let b: Vec<f64> = (0..16).map(|i| 6.0 + 0.1 * (i % 4) as f64).collect();
        let w = welch(&a, &b).unwrap();
        assert!(w.p > 0.0 && w.p < 1e-15, "{w:?}");
    }

    #[test]
    fn unequal_variances_use_welch_satterthwaite() {
        // a: n=4, var 20/3; b: n=6, var 0.2 (hand-worked: s²/n = 1.6667, 0.0333; df = 3.1205).
        let a = [10.0, 12.0, 14.0, 16.0];
        let b = [20.5, 20.0, 21.0, 20.0, 21.0, 20.5];
        let w = welch(&a, &b).unwrap();
        let (sa, sb): (f64, f64) = (20.0 / 3.0 / 4.0, 0.2 / 6.0);
        let df = (sa + sb).powi(2) / (sa * sa / 3.0 + sb * sb / 5.0);
        assert!((w.df - df).abs() < 1e-9 && (w.df - 3.1205).abs() < 1e-3, "{w:?}");
        assert!(w.p < 0.01 && w.p > 0.001, "{w:?}");
    }

    #[test]
    fn severities_follow_the_thresholds() {
        for (pct, s) in [
            (40.0, Severity::Critical),
            (25.1, Severity::Critical),
            (20.0, Severity::Severe),
            (10.0, Severity::Moderate),
            (5.1, Severity::Moderate),
            (3.0, Severity::Minor),
        ] {
            assert_eq!(Severity::of_change(pct), s, "{pct} %");
        }
    }

    #[test]
    fn synthetic_series_get_their_known_classes() {
        let base = series(200, 10.0, 0.5, 1);
        // Known slowdowns, tight noise: significant, classified by size.
        for (factor, want) in
            [(1.30, Severity::Critical), (1.20, Severity::Severe), (1.10, Severity::Moderate), (1.03, Severity::Minor)]
        {
            let recent = series(60, 10.0 * factor, 0.5, 2);
            match classify(&base, &recent, 0.01, 10) {
                Verdict::Regressed { severity, change_pct, test } => {
                    assert_eq!(severity, want, "×{factor}: {change_pct:.1} %");
                    assert!((change_pct - (factor - 1.0) * 100.0).abs() < 1.5, "×{factor}: {change_pct:.1} %");
                    assert!(test.ci95.0 > 0.0, "the interval excludes no change: {test:?}");
                }
                v => panic!("×{factor}: {v:?}"),
            }
        }
        // Same distribution: stable. Faster: improved, never a regression.
        assert!(matches!(classify(&base, &series(60, 10.0, 0.5, 3), 0.01, 10), Verdict::Stable { .. }));
        assert!(matches!(classify(&base, &series(60, 8.0, 0.5, 4), 0.01, 10), Verdict::Improved { .. }));
        // A big shift drowned in noise with few points is not significant: no class.
        let noisy_base = series(8, 10.0, 9.0, 5);
        let noisy_recent = series(8, 13.0, 9.0, 6);
        assert!(matches!(classify(&noisy_base, &noisy_recent, 0.01, 5), Verdict::Stable { .. }));
        assert_eq!(classify(&base, &[10.0, 11.0], 0.01, 10), Verdict::Insufficient);
    }

    #[test]
    fn split_takes_the_last_points_as_recent() {
        let s: Vec<f64> = (0..10).map(f64::from).collect();
        let (b, r) = split(&s, 3, 4);
        assert_eq!(r, &[7.0, 8.0, 9.0]);
        assert_eq!(b, &[3.0, 4.0, 5.0, 6.0]);
        let (b, r) = split(&s[..2], 3, 4);
        assert!(b.is_empty() && r.len() == 2);
    }
}
