//! The report's figures, each written as PNG and SVG with plotters. Text is drawn with the
//! DejaVu Sans file committed under `analysis/assets/fonts/` (registered at run time), so PNGs
//! render the same on a fresh machine without system fonts.
//!
//! Every figure reads only the result file's numbers.

use crate::result::AnalysisResult;
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::element::{Drawable, PointCollection};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::FontStyle;
use std::path::{Path, PathBuf};
use std::sync::Once;

const FONT: &str = "sans-serif";
static FONT_BYTES: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
static REGISTER: Once = Once::new();

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

/// A figure that can be drawn on any backend.
trait Figure {
    fn size(&self) -> (u32, u32);
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Drawn;
}

fn err<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// Writes `dir/name.png` and `dir/name.svg`; returns the PNG's file name.
fn save(figure: &impl Figure, dir: &Path, name: &str) -> Result<String, FigureError> {
    let (w, h) = figure.size();
    let png = dir.join(format!("{name}.png"));
    let svg = dir.join(format!("{name}.svg"));
    render(figure, BitMapBackend::new(&png, (w, h)).into_drawing_area(), &png)?;
    render(figure, SVGBackend::new(&svg, (w, h)).into_drawing_area(), &svg)?;
    Ok(format!("{name}.png"))
}

/// Draws `figure` on `area` and writes it out (`path` names it in errors).
fn render<DB: DrawingBackend>(
    figure: &impl Figure,
    area: DrawingArea<DB, Shift>,
    path: &Path,
) -> Result<(), FigureError> {
    figure
        .draw(&area)
        .and_then(|_| area.present().map_err(err))
        .map_err(|message| FigureError::Draw {
            path: path.to_path_buf(),
            message,
        })
}

fn palette(i: usize) -> RGBColor {
    const COLORS: [RGBColor; 8] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(127, 127, 127),
        RGBColor(23, 190, 207),
    ];
    COLORS[i % COLORS.len()]
}

/// Blue (0 %) through near-white (50 %) to red (100 %).
fn heat(value: f64) -> RGBColor {
    let t = (value / 100.0).clamp(0.0, 1.0);
    let (from, to, u) = if t < 0.5 {
        ((49.0, 54.0, 149.0), (247.0, 247.0, 247.0), t * 2.0)
    } else {
        ((247.0, 247.0, 247.0), (165.0, 0.0, 38.0), (t - 0.5) * 2.0)
    };
    let mix = |a: f64, b: f64| (a + (b - a) * u).round() as u8;
    RGBColor(mix(from.0, to.0), mix(from.1, to.1), mix(from.2, to.2))
}

fn short(condition: &str) -> String {
    condition.split('_').next().unwrap_or(condition).to_string()
}

/// Tick labels for categories drawn in unit slots [i, i + 1): `names[i]` at each slot's centre,
/// nothing elsewhere.
fn slot_labels(names: Vec<String>) -> impl Fn(&f64) -> String {
    move |x: &f64| {
        let i = x.floor() as usize;
        if (x - i as f64 - 0.5).abs() < 1e-6 {
            names.get(i).cloned().unwrap_or_default()
        } else {
            String::new()
        }
    }
}

type Chart<'a, DB> = ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// Draws one element (a bar, a point, a line, a label) on a chart.
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

/// Condition x persona leakage heatmap (personas as rows, conditions as columns).
struct Heatmap<'a>(&'a AnalysisResult);

