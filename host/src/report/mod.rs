//! Reports over the history database: browser/backend comparison, latency percentiles, error
//! categories, breaker events, recoveries, scaling decisions and regressions (`policy::trend`).
//! `Report::build` queries; `render` prints Markdown or HTML (with SVG charts).

pub mod render;
pub mod svg;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use duckdb::params;

use crate::policy::trend::{self, Verdict};
use crate::store::{HistKey, Store};

/// Regression test settings: significance level, and points per window.
pub const ALPHA: f64 = 0.05;
pub const MIN_POINTS: usize = 10;
const BASELINE_MAX: usize = 2_000;
/// Points per series kept for the latency-over-time chart.
const CHART_POINTS: usize = 400;

#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub db: String,
    pub generated_at_ms: i64,
    /// Start of the window (ms since the epoch), if `--since` limited it.
    pub since_ms: Option<i64>,
    pub runs: i64,
    pub executions: i64,
    /// Texts in successful batches.
    pub texts: i64,
    pub success_rate: f64,
    pub first_ms: Option<i64>,
    pub last_ms: Option<i64>,
    pub backends: Vec<BackendRow>,
    /// Generation streams per (model, kind, backend).
    pub generation: Vec<GenerationRow>,
    pub errors: Vec<(String, i64)>,
    pub breakers: Vec<BreakerRow>,
    pub recoveries: Vec<RecoveryRow>,
    pub scaling: Vec<(String, i64)>,
    pub regressions: Vec<TrendRow>,
    /// Per series: (label, [(ms since the epoch, ms per text)]).
    pub latency_series: Vec<(String, Vec<(i64, f64)>)>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct BackendRow {
    pub model: String,
    pub kind: String,
    pub backend: String,
    pub batches: i64,
    pub texts: i64,
    pub success_rate: f64,
    /// Per text, successful batches.
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub mean_queue_ms: f64,
    /// Texts per second of tab time.
    pub texts_per_s: f64,
}

