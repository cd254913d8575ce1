//! SVG charts of a run, drawn with plotters' SVG backend.
//!
//! Two shapes serve every chart: grouped bars (one group per callers count, system or DNS
//! server; one bar per series in each, with a min–max whisker where the report has one) and
//! lines over a numeric axis. Text is written as SVG `<text>` elements, so no font file is
//! read: the viewer's own sans-serif draws it, and plotters only estimates its size.

use std::ops::Range;

use plotters::{
    coord::ranged1d::{DefaultFormatting, KeyPointHint, Ranged},
    prelude::*,
    style::{Palette, Palette99},
};

/// One rendered chart: the file it goes in, its alternative text, and the SVG.
#[derive(Clone, Debug)]
pub struct Chart {
    pub file: &'static str,
    pub alt: String,
    pub svg: String,
}

/// One bar: its height and, where known, the range a whisker spans over it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bar {
    pub value: f64,
    pub range: Option<(f64, f64)>,
}

impl Bar {
    pub fn new(value: f64) -> Option<Bar> {
        value.is_finite().then_some(Bar { value, range: None })
    }
}

/// A named series of bars, one (or none) per group.
#[derive(Clone, Debug)]
pub struct Series {
    pub name: String,
    pub bars: Vec<Option<Bar>>,
}

/// A named line: `(x, y)` points.
#[derive(Clone, Debug)]
pub struct Line {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

const SIZE: (u32, u32) = (900, 460);

/// The x axis of grouped bars: group `i` spans `i..i + 1`, and its label sits at its centre.
struct Groups(usize);

impl Ranged for Groups {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let share = value / self.0.max(1) as f64;
        limit.0 + (f64::from(limit.1 - limit.0) * share).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            return Vec::new();
        }
        (0..self.0).map(|i| i as f64 + 0.5).collect()
    }

    fn range(&self) -> Range<f64> {
        0.0..self.0 as f64
    }
}

/// Decimals for the labels of an axis that ends at `top`.
fn decimals(top: f64) -> usize {
    match top {
        t if t >= 20.0 => 0,
        t if t >= 2.0 => 1,
        _ => 2,
    }
}

fn color(i: usize) -> RGBColor {
    let (r, g, b) = Palette99::pick(i).rgb();
    RGBColor(r, g, b)
}

/// Grouped bars: `groups` along x, one bar of each series in every group.
pub fn grouped_bars(
    caption: &str,
    y_desc: &str,
    groups: &[String],
    series: &[Series],
) -> anyhow::Result<String> {
    let top = series
        .iter()
        .flat_map(|s| s.bars.iter().flatten())
        .map(|b| b.range.map_or(b.value, |(_, hi)| hi.max(b.value)))
        .fold(0.0, f64::max);
    // Room above the bars for the legend, a line per series.
    let headroom = 1.15 + 0.07 * series.len() as f64;
    let top = if top > 0.0 { top * headroom } else { 1.0 };
    let n = groups.len().max(1);
    // Each group keeps a tenth of its width free on either side.
    let width = 0.8 / series.len().max(1) as f64;
    let label = |x: &f64| {
        let i = x.floor() as usize;
        groups.get(i).cloned().unwrap_or_default()
    };

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(caption, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d(Groups(n), 0.0..top)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_label_formatter(&label)
            .y_label_formatter(&|y| format!("{y:.*}", decimals(top)))
            .y_desc(y_desc)
            .label_style(("sans-serif", 13))
            .draw()?;
        for (j, s) in series.iter().enumerate() {
            let c = color(j);
            let x0 = |i: usize| i as f64 + 0.1 + width * j as f64;
            chart
                .draw_series(s.bars.iter().enumerate().filter_map(|(i, b)| {
                    let b = b.as_ref()?;
                    Some(Rectangle::new(
                        [(x0(i), 0.0), (x0(i) + width * 0.9, b.value)],
                        c.filled(),
                    ))
                }))?
                .label(s.name.as_str())
                .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 12, y + 6)], c.filled()));
            chart.draw_series(s.bars.iter().enumerate().filter_map(|(i, b)| {
                let (lo, hi) = b.as_ref()?.range?;
                let mid = x0(i) + width * 0.45;
                Some(ErrorBar::new_vertical(
                    mid,
                    lo,
                    b.as_ref()?.value,
                    hi,
                    BLACK.stroke_width(1),
                    8,
                ))
            }))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font(("sans-serif", 13))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
    }
    Ok(svg)
}

/// Lines over a numeric x axis, a dot at every point.
pub fn lines(caption: &str, x_desc: &str, y_desc: &str, lines: &[Line]) -> anyhow::Result<String> {
    let points = || lines.iter().flat_map(|l| l.points.iter().copied());
    let x_max = points().map(|(x, _)| x).fold(0.0, f64::max);
    let y_max = points().map(|(_, y)| y).fold(0.0, f64::max);
    let x_max = if x_max > 0.0 { x_max * 1.05 } else { 1.0 };
    let y_max = if y_max > 0.0 {
        y_max * (1.15 + 0.07 * lines.len() as f64)
    } else {
        1.0
    };

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(caption, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .x_label_formatter(&|x| format!("{x:.*}", decimals(x_max)))
            .y_label_formatter(&|y| format!("{y:.*}", decimals(y_max)))
            .label_style(("sans-serif", 13))
            .draw()?;
        for (j, l) in lines.iter().enumerate() {
            let c = color(j);
            chart
                .draw_series(LineSeries::new(l.points.iter().copied(), c.stroke_width(2)))?
                .label(l.name.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2))
                });
            chart.draw_series(l.points.iter().map(|&p| Circle::new(p, 3, c.filled())))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font(("sans-serif", 13))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
    }
    Ok(svg)
}
