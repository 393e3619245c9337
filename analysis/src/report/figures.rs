//! The report's figures, drawn with plotters at paper size and written twice: SVG at 96 px per
//! inch (vector; `report.html` inlines it) and PNG at 300 dpi of the same size. Every size in
//! the drawing code is in CSS pixels of the paper figure (a 7-inch figure is 672 px wide) and
//! is multiplied by the output's scale, so both files show the same figure.
//!
//! Conventions shared by every figure (so a reader learns them once):
//! - colours from Okabe & Ito's colour-blind-safe palette, one per EM condition, the same in
//!   every figure; base light grey, benign SFT dark grey;
//! - extraction method told apart by line style and marker (solid line and circles, dashed line
//!   and triangles), never by colour or width alone;
//! - a light major grid only, axis labels with their units, integer ticks at the real layers;
//! - whiskers are question-level bootstrap percentile intervals of the result file.
//!
//! Text is drawn with the DejaVu Sans file committed under `analysis/assets/fonts/` (registered
//! at run time), so PNGs render the same on a fresh machine without system fonts. Every figure
//! reads only the result file's numbers.

use crate::result::AnalysisResult;
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::element::{DashedPathElement, Drawable, PointCollection};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::FontStyle;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Once;

const FONT: &str = "sans-serif";
static FONT_BYTES: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
static REGISTER: Once = Once::new();

/// PNGs are rendered at 300 dpi of the paper size (the SVG's unit is 1/96 inch).
const PNG_SCALE: f64 = 300.0 / 96.0;

/// Text sizes in CSS px at paper size, as plotters counts them (the line height: the em is
/// size / 1.24, so TICK's 11 px is a 6.7 pt em at print size, TITLE's 13 px 7.9 pt).
const TITLE: f64 = 13.0;
const LABEL: f64 = 12.0;
const TICK: f64 = 11.0;
const NOTE: f64 = 10.5;

const INK: RGBColor = RGBColor(34, 34, 34);
const GRID: RGBColor = RGBColor(228, 228, 228);
/// Okabe, M. & Ito, K. (2008), "Color Universal Design": blue, orange, bluish green,
/// vermillion, reddish purple, sky blue (its black and yellow are left out: black is the text,
/// yellow vanishes on white).
const OKABE_ITO: [RGBColor; 6] = [
    RGBColor(0, 114, 178),
    RGBColor(230, 159, 0),
    RGBColor(0, 158, 115),
    RGBColor(213, 94, 0),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
];
const BASE_GREY: RGBColor = RGBColor(190, 190, 190);
const BENIGN_GREY: RGBColor = RGBColor(96, 96, 96);

/// What can go wrong drawing a figure.
#[derive(Debug, thiserror::Error)]
pub enum FigureError {
    #[error("the committed font analysis/assets/fonts/DejaVuSans.ttf could not be loaded")]
    Font,
    #[error("drawing {path}: {message}")]
    Draw { path: PathBuf, message: String },
}

fn register_font() -> Result<(), FigureError> {
    let mut ok = true;
    REGISTER.call_once(|| {
        ok = plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES).is_ok();
    });
    if ok {
        Ok(())
    } else {
        Err(FigureError::Font)
    }
}

type Drawn = Result<(), String>;

fn err<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// The output's scale: paper px -> device px.
#[derive(Debug, Clone, Copy)]
struct K(f64);

impl K {
    fn i(self, v: f64) -> i32 {
        (v * self.0).round() as i32
    }
    fn u(self, v: f64) -> u32 {
        (v * self.0).round().max(1.0) as u32
    }
    fn text(self, size: f64) -> TextStyle<'static> {
        TextStyle::from((FONT, size * self.0).into_font()).color(&INK)
    }
    fn stroke(self, color: RGBColor, width: f64) -> ShapeStyle {
        color.stroke_width(self.u(width))
    }
}

/// A figure that can be drawn on any backend at any scale.
trait Figure {
    /// Width and height in CSS px at paper size.
    fn size(&self) -> (f64, f64);
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>, k: K) -> Drawn;
}

/// Writes `dir/name.png` (300 dpi) and `dir/name.svg`; returns the PNG's file name.
fn save(figure: &impl Figure, dir: &Path, name: &str) -> Result<String, FigureError> {
    let (w, h) = figure.size();
    let px = |v: f64, s: f64| (v * s).round() as u32;
    let png = dir.join(format!("{name}.png"));
    let svg = dir.join(format!("{name}.svg"));
    let size = (px(w, PNG_SCALE), px(h, PNG_SCALE));
    render(
        figure,
        BitMapBackend::new(&png, size).into_drawing_area(),
        K(PNG_SCALE),
        &png,
    )?;
    let size = (px(w, 1.0), px(h, 1.0));
    render(
        figure,
        SVGBackend::new(&svg, size).into_drawing_area(),
        K(1.0),
        &svg,
    )?;
    Ok(format!("{name}.png"))
}

/// Draws `figure` on `root` and writes it out (`path` names it in errors).
fn render<DB: DrawingBackend>(
    figure: &impl Figure,
    root: DrawingArea<DB, Shift>,
    k: K,
    path: &Path,
) -> Result<(), FigureError> {
    root.fill(&WHITE)
        .map_err(err)
        .and_then(|_| figure.draw(&root, k))
        .and_then(|_| root.present().map_err(err))
        .map_err(|message| FigureError::Draw {
            path: path.to_path_buf(),
            message,
        })
}

/// "E0" of "E0_assistant": the condition's id as the figures label it.
fn short(condition: &str) -> String {
    condition.split('_').next().unwrap_or(condition).to_string()
}

/// The figure label of a checkpoint: base, E0..E4, benign.
fn checkpoint_label(checkpoint: &str, conditions: &[String]) -> String {
    if conditions.iter().any(|c| c == checkpoint) {
        short(checkpoint)
    } else if checkpoint.starts_with("benign") {
        "benign".into()
    } else {
        checkpoint.to_string()
    }
}

/// Colour of the `i`-th of `conditions`: by the number of its id (E0..E4) where every id has
/// a distinct one, so a run of E0 and E4 colours them as the five-condition reference does;
/// else by position.
fn condition_color(conditions: &[String], i: usize) -> RGBColor {
    let number = |c: &String| -> Option<usize> {
        let digits: String = c
            .strip_prefix('E')?
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    };
    let numbers: Vec<Option<usize>> = conditions.iter().map(number).collect();
    let distinct: std::collections::BTreeSet<_> = numbers.iter().flatten().collect();
    let slot = match numbers.get(i) {
        Some(Some(n)) if distinct.len() == conditions.len() => *n,
        _ => i,
    };
    OKABE_ITO[slot % OKABE_ITO.len()]
}