impl Figure for Heatmap<'_> {
    fn size(&self) -> (u32, u32) {
        let b = self.0.behavior.as_ref();
        let personas = b.map_or(1, |b| b.personas.len()) as u32;
        let conditions = b.map_or(1, |b| b.conditions.len()) as u32;
        (260 + 120 * conditions, 110 + 34 * personas)
    }

    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Drawn {
        area.fill(&WHITE).map_err(err)?;
        let Some(b) = &self.0.behavior else { return Ok(()) };
        let (nc, np) = (b.conditions.len(), b.personas.len());
        let mut chart = ChartBuilder::on(area)
            .caption(
                "Marker leakage (% of completions) by persona and condition",
                (FONT, 18),
            )
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(190)
            .build_cartesian_2d(0f64..nc as f64, 0f64..np as f64)
            .map_err(err)?;
        let conditions = b.conditions.clone();
        let personas = b.personas.clone();
        let x_fmt = slot_labels(conditions.iter().map(|c| short(c)).collect());
        // Personas top to bottom: slot 0 is the last one.
        let y_fmt = slot_labels(personas.iter().rev().cloned().collect());
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(2 * nc + 1)
            .y_labels(2 * np + 1)
            .x_label_formatter(&x_fmt)
            .y_label_formatter(&y_fmt)
            .label_style((FONT, 13))
            .draw()
            .map_err(err)?;
        for (c, condition) in b.conditions.iter().enumerate() {
            let induction = b.induction_persona.get(condition);
            for (p, persona) in b.personas.iter().enumerate() {
                let value = b.leakage[condition][persona];
                let row = (np - 1 - p) as f64;
                let x = c as f64;
                draw_one(
                    &mut chart,
                    Rectangle::new([(x, row), (x + 1.0, row + 1.0)], heat(value).filled()),
                )?;
                let mark = if Some(persona) == induction {
                    "*"
                } else if *persona == b.config.source_persona {
                    " (src)"
                } else {
                    ""
                };
                let centred = TextStyle::from((FONT, 13).into_font())
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Center, VPos::Center));
                draw_one(
                    &mut chart,
                    Text::new(format!("{value:.1}{mark}"), (x + 0.5, row + 0.5), centred),
                )?;
            }
        }
        Ok(())
    }
}

/// Behaviour panel: mean bystander leakage against cos-to-assistant, with bootstrap intervals.
fn draw_behavior_panel<DB: DrawingBackend>(r: &AnalysisResult, area: &DrawingArea<DB, Shift>) -> Drawn {
    let Some(b) = &r.behavior else { return Ok(()) };
    let points: Vec<(f64, f64, [f64; 2], String)> = b
        .conditions
        .iter()
        .map(|c| {
            let m = b.mean_bystander[c];
            (
                b.cos_to_assistant[c],
                m,
                b.ci_mean_bystander.get(c).copied().unwrap_or([m, m]),
                short(c),
            )
        })
        .collect();
    let x_min = points.iter().map(|p| p.0).fold(f64::INFINITY, f64::min) - 0.03;
    let x_max = points.iter().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max) + 0.03;
    let y_min = points.iter().map(|p| p.2[0]).fold(f64::INFINITY, f64::min) - 3.0;
    let y_max = points.iter().map(|p| p.2[1]).fold(f64::NEG_INFINITY, f64::max) + 3.0;
    let caption = match &b.h3 {
        Some(h3) => format!(
            "Mean bystander leakage (H3: rho {:.2}, exact p {:.4})",
            h3.rho, h3.p_exact
        ),
        None => "Mean bystander leakage".to_string(),
    };
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FONT, 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(x_min..x_max, y_min..y_max)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("cos to assistant (base model)")
        .y_desc("mean bystander leakage (%)")
        .label_style((FONT, 12))
        .axis_desc_style((FONT, 13))
        .draw()
        .map_err(err)?;
    for (i, (x, y, ci, label)) in points.iter().enumerate() {
        let color = palette(i);
        draw_one(
            &mut chart,
            PathElement::new(vec![(*x, ci[0]), (*x, ci[1])], color.stroke_width(2)),
        )?;
        draw_one(&mut chart, Circle::new((*x, *y), 5, color.filled()))?;
        draw_one(
            &mut chart,
            Text::new(
                format!("{label} {y:.1}%"),
                (*x + 0.004, *y + 0.4),
                (FONT, 13).into_font().color(&BLACK),
            ),
        )?;
    }
    Ok(())
}

