//! A [`Report`] as Markdown (terminal, issues) or one self-contained HTML page with SVG charts.

use super::svg::{self, escape};
use super::{ALPHA, Report};
use crate::policy::trend::Verdict;

/// What a report is rendered as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Md,
    Html,
    Json,
}

/// The report as text in `format`.
pub fn render_as(report: &Report, format: Format) -> String {
    match format {
        Format::Md => markdown(report),
        Format::Html => html(report),
        Format::Json => serde_json::to_string_pretty(report).unwrap_or_default() + "\n",
    }
}

fn when(ms: Option<i64>) -> String {
    ms.map(|ms| {
        let s = ms.div_euclid(1000);
        let (days, rem) = (s.div_euclid(86_400), s.rem_euclid(86_400));
        let (y, m, d) = civil_from_days(days);
        format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC", rem / 3600, rem % 3600 / 60, rem % 60)
    })
    .unwrap_or_else(|| "—".into())
}

/// Days since 1970-01-01 → (year, month, day) (H. Hinnant's civil calendar algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// One line per verdict: what changed and how sure.
pub fn verdict_text(v: &Verdict) -> (String, String) {
    match v {
        Verdict::Insufficient => ("—".into(), format!("too few points (needs {} per window)", super::MIN_POINTS)),
        Verdict::Stable { test } => (
            "stable".into(),
            format!(
                "{:.2} → {:.2} ms/text, p = {:.3}, 95 % CI of change [{:+.2}, {:+.2}] ms",
                test.baseline_mean, test.recent_mean, test.p, test.ci95.0, test.ci95.1
            ),
        ),
        Verdict::Improved { test, change_pct } => (
            "improved".into(),
            format!(
                "{:.2} → {:.2} ms/text ({change_pct:+.1} %), p = {:.2e}, 95 % CI [{:+.2}, {:+.2}] ms",
                test.baseline_mean, test.recent_mean, test.p, test.ci95.0, test.ci95.1
            ),
        ),
        Verdict::Regressed { test, change_pct, severity } => (
            format!("{severity:?}").to_uppercase(),
            format!(
                "{:.2} → {:.2} ms/text ({change_pct:+.1} %), p = {:.2e}, 95 % CI [{:+.2}, {:+.2}] ms",
                test.baseline_mean, test.recent_mean, test.p, test.ci95.0, test.ci95.1
            ),
        ),
    }
}

/// Rows of the comparison table, shared by both formats.
fn backend_cells(r: &Report) -> Vec<Vec<String>> {
    r.backends
        .iter()
        .map(|b| {
            vec![
                b.model.clone(),
                b.kind.clone(),
                b.backend.clone(),
                b.batches.to_string(),
                b.texts.to_string(),
                format!("{:.1} %", b.success_rate * 100.0),
                format!("{:.2}", b.p50_ms),
                format!("{:.2}", b.p95_ms),
                format!("{:.2}", b.p99_ms),
                format!("{:.1}", b.mean_queue_ms),
                format!("{:.1}", b.texts_per_s),
            ]
        })
        .collect()
}

const BACKEND_HEAD: &[&str] = &[
    "model",
    "browser kind",
    "backend",
    "batches",
    "texts",
    "success",
    "p50 ms/text",
    "p95 ms/text",
    "p99 ms/text",
    "mean queue ms",
    "texts/s (tab time)",
];

fn md_table(head: &[&str], rows: &[Vec<String>]) -> String {
    let mut s = format!("| {} |\n|{}\n", head.join(" | "), "---|".repeat(head.len()));
    for r in rows {
        s += &format!("| {} |\n", r.iter().map(|c| c.replace('|', "\\|")).collect::<Vec<_>>().join(" | "));
    }
    if rows.is_empty() {
        s += &format!("| (none){} |\n", " | ".repeat(head.len() - 1));
    }
    s
}

/// A titled table: (title, column heads, rows of cells).
type Section = (&'static str, Vec<&'static str>, Vec<Vec<String>>);

