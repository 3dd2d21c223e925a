//! The price-history chart as inline SVG: step lines (a price holds until the
//! next observation changes it), a price axis with round ticks, a time axis,
//! and a dot with the price at the end of each line. Pure: series in, markup
//! out. Prices stay `Decimal` for the tick values and labels; `f64` is used
//! only for pixel coordinates. Labels that came from a scraper (section names)
//! are escaped.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;

use super::format;
use super::history::Point;
use super::html::Esc;

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 340.0;
const LEFT: f64 = 78.0;
const RIGHT: f64 = 92.0;
const TOP: f64 = 18.0;
const BOTTOM: f64 = 34.0;

/// Line colours: the get-in price first, then one per section.
pub const PALETTE: [&str; 9] = [
    "#2563eb", "#f59e0b", "#10b981", "#8b5cf6", "#ef4444", "#06b6d4", "#ec4899", "#84cc16", "#64748b",
];

pub struct Line {
    pub label: String,
    pub points: Vec<Point>,
    /// Index into [`PALETTE`].
    pub color: usize,
    /// The get-in price: drawn thicker, on top.
    pub primary: bool,
}

/// The chart of `lines` (all in `currency`) over `[from, to]`.
pub fn render(currency: &str, from: DateTime<Utc>, to: DateTime<Utc>, lines: &[Line]) -> String {
    let values = lines.iter().flat_map(|l| l.points.iter().filter_map(|p| p.1));
    let (Some(low), Some(high)) = (values.clone().min(), values.max()) else {
        return format!(
            r#"<svg class="chart" viewBox="0 0 {WIDTH} 120" role="img" aria-label="no prices"><text x="{}" y="64" text-anchor="middle" class="empty">No available listings in {} in this window</text></svg>"#,
            WIDTH / 2.0,
            Esc(currency)
        );
    };
    let (ticks, lo, hi) = price_ticks(low, high);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let span_ms = (to - from).num_milliseconds().max(1) as f64;
    let x =
        |t: DateTime<Utc>| LEFT + ((t - from).num_milliseconds() as f64 / span_ms).clamp(0.0, 1.0) * plot_w;
    let range = (hi - lo).to_f64().unwrap_or(1.0).max(f64::MIN_POSITIVE);
    let y = |v: Decimal| TOP + ((hi - v).to_f64().unwrap_or(0.0) / range).clamp(0.0, 1.0) * plot_h;

    let mut svg = String::with_capacity(16 * 1024);
    let _ = write!(
        svg,
        r#"<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="price history in {cur}">"#,
        cur = Esc(currency)
    );
    // Grid and price labels.
    for tick in &ticks {
        let ty = y(*tick);
        let _ = write!(
            svg,
            r##"<line class="grid" x1="{LEFT}" x2="{:.1}" y1="{ty:.1}" y2="{ty:.1}"/><text class="axis" x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            WIDTH - RIGHT,
            LEFT - 8.0,
            ty + 4.0,
            Esc(&format::money(*tick, currency))
        );
    }
    // Time labels.
    for (at, label) in time_ticks(from, to) {
        let tx = x(at);
        let _ = write!(
            svg,
            r#"<line class="tick" x1="{tx:.1}" x2="{tx:.1}" y1="{:.1}" y2="{:.1}"/><text class="axis" x="{tx:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            HEIGHT - BOTTOM,
            HEIGHT - BOTTOM + 5.0,
            HEIGHT - BOTTOM + 20.0,
            Esc(&label)
        );
    }
    let _ = write!(
        svg,
        r#"<line class="baseline" x1="{LEFT}" x2="{:.1}" y1="{:.1}" y2="{:.1}"/>"#,
        WIDTH - RIGHT,
        HEIGHT - BOTTOM,
        HEIGHT - BOTTOM
    );
    // Sections first, the get-in price on top.
    let mut ordered: Vec<&Line> = lines.iter().collect();
    ordered.sort_by_key(|l| l.primary);
    for line in ordered {
        let path = step_path(&line.points, to, &x, &y);
        if path.is_empty() {
            continue;
        }
        let color = PALETTE[line.color % PALETTE.len()];
        let (width, class) = if line.primary {
            (2.5, "line primary")
        } else {
            (1.5, "line")
        };
        let _ = write!(
            svg,
            r#"<path class="{class}" d="{path}" fill="none" stroke="{color}" stroke-width="{width}" stroke-linejoin="round"><title>{}</title></path>"#,
            Esc(&line.label)
        );
        if line.primary {
            // Hover targets with the price from each change on.
            for (at, value) in &line.points {
                if let Some(value) = value {
                    let _ = write!(
                        svg,
                        r#"<circle class="pt" cx="{:.1}" cy="{:.1}" r="4"><title>{} · {}</title></circle>"#,
                        x(*at),
                        y(*value),
                        Esc(&format::when(*at)),
                        Esc(&format::money(*value, currency))
                    );
                }
            }
        }
        if let Some((_, Some(last))) = line.points.last() {
            let (ex, ey) = (x(to), y(*last));
            let _ = write!(
                svg,
                r#"<circle cx="{ex:.1}" cy="{ey:.1}" r="3.5" fill="{color}"/>"#
            );
            if line.primary {
                let _ = write!(
                    svg,
                    r#"<text class="endlabel" x="{:.1}" y="{:.1}" fill="{color}">{}</text>"#,
                    ex + 8.0,
                    ey + 4.0,
                    Esc(&format::money(*last, currency))
                );
            }
        }
    }
    svg.push_str("</svg>");
    svg
}

