//! The latency-vs-throughput chart of `bench sweep` and `bench plot`, drawn as SVG by hand
//! (a few lines and labels; no plotting library needed): achieved records/s across, latency
//! down a log scale, one color per run, p99 solid and p50 dashed.

use std::fmt::Write as _;

use super::results::{Step, SweepRun};

const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 560.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 220.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 70.0;
const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// The title as one line, or two when it would not fit above the plot (about 7 px a
/// character at 14 px).
fn title_lines(title: &str) -> Vec<&str> {
    const FITS: usize = ((WIDTH - LEFT - RIGHT) / 7.0) as usize;
    if title.chars().count() <= FITS {
        return vec![title];
    }
    let middle = title.len() / 2;
    match title
        .match_indices(", ")
        .map(|(i, _)| i)
        .min_by_key(|i| i.abs_diff(middle))
    {
        Some(i) => vec![&title[..=i], title[i + 2..].trim_start()],
        None => vec![title],
    }
}

/// Escapes text for an SVG text node or attribute.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A round step for about `n` ticks over `0..max`.
fn nice_step(max: f64, n: f64) -> f64 {
    let raw = (max / n).max(f64::MIN_POSITIVE);
    let magnitude = 10f64.powf(raw.log10().floor());
    let scaled = raw / magnitude;
    let nice = if scaled <= 1.0 {
        1.0
    } else if scaled <= 2.0 {
        2.0
    } else if scaled <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * magnitude
}

