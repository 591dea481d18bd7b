//! The comparison as a markdown table of medians with ratios, and an SVG
//! chart of end-to-end throughput against consumer count.

use std::collections::BTreeMap;
use std::fmt::Write;

/// One median.
pub struct Median {
    pub measure: String,
    pub system: String,
    pub unit: String,
    pub value: f64,
}

/// One point of the consumer sweep.
pub struct Point {
    pub system: String,
    pub consumers: usize,
    pub items_per_s: f64,
}

const ORDER: [&str; 11] = [
    "enqueue",
    "lease+complete",
    "end to end",
    "server CPU e2e",
    "client CPU e2e",
    "latency p50",
    "latency p99",
    "latency p99.9",
    "memory per queued item",
    "server memory at 1M items",
    "",
];

fn fmt(v: f64) -> String {
    if v.is_nan() {
        "–".into()
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// The table: one row per measure, one column per system, then the ratios
/// workq/other for each workq store against each other system.
pub fn markdown(systems: &[String], medians: &[Median]) -> String {
    let get = |m: &str, s: &str| {
        medians
            .iter()
            .find(|x| x.measure == m && x.system == s)
            .map(|x| (x.value, x.unit.clone()))
    };
    let workq: Vec<&String> = systems.iter().filter(|s| s.starts_with("workq")).collect();
    let others: Vec<&String> = systems.iter().filter(|s| !s.starts_with("workq")).collect();
    let mut out = String::new();
    let _ = write!(out, "| measure | unit |");
    for s in systems {
        let _ = write!(out, " {s} |");
    }
    for w in &workq {
        for o in &others {
            let _ = write!(out, " {w}/{o} |");
        }
    }
    out.push('\n');
    let cols = 2 + systems.len() + workq.len() * others.len();
    out.push_str(&"|---".repeat(cols));
    out.push_str("|\n");
    for m in ORDER.iter().filter(|m| !m.is_empty()) {
        let Some(unit) = systems.iter().find_map(|s| get(m, s).map(|(_, u)| u)) else {
            continue;
        };
        let _ = write!(out, "| {m} | {unit} |");
        for s in systems {
            let _ = write!(out, " {} |", get(m, s).map_or("–".into(), |(v, _)| fmt(v)));
        }
        for w in &workq {
            for o in &others {
                let ratio = match (get(m, w), get(m, o)) {
                    (Some((a, _)), Some((b, _))) if b > 0.0 => format!("{:.2}×", a / b),
                    _ => "–".into(),
                };
                let _ = write!(out, " {ratio} |");
            }
        }
        out.push('\n');
    }
    out
}

/// A line chart, one line per system, log-scaled consumer count on x.
pub fn svg(points: &[Point]) -> String {
    let mut by_system: BTreeMap<&str, Vec<(usize, f64)>> = BTreeMap::new();
    for p in points {
        by_system
            .entry(&p.system)
            .or_default()
            .push((p.consumers, p.items_per_s));
    }
    let xs: Vec<usize> = {
        let mut v: Vec<usize> = points.iter().map(|p| p.consumers).collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    let ymax = points.iter().map(|p| p.items_per_s).fold(1.0_f64, f64::max) * 1.1;
    let (w, h, left, bottom, top, right) = (720.0, 420.0, 80.0, 50.0, 30.0, 170.0);
    let plot_w = w - left - right;
    let plot_h = h - top - bottom;
    let x_of = |c: usize| {
        let i = xs.iter().position(|&x| x == c).unwrap_or(0) as f64;
        left + plot_w * i / (xs.len().max(2) - 1) as f64
    };
    let y_of = |v: f64| top + plot_h * (1.0 - v / ymax);
    let colors = [
        "#1f77b4", "#2ca02c", "#d62728", "#ff7f0e", "#9467bd", "#8c564b",
    ];
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="18" text-anchor="middle" font-size="14">End-to-end items/s against consumer count</text>"#,
        left + plot_w / 2.0
    );
    for i in 0..=5 {
        let v = ymax * f64::from(i) / 5.0;
        let y = y_of(v);
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            left + plot_w,
            left - 6.0,
            y + 4.0,
            fmt(v)
        );
    }
    for &c in &xs {
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{c}</text>"#,
            x_of(c),
            top + plot_h + 18.0
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">consumers</text>"#,
        left + plot_w / 2.0,
        h - 8.0
    );
    for (i, (system, pts)) in by_system.iter().enumerate() {
        let color = colors[i % colors.len()];
        let path: Vec<String> = pts
            .iter()
            .map(|&(c, v)| format!("{:.1},{:.1}", x_of(c), y_of(v)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            path.join(" ")
        );
        let ly = top + 20.0 * i as f64 + 10.0;
        let lx = left + plot_w + 15.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="3"/><text x="{}" y="{}">{system}</text>"#,
            lx + 20.0,
            lx + 26.0,
            ly + 4.0
        );
    }
    s.push_str("</svg>\n");
    s
}