/// `M x y H x V y …`: each value holds until the next point; a `None` (nothing
/// available) breaks the line. The last value holds until `to`.
fn step_path(
    points: &[Point],
    to: DateTime<Utc>,
    x: &impl Fn(DateTime<Utc>) -> f64,
    y: &impl Fn(Decimal) -> f64,
) -> String {
    let mut path = String::new();
    let mut drawing = false;
    for (at, value) in points {
        let px = x(*at);
        match (drawing, value) {
            (false, Some(v)) => {
                let _ = write!(path, "M{px:.1} {:.1}", y(*v));
                drawing = true;
            }
            (true, Some(v)) => {
                let _ = write!(path, "H{px:.1}V{:.1}", y(*v));
            }
            (true, None) => {
                let _ = write!(path, "H{px:.1}");
                drawing = false;
            }
            (false, None) => {}
        }
    }
    if drawing {
        let _ = write!(path, "H{:.1}", x(to));
    }
    path
}

/// Round price ticks (steps of 1, 2 or 5 times a power of ten) covering
/// `[low, high]`, and the range they span.
fn price_ticks(low: Decimal, high: Decimal) -> (Vec<Decimal>, Decimal, Decimal) {
    let (mut low, mut high) = (low, high);
    if high == low {
        // A flat line sits mid-chart.
        let pad = (low / Decimal::from(10)).max(Decimal::ONE);
        low = (low - pad).max(Decimal::ZERO);
        high += pad;
    }
    // At most about 8 ticks.
    let raw = (high - low) / Decimal::from(7);
    let mut power = Decimal::ONE;
    for _ in 0..12 {
        if power * Decimal::TEN > raw {
            break;
        }
        power *= Decimal::TEN;
    }
    for _ in 0..4 {
        if power <= raw {
            break;
        }
        power /= Decimal::TEN;
    }
    let step = [1, 2, 5, 10]
        .into_iter()
        .map(|m| power * Decimal::from(m))
        .find(|step| *step >= raw)
        .unwrap_or(power * Decimal::TEN)
        .max(Decimal::new(1, 2));
    let lo = (low / step).floor() * step;
    let hi = (high / step).ceil() * step;
    let mut ticks = Vec::new();
    let mut tick = lo;
    while tick <= hi && ticks.len() < 20 {
        ticks.push(tick);
        tick += step;
    }
    (ticks, lo, hi.max(lo + step))
}

/// Time ticks at a round step giving at most 8 labels, aligned to UTC.
fn time_ticks(from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<(DateTime<Utc>, String)> {
    const STEPS_MIN: [i64; 14] = [
        1, 5, 15, 30, 60, 180, 360, 720, 1440, 2880, 10_080, 20_160, 43_200, 525_600,
    ];
    let span = (to - from).num_minutes().max(1);
    let step_min = STEPS_MIN
        .into_iter()
        .find(|step| span / step <= 7)
        .unwrap_or(span / 7 + 1);
    let step_ms = step_min * 60_000;
    let from_ms = from.timestamp_millis();
    let first = from_ms.div_euclid(step_ms) * step_ms
        + if from_ms.rem_euclid(step_ms) == 0 {
            0
        } else {
            step_ms
        };
    let format = if step_min >= 1440 {
        "%b %d"
    } else if span > 1440 {
        "%b %d %H:%M"
    } else {
        "%H:%M"
    };
    let mut ticks = Vec::new();
    let mut at = first;
    while at <= to.timestamp_millis() && ticks.len() < 10 {
        if let Some(time) = DateTime::<Utc>::from_timestamp_millis(at) {
            ticks.push((time, time.format(format).to_string()));
        }
        at += step_ms;
    }
    ticks
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone};

    fn d(text: &str) -> Decimal {
        Decimal::from_str_exact(text).expect("decimal")
    }

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        let (ticks, lo, hi) = price_ticks(d("83.50"), d("212.00"));
        assert_eq!(lo, d("80"));
        assert_eq!(hi, d("220"));
        assert_eq!(ticks.first(), Some(&d("80")));
        assert_eq!(ticks.last(), Some(&d("220")));
        assert!(ticks.len() <= 10);
        let (ticks, lo, hi) = price_ticks(d("0.01"), d("0.01"));
        assert!(lo <= d("0.01") && hi > d("0.01") && !ticks.is_empty());
        let (ticks, _, _) = price_ticks(d("1"), d("1000000"));
        assert!(ticks.len() <= 12, "{ticks:?}");
    }

    #[test]
    fn renders_step_lines_and_escapes_labels() {
        let t0 = Utc.with_ymd_and_hms(2026, 5, 1, 0, 0, 0).single().expect("t0");
        let t1 = t0 + Duration::hours(24);
        let lines = [
            Line {
                label: "Get-in".into(),
                points: vec![
                    (t0, Some(d("100"))),
                    (t0 + Duration::hours(6), Some(d("90"))),
                    (t0 + Duration::hours(7), None),
                ],
                color: 0,
                primary: true,
            },
            Line {
                label: "<script>alert(1)</script>".into(),
                points: vec![(t0, Some(d("150")))],
                color: 1,
                primary: false,
            },
        ];
        let svg = render("USD", t0, t1, &lines);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(svg.contains("&lt;script&gt;"), "{svg}");
        assert!(!svg.contains("<script>"));
        assert_eq!(svg.matches("<path").count(), 2);
        assert!(svg.contains(">06:00<"), "{svg}");
        assert!(svg.contains("$100.00"), "{svg}");
        let empty = render("EUR", t0, t1, &[]);
        assert!(empty.contains("No available listings"));
    }
}