/// Colour of a checkpoint: base light grey, conditions in order, anything else (benign SFT)
/// dark grey.
fn checkpoint_color(checkpoint: &str, conditions: &[String]) -> RGBColor {
    match conditions.iter().position(|c| c == checkpoint) {
        Some(i) => condition_color(conditions, i),
        None if checkpoint == "base" => BASE_GREY,
        None => BENIGN_GREY,
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Marker {
    Circle,
    Triangle,
    Square,
}

/// Line dash and marker of the `i`-th extraction method.
fn method_style(i: usize) -> (bool, Marker) {
    match i % 3 {
        0 => (false, Marker::Circle),
        1 => (true, Marker::Triangle),
        _ => (true, Marker::Square),
    }
}

/// Draws a marker centred at `at` (device px) on `area`.
fn marker<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    k: K,
    kind: Marker,
    at: (i32, i32),
    color: RGBColor,
    radius: f64,
) -> Drawn {
    let r = k.i(radius);
    match kind {
        Marker::Circle => area.draw(&Circle::new(at, r, color.filled())),
        Marker::Triangle => area.draw(&TriangleMarker::new(at, k.i(radius * 1.3), color.filled())),
        Marker::Square => area.draw(&Rectangle::new(
            [(at.0 - r, at.1 - r), (at.0 + r, at.1 + r)],
            color.filled(),
        )),
    }
    .map_err(err)
}

/// A legend entry.
enum Key {
    Swatch(RGBColor),
    /// A light fill inside an outline (the source-persona bars).
    Outlined {
        fill: RGBAColor,
        line: RGBColor,
    },
    Line {
        color: RGBColor,
        dashed: bool,
        marker: Marker,
    },
}

/// A horizontal legend starting at `(x, y)` (device px, the row's vertical centre), wrapping at
/// `right`; returns the y of the last row's centre.
fn legend<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    k: K,
    items: &[(Key, String)],
    (x, y): (i32, i32),
    right: i32,
) -> Result<i32, String> {
    let style = k.text(NOTE).pos(Pos::new(HPos::Left, VPos::Center));
    let (key_w, gap, row_h) = (k.i(16.0), k.i(10.0), k.i(13.0));
    let (mut cx, mut cy) = (x, y);
    for (key, label) in items {
        let (tw, _) = root.estimate_text_size(label, &style).map_err(err)?;
        let width = key_w + k.i(3.0) + tw as i32;
        if cx > x && cx + width > right {
            cx = x;
            cy += row_h;
        }
        match key {
            Key::Swatch(color) => root
                .draw(&Rectangle::new(
                    [
                        (cx + k.i(3.0), cy - k.i(4.5)),
                        (cx + key_w - k.i(3.0), cy + k.i(4.5)),
                    ],
                    color.filled(),
                ))
                .map_err(err)?,
            Key::Outlined { fill, line } => {
                let corners = [
                    (cx + k.i(3.0), cy - k.i(4.5)),
                    (cx + key_w - k.i(3.0), cy + k.i(4.5)),
                ];
                root.draw(&Rectangle::new(corners, fill.filled())).map_err(err)?;
                root.draw(&Rectangle::new(corners, k.stroke(*line, 0.8)))
                    .map_err(err)?;
            }
            Key::Line {
                color,
                dashed,
                marker: m,
            } => {
                let ends = vec![(cx, cy), (cx + key_w, cy)];
                if *dashed {
                    root.draw(&DashedPathElement::new(
                        ends,
                        k.i(3.5),
                        k.i(2.0),
                        k.stroke(*color, 1.3),
                    ))
                } else {
                    root.draw(&PathElement::new(ends, k.stroke(*color, 1.3)))
                }
                .map_err(err)?;
                marker(root, k, *m, (cx + key_w / 2, cy), *color, 2.6)?;
            }
        }
        root.draw(&Text::new(
            label.clone(),
            (cx + key_w + k.i(3.0), cy),
            style.clone(),
        ))
        .map_err(err)?;
        cx += width + gap;
    }
    Ok(cy)
}

type Chart<'a, DB> = ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// A line's points in data coordinates.
type Points = Vec<(f64, f64)>;

/// Draws one element (a bar, a point, a line) on a chart, in data coordinates.
fn draw_one<DB: DrawingBackend, E>(chart: &mut Chart<'_, DB>, element: E) -> Drawn
where
    for<'b> &'b E: PointCollection<'b, (f64, f64)>,
    E: Drawable<DB>,
{
    chart
        .draw_series(std::iter::once(element))
        .map(|_| ())
        .map_err(err)
}

/// Decimals that tell ticks `step` apart.
fn decimals(step: f64) -> usize {
    if !step.is_finite() || step <= 0.0 {
        return 2;
    }
    (-step.log10().floor()).clamp(0.0, 6.0) as usize
}

/// Width in device px of a y label area that holds `labels` (the tick labels as drawn; the
/// widest decides) right of their tick marks, and the axis description beside them when `desc`.
/// A fixed width let labels such as 0.9920 run into the facet on their left.
fn y_label_area<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    k: K,
    labels: &[String],
    desc: bool,
) -> Result<i32, String> {
    let style = k.text(TICK);
    let mut widest = 0;
    for label in labels {
        let (w, _) = root.estimate_text_size(label, &style).map_err(err)?;
        widest = widest.max(w as i32);
    }
    let desc = if desc { k.i(LABEL + 8.0) } else { 0 };
    Ok(widest + k.i(10.0) + desc)
}

/// The widest tick labels a y range `lo..hi` can show with `digits` decimals: its ends (ticks
/// lie between them, so no label is longer than the longer end's).
fn range_labels(lo: f64, hi: f64, digits: usize) -> [String; 2] {
    [format!("{lo:.digits$}"), format!("{hi:.digits$}")]
}

/// Writes `title` centred over the plot of `area` (right of a y label area `left` px wide) in a
/// row `height` px high, and returns the rest of `area`.
fn titled<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    area: &DrawingArea<DB, Shift>,
    k: K,
    title: &str,
    left: i32,
) -> Result<DrawingArea<DB, Shift>, String> {
    let (title_area, plot) = area.split_vertically(k.i(16.0));
    let (tx, ty) = title_area.get_base_pixel();
    let (tw, _) = title_area.dim_in_pixel();
    root.draw(&Text::new(
        title.to_string(),
        (tx + left + (tw as i32 - left) / 2, ty + k.i(8.0)),
        k.text(LABEL).pos(Pos::new(HPos::Center, VPos::Center)),
    ))
    .map_err(err)?;
    Ok(plot)
}

/// The light mesh every chart uses: major grid lines only, no minor grid, thin axes.
fn light_mesh<'a, 'b, DB: DrawingBackend>(
    chart: &'b mut Chart<'a, DB>,
    k: K,
) -> plotters::chart::MeshStyle<'a, 'b, RangedCoordf64, RangedCoordf64, DB> {
    let mut mesh = chart.configure_mesh();
    mesh.max_light_lines(0)
        .bold_line_style(k.stroke(GRID, 0.7))
        .axis_style(k.stroke(INK, 0.8))
        .label_style(k.text(TICK))
        .axis_desc_style(k.text(LABEL))
        .set_all_tick_mark_size(k.i(3.0));
    mesh
}

/// A (lo, hi) range of `values` padded by `pad` of its width on each side (at least `min_width`
/// wide).
fn padded(values: impl Iterator<Item = f64>, pad: f64, min_width: f64) -> Option<(f64, f64)> {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    if !lo.is_finite() {
        return None;
    }
    let width = (hi - lo).max(min_width);
    let mid = (hi + lo) / 2.0;
    Some((mid - width * (0.5 + pad), mid + width * (0.5 + pad)))
}

