//! `--chart FILE`: a PNG of the run, throughput on the left and latency on the right, one pair of
//! bars (disaggregated, colocated) per scenario. Text is drawn with the bundled DejaVu Sans, so
//! the chart needs no font on the machine.

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;
use plotters::style::FontStyle;

use super::scenario::ScenarioRun;
use super::BenchReport;

static FONT: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");

const DISAGG: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
const COLOCATED: RGBColor = RGBColor(0xff, 0x7f, 0x0e);

pub fn draw(r: &BenchReport, path: &Path) -> Result<()> {
    plotters::style::register_font("sans-serif", FontStyle::Normal, FONT)
        .map_err(|_| anyhow!("the bundled font does not parse"))?;
    let root = BitMapBackend::new(path, (1400, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let ceilings = r.ceilings.as_ref().map_or(String::new(), |c| {
        format!(
            "; broker ceiling {:.0} requests/s (both hops), database COPY {:.0} rows/s",
            c.two_hop_requests_per_s, c.database_copy.rows_per_s
        )
    });
    let title = format!("pdq bench: model '{}', {} cores{ceilings}", r.model, r.cores);
    let root = root.titled(&title, ("sans-serif", 18))?;
    let (left, right) = root.split_horizontally(700);
    let names: Vec<String> = scenario_names(&r.scenarios);
    bars(&left, "requests/s", &names, &r.scenarios, |s| s.requests_per_s, false)?;
    bars(&right, "TTFT, ms (bars p50, ticks p99)", &names, &r.scenarios, |s| s.ttft.p50 * 1e3, true)?;
    root.present()?;
    Ok(())
}

fn scenario_names(runs: &[ScenarioRun]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for s in runs {
        if !names.contains(&s.name) {
            names.push(s.name.clone());
        }
    }
    names
}

fn value<'a>(runs: &'a [ScenarioRun], name: &str, mode: &str) -> Option<&'a ScenarioRun> {
    runs.iter().find(|s| s.name == name && s.mode == mode)
}

fn bars<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    caption: &str,
    names: &[String],
    runs: &[ScenarioRun],
    y: impl Fn(&ScenarioRun) -> f64,
    latency: bool,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let top = runs.iter().map(|s| if latency { s.ttft.p99 * 1e3 } else { y(s) }).fold(1.0, f64::max) * 1.15;
    let n = names.len() as f64;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..n, 0.0..top)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(names.len() * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - x.floor() - 0.5).abs() < 0.01 && i < names.len() {
                names[i].clone()
            } else {
                String::new()
            }
        })
        .label_style(("sans-serif", 13))
        .draw()?;
    for (mode, color, offset) in [("disaggregated", DISAGG, 0.12), ("colocated", COLOCATED, 0.5)] {
        let series: Vec<(usize, &ScenarioRun)> =
            names.iter().enumerate().filter_map(|(i, name)| value(runs, name, mode).map(|s| (i, s))).collect();
        chart
            .draw_series(series.iter().map(|(i, s)| {
                let x0 = *i as f64 + offset;
                Rectangle::new([(x0, 0.0), (x0 + 0.36, y(s))], color.filled())
            }))?
            .label(mode)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
        if latency {
            chart.draw_series(series.iter().map(|(i, s)| {
                let x0 = *i as f64 + offset;
                let p99 = s.ttft.p99 * 1e3;
                PathElement::new(vec![(x0, p99), (x0 + 0.36, p99)], BLACK.stroke_width(2))
            }))?;
        }
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.9))
        .label_font(("sans-serif", 13))
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    Ok(())
}
