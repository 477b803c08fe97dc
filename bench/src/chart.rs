//! The SVG chart: connection rate and small-packet rate against N, one line
//! per variant (median, with the min-max range as a bar), routing as a
//! dashed reference line (it does not depend on N).

use std::path::Path;

use anyhow::{Context as _, Result, anyhow};
use plotters::prelude::*;

use super::{
    plan::{Metric, Plan, Variant, Workload},
    report::Row,
};

const SIZE: (u32, u32) = (1200, 520);

fn color(variant: Variant) -> RGBColor {
    match variant {
        Variant::Routed => RGBColor(110, 110, 110),
        Variant::Iptables => RGBColor(214, 39, 40),
        Variant::Nftables => RGBColor(255, 127, 14),
        Variant::NftablesFlowtable => RGBColor(148, 103, 189),
        Variant::Bpfmasq => RGBColor(31, 119, 180),
        Variant::BpfmasqFast => RGBColor(44, 160, 44),
    }
}

/// Writes the chart to `path` (its folder is created).
pub fn write_svg(path: &Path, plan: &Plan, rows: &[Row], subtitle: &str) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    draw(path, plan, rows, subtitle).map_err(|e| anyhow!("drawing {}: {e}", path.display()))
}

fn draw(
    path: &Path,
    plan: &Plan,
    rows: &[Row],
    subtitle: &str,
) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        &format!(
            "bpfmasq-bench: masquerade variants against registered containers N  ({subtitle})"
        ),
        ("sans-serif", 18),
    )?;
    let panels = root.split_evenly((1, 2));
    panel(
        &panels[0],
        plan,
        rows,
        Workload::ConnRate,
        Metric::ConnPerSec,
        "new TCP connections/s (wrk, Connection: close)",
    )?;
    panel(
        &panels[1],
        plan,
        rows,
        Workload::Udp64,
        Metric::RxKpps,
        "UDP 64-byte packets received, kpps",
    )?;
    root.present()?;
    Ok(())
}

fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    plan: &Plan,
    rows: &[Row],
    workload: Workload,
    metric: Metric,
    title: &str,
) -> std::result::Result<(), Box<dyn std::error::Error>>
where
    DB::ErrorType: 'static,
{
    let rows: Vec<&Row> = rows
        .iter()
        .filter(|r| r.workload == workload && r.metric == metric)
        .collect();
    let low = f64::from(*plan.scales.first().unwrap_or(&1)) / 2.0;
    let high = f64::from(*plan.scales.last().unwrap_or(&1)) * 2.0;
    let y_max = rows
        .iter()
        .flat_map(|r| r.cells.values().map(|c| c.max))
        .fold(0.0f64, f64::max)
        .max(1.0)
        * 1.15;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((low..high).log_scale(), 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_desc("N registered containers (log scale)")
        .y_desc(metric.label())
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| super::report::fmt_value(*y))
        .draw()?;
    if rows.is_empty() {
        return Ok(());
    }
    for (index, &variant) in plan.variants.iter().enumerate() {
        // Nudge each variant sideways a little so the min-max bars at one N
        // do not hide each other (the axis is logarithmic: a factor).
        let nudge = 1.0 + 0.04 * (index as f64 - plan.variants.len() as f64 / 2.0);
        let points: Vec<(f64, f64, f64, f64)> = rows
            .iter()
            .filter_map(|r| {
                let c = r.cells.get(&variant)?;
                Some((f64::from(r.scale) * nudge, c.median, c.min, c.max))
            })
            .collect();
        if points.is_empty() {
            continue;
        }
        let style = color(variant);
        if !variant.scales() {
            let (_, median, _, _) = points[0];
            chart
                .draw_series(DashedLineSeries::new(
                    [(low, median), (high, median)],
                    8,
                    5,
                    style.stroke_width(2),
                ))?
                .label(format!("{variant} (no NAT, any N)"))
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 20, y)], style.stroke_width(2))
                });
            continue;
        }
        chart
            .draw_series(LineSeries::new(
                points.iter().map(|&(x, m, _, _)| (x, m)),
                style.stroke_width(2),
            ))?
            .label(variant.name())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], style.stroke_width(2)));
        chart.draw_series(
            points
                .iter()
                .map(|&(x, m, _, _)| Circle::new((x, m), 4, style.filled())),
        )?;
        chart.draw_series(
            points
                .iter()
                .map(|&(x, _, lo, hi)| PathElement::new([(x, lo), (x, hi)], style.stroke_width(1))),
        )?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}