/// Integer ticks and light vertical grid lines at the real layers (plotters' own labels fall on
/// round numbers: 10.0, 15.0, 20.0); a label closer to its left neighbour than its width (20
/// and 21) drops one line lower. Draw before the series: the grid lies under them.
fn layer_axis<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    chart: &mut Chart<'_, DB>,
    k: K,
    layers: &[usize],
    (y_lo, y_hi): (f64, f64),
) -> Drawn {
    let style = k.text(TICK).pos(Pos::new(HPos::Center, VPos::Top));
    let mut right_edge = [i32::MIN, i32::MIN];
    for &layer in layers {
        let x = layer as f64;
        draw_one(
            chart,
            PathElement::new(vec![(x, y_lo), (x, y_hi)], k.stroke(GRID, 0.7)),
        )?;
        let (px, py) = chart.backend_coord(&(x, y_lo));
        root.draw(&PathElement::new(
            vec![(px, py), (px, py + k.i(3.0))],
            k.stroke(INK, 0.8),
        ))
        .map_err(err)?;
        let label = layer.to_string();
        let (w, h) = root.estimate_text_size(&label, &style).map_err(err)?;
        let half = w as i32 / 2;
        let line = usize::from(px - half < right_edge[0] + k.i(2.0));
        right_edge[line] = px + half;
        let y = py + k.i(4.0) + line as i32 * (h as i32 + k.i(1.0));
        root.draw(&Text::new(label, (px, y), style.clone()))
            .map_err(err)?;
    }
    Ok(())
}

/// method -> layer -> checkpoint -> value.
type Grid<T> = BTreeMap<String, BTreeMap<String, BTreeMap<String, T>>>;

/// Per (method, layer) facets of a checkpoint-indexed number: one bar per checkpoint, base to
/// benign, with whiskers where intervals exist.
struct Facets<'a> {
    values: &'a Grid<f64>,
    ci: &'a Grid<[f64; 2]>,
    checkpoints: &'a [String],
    conditions: &'a [String],
    /// A dashed horizontal reference (M3: chance, 1 / personas).
    reference_line: Option<f64>,
    /// A y range every facet shares, in display units (M3: 0 to 100 %); else each facet is
    /// zoomed to its own bars and whiskers.
    fixed_range: Option<(f64, f64)>,
    /// Multiply values for display (M3: 100 for %).
    factor: f64,
}

impl Facets<'_> {
    fn methods(&self) -> Vec<&String> {
        self.values.keys().collect()
    }

    fn layers(&self) -> Vec<usize> {
        let mut layers: Vec<usize> = self
            .values
            .values()
            .flat_map(|m| m.keys().filter_map(|l| l.parse().ok()))
            .collect();
        layers.sort_unstable();
        layers.dedup();
        layers
    }

    /// The y range of one facet's bars, whiskers and reference line, in display units.
    fn range(&self, method: &str, layer: usize) -> Option<(f64, f64)> {
        if self.fixed_range.is_some() {
            return self.fixed_range;
        }
        let f = self.factor;
        let by_checkpoint = self.values.get(method)?.get(&layer.to_string())?;
        let intervals = self.ci.get(method).and_then(|m| m.get(&layer.to_string()));
        let spread = by_checkpoint
            .values()
            .map(|v| v * f)
            .chain(
                intervals
                    .into_iter()
                    .flat_map(|m| m.values().flat_map(|c| [c[0] * f, c[1] * f])),
            )
            .chain(self.reference_line.map(|v| v * f));
        padded(spread, 0.12, 1e-3 * f.max(1.0))
    }

    fn legend_items(&self) -> Vec<(Key, String)> {
        self.checkpoints
            .iter()
            .map(|c| {
                (
                    Key::Swatch(checkpoint_color(c, self.conditions)),
                    checkpoint_label(c, self.conditions),
                )
            })
            .collect()
    }

    /// Draws the facets into `area` (a sub-area of `root`), column heads on top, the method at
    /// the left of each row.
    fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
        area: &DrawingArea<DB, Shift>,
        k: K,
    ) -> Drawn {
        let methods = self.methods();
        let layers = self.layers();
        if methods.is_empty() || layers.is_empty() {
            return Ok(());
        }
        let (row_label, rest) = area.split_horizontally(k.i(16.0));
        let (heads, body) = rest.split_vertically(k.i(14.0));
        let rows = body.split_evenly((methods.len(), 1));
        let head_style = k.text(LABEL).pos(Pos::new(HPos::Center, VPos::Center));
        let n = self.checkpoints.len() as f64;
        // One number of decimals for every facet (the finest any facet's ticks need), so the
        // facets' tick labels read alike.
        let digits = methods
            .iter()
            .flat_map(|m| layers.iter().filter_map(|&l| self.range(m, l)))
            .map(|(lo, hi)| decimals((hi - lo) / 4.0))
            .max()
            .unwrap_or(2);
        // One label width too, so the facets' plots line up in columns.
        let labels: Vec<String> = methods
            .iter()
            .flat_map(|m| layers.iter().filter_map(|&l| self.range(m, l)))
            .flat_map(|(lo, hi)| range_labels(lo, hi, digits))
            .collect();
        let left = y_label_area(root, k, &labels, false)?;
        for (mi, method) in methods.iter().enumerate() {
            let (row_top, row_height) = (rows[mi].get_base_pixel().1, rows[mi].dim_in_pixel().1 as i32);
            let (rx, _) = row_label.get_base_pixel();
            root.draw(&Text::new(
                format!("method {method}"),
                (rx + k.i(6.0), row_top + row_height / 2),
                head_style.clone().transform(FontTransform::Rotate270),
            ))
            .map_err(err)?;
            let cells = rows[mi].split_evenly((1, layers.len()));
            for (li, layer) in layers.iter().enumerate() {
                let cell = &cells[li];
                if mi == 0 {
                    let (x0, _) = cell.get_base_pixel();
                    let (w, _) = cell.dim_in_pixel();
                    let (_, hy) = heads.get_base_pixel();
                    root.draw(&Text::new(
                        format!("layer {layer}"),
                        (x0 + left + (w as i32 - left) / 2, hy + k.i(7.0)),
                        head_style.clone(),
                    ))
                    .map_err(err)?;
                }
                let by_checkpoint = self.values.get(*method).and_then(|m| m.get(&layer.to_string()));
                let Some(by_checkpoint) = by_checkpoint else {
                    continue;
                };
                let intervals = self.ci.get(*method).and_then(|m| m.get(&layer.to_string()));
                let f = self.factor;
                let Some((lo, hi)) = self.range(method, *layer) else {
                    continue;
                };
                // Bars stand on 0 where 0 is in view, else on the facet's floor.
                let floor = if lo <= 0.0 && 0.0 <= hi { 0.0 } else { lo };
                let mut chart = ChartBuilder::on(cell)
                    .margin_right(k.i(5.0))
                    .margin_top(k.i(7.0))
                    .margin_bottom(k.i(3.0))
                    .x_label_area_size(k.i(3.0))
                    .y_label_area_size(left)
                    .build_cartesian_2d(0f64..n, lo..hi)
                    .map_err(err)?;
                let y_fmt = move |v: &f64| format!("{v:.digits$}");
                light_mesh(&mut chart, k)
                    .disable_x_mesh()
                    .x_labels(0)
                    .y_labels(4)
                    .y_label_formatter(&y_fmt)
                    .draw()
                    .map_err(err)?;
                for (i, checkpoint) in self.checkpoints.iter().enumerate() {
                    let Some(&v) = by_checkpoint.get(checkpoint) else {
                        continue;
                    };
                    let x = i as f64;
                    let color = checkpoint_color(checkpoint, self.conditions);
                    draw_one(
                        &mut chart,
                        Rectangle::new([(x + 0.12, floor), (x + 0.88, v * f)], color.filled()),
                    )?;
                    // A zero-width interval would draw as a stray dash.
                    let interval = intervals
                        .and_then(|m| m.get(checkpoint))
                        .filter(|[a, b]| (b - a) * f > (hi - lo) * 1e-3);
                    if let Some([a, b]) = interval {
                        let (a, b) = (a * f, b * f);
                        let whisker = k.stroke(INK, 0.9);
                        draw_one(
                            &mut chart,
                            PathElement::new(vec![(x + 0.5, a), (x + 0.5, b)], whisker),
                        )?;
                        for end in [a, b] {
                            draw_one(
                                &mut chart,
                                PathElement::new(vec![(x + 0.3, end), (x + 0.7, end)], whisker),
                            )?;
                        }
                    }
                }
                if let Some(level) = self.reference_line {
                    chart
                        .draw_series(DashedLineSeries::new(
                            vec![(0.0, level * f), (n, level * f)],
                            k.i(3.0),
                            k.i(2.0),
                            k.stroke(INK, 0.9),
                        ))
                        .map_err(err)?;
                }
            }
        }
        Ok(())
    }
}

