//! Small line charts as inline SVG, drawn on the server: points in,
//! markup out. No script and no `style` attributes (the content security
//! policy refuses both); colours come from classes in `muster.css`.

use chrono::{DateTime, Utc};
use maud::{Markup, html};

/// The drawing's size in SVG units; it scales to the width of its box.
const WIDTH: f64 = 320.0;
const HEIGHT: f64 = 140.0;
/// Room for the value labels on the left and the time labels below.
const LEFT: f64 = 38.0;
const RIGHT: f64 = 8.0;
const TOP: f64 = 10.0;
const BOTTOM: f64 = 20.0;

/// One measured series: a title, the unit of its values and its points
/// (seconds since the epoch, value), oldest first.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub title: String,
    /// Appended to values: `%`, or empty for plain numbers.
    pub unit: String,
    pub points: Vec<(i64, f64)>,
    /// The top of the scale when it is known (100 for a percentage);
    /// otherwise the largest value.
    pub ceiling: Option<f64>,
}

/// The area the series is drawn into, in SVG units.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Frame {
    pub left: f64,
    pub top: f64,
    pub right: f64,
    pub bottom: f64,
}

impl Frame {
    fn of_chart() -> Frame {
        Frame {
            left: LEFT,
            top: TOP,
            right: WIDTH - RIGHT,
            bottom: HEIGHT - BOTTOM,
        }
    }
}

/// The range of values the vertical axis spans: from 0 (every metric
/// here is non-negative) to the ceiling or the largest value, never an
/// empty range.
fn value_range(series: &Series) -> (f64, f64) {
    let largest = series
        .points
        .iter()
        .map(|(_, value)| *value)
        .filter(|value| value.is_finite())
        .fold(0.0_f64, f64::max);
    let top = match series.ceiling {
        Some(ceiling) => ceiling.max(largest),
        None => largest,
    };
    (0.0, if top > 0.0 { top } else { 1.0 })
}

/// Where each point lands in `frame`: time left to right, value bottom to
/// top. One point, or points all at one time, sit in the middle of the
/// width. Values that are not finite count as 0.
pub fn scale(points: &[(i64, f64)], low: f64, high: f64, frame: Frame) -> Vec<(f64, f64)> {
    let first = points.iter().map(|(t, _)| *t).min().unwrap_or(0);
    let last = points.iter().map(|(t, _)| *t).max().unwrap_or(0);
    let span = (last - first) as f64;
    let range = if high > low { high - low } else { 1.0 };
    points
        .iter()
        .map(|(t, value)| {
            let x = if span > 0.0 {
                frame.left + (*t - first) as f64 / span * (frame.right - frame.left)
            } else {
                (frame.left + frame.right) / 2.0
            };
            let value = if value.is_finite() { *value } else { 0.0 };
            let share = ((value - low) / range).clamp(0.0, 1.0);
            let y = frame.bottom - share * (frame.bottom - frame.top);
            (x, y)
        })
        .collect()
}

/// A value as labels show it: no decimals from 10 up or for whole
/// numbers, one otherwise.
pub fn format_value(value: f64, unit: &str) -> String {
    let number = if value.abs() >= 10.0 || value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    };
    if unit.is_empty() {
        number
    } else {
        format!("{number} {unit}")
    }
}

fn clock(seconds: i64) -> String {
    DateTime::<Utc>::from_timestamp(seconds, 0)
        .map(|t| t.format("%H:%M").to_string())
        .unwrap_or_default()
}

fn path_of(points: &[(f64, f64)]) -> String {
    let mut path = String::with_capacity(points.len() * 14);
    for (i, (x, y)) in points.iter().enumerate() {
        let command = if i == 0 { 'M' } else { 'L' };
        path.push_str(&format!("{command}{x:.1},{y:.1} "));
    }
    path.trim_end().to_string()
}

