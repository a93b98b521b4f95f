//! Draws benchmark results as SVGs: ns per lookup against rule count, one line per classifier and
//! rule-set shape (ClassBench sets, in-rules trace), log scales; and forwarded packet rates, one
//! bar per path and traffic pattern.

use plotters::prelude::*;
use serde_json::Value;
use std::path::Path;

/// Draws the `classbench` results of `results` into `path`.
pub fn draw(path: &Path, results: &[Value]) -> Result<(), String> {
    let points: Vec<(String, String, f64, f64)> = results
        .iter()
        .filter(|v| v["scenario"] == "classbench" && v["trace"] == "in-rules")
        .flat_map(|v| {
            let set = v["set"].as_str().unwrap_or("").to_string();
            let n = v["rules"].as_f64().unwrap_or(0.0);
            ["tree", "tss", "linear"].into_iter().map(move |c| (set.clone(), c.to_string(), n, v[c]["ns_per_lookup"].as_f64().unwrap_or(0.0)))
        })
        .collect();
    if points.is_empty() {
        return Err("no ClassBench results to plot".into());
    }
    let (xmin, xmax) = points.iter().fold((f64::MAX, 0f64), |(a, b), p| (a.min(p.2), b.max(p.2)));
    let (ymin, ymax) = points.iter().fold((f64::MAX, 0f64), |(a, b), p| (a.min(p.3), b.max(p.3)));
    let root = SVGBackend::new(path, (900, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption("ns per lookup (single core, in-rules trace)", ("sans-serif", 22))
        .margin(20)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((xmin * 0.8..xmax * 1.25).log_scale(), (ymin * 0.5..ymax * 2.0).log_scale())
        .map_err(|e| e.to_string())?;
    chart.configure_mesh().x_desc("rules").y_desc("ns / lookup").draw().map_err(|e| e.to_string())?;
    let mut series: Vec<(String, String)> = points.iter().map(|p| (p.0.clone(), p.1.clone())).collect();
    series.sort();
    series.dedup();
    for (i, (set, c)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let mut line: Vec<(f64, f64)> = points.iter().filter(|p| &p.0 == set && &p.1 == c).map(|p| (p.2, p.3)).collect();
        line.sort_by(|a, b| a.0.total_cmp(&b.0));
        chart
            .draw_series(LineSeries::new(line, color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(format!("{c} / {set}"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

/// Draws the `forward` summary lines of `results` into `path`: forwarded Mpps per path, a group of
/// bars per traffic pattern.
pub fn draw_forward(path: &Path, results: &[Value]) -> Result<(), String> {
    let rows: Vec<(String, String, f64)> = results
        .iter()
        .filter(|v| v["scenario"] == "forward")
        .map(|v| {
            (
                v["path"].as_str().unwrap_or("").to_string(),
                v["traffic"].as_str().unwrap_or("").to_string(),
                v["forwarded_pps"].as_f64().unwrap_or(0.0) / 1e6,
            )
        })
        .collect();
    if rows.is_empty() {
        return Err("no forward results to plot".into());
    }
    let mut paths: Vec<String> = Vec::new();
    let mut traffics: Vec<String> = Vec::new();
    for (p, t, _) in &rows {
        if !paths.contains(p) {
            paths.push(p.clone());
        }
        if !traffics.contains(t) {
            traffics.push(t.clone());
        }
    }
    let ymax = rows.iter().map(|r| r.2).fold(0.0, f64::max) * 1.15;
    let slots = (paths.len() + 1) * traffics.len();
    let root = SVGBackend::new(path, (1000, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption("forwarded Mpps, 64-byte UDP (groups: traffic pattern)", ("sans-serif", 22))
        .margin(20)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..slots as f64, 0f64..ymax)
        .map_err(|e| e.to_string())?;
    // One label per group, under its middle bar.
    let group = paths.len() + 1;
    let label = |x: &f64| {
        let i = x.round() as usize;
        if i % group == paths.len() / 2 {
            traffics.get(i / group).cloned().unwrap_or_default()
        } else {
            String::new()
        }
    };
    chart.configure_mesh().disable_x_mesh().x_labels(slots + 1).x_label_formatter(&label).y_desc("Mpps").draw().map_err(|e| e.to_string())?;
    for (i, p) in paths.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let bars = rows.iter().filter(|r| &r.0 == p).map(|r| {
            let t = traffics.iter().position(|t| t == &r.1).unwrap_or(0);
            let x = (t * (paths.len() + 1) + i) as f64;
            Rectangle::new([(x, 0.0), (x + 0.9, r.2)], color.filled())
        });
        chart
            .draw_series(bars)
            .map_err(|e| e.to_string())?
            .label(p.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], color.filled()));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}