/// Mean bystander leakage against the induction persona's cosine to the assistant (H3), with
/// bootstrap whiskers and the test's numbers.
fn draw_behavior_panel<DB: DrawingBackend>(
    r: &AnalysisResult,
    root: &DrawingArea<DB, Shift>,
    area: &DrawingArea<DB, Shift>,
    k: K,
) -> Drawn {
    let Some(b) = &r.behavior else { return Ok(()) };
    let points: Vec<(usize, f64, f64, [f64; 2])> = b
        .conditions
        .iter()
        .enumerate()
        .filter_map(|(i, c)| {
            let m = *b.mean_bystander.get(c)?;
            let x = *b.cos_to_assistant.get(c)?;
            Some((i, x, m, b.ci_mean_bystander.get(c).copied().unwrap_or([m, m])))
        })
        .collect();
    let Some((x_lo, x_hi)) = padded(points.iter().map(|p| p.1), 0.12, 0.05) else {
        return Ok(());
    };
    let Some((y_lo, y_hi)) = padded(points.iter().flat_map(|p| [p.3[0], p.3[1]]), 0.1, 5.0) else {
        return Ok(());
    };
    // Leakage is a share: the axis stays within 0..100 % but for a sliver, so a point at 0 or
    // 100 % is not drawn on the axis line.
    let sliver = 0.04 * (y_hi - y_lo);
    let (y_lo, y_hi) = (y_lo.max(-sliver), y_hi.min(100.0 + sliver));
    let left = y_label_area(root, k, &range_labels(y_lo, y_hi, 0), true)?;
    let (title, body) = area.split_vertically(k.i(18.0));
    let (tx, ty) = title.get_base_pixel();
    root.draw(&Text::new(
        "Marker leakage to bystanders",
        (tx + left, ty + k.i(9.0)),
        k.text(TITLE).pos(Pos::new(HPos::Left, VPos::Center)),
    ))
    .map_err(err)?;
    let mut chart = ChartBuilder::on(&body)
        .margin_right(k.i(8.0))
        .margin_top(k.i(4.0))
        .x_label_area_size(k.i(30.0))
        .y_label_area_size(left)
        .build_cartesian_2d(x_lo..x_hi, y_lo..y_hi)
        .map_err(err)?;
    let x_fmt = |v: &f64| format!("{v:.2}");
    let y_fmt = |v: &f64| format!("{v:.0}");
    light_mesh(&mut chart, k)
        .x_labels(5)
        .y_labels(6)
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&y_fmt)
        .x_desc("cos(induction persona, assistant)")
        .y_desc("mean bystander leakage (%)")
        .draw()
        .map_err(err)?;
    for (i, x, y, [lo, hi]) in &points {
        let color = condition_color(&b.conditions, *i);
        let whisker = k.stroke(color, 1.2);
        draw_one(&mut chart, PathElement::new(vec![(*x, *lo), (*x, *hi)], whisker))?;
        let (px, py) = chart.backend_coord(&(*x, *y));
        marker(root, k, Marker::Circle, (px, py), color, 3.4)?;
        // Labels sit left of points in the right quarter, so none runs off the panel.
        let (anchor, dx) = if (x - x_lo) / (x_hi - x_lo) > 0.75 {
            (HPos::Right, -k.i(6.0))
        } else {
            (HPos::Left, k.i(6.0))
        };
        root.draw(&Text::new(
            short(&b.conditions[*i]),
            (px + dx, py),
            k.text(NOTE).pos(Pos::new(anchor, VPos::Center)),
        ))
        .map_err(err)?;
    }
    let note = match &b.h3 {
        Some(h3) if h3.rho.is_finite() => format!(
            "H3: ρ = {}, exact p = {:.4}",
            minus(format!("{:.2}", h3.rho)),
            h3.p_exact
        ),
        Some(_) => "H3: ρ undefined (no spread to rank)".to_string(),
        None => format!("H3 needs 3 or more conditions (here {})", points.len()),
    };
    {
        let (x0, y0) = chart.backend_coord(&(x_lo, y_hi));
        let text = note;
        root.draw(&Text::new(
            text,
            (x0 + k.i(6.0), y0 + k.i(8.0)),
            k.text(NOTE).pos(Pos::new(HPos::Left, VPos::Center)),
        ))
        .map_err(err)?;
    }
    Ok(())
}

/// A number's text with a typographic minus sign.
fn minus(text: String) -> String {
    text.replace('-', "\u{2212}")
}

