//! The PNG plot of a run: p99 latency against achieved throughput of the single-push points,
//! one line per target (and per pushgate ack mode; pushgate's status latency as its own
//! lines). Text is drawn by plotters' pure-Rust `ab_glyph` renderer with a TrueType font read
//! at run time (Debian's DejaVu Sans by default).
use crate::point::{RunReport, Workload};
use anyhow::{anyhow, Context};
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};
use std::path::{Path, PathBuf};

/// Where Debian's font packages put a sans-serif TrueType font.
const FONT_CANDIDATES: [&str; 4] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/liberation2/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
];

/// The font to draw with: `given` if it exists, else the first system candidate found.
pub fn find_font(given: Option<&Path>) -> Option<PathBuf> {
    if let Some(path) = given {
        return path.exists().then(|| path.to_path_buf());
    }
    FONT_CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// One series of the plot: a line through the open-loop points (by offered rate) and
/// unconnected triangles at the closed-loop points (which run the target at saturation).
struct Series {
    label: String,
    color: RGBColor,
    /// (offered rate, (achieved rate, p99 ms)).
    open: Vec<(f64, (f64, f64))>,
    closed: Vec<(f64, f64)>,
}

impl Series {
    fn all(&self) -> impl Iterator<Item = (f64, f64)> + '_ {
        self.open
            .iter()
            .map(|p| p.1)
            .chain(self.closed.iter().copied())
    }
}

fn series(report: &RunReport) -> Vec<Series> {
    let mut out: Vec<Series> = Vec::new();
    let palette = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
    ];
    let mut add = |label: String, offered: Option<f64>, x: f64, y_ms: f64| {
        if x <= 0.0 || y_ms <= 0.0 {
            return;
        }
        let index = match out.iter().position(|s| s.label == label) {
            Some(index) => index,
            None => {
                let color = palette[out.len() % palette.len()];
                out.push(Series {
                    label,
                    color,
                    open: Vec::new(),
                    closed: Vec::new(),
                });
                out.len() - 1
            }
        };
        match offered {
            Some(rate) => out[index].open.push((rate, (x, y_ms))),
            None => out[index].closed.push((x, y_ms)),
        }
    };
    for run in &report.runs {
        for point in run
            .points
            .iter()
            .filter(|p| p.workload == Some(Workload::Single))
        {
            let order = point.offered_per_s;
            let pushgate = run.target == "pushgate";
            // Deliveries for every target (pushgate's in ack none, where it compares with the
            // peers' QoS 0); statuses for each of pushgate's ack modes.
            if let Some(d) = point.delivery.filter(|d| d.count > 0) {
                if !pushgate || point.ack == "none" {
                    let label = if pushgate {
                        "pushgate (ack none): delivery p99".to_owned()
                    } else {
                        format!("{}: delivery p99", run.target)
                    };
                    add(label, order, point.achieved_per_s, d.p99_us / 1000.0);
                }
            }
            if let Some(s) = point.status.filter(|s| s.count > 0) {
                add(
                    format!("pushgate (ack {}): status p99", point.ack),
                    order,
                    point.achieved_per_s,
                    s.p99_us / 1000.0,
                );
            }
        }
    }
    for s in &mut out {
        s.open.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    out
}

/// Draws the plot of `report` into `png` with the TrueType font at `font`.
pub fn plot(report: &RunReport, png: &Path, font: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(font).with_context(|| format!("reading font {}", font.display()))?;
    // plotters keeps registered fonts for the life of the process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow!("{} is not a usable TrueType font", font.display()))?;
    let lines = series(report);
    anyhow::ensure!(
        !lines.is_empty(),
        "no single-push points with latencies to plot"
    );
    let x_max = lines
        .iter()
        .flat_map(|s| s.all().map(|p| p.0))
        .fold(0.0, f64::max)
        * 1.1;
    let (y_min, y_max) = lines
        .iter()
        .flat_map(|s| s.all().map(|p| p.1))
        .fold((f64::MAX, 0.0f64), |(lo, hi), y| (lo.min(y), hi.max(y)));
    let y_range = (y_min / 2.0).max(0.001)..(y_max * 2.0);
    if let Some(parent) = png.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let draw_error = |e: &dyn std::fmt::Debug| anyhow!("drawing {}: {e:?}", png.display());
    let root = BitMapBackend::new(png, (1200, 760)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| draw_error(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "p99 latency vs achieved throughput, single-user messages (64 B)",
            ("sans-serif", 26),
        )
        .margin(20)
        .x_label_area_size(55)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..x_max, y_range.log_scale())
        .map_err(|e| draw_error(&e))?;
    chart
        .configure_mesh()
        .x_desc("achieved messages/s  (dots + lines: open loop at fixed rates; triangles: closed loop, 64 / 1000 in flight)")
        .y_desc("p99 latency, ms (log scale)")
        .x_label_formatter(&|x| format!("{:.0}k", x / 1000.0))
        .y_label_formatter(&|y| format!("{y}"))
        .label_style(("sans-serif", 16))
        .axis_desc_style(("sans-serif", 18))
        .draw()
        .map_err(|e| draw_error(&e))?;
    for line in &lines {
        let color = line.color;
        let style = ShapeStyle::from(&color).stroke_width(2);
        chart
            .draw_series(LineSeries::new(line.open.iter().map(|p| p.1), style))
            .map_err(|e| draw_error(&e))?
            .label(line.label.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3))
            });
        chart
            .draw_series(
                line.open
                    .iter()
                    .map(|p| Circle::new(p.1, 4, color.filled())),
            )
            .map_err(|e| draw_error(&e))?;
        chart
            .draw_series(
                line.closed
                    .iter()
                    .map(|p| TriangleMarker::new(*p, 7, color.filled())),
            )
            .map_err(|e| draw_error(&e))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font(("sans-serif", 16))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| draw_error(&e))?;
    root.present().map_err(|e| draw_error(&e))?;
    Ok(())
}
