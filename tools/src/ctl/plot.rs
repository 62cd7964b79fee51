//! `hdr plot`: percentile curves of an `.hlog` as an SVG, one curve per tag (per
//! priority for the `p{n}.sojourn` tags), drawn the way HdrHistogram's plots are: the x
//! axis is the percentile on a "nines" scale, `-log10(1 - p/100)`, so 90%, 99%, 99.9%
//! ... are evenly spaced; the y axis is latency in ms.
//!
//! Drawn with `plotters`' SVG backend and no font rasteriser: text goes into the SVG as
//! `<text>` elements for the viewer to lay out, so the build stays pure Rust (no
//! freetype, no fontconfig). Each curve is one `<polyline>`; legend markers are
//! rectangles, so the polylines are exactly the curves.

use std::path::{Path, PathBuf};

use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::prelude::*;

use super::CtlError;
use super::hdr::{NS_PER_MS, TagSum, summarize, tag_label};

/// Highest percentile drawn, in nines: 99.9999%.
pub const MAX_NINES: f64 = 6.0;

/// Step between curve points, in nines.
const STEP_NINES: f64 = 0.02;

/// Curve colours, in legend order (then again): distinct on white and for the common
/// colour-vision deficiencies (the "tab10" set).
const COLORS: [RGBColor; 10] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0x7f, 0x7f, 0x7f),
    RGBColor(0xbc, 0xbd, 0x22),
    RGBColor(0x17, 0xbe, 0xcf),
];

/// Size of the SVG, in pixels.
pub const SIZE: (u32, u32) = (1000, 600);

/// Position of percentile `p` (0 <= p < 100) on the nines scale: `-log10(1 - p/100)`
/// (50% -> 0.30, 90% -> 1, 99% -> 2, 99.9% -> 3).
pub fn nines(p: f64) -> f64 {
    -(1.0 - p / 100.0).log10()
}

/// The percentile at position `x` of the nines scale, as an axis label: `50%`, `90%`,
/// `99%`, `99.9%`, `99.99%`.
pub fn percentile_label(x: f64) -> String {
    let p = 100.0 * (1.0 - 10f64.powf(-x));
    let decimals = (x.ceil() as usize).saturating_sub(2);
    let text = format!("{p:.decimals$}");
    format!("{text}%")
}

/// A y-axis label in ms, with as many decimals as the axis range needs (`1500`,
/// `12.5`, `0.250`, `0.0125`).
fn y_label(ms: f64, axis_max: f64) -> String {
    let decimals = match axis_max {
        m if m >= 100.0 => 0,
        m if m >= 10.0 => 1,
        m if m >= 0.1 => 3,
        _ => 6,
    };
    format!("{ms:.decimals$}")
}

/// One curve: `(nines, ms)` points of a tag's summed histogram.
#[derive(Clone, Debug, PartialEq)]
pub struct Curve {
    /// The tag, as the legend shows it.
    pub tag: String,
    /// Values recorded.
    pub count: u64,
    /// Points from 0% up to the highest percentile the count supports
    /// (`log10(count)` nines, at least 90%, at most [`MAX_NINES`]); y in ms.
    pub points: Vec<(f64, f64)>,
}

/// The curve of one tag's summed histogram (values in ns), `None` when it is empty.
pub fn curve(sum: &TagSum) -> Option<Curve> {
    let count = sum.hist.len();
    if count == 0 {
        return None;
    }
    let top = (count as f64).log10().clamp(1.0, MAX_NINES);
    let steps = (top / STEP_NINES).ceil() as usize;
    let points = (0..=steps)
        .map(|k| (k as f64 * STEP_NINES).min(top))
        .map(|x| {
            let q = 1.0 - 10f64.powf(-x);
            (x, sum.hist.value_at_quantile(q) as f64 / NS_PER_MS)
        })
        .collect();
    Some(Curve {
        tag: tag_label(sum.tag.as_deref()).to_owned(),
        count,
        points,
    })
}

/// Renders `curves` as an SVG document titled `title`.
///
/// # Errors
/// The drawing backend's message (it only fails on a formatting error).
pub fn render_svg(title: &str, curves: &[Curve]) -> Result<String, String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        draw(&root, title, curves).map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// The x axis: `0..max` nines, linear in nines, with key points at 0%, 50% and every
/// whole nine (90%, 99%, ...). `with_key_points` on an `f64` range would lose the
/// value formatter `configure_mesh` needs, hence this small axis type.
struct NinesAxis {
    max: f64,
}