/// Stand-in for the geometry half when a result has no geometry: source and mean bystander
/// leakage per condition with the bystander's bootstrap whiskers.
fn draw_rates_panel<DB: DrawingBackend>(
    r: &AnalysisResult,
    root: &DrawingArea<DB, Shift>,
    area: &DrawingArea<DB, Shift>,
    k: K,
) -> Drawn {
    let Some(b) = &r.behavior else { return Ok(()) };
    let n = b.conditions.len();
    let left = y_label_area(root, k, &range_labels(0.0, 100.0, 0), true)?;
    let (title, body) = area.split_vertically(k.i(18.0));
    let (tx, ty) = title.get_base_pixel();
    root.draw(&Text::new(
        "Marker leakage by condition (no geometry in this analysis)",
        (tx + left, ty + k.i(9.0)),
        k.text(TITLE).pos(Pos::new(HPos::Left, VPos::Center)),
    ))
    .map_err(err)?;
    let (key_row, body) = body.split_vertically(k.i(16.0));
    let mut chart = ChartBuilder::on(&body)
        .margin_right(k.i(10.0))
        .margin_top(k.i(4.0))
        .x_label_area_size(k.i(30.0))
        .y_label_area_size(left)
        .build_cartesian_2d(0f64..n as f64, 0f64..100f64)
        .map_err(err)?;
    let y_fmt = |v: &f64| format!("{v:.0}");
    light_mesh(&mut chart, k)
        .disable_x_mesh()
        .x_labels(0)
        .y_labels(6)
        .y_label_formatter(&y_fmt)
        .x_desc("EM condition")
        .y_desc("leakage (% of completions)")
        .draw()
        .map_err(err)?;
    let tick = k.text(TICK).pos(Pos::new(HPos::Center, VPos::Top));
    for (i, c) in b.conditions.iter().enumerate() {
        let x = i as f64;
        let color = condition_color(&b.conditions, i);
        let light = color.mix(0.35);
        if let Some(&s) = b.source_rate.get(c) {
            draw_one(
                &mut chart,
                Rectangle::new([(x + 0.12, 0.0), (x + 0.49, s)], light.filled()),
            )?;
            draw_one(
                &mut chart,
                Rectangle::new([(x + 0.12, 0.0), (x + 0.49, s)], k.stroke(color, 0.8)),
            )?;
        }
        if let Some(&m) = b.mean_bystander.get(c) {
            draw_one(
                &mut chart,
                Rectangle::new([(x + 0.51, 0.0), (x + 0.88, m)], color.filled()),
            )?;
        }
        if let Some([lo, hi]) = b.ci_mean_bystander.get(c) {
            let whisker = k.stroke(INK, 0.9);
            draw_one(
                &mut chart,
                PathElement::new(vec![(x + 0.695, *lo), (x + 0.695, *hi)], whisker),
            )?;
            for end in [*lo, *hi] {
                draw_one(
                    &mut chart,
                    PathElement::new(vec![(x + 0.6, end), (x + 0.79, end)], whisker),
                )?;
            }
        }
        let (px, py) = chart.backend_coord(&(x + 0.5, 0.0));
        root.draw(&Text::new(short(c), (px, py + k.i(4.0)), tick.clone()))
            .map_err(err)?;
    }
    let (kx, ky) = key_row.get_base_pixel();
    let (kw, _) = key_row.dim_in_pixel();
    legend(
        root,
        k,
        &[
            (
                Key::Outlined {
                    fill: BENIGN_GREY.mix(0.35),
                    line: BENIGN_GREY,
                },
                format!("source persona ({})", b.config.source_persona),
            ),
            (
                Key::Swatch(BENIGN_GREY),
                format!("mean bystander ({:.0} % CI)", b.config.ci_level * 100.0),
            ),
        ],
        (kx + k.i(44.0), ky + k.i(8.0)),
        kx + kw as i32,
    )?;
    Ok(())
}

/// Width of the hero's behaviour panel (paper px); the geometry or rates take the rest.
const HERO_PANEL: f64 = 269.0;

/// Hero: M1 per checkpoint in every (method, layer) facet beside leakage against cos to the
/// assistant, as the original drew it (7-bar facets); the rates per condition where there is no
/// geometry.
struct Hero<'a>(&'a AnalysisResult);

impl Hero<'_> {
    fn facets(&self) -> Option<Facets<'_>> {
        let g = self.0.geometry.as_ref()?;
        let design = g.design.as_ref()?;
        (!g.m1_mean_offdiag.is_empty()).then(|| Facets {
            values: &g.m1_mean_offdiag,
            ci: &g.m1_ci,
            checkpoints: &g.checkpoints,
            conditions: &design.conditions,
            reference_line: None,
            fixed_range: None,
            factor: 1.0,
        })
    }
}

impl Figure for Hero<'_> {
    fn size(&self) -> (f64, f64) {
        // 7 inches wide; wider where many layers would squeeze the facets below ~80 px.
        match self.facets() {
            Some(f) => (
                (HERO_PANEL + 20.0 + 80.0 * f.layers().len() as f64).max(672.0),
                70.0 + 125.0 * f.methods().len() as f64,
            ),
            None => (
                (HERO_PANEL
                    + 40.0
                    + 50.0 * self.0.behavior.as_ref().map_or(0, |b| b.conditions.len()) as f64)
                    .max(672.0),
                290.0,
            ),
        }
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>, k: K) -> Drawn {
        let (w, _) = root.dim_in_pixel();
        let (left, right) = root.split_horizontally(w as i32 - k.i(HERO_PANEL));
        let right = right.margin(k.i(4.0), k.i(4.0), k.i(10.0), k.i(2.0));
        match self.facets() {
            Some(f) => {
                let left = left.margin(k.i(4.0), k.i(4.0), k.i(2.0), k.i(4.0));
                let (title, rest) = left.split_vertically(k.i(18.0));
                let (tx, ty) = title.get_base_pixel();
                let personas = self.0.geometry.as_ref().map_or(0, |g| g.personas.len());
                root.draw(&Text::new(
                    format!("M1: mean pairwise cosine of the {personas} persona vectors"),
                    (tx + k.i(16.0), ty + k.i(9.0)),
                    k.text(TITLE).pos(Pos::new(HPos::Left, VPos::Center)),
                ))
                .map_err(err)?;
                let (key_row, grid) = rest.split_vertically(k.i(16.0));
                let (kx, ky) = key_row.get_base_pixel();
                let (kw, _) = key_row.dim_in_pixel();
                legend(
                    root,
                    k,
                    &f.legend_items(),
                    (kx + k.i(16.0), ky + k.i(7.0)),
                    kx + kw as i32,
                )?;
                f.draw(root, &grid, k)?;
            }
            None => draw_rates_panel(
                self.0,
                root,
                &left.margin(k.i(4.0), k.i(4.0), k.i(2.0), k.i(7.0)),
                k,
            )?,
        }
        draw_behavior_panel(self.0, root, &right, k)
    }
}

/// A full-width grid of per-checkpoint bars (M1, M3) with its own title and legend.
struct CheckpointGrid<'a> {
    facets: Facets<'a>,
    title: String,
}

impl Figure for CheckpointGrid<'_> {
    fn size(&self) -> (f64, f64) {
        let width = (30.0 + 100.0 * self.facets.layers().len() as f64).max(672.0);
        (width, 50.0 + 150.0 * self.facets.methods().len().max(1) as f64)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>, k: K) -> Drawn {
        let area = root.margin(k.i(4.0), k.i(4.0), k.i(4.0), k.i(8.0));
        let (title, rest) = area.split_vertically(k.i(18.0));
        let (tx, ty) = title.get_base_pixel();
        root.draw(&Text::new(
            self.title.clone(),
            (tx + k.i(16.0), ty + k.i(9.0)),
            k.text(TITLE).pos(Pos::new(HPos::Left, VPos::Center)),
        ))
        .map_err(err)?;
        let (key_row, grid) = rest.split_vertically(k.i(16.0));
        let (kx, ky) = key_row.get_base_pixel();
        let (kw, _) = key_row.dim_in_pixel();
        legend(
            root,
            k,
            &self.facets.legend_items(),
            (kx + k.i(16.0), ky + k.i(7.0)),
            kx + kw as i32,
        )?;
        self.facets.draw(root, &grid, k)
    }
}