/// 12000 -> "12k", 1500000 -> "1.5M".
fn short_rate(v: f64) -> String {
    if v >= 1e6 {
        format!("{}M", trim(v / 1e6))
    } else if v >= 1e3 {
        format!("{}k", trim(v / 1e3))
    } else {
        trim(v)
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// The chart of `runs`, one p99 and one p50 line per run.
pub(crate) fn svg(runs: &[SweepRun], title: &str) -> String {
    let points = runs
        .iter()
        .flat_map(|r| r.steps.iter())
        .filter(|s| s.records > 0);
    let (mut x_max, mut y_min, mut y_max) = (0f64, f64::MAX, 0f64);
    for s in points {
        x_max = x_max.max(s.achieved_rate);
        y_min = y_min.min(s.latency_ms.p50.max(0.001));
        y_max = y_max.max(s.latency_ms.p99);
    }
    if y_max <= 0.0 {
        (y_min, y_max) = (0.1, 10.0);
    }
    let x_step = nice_step(x_max.max(1.0), 6.0);
    let x_top = (x_max / x_step).ceil().max(1.0) * x_step;
    // Decades that hold every point, at least one.
    let lo = y_min.log10().floor();
    let hi = y_max.log10().ceil().max(lo + 1.0);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x = |v: f64| LEFT + v / x_top * plot_w;
    let y = |ms: f64| TOP + plot_h - (ms.max(1e-9).log10() - lo) / (hi - lo) * plot_h;

    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        out,
        r#"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#
    );
    // A long workload description goes on two lines, split at the comma nearest its middle.
    let lines = title_lines(title);
    for (i, line) in lines.iter().enumerate() {
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" font-size="14" text-anchor="middle">{}</text>"#,
            LEFT + plot_w / 2.0,
            if lines.len() == 1 { 24 } else { 18 + 17 * i },
            escape(line)
        );
    }
    // Grid and ticks: x linear, y by decade with 2 and 5 between.
    let mut v = 0.0;
    while v <= x_top + x_step / 2.0 {
        let px = x(v);
        let _ = writeln!(
            out,
            r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{:.1}" stroke="#e0e0e0"/>"##,
            TOP + plot_h
        );
        let _ = writeln!(
            out,
            r#"<text x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            TOP + plot_h + 18.0,
            short_rate(v)
        );
        v += x_step;
    }
    let mut decade = lo;
    while decade <= hi {
        for m in [1.0, 2.0, 5.0] {
            let ms = 10f64.powf(decade) * m;
            if ms.log10() > hi + 1e-9 {
                break;
            }
            let py = y(ms);
            let (stroke, label) = if m == 1.0 {
                ("#c8c8c8", true)
            } else {
                ("#eeeeee", plot_h / (hi - lo) > 120.0)
            };
            let _ = writeln!(
                out,
                r#"<line x1="{LEFT}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="{stroke}"/>"#,
                LEFT + plot_w
            );
            if label {
                let _ = writeln!(
                    out,
                    r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                    LEFT - 6.0,
                    py + 4.0,
                    trim(ms)
                );
            }
        }
        decade += 1.0;
    }
    let _ = writeln!(
        out,
        r#"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="black"/>"#
    );
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">achieved records/s</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 22.0
    );
    let _ = writeln!(
        out,
        r#"<text transform="translate(22 {:.1}) rotate(-90)" text-anchor="middle">latency, ms (log scale)</text>"#,
        TOP + plot_h / 2.0
    );
    // One color per run: p99 solid with dots, p50 dashed.
    for (i, run) in runs.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let steps: Vec<_> = run.steps.iter().filter(|s| s.records > 0).collect();
        for (quantile, dash, pick) in [
            ("p99", "", (|s| s.latency_ms.p99) as fn(&&Step) -> f64),
            ("p50", r#" stroke-dasharray="6 4""#, |s| s.latency_ms.p50),
        ] {
            // The line joins the steps that kept to their rate; one that fell behind (its
            // latency is its backlog) is a hollow dot off the line.
            let path: Vec<String> = steps
                .iter()
                .filter(|s| kept_up(s))
                .map(|s| format!("{:.1},{:.1}", x(s.achieved_rate), y(pick(s))))
                .collect();
            let _ = writeln!(
                out,
                r#"<polyline class="series" data-run="{}" data-quantile="{quantile}" fill="none" stroke="{color}" stroke-width="2"{dash} points="{}"/>"#,
                escape(&run.label),
                path.join(" ")
            );
            for s in &steps {
                let fill = if kept_up(s) { color } else { "white" };
                let _ = writeln!(
                    out,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{fill}" stroke="{color}"><title>{} {quantile} {:.2} ms at {:.0} records/s{}</title></circle>"#,
                    x(s.achieved_rate),
                    y(pick(s)),
                    escape(&run.label),
                    pick(s),
                    s.achieved_rate,
                    s.target_rate
                        .map_or(String::new(), |t| format!(" (target {t:.0})"))
                );
            }
        }
        // The legend: the p99 line, then the p50 one below it.
        let lx = WIDTH - RIGHT + 16.0;
        for (row, (quantile, dash)) in [("p99", ""), ("p50", r#" stroke-dasharray="6 4""#)]
            .into_iter()
            .enumerate()
        {
            let ly = TOP + 14.0 + i as f64 * 40.0 + row as f64 * 16.0;
            let _ = writeln!(
                out,
                r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="2"{dash}/>"#,
                lx + 24.0
            );
            let _ = writeln!(
                out,
                r#"<text x="{}" y="{}">{} {quantile}</text>"#,
                lx + 30.0,
                ly + 4.0,
                escape(&run.label)
            );
        }
    }
    let _ = writeln!(
        out,
        r##"<text x="{:.1}" y="{:.1}" font-size="11" fill="#555">hollow: fell behind its target</text>"##,
        WIDTH - RIGHT + 16.0,
        TOP + plot_h
    );
    out.push_str("</svg>\n");
    out
}

/// Whether a step achieved at least 90% of its target rate (an unthrottled one did).
fn kept_up(s: &Step) -> bool {
    s.target_rate.is_none_or(|t| s.achieved_rate >= 0.9 * t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::bench::Latency;
    use crate::commands::bench::results::{Step, SweepRun};

    fn run(label: &str, points: &[(f64, f64, f64)]) -> SweepRun {
        SweepRun {
            label: label.into(),
            workload: "w".into(),
            max_rate: None,
            steps: points
                .iter()
                .map(|&(rate, p50, p99)| Step {
                    target_rate: Some(rate),
                    achieved_rate: rate,
                    mb_per_second: 0.0,
                    records: 100,
                    failed: 0,
                    not_sent: 0,
                    latency_ms: Latency {
                        p50,
                        p99,
                        p999: p99,
                        max: p99,
                    },
                    breakdown: None,
                })
                .collect(),
        }
    }

    #[test]
    fn each_run_gets_a_p99_and_a_p50_line_through_its_points_in_the_frame() {
        let a = run("before", &[(5000.0, 1.7, 4.0), (20000.0, 2.3, 5.0)]);
        let b = run("after <&>", &[(5000.0, 0.7, 1.9), (20000.0, 1.0, 2.5)]);
        let svg = svg(&[a, b], "RF=3 acks=all");
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches(r#"class="series""#).count(), 4);
        assert!(svg.contains(r#"data-run="after &lt;&amp;&gt;" data-quantile="p50""#));
        assert!(svg.contains("RF=3 acks=all"));
        // Every point lies inside the plot area.
        for line in svg.lines().filter(|l| l.starts_with("<circle")) {
            let attr = |name: &str| -> f64 {
                let start = line.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
                line[start..].split('"').next().unwrap().parse().unwrap()
            };
            let (cx, cy) = (attr("cx"), attr("cy"));
            assert!((LEFT..=WIDTH - RIGHT).contains(&cx), "{line}");
            assert!((TOP..=HEIGHT - BOTTOM).contains(&cy), "{line}");
        }
        // Higher latency is drawn higher up (smaller y).
        let y_of = |label: &str, q: &str| -> String {
            svg.lines()
                .find(|l| l.contains(&format!(r#"data-run="{label}" data-quantile="{q}""#)))
                .unwrap()
                .to_string()
        };
        let first_y = |line: String| -> f64 {
            let pts = line.split("points=\"").nth(1).unwrap();
            pts.split([',', ' ']).nth(1).unwrap().parse().unwrap()
        };
        assert!(first_y(y_of("before", "p99")) < first_y(y_of("before", "p50")));
    }

    /// A sweep's workload line is longer than the chart is wide: it goes on two lines,
    /// split between its parts, nothing lost; a short title stays on one.
    #[test]
    fn a_long_title_is_split_at_a_comma_and_a_short_one_is_kept() {
        let long = "1024 B records, topic 'sweep-rf3' (1 partitions, factor 3), acks=All, idempotence true, in flight 5, batch 262144 B, linger 0s, 8 producer(s)";
        let lines = title_lines(long);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            lines.iter().all(|l| l.len() < long.len() * 2 / 3),
            "{lines:?}"
        );
        assert!(lines[0].ends_with(','));
        assert_eq!(format!("{} {}", lines[0], lines[1]), long);
        assert_eq!(title_lines("RF=3 acks=all"), vec!["RF=3 acks=all"]);
    }

    #[test]
    fn ticks_are_round() {
        assert_eq!(nice_step(362_000.0, 6.0), 100_000.0);
        assert_eq!(nice_step(9_000.0, 6.0), 2_000.0);
        assert_eq!(short_rate(150_000.0), "150k");
        assert_eq!(short_rate(1_500_000.0), "1.5M");
    }
}