/// A chart of `series` in a `figure`: its title with the last value as
/// text, and an SVG with the line, the scale's bounds on the left, the
/// first and last times below and the smallest and largest values seen.
/// Without points it says there is nothing to draw yet.
pub fn line(series: &Series) -> Markup {
    let Some(&(last_time, last_value)) = series.points.last() else {
        return html! {
            figure.chart {
                figcaption { (series.title) }
                p.muted { "No measurements yet: they arrive with the agent's reports." }
            }
        };
    };
    let frame = Frame::of_chart();
    let (low, high) = value_range(series);
    let scaled = scale(&series.points, low, high, frame);
    let line_path = path_of(&scaled);
    let area_path = match (scaled.first(), scaled.last()) {
        (Some((first_x, _)), Some((last_x, _))) if scaled.len() > 1 => format!(
            "{line_path} L{last_x:.1},{bottom:.1} L{first_x:.1},{bottom:.1} Z",
            bottom = frame.bottom
        ),
        _ => String::new(),
    };
    let finite = series
        .points
        .iter()
        .map(|(_, value)| *value)
        .filter(|value| value.is_finite());
    let smallest = finite.clone().fold(f64::INFINITY, f64::min);
    let largest = finite.fold(f64::NEG_INFINITY, f64::max);
    let first_time = series.points.first().map_or(last_time, |(t, _)| *t);
    let unit = series.unit.as_str();
    let label = format!(
        "{}: last {}, min {}, max {}",
        series.title,
        format_value(last_value, unit),
        format_value(smallest, unit),
        format_value(largest, unit)
    );
    let middle = (frame.top + frame.bottom) / 2.0;
    html! {
        figure.chart {
            figcaption {
                (series.title) " "
                strong.last { (format_value(last_value, unit)) }
            }
            svg xmlns="http://www.w3.org/2000/svg" viewBox=(format!("0 0 {WIDTH} {HEIGHT}"))
                role="img" aria-label=(label) {
                title { (label) }
                line.grid x1=(frame.left) y1=(frame.top) x2=(frame.right) y2=(frame.top) {}
                line.grid x1=(frame.left) y1=(middle) x2=(frame.right) y2=(middle) {}
                line.grid x1=(frame.left) y1=(frame.bottom) x2=(frame.right) y2=(frame.bottom) {}
                text x=(frame.left - 4.0) y=(frame.top + 3.0) text-anchor="end" { (format_value(high, unit)) }
                text x=(frame.left - 4.0) y=(frame.bottom + 3.0) text-anchor="end" { (format_value(low, unit)) }
                text x=(frame.left) y=(HEIGHT - 5.0) text-anchor="start" { (clock(first_time)) }
                text x=(frame.right) y=(HEIGHT - 5.0) text-anchor="end" { (clock(last_time)) " UTC" }
                @if !area_path.is_empty() {
                    path.area d=(area_path) {}
                }
                path.line d=(line_path) {}
                @if let Some((x, y)) = scaled.last() {
                    circle.dot cx=(format!("{x:.1}")) cy=(format!("{y:.1}")) r="2.5" {}
                }
            }
            p.range.muted {
                "min " (format_value(smallest, unit)) " · max " (format_value(largest, unit))
                " · " (series.points.len()) " samples"
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame() -> Frame {
        Frame {
            left: 10.0,
            top: 0.0,
            right: 110.0,
            bottom: 50.0,
        }
    }

    #[test]
    fn points_scale_into_the_frame() {
        let points = [(100, 0.0), (150, 50.0), (200, 100.0)];
        let scaled = scale(&points, 0.0, 100.0, frame());
        assert_eq!(scaled, vec![(10.0, 50.0), (60.0, 25.0), (110.0, 0.0)]);
    }

    #[test]
    fn values_outside_the_range_stay_inside_the_frame() {
        let scaled = scale(
            &[(0, -5.0), (10, 250.0), (20, f64::NAN)],
            0.0,
            100.0,
            frame(),
        );
        for (x, y) in &scaled {
            assert!((10.0..=110.0).contains(x), "{x}");
            assert!((0.0..=50.0).contains(y), "{y}");
        }
        assert_eq!(scaled[1].1, 0.0, "values above the top sit on the top");
        assert_eq!(scaled[2].1, 50.0, "a value that is not a number sits at 0");
    }

    #[test]
    fn one_point_sits_in_the_middle() {
        assert_eq!(
            scale(&[(42, 50.0)], 0.0, 100.0, frame()),
            vec![(60.0, 25.0)]
        );
    }

    #[test]
    fn a_chart_shows_its_line_bounds_and_last_value() {
        let series = Series {
            title: "CPU".into(),
            unit: "%".into(),
            points: vec![(0, 12.0), (60, 40.5), (120, 33.0)],
            ceiling: Some(100.0),
        };
        let html = line(&series).into_string();
        assert!(html.contains("<svg"), "{html}");
        assert!(html.contains(r#"class="line""#), "{html}");
        assert!(
            html.contains("33 %"),
            "the last value is shown as text: {html}"
        );
        assert!(html.contains("100 %"), "the scale's top: {html}");
        assert!(html.contains("min 12 %"), "{html}");
        assert!(html.contains("max 40 %"), "{html}");
        assert!(
            html.contains("00:00") && html.contains("00:02 UTC"),
            "{html}"
        );
        assert!(
            !html.contains("style="),
            "the CSP refuses style attributes: {html}"
        );
        // The first point is at the left edge and the bottom of 12 %.
        let first = scale(&series.points, 0.0, 100.0, Frame::of_chart())[0];
        assert!(
            html.contains(&format!("M{:.1},{:.1}", first.0, first.1)),
            "{html}"
        );
    }

    #[test]
    fn a_chart_without_points_says_so() {
        let series = Series {
            title: "Load".into(),
            unit: String::new(),
            points: Vec::new(),
            ceiling: None,
        };
        let html = line(&series).into_string();
        assert!(!html.contains("<svg"), "{html}");
        assert!(html.contains("No measurements yet"), "{html}");
    }

    #[test]
    fn a_scale_without_a_ceiling_follows_the_largest_value() {
        let series = Series {
            title: "Load".into(),
            unit: String::new(),
            points: vec![(0, 0.5), (10, 2.5)],
            ceiling: None,
        };
        assert_eq!(value_range(&series), (0.0, 2.5));
        let flat = Series {
            points: vec![(0, 0.0)],
            ..series
        };
        assert_eq!(value_range(&flat), (0.0, 1.0), "never an empty range");
        assert_eq!(format_value(0.0, "%"), "0 %");
        assert_eq!(format_value(0.42, ""), "0.4");
    }
}