fn sections(r: &Report) -> Vec<Section> {
    let regress = r
        .regressions
        .iter()
        .map(|t| {
            let (class, detail) = verdict_text(&t.verdict);
            vec![
                format!("{} · {} · {}", t.model, t.kind, t.backend),
                t.batch.clone(),
                class,
                format!("{} / {}", t.baseline_n, t.recent_n),
                detail,
            ]
        })
        .collect();
    vec![
        ("Browsers and backends", BACKEND_HEAD.to_vec(), backend_cells(r)),
        (
            "Text generation (streams)",
            vec![
                "model",
                "kind",
                "backend",
                "streams",
                "finished",
                "cancelled",
                "failed",
                "replayed",
                "prompt tokens",
                "generated",
                "p50 TTFT ms",
                "p95 TTFT ms",
                "mean decode tok/s",
            ],
            r.generation
                .iter()
                .map(|g| {
                    vec![
                        g.model.clone(),
                        g.kind.clone(),
                        g.backend.clone(),
                        g.streams.to_string(),
                        g.finished.to_string(),
                        g.cancelled.to_string(),
                        g.failed.to_string(),
                        g.replayed.to_string(),
                        g.prompt_tokens.to_string(),
                        g.generated.to_string(),
                        format!("{:.0}", g.p50_ttft_ms),
                        format!("{:.0}", g.p95_ttft_ms),
                        format!("{:.1}", g.mean_decode_tok_s),
                    ]
                })
                .collect(),
        ),
        (
            "Regressions (recent window vs baseline, Welch's t-test)",
            vec!["series", "batch size", "class", "points (baseline / recent)", "detail"],
            regress,
        ),
        (
            "Error categories (failed batches)",
            vec!["category", "batches"],
            r.errors.iter().map(|(c, n)| vec![c.clone(), n.to_string()]).collect(),
        ),
        (
            "Breaker events (latest first)",
            vec!["at", "tab", "kind", "breaker", "transition", "reason"],
            r.breakers
                .iter()
                .map(|b| {
                    vec![
                        when(Some(b.at_ms)),
                        b.tab.to_string(),
                        b.kind.clone(),
                        b.scope.clone(),
                        format!("{} → {}", b.from, b.to),
                        b.reason.clone(),
                    ]
                })
                .collect(),
        ),
        (
            "Recoveries",
            vec!["step", "category", "count", "ok", "p50 ms", "p95 ms"],
            r.recoveries
                .iter()
                .map(|x| {
                    vec![
                        x.step.clone(),
                        x.category.clone(),
                        x.count.to_string(),
                        x.ok.to_string(),
                        format!("{:.0}", x.p50_ms),
                        format!("{:.0}", x.p95_ms),
                    ]
                })
                .collect(),
        ),
        (
            "Scaling decisions",
            vec!["action", "count"],
            r.scaling.iter().map(|(a, n)| vec![a.clone(), n.to_string()]).collect(),
        ),
    ]
}

fn headline(r: &Report) -> String {
    format!(
        "{} executions ({} texts) over {} run(s), {:.2} % successful; from {} to {}{}",
        r.executions,
        r.texts,
        r.runs,
        r.success_rate * 100.0,
        when(r.first_ms),
        when(r.last_ms),
        r.since_ms.map(|s| format!(" (since {})", when(Some(s)))).unwrap_or_default()
    )
}

pub fn markdown(r: &Report) -> String {
    let mut s = format!(
        "# tabpool report\n\nDatabase `{}`, generated {}.\n\n{}.\n",
        r.db,
        when(Some(r.generated_at_ms)),
        headline(r)
    );
    for (title, head, rows) in sections(r) {
        s += &format!("\n## {title}\n\n{}", md_table(&head, &rows));
    }
    s += &format!(
        "\nRegressions are classified only when significant at α = {ALPHA} (two-sided): CRITICAL > 25 %, SEVERE 15–25 %, MODERATE 5–15 %, MINOR < 5 % slower.\n"
    );
    s
}

pub fn html(r: &Report) -> String {
    let mut body = format!(
        "<h1>tabpool report</h1><p>Database <code>{}</code>, generated {}.</p><p class=\"headline\">{}.</p>",
        escape(&r.db),
        when(Some(r.generated_at_ms)),
        escape(&headline(r))
    );
    let bars: Vec<(String, f64)> =
        r.backends.iter().map(|b| (format!("{} · {} · {}", b.model, b.kind, b.backend), b.p50_ms)).collect();
    body += &format!("<figure>{}</figure>", svg::bars("p50 latency per text", "ms", &bars));
    body += &format!("<figure>{}</figure>", svg::lines("Latency per text over time", "ms", &r.latency_series));
    if !r.errors.is_empty() {
        let e: Vec<(String, f64)> = r.errors.iter().map(|(c, n)| (c.clone(), *n as f64)).collect();
        body += &format!("<figure>{}</figure>", svg::bars("Failed batches by category", "batches", &e));
    }
    for (title, head, rows) in sections(r) {
        body += &format!("<h2>{}</h2><table><tr>", escape(title));
        for h in &head {
            body += &format!("<th>{}</th>", escape(h));
        }
        body += "</tr>";
        for row in &rows {
            let class = if row.get(2).is_some_and(|c| ["CRITICAL", "SEVERE", "MODERATE", "MINOR"].contains(&c.as_str()))
            {
                " class=\"regressed\""
            } else {
                ""
            };
            body += &format!("<tr{class}>");
            for c in row {
                body += &format!("<td>{}</td>", escape(c));
            }
            body += "</tr>";
        }
        if rows.is_empty() {
            body += &format!("<tr><td colspan=\"{}\">(none)</td></tr>", head.len());
        }
        body += "</table>";
    }
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>tabpool report</title><style>\
         body{{font-family:sans-serif;margin:2em;color:#222}}table{{border-collapse:collapse;margin:.5em 0 1.5em}}\
         td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:left}}th{{background:#f3f3f3}}\
         tr.regressed td{{background:#fde8e8}}figure{{margin:1em 0}}</style></head><body>{body}</body></html>\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_render_in_utc() {
        assert_eq!(when(Some(0)), "1970-01-01 00:00:00 UTC");
        assert_eq!(when(Some(1_795_305_600_000)), "2026-11-22 00:00:00 UTC");
        assert_eq!(when(Some(951_782_400_000 + 3_723_000)), "2000-02-29 01:02:03 UTC");
    }
}