impl Ranged for NinesAxis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let span = f64::from(limit.1 - limit.0);
        limit.0 + (span * value / self.max).round() as i32
    }

    fn key_points<H: KeyPointHint>(&self, _hint: H) -> Vec<f64> {
        let mut keys = vec![0.0, nines(50.0)];
        keys.extend((1..=self.max as usize).map(|n| n as f64));
        keys
    }

    fn range(&self) -> std::ops::Range<f64> {
        0.0..self.max
    }
}

type DrawResult = Result<(), DrawingAreaErrorKind<std::io::Error>>;

fn draw(
    root: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    title: &str,
    curves: &[Curve],
) -> DrawResult {
    root.fill(&WHITE)?;
    let x_max = curves
        .iter()
        .filter_map(|c| c.points.last().map(|p| p.0))
        .fold(1.0f64, f64::max)
        .ceil();
    let y_top = curves
        .iter()
        .flat_map(|c| c.points.iter().map(|p| p.1))
        .fold(0.0f64, f64::max);
    let y_max = if y_top > 0.0 { y_top * 1.1 } else { 1.0 };
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 22))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d(NinesAxis { max: x_max }, 0.0..y_max)?;
    chart
        .configure_mesh()
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 16))
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_label_formatter(&|x| percentile_label(*x))
        .y_label_formatter(&|y| y_label(*y, y_max))
        .draw()?;
    for (i, c) in curves.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                c.points.iter().copied(),
                color.stroke_width(2),
            ))?
            .label(format!("{} ({} values)", c.tag, c.count))
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 18, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
}

/// What [`plot_hlog`] drew.
#[derive(Clone, Debug, PartialEq)]
pub struct PlotSummary {
    /// The SVG written.
    pub path: PathBuf,
    /// Tag and value count of each curve, in legend order.
    pub curves: Vec<(String, u64)>,
    /// Tags selected that had no values (no curve drawn).
    pub empty: Vec<String>,
    /// The line number of an incomplete last line of the log that was skipped.
    pub torn_tail: Option<usize>,
}

/// `hdr plot FILE --out SVG [--tag TAG]...`: one percentile curve per selected tag
/// (all tags when `filters` is empty), written to `out` (replaced if it exists).
///
/// # Errors
/// [`CtlError::Hlog`] for the log, [`CtlError::NoData`] when no selected tag has a
/// value, [`CtlError::Plot`] / [`CtlError::Write`] for the SVG.
pub fn plot_hlog(hlog: &Path, filters: &[String], out: &Path) -> Result<PlotSummary, CtlError> {
    let summary = summarize(hlog, filters)?;
    let sums = summary.sums;
    let curves: Vec<Curve> = sums.iter().filter_map(curve).collect();
    if curves.is_empty() {
        return Err(CtlError::NoData {
            path: hlog.to_owned(),
            tags: filters.to_vec(),
        });
    }
    let name = hlog.file_name().map_or_else(
        || hlog.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let svg =
        render_svg(&format!("Latency by percentile: {name}"), &curves).map_err(|message| {
            CtlError::Plot {
                path: out.to_owned(),
                message,
            }
        })?;
    qos_control::files::create_write(out)
        .and_then(|mut f| std::io::Write::write_all(&mut f, svg.as_bytes()))
        .map_err(|source| CtlError::Write {
            path: out.to_owned(),
            source,
        })?;
    Ok(PlotSummary {
        path: out.to_owned(),
        curves: curves.iter().map(|c| (c.tag.clone(), c.count)).collect(),
        empty: sums
            .iter()
            .filter(|s| s.hist.is_empty())
            .map(|s| tag_label(s.tag.as_deref()).to_owned())
            .collect(),
        torn_tail: summary.torn_tail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nines_scale() {
        assert!((nines(90.0) - 1.0).abs() < 1e-12);
        assert!((nines(99.9) - 3.0).abs() < 1e-9);
        assert_eq!(percentile_label(0.0), "0%");
        assert_eq!(percentile_label(nines(50.0)), "50%");
        assert_eq!(percentile_label(1.0), "90%");
        assert_eq!(percentile_label(2.0), "99%");
        assert_eq!(percentile_label(3.0), "99.9%");
        assert_eq!(percentile_label(5.0), "99.999%");
    }
}