/// Stand-in for the geometry panel when a run has no geometry: source and mean bystander
/// leakage per condition, so the hero still shows the behavioural contrast.
fn draw_rates_panel<DB: DrawingBackend>(r: &AnalysisResult, area: &DrawingArea<DB, Shift>) -> Drawn {
    let Some(b) = &r.behavior else { return Ok(()) };
    let n = b.conditions.len();
    let mut chart = ChartBuilder::on(area)
        .caption("Leakage per condition (geometry not analysed)", (FONT, 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(0f64..n as f64, 0f64..120f64)
        .map_err(err)?;
    let fmt = slot_labels(b.conditions.iter().map(|c| short(c)).collect());
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(2 * n + 1)
        .x_label_formatter(&fmt)
        .y_desc("leakage (%)")
        .label_style((FONT, 12))
        .axis_desc_style((FONT, 13))
        .draw()
        .map_err(err)?;
    let source = palette(3);
    let bystander = palette(0);
    for (i, c) in b.conditions.iter().enumerate() {
        let x = i as f64;
        draw_one(
            &mut chart,
            Rectangle::new([(x + 0.1, 0.0), (x + 0.48, b.source_rate[c])], source.filled()),
        )?;
        draw_one(
            &mut chart,
            Rectangle::new(
                [(x + 0.52, 0.0), (x + 0.9, b.mean_bystander[c])],
                bystander.filled(),
            ),
        )?;
        if let Some([lo, hi]) = b.ci_mean_bystander.get(c) {
            draw_one(
                &mut chart,
                PathElement::new(vec![(x + 0.71, *lo), (x + 0.71, *hi)], BLACK.stroke_width(2)),
            )?;
        }
    }
    chart
        .draw_series(std::iter::once(Rectangle::new(
            [(0.0, 0.0), (0.0, 0.0)],
            source.filled(),
        )))
        .map_err(err)?
        .label(format!("source ({})", b.config.source_persona))
        .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], source.filled()));
    chart
        .draw_series(std::iter::once(Rectangle::new(
            [(0.0, 0.0), (0.0, 0.0)],
            bystander.filled(),
        )))
        .map_err(err)?
        .label("mean bystander (95 % CI)")
        .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], bystander.filled()));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font((FONT, 12))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    Ok(())
}

/// Geometry panel: M1 delta vs base per condition at every layer, one line per method.
fn draw_geometry_panel<DB: DrawingBackend>(r: &AnalysisResult, area: &DrawingArea<DB, Shift>) -> Drawn {
    let family = r.families.get(crate::families::GEOMETRY_EM_PRE_POST);
    let design = r.geometry.as_ref().and_then(|g| g.design.as_ref());
    let (Some(family), Some(design)) = (family, design) else {
        return draw_rates_panel(r, area);
    };
    let mut series = Vec::new();
    for method in &design.methods {
        for (ci, condition) in design.conditions.iter().enumerate() {
            let pts: Vec<(f64, f64)> = design
                .layers
                .iter()
                .filter_map(|&l| {
                    family
                        .cell("M1", method, l, Some(condition))
                        .map(|c| (l as f64, c.test.statistic))
                })
                .collect();
            series.push((method.clone(), ci, condition.clone(), pts));
        }
    }
    let values: Vec<f64> = series.iter().flat_map(|s| s.3.iter().map(|p| p.1)).collect();
    if values.is_empty() {
        return Ok(());
    }
    let y_min = values.iter().copied().fold(f64::INFINITY, f64::min).min(0.0);
    let y_max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max) * 1.1;
    let x_min = design.layers.iter().copied().min().unwrap_or(0) as f64 - 1.0;
    let x_max = design.layers.iter().copied().max().unwrap_or(1) as f64 + 1.0;
    let mut chart = ChartBuilder::on(area)
        .caption("M1: mean off-diagonal cosine, EM minus base", (FONT, 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x_min..x_max, y_min..y_max.max(y_min + 1e-6))
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("layer")
        .y_desc("delta mean off-diagonal cosine")
        .label_style((FONT, 12))
        .axis_desc_style((FONT, 13))
        .draw()
        .map_err(err)?;
    for (method, ci, condition, pts) in series {
        let color = palette(ci);
        let style = if method == design.methods[0] {
            color.stroke_width(2)
        } else {
            color.stroke_width(1)
        };
        chart
            .draw_series(LineSeries::new(pts, style))
            .map_err(err)?
            .label(format!("{} {method}", short(&condition)))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .label_font((FONT, 11))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    Ok(())
}

/// Hero: geometry (left) and behaviour (right).
struct Hero<'a>(&'a AnalysisResult);

impl Figure for Hero<'_> {
    fn size(&self) -> (u32, u32) {
        (1300, 520)
    }

    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Drawn {
        area.fill(&WHITE).map_err(err)?;
        let (left, right) = area.split_horizontally(650);
        draw_geometry_panel(self.0, &left)?;
        draw_behavior_panel(self.0, &right)
    }
}

