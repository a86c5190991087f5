//! Small inline SVG charts for the HTML report: values over the report's
//! period, an optional target line, no scripts and no external resources.
//! Colours come from CSS classes in the page's stylesheet.

use chrono::{DateTime, Utc};

use super::html::esc;

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 230.0;
const LEFT: f64 = 78.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 14.0;
const BOTTOM: f64 = 34.0;
/// At most this many time labels (plus one).
const MAX_TIME_TICKS: i64 = 6;
const Y_TICKS: usize = 4;
/// Above this many points, markers are left out and only the line is drawn.
const MAX_MARKERS: usize = 150;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// A green circle (a passed drill).
    Pass,
    /// A red cross (a failed drill).
    Fail,
    /// A blue circle on the line (a backup).
    Dot,
}

pub struct Point {
    pub t: DateTime<Utc>,
    pub value: f64,
    pub mark: Mark,
    /// Tooltip text.
    pub label: String,
}

/// How the value axis is labelled.
#[derive(Debug, Clone, Copy)]
pub enum Unit {
    Seconds,
    Bytes,
}

impl Unit {
    /// A scale and its name for values up to `max`.
    fn scale(self, max: f64) -> (f64, &'static str) {
        match self {
            Unit::Seconds if max >= 2.0 * 3600.0 => (3600.0, "h"),
            Unit::Seconds if max >= 120.0 => (60.0, "min"),
            Unit::Seconds => (1.0, "s"),
            Unit::Bytes => {
                let mut scale = 1.0;
                for name in ["B", "KiB", "MiB", "GiB", "TiB"] {
                    if max < scale * 1024.0 || name == "TiB" {
                        return (scale, name);
                    }
                    scale *= 1024.0;
                }
                unreachable!("the loop returns at TiB")
            }
        }
    }
}

pub struct Chart<'a> {
    /// For the SVG's accessible name.
    pub title: &'a str,
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    pub points: Vec<Point>,
    pub unit: Unit,
    /// A horizontal line: value and label.
    pub target: Option<(f64, String)>,
    /// Join the points with a line.
    pub line: bool,
}

/// Seconds between time labels: the smallest round step that gives at most
/// [`MAX_TIME_TICKS`] labels over `span`.
fn time_step(span: chrono::Duration) -> i64 {
    const HOUR: i64 = 3600;
    const DAY: i64 = 24 * HOUR;
    let span = span.num_seconds().max(1);
    [
        HOUR,
        3 * HOUR,
        6 * HOUR,
        12 * HOUR,
        DAY,
        2 * DAY,
        7 * DAY,
        14 * DAY,
        30 * DAY,
        91 * DAY,
        182 * DAY,
        365 * DAY,
    ]
    .into_iter()
    .find(|step| span / step <= MAX_TIME_TICKS)
    .unwrap_or(365 * DAY * (span / (365 * DAY * MAX_TIME_TICKS) + 1))
}