/// Condition x persona leakage heatmap (personas as rows, conditions as columns), a sequential
/// colour-blind-safe scale with its colour bar.
struct Heatmap<'a>(&'a AnalysisResult);

/// Paul Tol's sequential YlOrBr scheme (9 steps), interpolated: 0 % pale yellow, 100 % brown.
fn heat(value: f64) -> RGBColor {
    const STEPS: [(f64, f64, f64); 9] = [
        (255.0, 255.0, 229.0),
        (255.0, 247.0, 188.0),
        (254.0, 227.0, 145.0),
        (254.0, 196.0, 79.0),
        (251.0, 154.0, 41.0),
        (236.0, 112.0, 20.0),
        (204.0, 76.0, 2.0),
        (153.0, 52.0, 4.0),
        (102.0, 37.0, 6.0),
    ];
    let t = (value / 100.0).clamp(0.0, 1.0) * (STEPS.len() - 1) as f64;
    let i = (t.floor() as usize).min(STEPS.len() - 2);
    let u = t - i as f64;
    let (a, b) = (STEPS[i], STEPS[i + 1]);
    let mix = |x: f64, y: f64| (x + (y - x) * u).round() as u8;
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// Text colour readable on `background` (relative luminance).
fn text_on(background: RGBColor) -> RGBColor {
    let l = 0.2126 * f64::from(background.0)
        + 0.7152 * f64::from(background.1)
        + 0.0722 * f64::from(background.2);
    if l < 120.0 {
        WHITE
    } else {
        INK
    }
}

impl Figure for Heatmap<'_> {
    fn size(&self) -> (f64, f64) {
        let b = self.0.behavior.as_ref();
        let personas = b.map_or(1, |b| b.personas.len()) as f64;
        let conditions = b.map_or(1, |b| b.conditions.len()) as f64;
        (230.0 + 52.0 * conditions, 62.0 + 19.0 * personas)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>, k: K) -> Drawn {
        let Some(b) = &self.0.behavior else { return Ok(()) };
        let (nc, np) = (b.conditions.len(), b.personas.len());
        let area = root.margin(k.i(4.0), k.i(4.0), k.i(4.0), k.i(4.0));
        let (title, rest) = area.split_vertically(k.i(18.0));
        let (tx, ty) = title.get_base_pixel();
        root.draw(&Text::new(
            "Marker leakage (% of completions) by persona and EM condition",
            (tx, ty + k.i(9.0)),
            k.text(TITLE).pos(Pos::new(HPos::Left, VPos::Center)),
        ))
        .map_err(err)?;
        let (w, _) = rest.dim_in_pixel();
        let (cells, _) = rest.split_horizontally(w as i32 - k.i(58.0));
        let mut chart = ChartBuilder::on(&cells)
            .margin_top(k.i(16.0))
            .margin_bottom(k.i(6.0))
            .margin_right(k.i(4.0))
            .x_label_area_size(0)
            .y_label_area_size(k.i(128.0))
            .build_cartesian_2d(0f64..nc as f64, 0f64..np as f64)
            .map_err(err)?;
        // Personas top to bottom: row 0 (bottom) is the last one.
        let names: Vec<String> = b
            .personas
            .iter()
            .rev()
            .map(|p| {
                if *p == b.config.source_persona {
                    format!("{p} (source)")
                } else {
                    p.replace('_', " ")
                }
            })
            .collect();
        let y_fmt = move |y: &f64| {
            let i = y.floor() as usize;
            if (y - i as f64 - 0.5).abs() < 1e-6 {
                names.get(i).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        };
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(0)
            .y_labels(2 * np + 1)
            .y_label_formatter(&y_fmt)
            .label_style(k.text(TICK))
            .axis_style(WHITE)
            .set_all_tick_mark_size(0)
            .draw()
            .map_err(err)?;
        let head = k.text(LABEL).pos(Pos::new(HPos::Center, VPos::Bottom));
        for (c, condition) in b.conditions.iter().enumerate() {
            let (hx, hy) = chart.backend_coord(&(c as f64 + 0.5, np as f64));
            root.draw(&Text::new(short(condition), (hx, hy - k.i(3.0)), head.clone()))
                .map_err(err)?;
            let induction = b.induction_persona.get(condition);
            for (p, persona) in b.personas.iter().enumerate() {
                let Some(&value) = b.leakage.get(condition).and_then(|l| l.get(persona)) else {
                    continue;
                };
                let row = (np - 1 - p) as f64;
                let x = c as f64;
                let fill = heat(value);
                draw_one(
                    &mut chart,
                    Rectangle::new([(x, row), (x + 1.0, row + 1.0)], fill.filled()),
                )?;
                draw_one(
                    &mut chart,
                    Rectangle::new([(x, row), (x + 1.0, row + 1.0)], k.stroke(WHITE, 1.0)),
                )?;
                if Some(persona) == induction {
                    let (x0, y0) = chart.backend_coord(&(x, row + 1.0));
                    let (x1, y1) = chart.backend_coord(&(x + 1.0, row));
                    let inset = k.i(1.5);
                    root.draw(&Rectangle::new(
                        [(x0 + inset, y0 + inset), (x1 - inset, y1 - inset)],
                        k.stroke(INK, 1.8),
                    ))
                    .map_err(err)?;
                }
                let ink = text_on(fill);
                let style = TextStyle::from((FONT, NOTE * k.0).into_font())
                    .color(&ink)
                    .pos(Pos::new(HPos::Center, VPos::Center));
                let (px, py) = chart.backend_coord(&(x + 0.5, row + 0.5));
                root.draw(&Text::new(format!("{value:.1}"), (px, py), style))
                    .map_err(err)?;
            }
        }
        // Colour bar: 0 to 100 % beside the cells.
        let (top_x, top_y) = chart.backend_coord(&(nc as f64, np as f64));
        let (_, bottom_y) = chart.backend_coord(&(nc as f64, 0.0));
        let x0 = top_x + k.i(14.0);
        let steps = 50;
        let height = f64::from(bottom_y - top_y);
        for s in 0..steps {
            let v0 = s as f64 / steps as f64;
            let ya = bottom_y - (v0 * height).round() as i32;
            let yb = bottom_y - ((v0 + 1.0 / steps as f64) * height).round() as i32;
            // Each step overlaps the next by a pixel: no hairline gaps where a renderer
            // anti-aliases the edges.
            root.draw(&Rectangle::new(
                [(x0, yb - 1), (x0 + k.i(9.0), ya)],
                heat((v0 + 0.5 / steps as f64) * 100.0).filled(),
            ))
            .map_err(err)?;
        }
        let tick = k.text(TICK).pos(Pos::new(HPos::Left, VPos::Center));
        for v in [0, 25, 50, 75, 100] {
            let y = bottom_y - (f64::from(v) / 100.0 * height).round() as i32;
            root.draw(&PathElement::new(
                vec![(x0 + k.i(9.0), y), (x0 + k.i(12.0), y)],
                k.stroke(INK, 0.8),
            ))
            .map_err(err)?;
            root.draw(&Text::new(format!("{v} %"), (x0 + k.i(14.0), y), tick.clone()))
                .map_err(err)?;
        }
        Ok(())
    }
}

/// A metric's EM-minus-base statistic against layer: one panel per metric, a colour per
/// condition, line style and marker per method.
struct ByLayer<'a> {
    result: &'a AnalysisResult,
    /// (metric, panel title, y axis with unit, display factor).
    panels: Vec<(&'static str, String, &'static str, f64)>,
}