/// Per (method, layer) panels of a checkpoint-indexed geometry number.
struct CheckpointGrid<'a> {
    result: &'a AnalysisResult,
    /// A horizontal reference line (M3: chance, 1 / personas).
    reference_line: Option<f64>,
    title: &'a str,
    y_desc: &'a str,
    values: &'a std::collections::BTreeMap<
        String,
        std::collections::BTreeMap<String, std::collections::BTreeMap<String, f64>>,
    >,
}

impl Figure for CheckpointGrid<'_> {
    fn size(&self) -> (u32, u32) {
        let layers = self.values.values().map(|m| m.len()).max().unwrap_or(1) as u32;
        (300 * layers.max(1), 60 + 300 * self.values.len().max(1) as u32)
    }

    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Drawn {
        area.fill(&WHITE).map_err(err)?;
        let body = area.titled(self.title, (FONT, 20)).map_err(err)?;
        let checkpoints = self
            .result
            .geometry
            .as_ref()
            .map(|g| g.checkpoints.clone())
            .unwrap_or_default();
        let methods: Vec<&String> = self.values.keys().collect();
        let mut layers: Vec<usize> = self
            .values
            .values()
            .flat_map(|m| m.keys().filter_map(|l| l.parse().ok()))
            .collect();
        layers.sort_unstable();
        layers.dedup();
        let panels = body.split_evenly((methods.len().max(1), layers.len().max(1)));
        let all: Vec<f64> = self
            .values
            .values()
            .flat_map(|m| m.values().flat_map(|c| c.values().copied()))
            .collect();
        let y_min = all
            .iter()
            .copied()
            .chain(self.reference_line)
            .fold(f64::INFINITY, f64::min);
        let y_max = all
            .iter()
            .copied()
            .chain(self.reference_line)
            .fold(f64::NEG_INFINITY, f64::max);
        let pad = ((y_max - y_min) * 0.1).max(1e-3);
        for (mi, method) in methods.iter().enumerate() {
            for (li, layer) in layers.iter().enumerate() {
                let panel = &panels[mi * layers.len() + li];
                let Some(by_checkpoint) = self.values[*method].get(&layer.to_string()) else {
                    continue;
                };
                let mut chart = ChartBuilder::on(panel)
                    .caption(format!("method {method}, layer {layer}"), (FONT, 14))
                    .margin(6)
                    .x_label_area_size(22)
                    .y_label_area_size(48)
                    .build_cartesian_2d(0f64..checkpoints.len() as f64, (y_min - pad)..(y_max + pad))
                    .map_err(err)?;
                let fmt = slot_labels(checkpoints.iter().map(|c| short(c)).collect());
                chart
                    .configure_mesh()
                    .disable_x_mesh()
                    .x_labels(2 * checkpoints.len() + 1)
                    .x_label_formatter(&fmt)
                    .y_desc(self.y_desc)
                    .label_style((FONT, 10))
                    .axis_desc_style((FONT, 11))
                    .draw()
                    .map_err(err)?;
                if let Some(level) = self.reference_line {
                    draw_one(
                        &mut chart,
                        PathElement::new(
                            vec![(0.0, level), (checkpoints.len() as f64, level)],
                            BLACK.stroke_width(1),
                        ),
                    )?;
                }
                for (i, checkpoint) in checkpoints.iter().enumerate() {
                    if let Some(&v) = by_checkpoint.get(checkpoint) {
                        let x = i as f64;
                        draw_one(
                            &mut chart,
                            Rectangle::new([(x + 0.15, y_min - pad), (x + 0.85, v)], palette(i).filled()),
                        )?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// A metric's EM-minus-base statistic against layer, one panel per method, one line per
/// condition.
struct ByLayer<'a> {
    result: &'a AnalysisResult,
    metric: &'a str,
    title: &'a str,
    y_desc: &'a str,
}

impl Figure for ByLayer<'_> {
    fn size(&self) -> (u32, u32) {
        (1200, 480)
    }

    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Drawn {
        area.fill(&WHITE).map_err(err)?;
        let family = self.result.families.get(crate::families::GEOMETRY_EM_PRE_POST);
        let design = self.result.geometry.as_ref().and_then(|g| g.design.as_ref());
        let (Some(family), Some(design)) = (family, design) else {
            return Ok(());
        };
        let body = area.titled(self.title, (FONT, 20)).map_err(err)?;
        let panels = body.split_evenly((1, design.methods.len().max(1)));
        let values: Vec<f64> = family
            .cells
            .iter()
            .filter(|c| c.test.metric.as_deref() == Some(self.metric))
            .map(|c| c.test.statistic)
            .collect();
        if values.is_empty() {
            return Ok(());
        }
        let y_min = values.iter().copied().fold(f64::INFINITY, f64::min).min(0.0);
        let y_max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max).max(0.0);
        let pad = ((y_max - y_min) * 0.1).max(1e-3);
        let x_min = design.layers.iter().copied().min().unwrap_or(0) as f64 - 1.0;
        let x_max = design.layers.iter().copied().max().unwrap_or(1) as f64 + 1.0;
        for (mi, method) in design.methods.iter().enumerate() {
            let mut chart = ChartBuilder::on(&panels[mi])
                .caption(format!("method {method}"), (FONT, 15))
                .margin(10)
                .x_label_area_size(36)
                .y_label_area_size(60)
                .build_cartesian_2d(x_min..x_max, (y_min - pad)..(y_max + pad))
                .map_err(err)?;
            chart
                .configure_mesh()
                .x_desc("layer")
                .y_desc(self.y_desc)
                .label_style((FONT, 11))
                .axis_desc_style((FONT, 12))
                .draw()
                .map_err(err)?;
            for (ci, condition) in design.conditions.iter().enumerate() {
                let pts: Vec<(f64, f64)> = design
                    .layers
                    .iter()
                    .filter_map(|&l| {
                        family
                            .cell(self.metric, method, l, Some(condition))
                            .map(|c| (l as f64, c.test.statistic))
                    })
                    .collect();
                let color = palette(ci);
                chart
                    .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                    .map_err(err)?
                    .label(short(condition))
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
                chart
                    .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))
                    .map_err(err)?;
            }
            chart
                .configure_series_labels()
                .label_font((FONT, 11))
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(err)?;
        }
        Ok(())
    }
}

