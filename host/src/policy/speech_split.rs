//! Whisper's component split (encoder in one tab, decoder in another) against one tab holding
//! both and against two such tabs side by side: what each placement should take per file and
//! get done per second, predicted from one tab's measured parts and the machine's measured
//! parallelism — the way `sharding` plans an LLM from measured decode speed and hops.
//!
//! A file's windows run in order (each window's prompt holds the text before it), but the next
//! window's encoding does not depend on that text, so it overlaps the current window's decoding
//! when the two parts can run at once: in two tabs always, in one tab only when the encoder runs
//! off the tab's own thread (WebNN, WebGPU), not when both are on its wasm CPU executor. Work
//! that overlaps on one machine is bounded by its cores: two calls at once take at least their
//! sum over `parallel` (1.0: they only take turns; 2.0: fully parallel).

use serde::Serialize;

/// One tab's measured parts for a file, per 30-s window on average (wall ms, the round trips and
/// the encoder output's crossing included).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PartTimes {
    pub windows: usize,
    /// The front end (decode, resample, log-mel), before the first window.
    pub front_ms: f64,
    pub encode_ms: f64,
    pub decode_ms: f64,
    /// Whether one tab runs the two parts at once (the encoder off the tab's thread).
    pub overlaps_in_one_tab: bool,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct SpeechPrediction {
    /// One file alone, ms: both parts in one tab / split over two tabs.
    pub one_tab_ms: f64,
    pub split_ms: f64,
    /// Files per second with files always waiting, on two tabs: one split replica (one file at a
    /// time, its windows overlapped) / two whole replicas (a file each).
    pub split_files_per_s: f64,
    pub two_replicas_files_per_s: f64,
}

/// Windows in order, each encoding overlapping the previous window's decoding: the first
/// encoding and the last decoding stand alone; between them each window costs the slower part,
/// or both parts' sum over the machine's parallelism when that is more.
fn overlapped(windows: usize, e: f64, d: f64, parallel: f64) -> f64 {
    if windows == 0 {
        return 0.0;
    }
    let both = (e + d) / parallel.max(1.0);
    e + (windows - 1) as f64 * e.max(d).max(both) + d
}

/// The prediction for `t` on a machine of measured `parallel` (clamped to 1..=2: two tabs).
pub fn predict(t: &PartTimes, parallel: f64) -> SpeechPrediction {
    let p = parallel.clamp(1.0, 2.0);
    let w = t.windows;
    let serial = w as f64 * (t.encode_ms + t.decode_ms);
    let one_tab_ms =
        t.front_ms + if t.overlaps_in_one_tab { overlapped(w, t.encode_ms, t.decode_ms, p) } else { serial };
    let split_ms = t.front_ms + overlapped(w, t.encode_ms, t.decode_ms, p);
    SpeechPrediction {
        one_tab_ms,
        split_ms,
        split_files_per_s: 1e3 / split_ms,
        // Two files at once, one per tab: together they get `p` tabs' worth of the cores.
        two_replicas_files_per_s: p * 1e3 / one_tab_ms,
    }
}

/// What the prediction says, in a sentence a user can act on.
pub fn verdict(t: &PartTimes, p: &SpeechPrediction) -> String {
    let latency = if p.split_ms < p.one_tab_ms * 0.97 {
        format!(
            "the split cuts a file's time {:.2}× (its encoder and decoder overlap; in one tab they take turns)",
            p.one_tab_ms / p.split_ms
        )
    } else if t.overlaps_in_one_tab || t.windows <= 1 {
        "the split saves no time on a file: one tab already overlaps the parts (or there is one window)".to_string()
    } else {
        "the split saves no time on a file: the parts cannot run at once on these cores".to_string()
    };
    let throughput = if p.two_replicas_files_per_s >= p.split_files_per_s {
        format!(
            "with files waiting, two whole replicas do {:.2}× the split's files per second",
            p.two_replicas_files_per_s / p.split_files_per_s
        )
    } else {
        format!(
            "with files waiting, the split does {:.2}× two whole replicas' files per second",
            p.split_files_per_s / p.two_replicas_files_per_s
        )
    };
    format!("{latency}; {throughput}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(windows: usize, e: f64, d: f64, overlaps: bool) -> PartTimes {
        PartTimes { windows, front_ms: 10.0, encode_ms: e, decode_ms: d, overlaps_in_one_tab: overlaps }
    }

    #[test]
    fn one_window_never_overlaps() {
        let p = predict(&parts(1, 100.0, 300.0, false), 2.0);
        assert_eq!((p.one_tab_ms, p.split_ms), (410.0, 410.0));
        // Two files at once on two tabs, fully parallel: twice one tab's rate.
        assert!((p.two_replicas_files_per_s - 2.0 * 1e3 / 410.0).abs() < 1e-9);
    }

    #[test]
    fn the_split_overlaps_windows_one_tab_of_wasm_cannot() {
        // 3 windows, encoder 100 ms, decoder 300 ms, two full cores: 100 + 2·300 + 300.
        let t = parts(3, 100.0, 300.0, false);
        let p = predict(&t, 2.0);
        assert_eq!(p.split_ms, 10.0 + 1000.0);
        assert_eq!(p.one_tab_ms, 10.0 + 1200.0);
        assert!(verdict(&t, &p).starts_with("the split cuts a file's time 1.20×"), "{}", verdict(&t, &p));
        // Throughput: two whole replicas still do more with files waiting.
        assert!(p.two_replicas_files_per_s > p.split_files_per_s);
        assert!(verdict(&t, &p).contains("two whole replicas do"));
    }

    #[test]
    fn one_core_leaves_nothing_to_overlap() {
        // parallel 1: both parts at once take their sum; the split equals one tab run in turn.
        let t = parts(4, 100.0, 300.0, false);
        let p = predict(&t, 1.0);
        assert_eq!(p.split_ms, p.one_tab_ms);
        assert!(verdict(&t, &p).contains("cannot run at once"));
        assert!((p.two_replicas_files_per_s - p.split_files_per_s).abs() < 1e-12);
    }

    #[test]
    fn a_webnn_encoder_overlaps_in_one_tab_too() {
        let t = parts(3, 100.0, 300.0, true);
        let p = predict(&t, 1.5);
        assert_eq!(p.split_ms, p.one_tab_ms);
        // Between the ends, each window costs max(100, 300, 400 / 1.5).
        assert!((p.split_ms - (10.0 + 100.0 + 2.0 * 300.0 + 300.0)).abs() < 1e-9);
        assert!(verdict(&t, &p).contains("one tab already overlaps"));
    }

    #[test]
    fn parallelism_is_clamped_to_two_tabs() {
        let t = parts(2, 100.0, 100.0, false);
        assert_eq!(predict(&t, 8.0).split_ms, predict(&t, 2.0).split_ms);
        assert_eq!(predict(&t, 0.2).split_ms, predict(&t, 1.0).split_ms);
        assert_eq!(predict(&parts(0, 1.0, 1.0, false), 2.0).split_ms, 10.0);
    }
}