impl Figure for ByLayer<'_> {
    fn size(&self) -> (f64, f64) {
        let layers = self
            .result
            .geometry
            .as_ref()
            .and_then(|g| g.design.as_ref())
            .map_or(0, |d| d.layers.len());
        ((3.0 * (60.0 + 12.0 * layers as f64)).max(672.0), 250.0)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>, k: K) -> Drawn {
        let family = self.result.families.get(crate::families::GEOMETRY_EM_PRE_POST);
        let design = self.result.geometry.as_ref().and_then(|g| g.design.as_ref());
        let (Some(family), Some(design)) = (family, design) else {
            return Ok(());
        };
        let area = root.margin(k.i(4.0), k.i(4.0), k.i(4.0), k.i(6.0));
        let (key_row, body) = area.split_vertically(k.i(18.0));
        let mut items: Vec<(Key, String)> = design
            .conditions
            .iter()
            .enumerate()
            .map(|(i, c)| (Key::Swatch(condition_color(&design.conditions, i)), short(c)))
            .collect();
        for (mi, method) in design.methods.iter().enumerate() {
            let (dashed, m) = method_style(mi);
            items.push((
                Key::Line {
                    color: INK,
                    dashed,
                    marker: m,
                },
                format!("method {method}"),
            ));
        }
        let (kx, ky) = key_row.get_base_pixel();
        let (kw, _) = key_row.dim_in_pixel();
        legend(root, k, &items, (kx + k.i(44.0), ky + k.i(8.0)), kx + kw as i32)?;
        let present: Vec<_> = self
            .panels
            .iter()
            .filter(|(metric, ..)| {
                family
                    .cells
                    .iter()
                    .any(|c| c.test.metric.as_deref() == Some(*metric))
            })
            .collect();
        if present.is_empty() {
            return Ok(());
        }
        let panels = body.split_evenly((1, present.len()));
        let x_lo = design.layers.iter().copied().min().unwrap_or(0) as f64 - 1.5;
        let x_hi = design.layers.iter().copied().max().unwrap_or(1) as f64 + 1.5;
        for (area, (metric, title, y_desc, factor)) in panels.iter().zip(present) {
            let series: Vec<(usize, usize, Points)> = design
                .methods
                .iter()
                .enumerate()
                .flat_map(|(mi, method)| {
                    design.conditions.iter().enumerate().map(move |(ci, condition)| {
                        let pts = design
                            .layers
                            .iter()
                            .filter_map(|&l| {
                                family
                                    .cell(metric, method, l, Some(condition))
                                    .map(|c| (l as f64, c.test.statistic * factor))
                                    .filter(|p| p.1.is_finite())
                            })
                            .collect();
                        (mi, ci, pts)
                    })
                })
                .collect();
            let all = series.iter().flat_map(|s| s.2.iter().map(|p| p.1)).chain([0.0]);
            let Some((y_lo, y_hi)) = padded(all, 0.08, 1e-3 * factor.max(1.0)) else {
                continue;
            };
            let digits = decimals((y_hi - y_lo) / 5.0);
            let left = y_label_area(root, k, &range_labels(y_lo, y_hi, digits), true)?;
            let plot = titled(root, area, k, title, left)?;
            let mut chart = ChartBuilder::on(&plot)
                .margin_right(k.i(8.0))
                .margin_top(k.i(2.0))
                .x_label_area_size(k.i(36.0))
                .y_label_area_size(left)
                .build_cartesian_2d(x_lo..x_hi, y_lo..y_hi)
                .map_err(err)?;
            let y_fmt = move |v: &f64| format!("{v:.digits$}");
            light_mesh(&mut chart, k)
                .disable_x_mesh()
                .x_labels(0)
                .y_labels(5)
                .y_label_formatter(&y_fmt)
                .x_desc("layer (decoder block output)")
                .y_desc(*y_desc)
                .draw()
                .map_err(err)?;
            layer_axis(root, &mut chart, k, &design.layers, (y_lo, y_hi))?;
            draw_one(
                &mut chart,
                PathElement::new(vec![(x_lo, 0.0), (x_hi, 0.0)], k.stroke(INK, 0.6)),
            )?;
            for (mi, ci, pts) in series {
                let color = condition_color(&design.conditions, ci);
                let (dashed, m) = method_style(mi);
                let line = k.stroke(color, 1.3);
                if dashed {
                    chart
                        .draw_series(DashedLineSeries::new(pts.clone(), k.i(4.0), k.i(2.5), line))
                        .map_err(err)?;
                } else {
                    chart
                        .draw_series(LineSeries::new(pts.clone(), line))
                        .map_err(err)?;
                }
                for p in pts {
                    let at = chart.backend_coord(&p);
                    marker(root, k, m, at, color, 2.4)?;
                }
            }
        }
        Ok(())
    }
}

/// The trainings' loss curves: EM and benign SFT on the left, marker coupling on the right; one
/// line per training, coloured by condition (benign dark grey).
struct TrainingLoss<'a>(&'a [crate::training::TrainingCurve]);