/// Generation streams of one (model, kind, backend) — where each stream ended.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GenerationRow {
    pub model: String,
    pub kind: String,
    pub backend: String,
    pub streams: i64,
    /// Ended by a stop id or max_tokens (not cancelled, not failed).
    pub finished: i64,
    pub cancelled: i64,
    pub failed: i64,
    pub prompt_tokens: i64,
    pub generated: i64,
    pub p50_ttft_ms: f64,
    pub p95_ttft_ms: f64,
    pub mean_decode_tok_s: f64,
    /// Streams replayed on another replica after losing theirs.
    pub replayed: i64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct BreakerRow {
    pub at_ms: i64,
    pub tab: i64,
    pub kind: String,
    pub scope: String,
    pub from: String,
    pub to: String,
    pub reason: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct RecoveryRow {
    pub step: String,
    pub category: String,
    pub count: i64,
    pub ok: i64,
    pub p50_ms: f64,
    pub p95_ms: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct TrendRow {
    pub model: String,
    pub kind: String,
    pub backend: String,
    /// Batch sizes compared (a power-of-two class: per-text latency depends on batch size, so
    /// only like is compared with like).
    pub batch: String,
    pub baseline_n: usize,
    pub recent_n: usize,
    pub verdict: Verdict,
}

/// `30m`, `24h`, `7d`, `90s` → that long ago; else a date or timestamp DuckDB reads
/// (`2026-11-20`, `2026-11-20 08:00`). Returns ms since the epoch.
pub fn parse_since(store: &Store, s: &str) -> anyhow::Result<i64> {
    let s = s.trim();
    let unit = |c: char| match c {
        's' => Some(1.0),
        'm' => Some(60.0),
        'h' => Some(3600.0),
        'd' => Some(86_400.0),
        'w' => Some(604_800.0),
        _ => None,
    };
    if let Some(c) = s.chars().last()
        && let (Some(u), Ok(n)) = (unit(c), s[..s.len() - c.len_utf8()].parse::<f64>())
    {
        // A span back from now: positive and finite, and no further back than the epoch
        // (`Duration::from_secs_f64` panics on NaN, negatives and overflow: `-1h`, `NaNh`, `1e20d`).
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let span = n * u;
        anyhow::ensure!(
            span.is_finite() && span > 0.0,
            "--since {s:?}: a span must be a positive number followed by s, m, h, d or w (30m, 24h, 7d)"
        );
        anyhow::ensure!(
            span <= now.as_secs_f64(),
            "--since {s:?} reaches back before 1970; give a shorter span or a date (2026-11-20)"
        );
        return Ok((now - Duration::from_secs_f64(span)).as_millis() as i64);
    }
    store
        .conn()
        .query_row("SELECT epoch_ms(CAST(? AS TIMESTAMP))", params![s], |r| r.get(0))
        .map_err(|_| anyhow::anyhow!("--since {s:?}: expected a span (30m, 24h, 7d) or a date (2026-11-20)"))
}

impl Report {
    pub fn build(store: &Store, since_ms: Option<i64>) -> anyhow::Result<Report> {
        let conn = store.conn();
        let since = since_ms.unwrap_or(i64::MIN / 2);
        let w = "epoch_ms(ts) >= ?";
        let (runs, executions, texts, ok, first_ms, last_ms): (i64, i64, i64, i64, Option<i64>, Option<i64>) = conn
            .query_row(
                &format!(
                    "SELECT count(DISTINCT run_id), count(*), coalesce(sum(batch_rows) FILTER (WHERE success), 0),
                            count(*) FILTER (WHERE success), min(epoch_ms(ts)), max(epoch_ms(ts))
                     FROM executions WHERE {w}"
                ),
                params![since],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)),
            )
            .context("reading executions")?;
        let mut stmt = conn.prepare(&format!(
            "SELECT model, browser_kind, backend, count(*), coalesce(sum(batch_rows) FILTER (WHERE success), 0),
                    count(*) FILTER (WHERE success) / count(*),
                    coalesce(quantile_cont(latency_ms / batch_rows, 0.5) FILTER (WHERE success), 0),
                    coalesce(quantile_cont(latency_ms / batch_rows, 0.95) FILTER (WHERE success), 0),
                    coalesce(quantile_cont(latency_ms / batch_rows, 0.99) FILTER (WHERE success), 0),
                    coalesce(avg(queue_ms), 0),
                    coalesce(sum(batch_rows) FILTER (WHERE success) / nullif(sum(latency_ms) FILTER (WHERE success), 0) * 1000, 0)
             FROM executions WHERE {w} GROUP BY ALL ORDER BY 7"
        ))?;
        let backends = stmt
            .query_map(params![since], |r| {
                Ok(BackendRow {
                    model: r.get(0)?,
                    kind: r.get(1)?,
                    backend: r.get(2)?,
                    batches: r.get(3)?,
                    texts: r.get(4)?,
                    success_rate: r.get(5)?,
                    p50_ms: r.get(6)?,
                    p95_ms: r.get(7)?,
                    p99_ms: r.get(8)?,
                    mean_queue_ms: r.get(9)?,
                    texts_per_s: r.get(10)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let mut stmt = conn.prepare(&format!(
            "SELECT model, coalesce(browser_kind, '(none)'), coalesce(backend, '(none)'), count(*),
                    count(*) FILTER (WHERE finish IN ('stop', 'length')), count(*) FILTER (WHERE finish = 'cancelled'),
                    count(*) FILTER (WHERE finish = 'failed'), sum(prompt_tokens), sum(generated),
                    coalesce(quantile_cont(ttft_ms, 0.5), 0), coalesce(quantile_cont(ttft_ms, 0.95), 0),
                    coalesce(avg(decode_tok_s), 0), count(*) FILTER (WHERE replays > 0)
             FROM generations WHERE {w} GROUP BY ALL ORDER BY 1, 2, 3"
        ))?;
        let generation = stmt
            .query_map(params![since], |r| {
                Ok(GenerationRow {
                    model: r.get(0)?,
                    kind: r.get(1)?,
                    backend: r.get(2)?,
                    streams: r.get(3)?,
                    finished: r.get(4)?,
                    cancelled: r.get(5)?,
                    failed: r.get(6)?,
                    prompt_tokens: r.get(7)?,
                    generated: r.get(8)?,
                    p50_ttft_ms: r.get(9)?,
                    p95_ttft_ms: r.get(10)?,
                    mean_decode_tok_s: r.get(11)?,
                    replayed: r.get(12)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()
            .context("reading generations")?;
        let errors = pairs(
            &conn,
            &format!(
                "SELECT error_category, count(*) FROM executions WHERE {w} AND NOT success GROUP BY 1 ORDER BY 2 DESC"
            ),
            since,
        )?;
        let scaling = pairs(
            &conn,
            &format!("SELECT action, count(*) FROM scaling_decisions WHERE {w} GROUP BY 1 ORDER BY 2 DESC"),
            since,
        )?;
        let mut stmt = conn.prepare(&format!(
            "SELECT epoch_ms(ts), tab, browser_kind, scope, from_state, to_state, coalesce(reason, '')
             FROM breaker_transitions WHERE {w} ORDER BY ts DESC LIMIT 50"
        ))?;
        let breakers = stmt
            .query_map(params![since], |r| {
                Ok(BreakerRow {
                    at_ms: r.get(0)?,
                    tab: r.get(1)?,
                    kind: r.get(2)?,
                    scope: r.get(3)?,
                    from: r.get(4)?,
                    to: r.get(5)?,
                    reason: r.get(6)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let mut stmt = conn.prepare(&format!(
            "SELECT step, category, count(*), count(*) FILTER (WHERE ok), quantile_cont(ms, 0.5), quantile_cont(ms, 0.95)
             FROM recoveries WHERE {w} GROUP BY ALL ORDER BY 3 DESC"
        ))?;
        let recoveries = stmt
            .query_map(params![since], |r| {
                Ok(RecoveryRow {
                    step: r.get(0)?,
                    category: r.get(1)?,
                    count: r.get(2)?,
                    ok: r.get(3)?,
                    p50_ms: r.get(4)?,
                    p95_ms: r.get(5)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        // Time series of ms per text, per (model, kind, backend), successful batches in order.
        let mut stmt = conn.prepare(&format!(
            "SELECT model, browser_kind, backend, epoch_ms(ts), latency_ms / batch_rows, batch_rows
             FROM executions WHERE {w} AND success ORDER BY model, browser_kind, backend, ts"
        ))?;
        let mut series: Vec<(HistKey, Vec<Point>)> = Vec::new();
        let rows = stmt.query_map(params![since], |r| {
            Ok((
                (r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?),
                r.get::<_, i64>(3)?,
                r.get(4)?,
                r.get::<_, u32>(5)?,
            ))
        })?;
        for row in rows {
            let (key, t, v, n) = row?;
            match series.last_mut() {
                Some((k, pts)) if *k == key => pts.push((t, v, n)),
                _ => series.push((key, vec![(t, v, n)])),
            }
        }
        drop(stmt);
        drop(conn);
        let mut regressions = Vec::new();
        for ((model, kind, backend), pts) in &series {
            let mut classes: Vec<u32> = pts.iter().map(|p| batch_class(p.2)).collect();
            classes.sort_unstable();
            classes.dedup();
            for class in classes {
                let values: Vec<f64> = pts.iter().filter(|p| batch_class(p.2) == class).map(|p| p.1).collect();
                let (base, recent) = trend::split(&values, recent_window(values.len()), BASELINE_MAX);
                regressions.push(TrendRow {
                    model: model.clone(),
                    kind: kind.clone(),
                    backend: backend.clone(),
                    batch: if class == 1 { "1".into() } else { format!("{class}–{}", 2 * class - 1) },
                    baseline_n: base.len(),
                    recent_n: recent.len(),
                    verdict: trend::classify(base, recent, ALPHA, MIN_POINTS),
                });
            }
        }
        let latency_series = series
            .into_iter()
            .map(|((model, kind, backend), pts)| {
                let step = pts.len().div_ceil(CHART_POINTS).max(1);
                (format!("{model} · {kind} · {backend}"), pts.into_iter().step_by(step).map(|p| (p.0, p.1)).collect())
            })
            .collect();
        Ok(Report {
            db: store.path().display().to_string(),
            generated_at_ms: SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as i64,
            since_ms,
            runs,
            executions,
            texts,
            success_rate: if executions == 0 { 0.0 } else { ok as f64 / executions as f64 },
            first_ms,
            last_ms,
            backends,
            generation,
            errors,
            breakers,
            recoveries,
            scaling,
            regressions,
            latency_series,
        })
    }
}

/// One successful batch: (ms since the epoch, ms per text, texts).
type Point = (i64, f64, u32);

/// The power-of-two class of a batch size: 1, 2, 4, 8, …
pub fn batch_class(rows: u32) -> u32 {
    1 << (31 - rows.max(1).leading_zeros())
}

/// The recent window of a series of `n` points: a quarter of it, at least `MIN_POINTS`, at most 200.
pub fn recent_window(n: usize) -> usize {
    (n / 4).clamp(MIN_POINTS, 200)
}

fn pairs(conn: &duckdb::Connection, sql: &str, since: i64) -> anyhow::Result<Vec<(String, i64)>> {
    let mut stmt = conn.prepare(sql)?;
    let rows =
        stmt.query_map(params![since], |r| Ok((r.get::<_, Option<String>>(0)?.unwrap_or_default(), r.get(1)?)))?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

#[cfg(test)]
mod tests {
    #[test]
    fn since_refuses_spans_that_used_to_panic() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(&dir.path().join("h.duckdb")).unwrap();
        for bad in ["-1h", "NaNh", "nanh", "1e20d", "infd", "0h", "-0.5m", "h", "yesterday"] {
            let e = super::parse_since(&store, bad).expect_err(bad).to_string();
            assert!(e.contains("--since"), "{bad}: {e}");
        }
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
        let day = super::parse_since(&store, "1d").unwrap();
        assert!((now - day - 86_400_000).abs() < 5_000, "{}", now - day);
        assert!(super::parse_since(&store, "1.5h").is_ok());
        assert!(super::parse_since(&store, "2026-11-20").is_ok());
    }

    #[test]
    fn batch_classes_are_powers_of_two() {
        let got: Vec<u32> = [1, 2, 3, 4, 7, 8, 31, 32, 33].iter().map(|&n| super::batch_class(n)).collect();
        assert_eq!(got, [1, 2, 2, 4, 4, 8, 16, 32, 32]);
        assert_eq!(super::batch_class(0), 1);
    }
}
