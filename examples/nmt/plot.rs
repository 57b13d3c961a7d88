//! `curves.png`: training loss and validation perplexity per variant.

use crate::train::VariantResult;
use anyhow::{anyhow, Result};
use plotters::prelude::*;
use plotters::style::FontStyle;
use std::path::Path;

static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

pub fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// The colour of a curve: the paper's variants keep theirs; any other name (a precision spec, a
/// custom variant) takes the `i`-th of matplotlib's ten `tab10` colours, so up to ten curves of
/// one plot are told apart.
pub fn color_for(name: &str, i: usize) -> RGBColor {
    const TAB10: [RGBColor; 10] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
        RGBColor(188, 189, 34),
        RGBColor(23, 190, 207),
    ];
    match name {
        "adam" => TAB10[3],
        "adam-warmup" => TAB10[0],
        "radam" => TAB10[2],
        "adam-eps" => TAB10[1],
        "adam-2k" => TAB10[4],
        _ => TAB10[i % TAB10.len()],
    }
}

/// Tick values 1, 2, 5 x 10^k inside `[lo, hi]` (all of 1..9 x 10^k when the range is short).
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let mults: &[f64] = if hi / lo < 12.0 {
        &[1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]
    } else {
        &[1.0, 2.0, 5.0]
    };
    let mut out = Vec::new();
    let mut p = 10f64.powf(lo.log10().floor());
    while p <= hi {
        out.extend(mults.iter().map(|m| m * p).filter(|v| (lo..=hi).contains(v)));
        p *= 10.0;
    }
    out
}

/// Two panels: label-smoothed training loss (left) and validation perplexity, log scale (right).
pub fn plot_curves(results: &[VariantResult], title: &str, path: &Path) -> Result<()> {
    register_font();
    let root = BitMapBackend::new(path, (1400, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    // Smaller type for long titles, so that they fit the 1400 px width.
    let size = 26.0f64.min(2500.0 / title.chars().count().max(1) as f64);
    let root = root.titled(title, ("sans-serif", size)).map_err(|e| anyhow!("{e}"))?;
    let (left, right) = root.split_horizontally(700);
    let max_step =
        results.iter().flat_map(|r| r.curve.iter().map(|p| p.step)).max().unwrap_or(1) as f64;

    // Training loss.
    let losses: Vec<f64> = results
        .iter()
        .flat_map(|r| r.curve.iter().map(|p| p.train_loss))
        .filter(|x| x.is_finite())
        .collect();
    let lo = losses.iter().cloned().fold(f64::INFINITY, f64::min).max(0.0);
    let hi = losses.iter().cloned().fold(0.0, f64::max);
    let mut chart = ChartBuilder::on(&left)
        .caption("training loss (label-smoothed, nats/token)", ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..max_step, (lo * 0.95)..(hi * 1.02).max(lo + 1e-3))
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("update step")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_desc("loss")
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 17))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    for (i, r) in results.iter().enumerate() {
        let c = color_for(&r.variant, i);
        let pts: Vec<(f64, f64)> = r
            .curve
            .iter()
            .filter(|p| p.train_loss.is_finite())
            .map(|p| (p.step as f64, p.train_loss))
            .collect();
        chart
            .draw_series(LineSeries::new(pts, c.stroke_width(2)))
            .map_err(|e| anyhow!("{e}"))?
            .label(r.variant.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], c.stroke_width(3)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::MiddleRight)
        .label_font(("sans-serif", 17))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;

    // Validation perplexity.
    let ppls: Vec<f64> = results
        .iter()
        .flat_map(|r| r.curve.iter().filter_map(|p| p.valid_ppl))
        .filter(|x| x.is_finite())
        .collect();
    let lo = ppls.iter().cloned().fold(f64::INFINITY, f64::min).max(1.0);
    let hi = ppls.iter().cloned().fold(1.0, f64::max).max(lo * 1.1);
    let mut chart = ChartBuilder::on(&right)
        .caption("validation perplexity (log scale)", ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(
            0f64..max_step,
            ((lo * 0.9)..(hi * 1.1)).log_scale().with_key_points(log_ticks(lo * 0.9, hi * 1.1)),
        )
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("update step")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_desc("perplexity")
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 17))
        .y_label_formatter(&|y| if *y >= 10.0 { format!("{y:.0}") } else { format!("{y}") })
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    for (i, r) in results.iter().enumerate() {
        let c = color_for(&r.variant, i);
        let pts: Vec<(f64, f64)> = r
            .curve
            .iter()
            .filter_map(|p| p.valid_ppl.filter(|x| x.is_finite()).map(|v| (p.step as f64, v)))
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
            .map_err(|e| anyhow!("{e}"))?
            .label(format!("{} ({:.2})", r.variant, r.final_valid_ppl))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], c.stroke_width(3)));
        chart
            .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, c.filled())))
            .map_err(|e| anyhow!("{e}"))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::MiddleRight)
        .label_font(("sans-serif", 17))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}