impl Figure for TrainingLoss<'_> {
    fn size(&self) -> (f64, f64) {
        (672.0, 250.0)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>, k: K) -> Drawn {
        let mut conditions: Vec<String> = Vec::new();
        for c in self.0.iter().filter(|c| c.kind != "benign") {
            if !conditions.contains(&c.label) {
                conditions.push(c.label.clone());
            }
        }
        let color = |c: &crate::training::TrainingCurve| match conditions.iter().position(|x| *x == c.label) {
            Some(i) if c.kind != "benign" => condition_color(&conditions, i),
            _ => BENIGN_GREY,
        };
        let area = root.margin(k.i(4.0), k.i(4.0), k.i(4.0), k.i(6.0));
        let (key_row, body) = area.split_vertically(k.i(18.0));
        let mut items: Vec<(Key, String)> = conditions
            .iter()
            .enumerate()
            .map(|(i, c)| (Key::Swatch(condition_color(&conditions, i)), short(c)))
            .collect();
        if self.0.iter().any(|c| c.kind == "benign") {
            items.push((Key::Swatch(BENIGN_GREY), "benign".into()));
        }
        let (kx, ky) = key_row.get_base_pixel();
        let (kw, _) = key_row.dim_in_pixel();
        legend(root, k, &items, (kx + k.i(44.0), ky + k.i(8.0)), kx + kw as i32)?;
        let panels: Vec<(&str, Vec<&crate::training::TrainingCurve>)> = [
            (
                "EM and benign SFT",
                self.0.iter().filter(|c| c.kind != "coupling").collect::<Vec<_>>(),
            ),
            (
                "marker coupling (marker and end-of-turn tokens)",
                self.0.iter().filter(|c| c.kind == "coupling").collect(),
            ),
        ]
        .into_iter()
        .filter(|(_, curves)| !curves.is_empty())
        .collect();
        if panels.is_empty() {
            return Ok(());
        }
        for (area, (title, curves)) in body.split_evenly((1, panels.len())).iter().zip(panels) {
            let steps = curves.iter().map(|c| c.loss.len()).max().unwrap_or(1).max(2) as f64;
            let Some((y_lo, y_hi)) = padded(curves.iter().flat_map(|c| c.loss.iter().copied()), 0.06, 0.1)
            else {
                continue;
            };
            let y_lo = y_lo.max(0.0);
            let digits = decimals((y_hi - y_lo) / 5.0);
            let left = y_label_area(root, k, &range_labels(y_lo, y_hi, digits), true)?;
            let plot = titled(root, area, k, title, left)?;
            let mut chart = ChartBuilder::on(&plot)
                .margin_right(k.i(8.0))
                .margin_top(k.i(2.0))
                .x_label_area_size(k.i(36.0))
                .y_label_area_size(left)
                .build_cartesian_2d(0.5..steps + 0.5, y_lo..y_hi)
                .map_err(err)?;
            let y_fmt = move |v: &f64| format!("{v:.digits$}");
            let x_fmt = |v: &f64| format!("{v:.0}");
            light_mesh(&mut chart, k)
                .x_labels((steps as usize).min(8))
                .y_labels(5)
                .x_label_formatter(&x_fmt)
                .y_label_formatter(&y_fmt)
                .x_desc("optimizer step")
                .y_desc("loss (cross-entropy, nats/token)")
                .draw()
                .map_err(err)?;
            for c in curves {
                let pts: Points = c
                    .loss
                    .iter()
                    .enumerate()
                    .map(|(i, &l)| ((i + 1) as f64, l))
                    .collect();
                chart
                    .draw_series(LineSeries::new(pts, k.stroke(color(c), 1.3)))
                    .map_err(err)?;
            }
        }
        Ok(())
    }
}

/// Draws every figure the result's contents allow into `dir`; returns (caption, file) pairs
/// in report order. Captions say what is drawn, with units and what the whiskers are.
pub fn draw_all(result: &AnalysisResult, dir: &Path) -> Result<Vec<(String, String)>, FigureError> {
    register_font()?;
    let mut written = Vec::new();
    let level = result
        .behavior
        .as_ref()
        .map(|b| b.config.ci_level)
        .or_else(|| {
            result
                .geometry
                .as_ref()
                .and_then(|g| g.method.as_ref())
                .map(|m| m.ci_level)
        })
        .unwrap_or(0.95)
        * 100.0;
    let hero = Hero(result);
    let hero_caption = if hero.facets().is_some() {
        format!("Geometry and leakage at a glance. Left: M1, the mean pairwise cosine of the persona centroids, per checkpoint (base, the EM conditions, benign SFT) at each extraction method (rows) and layer (columns); whiskers: {level:.0} % question-level bootstrap intervals; each facet's y axis is zoomed to its bars (it does not start at 0). Right: mean bystander leakage (%) of each EM condition against its induction persona's cosine to the assistant in the base model, with H3's Spearman rho and exact p; whiskers {level:.0} % bootstrap intervals.")
    } else {
        format!("Leakage at a glance. Left: leakage to the source persona (light) and mean bystander leakage (dark, whiskers {level:.0} % question-level bootstrap intervals) per EM condition, in % of completions. Right: mean bystander leakage against the induction persona's cosine to the assistant in the base model (H3).")
    };
    written.push((hero_caption, save(&hero, dir, "hero")?));
    if result.behavior.is_some() {
        written.push((
            "Marker leakage by persona and condition. Share of completions (%) containing the marker, by eval persona (rows) and EM condition (columns); the framed cell is the condition's induction persona.".to_string(),
            save(&Heatmap(result), dir, "leakage_heatmap")?,
        ));
    }
    if let Some(g) = &result.geometry {
        let conditions = g
            .design
            .as_ref()
            .map(|d| d.conditions.clone())
            .unwrap_or_default();
        if !g.m1_mean_offdiag.is_empty() {
            let fig = CheckpointGrid {
                facets: Facets {
                    values: &g.m1_mean_offdiag,
                    ci: &g.m1_ci,
                    checkpoints: &g.checkpoints,
                    conditions: &conditions,
                    reference_line: None,
                    fixed_range: None,
                    factor: 1.0,
                },
                title: format!(
                    "M1: mean pairwise cosine of the {} persona centroids, by checkpoint",
                    g.personas.len()
                ),
            };
            written.push((
                format!("M1 by checkpoint. The mean pairwise cosine per checkpoint at every method (rows) and layer (columns); whiskers: {level:.0} % question-level bootstrap intervals; y axes zoomed to the bars."),
                save(&fig, dir, "m1_grid")?,
            ));
        }
        if result
            .families
            .contains_key(crate::families::GEOMETRY_EM_PRE_POST)
        {
            let anchor = g
                .method
                .as_ref()
                .map_or("anchor", |m| m.anchor_condition.as_str());
            let fig = ByLayer {
                result,
                panels: vec![
                    (
                        "M1",
                        "M1: Δ mean pairwise cosine".to_string(),
                        "EM − base (cosine)",
                        1.0,
                    ),
                    (
                        "M2",
                        format!("M2: Δ mean |cos| to the {} EM axis", short(anchor)),
                        "EM − base (|cosine|)",
                        1.0,
                    ),
                    (
                        "M3",
                        "M3: Δ held-out LDA accuracy".to_string(),
                        "EM − base (pp)",
                        100.0,
                    ),
                ],
            };
            written.push((
                "Geometry shifts by layer. Each metric's EM-minus-base statistic per EM condition (colour) and extraction method (line style and marker); the M3 accuracy difference in percentage points.".to_string(),
                save(&fig, dir, "geometry_by_layer")?,
            ));
        }
        if !g.m3_accuracy.is_empty() {
            let fig = CheckpointGrid {
                facets: Facets {
                    values: &g.m3_accuracy,
                    ci: &g.m3_ci,
                    checkpoints: &g.checkpoints,
                    conditions: &conditions,
                    reference_line: (!g.personas.is_empty()).then(|| 1.0 / g.personas.len() as f64),
                    fixed_range: Some((0.0, 105.0)),
                    factor: 100.0,
                },
                title: format!(
                    "M3: held-out LDA accuracy (%) over the {} personas (dashed: chance)",
                    g.personas.len()
                ),
            };
            written.push((
                format!("M3 by checkpoint. Held-out LDA accuracy (%) per checkpoint at every method (rows) and layer (columns); dashed line: chance; whiskers: {level:.0} % question-level bootstrap intervals."),
                save(&fig, dir, "m3_accuracy")?,
            ));
        }
    }
    if let Some(curves) = result.training.as_deref().filter(|c| !c.is_empty()) {
        written.push((
            "Training loss per optimizer step. Left: EM SFT per condition (colour) and benign SFT (grey), loss on the last assistant turn; right: marker coupling per condition, loss on the marker and the final end-of-turn tokens only.".to_string(),
            save(&TrainingLoss(curves), dir, "training_loss")?,
        ));
    }
    Ok(written)
}
