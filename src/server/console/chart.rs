//! Small charts as inline SVG, drawn on the server: bars (counts) and lines (rates). No script,
//! no style attributes (the page's CSP allows the stylesheet only): colours are SVG
//! presentation attributes. Every label goes through maud's escaping.

use maud::{html, Markup};

/// Palette for line series, in order.
pub const COLORS: [&str; 6] = [
    "#2563eb", "#16a34a", "#d97706", "#9333ea", "#dc2626", "#0891b2",
];

const W: f64 = 720.0;
const H: f64 = 220.0;
const LEFT: f64 = 48.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 40.0;

/// One line of a line chart.
pub struct Series<'a> {
    pub name: &'a str,
    pub values: Vec<f64>,
}

fn plot_w() -> f64 {
    W - LEFT - RIGHT
}

fn plot_h() -> f64 {
    H - TOP - BOTTOM
}

/// Every `step`-th x label, so at most ~12 are written.
fn label_step(n: usize) -> usize {
    n.div_ceil(12).max(1)
}

fn nice_max(max: f64) -> f64 {
    if max <= 0.0 {
        return 1.0;
    }
    let mag = 10f64.powf(max.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if max <= m * mag {
            return m * mag;
        }
    }
    10.0 * mag
}

fn axes(max: f64, fmt: &dyn Fn(f64) -> String) -> Markup {
    html! {
        @for i in 0..=4 {
            @let v = max * f64::from(i) / 4.0;
            @let y = TOP + plot_h() - plot_h() * f64::from(i) / 4.0;
            line x1=(LEFT) x2=(W - RIGHT) y1=(y) y2=(y) stroke="#e5e7eb" stroke-width="1" {}
            text x=(LEFT - 6.0) y=(y + 4.0) text-anchor="end" font-size="11" fill="#6b7280" { (fmt(v)) }
        }
    }
}

fn x_labels(labels: &[String], x_of: &dyn Fn(usize) -> f64) -> Markup {
    let step = label_step(labels.len());
    html! {
        @for (i, l) in labels.iter().enumerate() {
            @if i % step == 0 {
                text x=(x_of(i)) y=(H - BOTTOM + 16.0) text-anchor="middle" font-size="11" fill="#374151" { (l) }
            }
        }
    }
}

/// A bar chart of counts, one bar per label.
pub fn bars(title: &str, labels: &[String], values: &[f64]) -> Markup {
    let max = nice_max(values.iter().cloned().fold(0.0, f64::max));
    let n = labels.len().max(1);
    let slot = plot_w() / n as f64;
    let bar = (slot * 0.7).max(1.0);
    let x_of = |i: usize| LEFT + slot * (i as f64 + 0.5);
    let fmt = |v: f64| format!("{v:.0}");
    html! {
        figure.chart {
            svg viewBox={ "0 0 " (W) " " (H) } role="img" aria-label=(title) xmlns="http://www.w3.org/2000/svg" {
                title { (title) }
                (axes(max, &fmt))
                @for (i, v) in values.iter().enumerate() {
                    @let h = plot_h() * v / max;
                    rect x=(x_of(i) - bar / 2.0) y=(TOP + plot_h() - h) width=(bar) height=(h) fill=(COLORS[0]) {
                        title { (labels.get(i).map(String::as_str).unwrap_or("")) ": " (fmt(*v)) }
                    }
                }
                (x_labels(labels, &x_of))
            }
            figcaption { (title) }
        }
    }
}

/// A line chart of rates in [0, 1] (drawn as percentages), one line per series.
pub fn rate_lines(title: &str, labels: &[String], series: &[Series]) -> Markup {
    let n = labels.len().max(1);
    let slot = plot_w() / n as f64;
    let x_of = |i: usize| LEFT + slot * (i as f64 + 0.5);
    let y_of = |v: f64| TOP + plot_h() - plot_h() * v.clamp(0.0, 1.0);
    let fmt = |v: f64| format!("{:.0}%", v * 100.0);
    html! {
        figure.chart {
            svg viewBox={ "0 0 " (W) " " (H) } role="img" aria-label=(title) xmlns="http://www.w3.org/2000/svg" {
                title { (title) }
                (axes(1.0, &fmt))
                @for (k, s) in series.iter().enumerate() {
                    @let color = COLORS[k % COLORS.len()];
                    @let points = s.values.iter().enumerate()
                        .map(|(i, v)| format!("{:.1},{:.1}", x_of(i), y_of(*v)))
                        .collect::<Vec<_>>().join(" ");
                    polyline points=(points) fill="none" stroke=(color) stroke-width="2" {}
                    @for (i, v) in s.values.iter().enumerate() {
                        circle cx=(x_of(i)) cy=(y_of(*v)) r="3" fill=(color) {
                            title { (s.name) " " (labels.get(i).map(String::as_str).unwrap_or("")) ": " (fmt(*v)) }
                        }
                    }
                }
                (x_labels(labels, &x_of))
            }
            figcaption {
                (title) ": "
                @for (k, s) in series.iter().enumerate() {
                    span.legend {
                        svg width="12" height="12" viewBox="0 0 12 12" aria-hidden="true" {
                            rect width="12" height="12" fill=(COLORS[k % COLORS.len()]) {}
                        }
                        " " (s.name)
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_round_up_and_labels_are_escaped() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(7.0), 10.0);
        assert_eq!(nice_max(12.0), 20.0);
        assert_eq!(nice_max(450.0), 500.0);
        let svg = bars("消息量", &["<i>".to_string()], &[3.0]).into_string();
        assert!(svg.contains("&lt;i&gt;") && !svg.contains("<i>"), "{svg}");
        let svg = rate_lines(
            "rates",
            &["a".into(), "b".into()],
            &[Series {
                name: "response",
                values: vec![0.5, 2.0],
            }],
        )
        .into_string();
        assert!(svg.contains("<polyline"), "{svg}");
        assert!(svg.contains("200%") || svg.contains("100%"), "{svg}");
    }
}
