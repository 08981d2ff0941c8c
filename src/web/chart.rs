//! A server-rendered SVG bar chart (cost per day): no chart library, no script, scales to its container.

use std::fmt::Write;

/// Bars for `points` (label, value); `unit` prefixes the value in each bar's tooltip.
pub fn bars(points: &[(String, f64)], unit: &str) -> String {
    if points.is_empty() {
        return String::new();
    }
    let max = points.iter().map(|p| p.1).fold(0.0_f64, f64::max);
    let (w, h, gap) = (600.0, 140.0, 4.0);
    let bw = ((w - gap * points.len() as f64) / points.len() as f64).max(2.0);
    let mut svg = format!(
        r#"<svg class="chart" viewBox="0 0 {w} {}" preserveAspectRatio="none" role="img" aria-label="cost per day">"#,
        h + 20.0
    );
    for (i, (label, v)) in points.iter().enumerate() {
        let bh = if max > 0.0 {
            (v / max * h).max(1.0)
        } else {
            1.0
        };
        let x = i as f64 * (bw + gap);
        let _ = write!(
            svg,
            r#"<rect x="{x:.1}" y="{:.1}" width="{bw:.1}" height="{bh:.1}"><title>{} {unit}{v:.2}</title></rect>"#,
            h - bh,
            escape(label)
        );
    }
    if let (Some(first), Some(last)) = (points.first(), points.last()) {
        let _ = write!(
            svg,
            r#"<text x="0" y="{}">{}</text><text x="{w}" y="{}" text-anchor="end">{}</text>"#,
            h + 16.0,
            escape(&first.0),
            h + 16.0,
            escape(&last.0)
        );
    }
    svg.push_str("</svg>");
    svg
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_scale_to_the_largest_and_escape_labels() {
        let svg = bars(&[("2026-11-24".into(), 1.0), ("<b>".into(), 2.0)], "$");
        assert_eq!(svg.matches("<rect").count(), 2);
        assert!(svg.contains(r#"height="140.0""#), "{svg}");
        assert!(svg.contains(r#"height="70.0""#), "{svg}");
        assert!(svg.contains("&lt;b&gt;") && !svg.contains("<b>"));
        assert_eq!(bars(&[], "$"), "");
    }
}