/// A step of 1, 2, 2.5 or 5 times a power of ten, so that `ticks` steps
/// cover `max`.
fn nice_step(max: f64, ticks: usize) -> f64 {
    let raw = (max / ticks as f64).max(f64::MIN_POSITIVE);
    let magnitude = 10f64.powf(raw.log10().floor());
    let residual = raw / magnitude;
    let factor = [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .find(|f| residual <= *f)
        .unwrap_or(10.0);
    factor * magnitude
}

fn num(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn coord(v: f64) -> String {
    format!("{v:.1}")
}

impl Chart<'_> {
    pub fn to_svg(&self) -> String {
        let plot_w = WIDTH - LEFT - RIGHT;
        let plot_h = HEIGHT - TOP - BOTTOM;
        let span = (self.until - self.since).num_milliseconds().max(1) as f64;
        let x = |t: DateTime<Utc>| {
            let f = ((t - self.since).num_milliseconds() as f64 / span).clamp(0.0, 1.0);
            LEFT + f * plot_w
        };
        let max_value = self
            .points
            .iter()
            .map(|p| p.value)
            .chain(self.target.as_ref().map(|(v, _)| *v))
            .fold(0.0, f64::max)
            // An axis of only zeros says nothing; give it a small range.
            .max(match self.unit {
                Unit::Seconds => 10.0,
                Unit::Bytes => 1024.0,
            });
        let (scale, unit_name) = self.unit.scale(max_value);
        let step = nice_step((max_value / scale).max(1e-9) * 1.08, Y_TICKS);
        let top_value = step * Y_TICKS as f64;
        let y = |v: f64| TOP + plot_h - (v / scale / top_value).clamp(0.0, 1.05) * plot_h;

        let mut svg = format!(
            "<svg class=\"chart\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\" aria-label=\"{}\" preserveAspectRatio=\"xMidYMid meet\">\n<title>{}</title>\n",
            esc(self.title),
            esc(self.title)
        );
        // Grid and value labels.
        for i in 0..=Y_TICKS {
            let v = step * i as f64;
            let yy = TOP + plot_h - (i as f64 / Y_TICKS as f64) * plot_h;
            svg.push_str(&format!(
                "<line class=\"grid\" x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\"/>\n<text class=\"axis\" x=\"{}\" y=\"{}\" text-anchor=\"end\">{} {unit_name}</text>\n",
                coord(LEFT),
                coord(yy),
                coord(LEFT + plot_w),
                coord(yy),
                coord(LEFT - 6.0),
                coord(yy + 4.0),
                num(v)
            ));
        }
        // Time labels, on round UTC times.
        let step = time_step(self.until - self.since);
        let whole_days = step % 86_400 == 0;
        let first = self.since.timestamp().div_euclid(step) * step;
        let ticks = (0..)
            .map(|i| first + i * step)
            .take_while(|t| *t <= self.until.timestamp())
            .filter(|t| *t >= self.since.timestamp())
            .filter_map(|t| DateTime::from_timestamp(t, 0));
        for t in ticks {
            let x0 = x(t);
            let anchor = if x0 - LEFT < 30.0 {
                "start"
            } else if LEFT + plot_w - x0 < 30.0 {
                "end"
            } else {
                "middle"
            };
            let label = if whole_days {
                t.format("%Y-%m-%d").to_string()
            } else {
                t.format("%m-%d %H:%M").to_string()
            };
            svg.push_str(&format!(
                "<line class=\"tick\" x1=\"{x0}\" y1=\"{y0}\" x2=\"{x0}\" y2=\"{y1}\"/>\n<text class=\"axis\" x=\"{x0}\" y=\"{yt}\" text-anchor=\"{anchor}\">{label}</text>\n",
                x0 = coord(x0),
                y0 = coord(TOP + plot_h),
                y1 = coord(TOP + plot_h + 4.0),
                yt = coord(TOP + plot_h + 18.0),
            ));
        }
        svg.push_str(&format!(
            "<line class=\"frame\" x1=\"{l}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\"/>\n",
            l = coord(LEFT),
            r = coord(LEFT + plot_w),
            b = coord(TOP + plot_h)
        ));
        if let Some((target, label)) = &self.target {
            let yy = coord(y(*target));
            svg.push_str(&format!(
                "<line class=\"target\" x1=\"{}\" y1=\"{yy}\" x2=\"{}\" y2=\"{yy}\"/>\n<text class=\"target-label\" x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\n",
                coord(LEFT),
                coord(LEFT + plot_w),
                coord(LEFT + plot_w - 4.0),
                coord(y(*target) - 5.0),
                esc(label)
            ));
        }
        if self.line && self.points.len() > 1 {
            let path: Vec<String> = self
                .points
                .iter()
                .map(|p| format!("{},{}", coord(x(p.t)), coord(y(p.value))))
                .collect();
            svg.push_str(&format!(
                "<polyline class=\"series\" points=\"{}\"/>\n",
                path.join(" ")
            ));
        }
        if self.points.len() <= MAX_MARKERS || !self.line {
            for p in &self.points {
                let (cx, cy) = (x(p.t), y(p.value));
                match p.mark {
                    Mark::Pass | Mark::Dot => svg.push_str(&format!(
                        "<circle class=\"{}\" cx=\"{}\" cy=\"{}\" r=\"4.5\"><title>{}</title></circle>\n",
                        if p.mark == Mark::Pass { "pass" } else { "dot" },
                        coord(cx),
                        coord(cy),
                        esc(&p.label)
                    )),
                    Mark::Fail => svg.push_str(&format!(
                        "<path class=\"bad\" d=\"M{} {}l10 10m0 -10l-10 10\"><title>{}</title></path>\n",
                        coord(cx - 5.0),
                        coord(cy - 5.0),
                        esc(&p.label)
                    )),
                }
            }
        }
        svg.push_str("</svg>");
        svg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_round() {
        assert_eq!(nice_step(100.0, 4), 25.0);
        assert_eq!(nice_step(9.0, 4), 2.5);
        assert_eq!(nice_step(130.0, 4), 50.0);
        assert_eq!(nice_step(0.4, 4), 0.1);
    }

    #[test]
    fn time_labels_fall_on_round_times() {
        assert_eq!(time_step(chrono::Duration::days(7)), 2 * 86_400);
        assert_eq!(time_step(chrono::Duration::days(90)), 14 * 86_400);
        assert_eq!(time_step(chrono::Duration::hours(5)), 3600);
        assert_eq!(time_step(chrono::Duration::days(3)), 12 * 3600);
    }

    #[test]
    fn units_fit_the_values() {
        assert_eq!(Unit::Bytes.scale(500.0).1, "B");
        assert_eq!(Unit::Bytes.scale(5.0 * 1024.0 * 1024.0).1, "MiB");
        assert_eq!(Unit::Seconds.scale(90.0).1, "s");
        assert_eq!(Unit::Seconds.scale(1800.0).1, "min");
        assert_eq!(Unit::Seconds.scale(3.0 * 3600.0).1, "h");
    }
}
