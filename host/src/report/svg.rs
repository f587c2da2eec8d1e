//! Two small SVG charts for the HTML report: horizontal bars and lines over time. Plain SVG
//! text, so the report is one self-contained file.

const PALETTE: &[&str] = &["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];

pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Horizontal bars: one per (label, value), scaled to the largest.
pub fn bars(title: &str, unit: &str, rows: &[(String, f64)]) -> String {
    let (w, row_h, left) = (760.0, 26.0, 330.0);
    let h = 40.0 + row_h * rows.len().max(1) as f64;
    let max = rows.iter().map(|r| r.1).fold(0.0_f64, f64::max).max(1e-9);
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img"><title>{t}</title><text x="4" y="18" font-size="14" font-weight="bold">{t}</text>"#,
        t = escape(title)
    );
    for (i, (label, v)) in rows.iter().enumerate() {
        let y = 30.0 + row_h * i as f64;
        let bw = (w - left - 90.0) * v / max;
        s += &format!(
            r#"<text x="{lx}" y="{ty}" font-size="12" text-anchor="end">{l}</text><rect x="{left}" y="{y}" width="{bw:.1}" height="{bh}" fill="{c}"/><text x="{vx:.1}" y="{ty}" font-size="12">{v:.2} {u}</text>"#,
            lx = left - 6.0,
            ty = y + 15.0,
            l = escape(label),
            bh = row_h - 6.0,
            c = PALETTE[i % PALETTE.len()],
            vx = left + bw + 4.0,
            u = escape(unit)
        );
    }
    s + "</svg>"
}

/// Lines of (time ms, value) per series on shared axes, with a legend.
pub fn lines(title: &str, unit: &str, series: &[(String, Vec<(i64, f64)>)]) -> String {
    let (w, h, l, r, t, b) = (760.0, 300.0, 60.0, 10.0, 28.0, 40.0);
    let pts = series.iter().flat_map(|s| s.1.iter());
    let (t0, t1, vmax) = pts.fold((i64::MAX, i64::MIN, 0.0_f64), |(a, z, m), (x, y)| (a.min(*x), z.max(*x), m.max(*y)));
    let legend_h = 16.0 * series.len() as f64;
    let total_h = h + legend_h;
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{total_h}" viewBox="0 0 {w} {total_h}" role="img"><title>{tt}</title><text x="4" y="18" font-size="14" font-weight="bold">{tt}</text>"#,
        tt = escape(title)
    );
    if series.iter().all(|s| s.1.is_empty()) {
        return s + r#"<text x="60" y="80" font-size="12">no data</text></svg>"#;
    }
    let span = (t1 - t0).max(1) as f64;
    let vmax = vmax.max(1e-9) * 1.05;
    let x = |ms: i64| l + (w - l - r) * (ms - t0) as f64 / span;
    let y = |v: f64| t + (h - t - b) * (1.0 - v / vmax);
    s += &format!(
        r##"<line x1="{l}" y1="{yb}" x2="{xr}" y2="{yb}" stroke="#888"/><line x1="{l}" y1="{t}" x2="{l}" y2="{yb}" stroke="#888"/>"##,
        yb = h - b,
        xr = w - r
    );
    for k in 0..=4 {
        let v = vmax * k as f64 / 4.0;
        s += &format!(
            r#"<text x="{tx}" y="{ty:.1}" font-size="11" text-anchor="end">{v:.1}</text>"#,
            tx = l - 4.0,
            ty = y(v) + 4.0
        );
    }
    s += &format!(
        r#"<text x="{l}" y="{ty}" font-size="11">{unit} per text · {secs:.0} s span</text>"#,
        ty = h - b + 16.0,
        unit = escape(unit),
        secs = span / 1e3
    );
    for (i, (name, pts)) in series.iter().enumerate() {
        let c = PALETTE[i % PALETTE.len()];
        let path: Vec<String> = pts.iter().map(|(ms, v)| format!("{:.1},{:.1}", x(*ms), y(*v))).collect();
        s += &format!(r#"<polyline fill="none" stroke="{c}" stroke-width="1.5" points="{}"/>"#, path.join(" "));
        let ly = h + 12.0 + 16.0 * i as f64;
        s += &format!(
            r#"<rect x="{l}" y="{ry}" width="12" height="10" fill="{c}"/><text x="{tx}" y="{ly}" font-size="12">{n}</text>"#,
            ry = ly - 9.0,
            tx = l + 18.0,
            n = escape(name)
        );
    }
    s + "</svg>"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_well_formed_and_escape_labels() {
        let b = bars("p50", "ms", &[("a<b".into(), 2.0), ("c".into(), 4.0)]);
        assert!(b.starts_with("<svg") && b.ends_with("</svg>") && b.contains("a&lt;b"));
        assert_eq!(b.matches("<rect").count(), 2);
        let l = lines("lat", "ms", &[("s".into(), vec![(0, 1.0), (1000, 2.0), (2000, 1.5)])]);
        assert!(l.contains("<polyline") && l.contains("points=\"60.0,"), "{l}");
        assert!(lines("lat", "ms", &[]).contains("no data"));
    }
}