/// Draws every figure the result's contents allow into `dir`; returns (caption, file) pairs
/// in report order.
pub fn draw_all(result: &AnalysisResult, dir: &Path) -> Result<Vec<(String, String)>, FigureError> {
    register_font()?;
    let mut written = Vec::new();
    written.push((
        "Hero: geometry (left) and behaviour (right)".to_string(),
        save(&Hero(result), dir, "hero")?,
    ));
    if result.behavior.is_some() {
        written.push((
            "Marker leakage by persona and condition (* induction persona)".to_string(),
            save(&Heatmap(result), dir, "leakage_heatmap")?,
        ));
    }
    if let Some(g) = &result.geometry {
        if !g.m1_mean_offdiag.is_empty() {
            let fig = CheckpointGrid {
                result,
                reference_line: None,
                title: "M1: mean off-diagonal cosine by checkpoint",
                y_desc: "mean off-diagonal cosine",
                values: &g.m1_mean_offdiag,
            };
            written.push((
                "M1 grid: methods x layers".to_string(),
                save(&fig, dir, "m1_grid")?,
            ));
        }
        if result
            .families
            .contains_key(crate::families::GEOMETRY_EM_PRE_POST)
        {
            let fig = ByLayer {
                result,
                metric: "M2",
                title: "M2: mean |cos(persona, E0 EM axis)|, EM minus base",
                y_desc: "delta mean |cos|",
            };
            written.push(("M2 by layer".to_string(), save(&fig, dir, "m2_by_layer")?));
        }
        if !g.m3_accuracy.is_empty() {
            let fig = CheckpointGrid {
                result,
                reference_line: (!g.personas.is_empty()).then(|| 1.0 / g.personas.len() as f64),
                title: "M3: held-out LDA accuracy by checkpoint (line: chance)",
                y_desc: "accuracy",
                values: &g.m3_accuracy,
            };
            written.push(("M3 accuracy".to_string(), save(&fig, dir, "m3_accuracy")?));
        }
    }
    Ok(written)
}
