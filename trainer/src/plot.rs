//! PNG figures drawn straight into an `image::RgbImage`: a row-normalised confusion matrix and
//! training curves. Text uses the embedded 8x8 bitmap font (`font8x8`) scaled up, so plots look
//! the same on every machine, with or without system fonts.

use std::path::Path;

use anyhow::{bail, Context};
use image::{Rgb, RgbImage};

use crate::eval::Metrics;

const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
const BLACK: Rgb<u8> = Rgb([0, 0, 0]);
const GRID: Rgb<u8> = Rgb([225, 225, 225]);
const AXIS: Rgb<u8> = Rgb([60, 60, 60]);
/// matplotlib's tab10, for telling curves apart.
const PALETTE: [Rgb<u8>; 10] = [
    Rgb([31, 119, 180]),
    Rgb([255, 127, 14]),
    Rgb([44, 160, 44]),
    Rgb([214, 39, 40]),
    Rgb([148, 103, 189]),
    Rgb([140, 86, 75]),
    Rgb([227, 119, 194]),
    Rgb([127, 127, 127]),
    Rgb([188, 189, 34]),
    Rgb([23, 190, 207]),
];
const GLYPH: u32 = 8;

struct Canvas {
    img: RgbImage,
}

impl Canvas {
    fn new(width: u32, height: u32) -> Self {
        Self {
            img: RgbImage::from_pixel(width, height, WHITE),
        }
    }

    fn put(&mut self, x: i64, y: i64, color: Rgb<u8>) {
        if x >= 0 && y >= 0 && (x as u32) < self.img.width() && (y as u32) < self.img.height() {
            self.img.put_pixel(x as u32, y as u32, color);
        }
    }

    fn fill_rect(&mut self, x: i64, y: i64, w: i64, h: i64, color: Rgb<u8>) {
        for yy in y..y + h {
            for xx in x..x + w {
                self.put(xx, yy, color);
            }
        }
    }

    fn rect_outline(&mut self, x: i64, y: i64, w: i64, h: i64, color: Rgb<u8>) {
        self.fill_rect(x, y, w, 1, color);
        self.fill_rect(x, y + h - 1, w, 1, color);
        self.fill_rect(x, y, 1, h, color);
        self.fill_rect(x + w - 1, y, 1, h, color);
    }

    /// A line `thickness` pixels wide (Bresenham, stamping a square per step).
    fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), thickness: i64, color: Rgb<u8>) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        let half = thickness / 2;
        loop {
            self.fill_rect(x - half, y - half, thickness, thickness, color);
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    fn text(&mut self, x: i64, y: i64, text: &str, scale: u32, color: Rgb<u8>) {
        let s = scale as i64;
        for (i, ch) in text.chars().enumerate() {
            let glyph = font8x8::legacy::BASIC_LEGACY
                .get(ch as usize)
                .copied()
                .unwrap_or(font8x8::legacy::BASIC_LEGACY['?' as usize]);
            let x0 = x + i as i64 * GLYPH as i64 * s;
            for (row, bits) in glyph.iter().enumerate() {
                for col in 0..8 {
                    if bits & (1 << col) != 0 {
                        self.fill_rect(x0 + col * s, y + row as i64 * s, s, s, color);
                    }
                }
            }
        }
    }

    fn text_centered(&mut self, cx: i64, y: i64, text: &str, scale: u32, color: Rgb<u8>) {
        self.text(cx - text_width(text, scale) / 2, y, text, scale, color);
    }

    fn save(&self, path: &Path) -> anyhow::Result<()> {
        self.img
            .save_with_format(path, image::ImageFormat::Png)
            .with_context(|| format!("cannot write plot {}", path.display()))
    }
}

fn text_width(text: &str, scale: u32) -> i64 {
    (text.chars().count() as u32 * GLYPH * scale) as i64
}

/// Blend from white to matplotlib's darkest "Blues" for `t` in [0, 1].
fn blues(t: f64) -> Rgb<u8> {
    let t = t.clamp(0., 1.);
    let (lo, hi) = ([247., 251., 255.], [8., 48., 107.]);
    Rgb([0, 1, 2].map(|i| (lo[i] + (hi[i] - lo[i]) * t) as u8))
}

/// Draws the confusion matrix of `metrics`, each row normalised to the share of that true
/// class, with percent and count in every cell and the class names on both axes.
pub fn confusion_png(path: &Path, metrics: &Metrics) -> anyhow::Result<()> {
    let k = metrics.class_names.len() as i64;
    if k == 0 || metrics.confusion.len() != k as usize {
        bail!(
            "cannot plot {}: the confusion matrix does not match the class names",
            path.display()
        );
    }
    let cell = 136i64;
    let name_width = metrics
        .class_names
        .iter()
        .map(|n| text_width(n, 2))
        .max()
        .unwrap_or(0);
    let (left, top) = (name_width + 60, 110i64);
    let (width, height) = (left + k * cell + 40, top + k * cell + 110);
    let mut c = Canvas::new(width as u32, height as u32);
    let title = format!(
        "Confusion matrix  n={}  acc={:.1}%  mean class acc={:.1}%",
        metrics.n,
        100. * metrics.overall_acc,
        100. * metrics.mean_class_acc
    );
    c.text_centered(width / 2, 20, &title, 2, BLACK);
    c.text_centered(left + k * cell / 2, top - 34, "predicted", 2, AXIS);
    c.text(10, top - 34, "true", 2, AXIS);
    for (i, name) in metrics.class_names.iter().enumerate() {
        let i = i as i64;
        c.text_centered(
            left + i * cell + cell / 2,
            top + k * cell + 14,
            name,
            2,
            BLACK,
        );
        c.text(
            left - 20 - text_width(name, 2),
            top + i * cell + cell / 2 - 8,
            name,
            2,
            BLACK,
        );
    }
    for (i, row) in metrics.confusion.iter().enumerate() {
        let total: u64 = row.iter().sum();
        for (j, &count) in row.iter().enumerate() {
            let share = if total == 0 {
                0.
            } else {
                count as f64 / total as f64
            };
            let (x, y) = (left + j as i64 * cell, top + i as i64 * cell);
            c.fill_rect(x, y, cell, cell, blues(share));
            c.rect_outline(x, y, cell, cell, GRID);
            let ink = if share > 0.5 { WHITE } else { BLACK };
            let percent = if total == 0 {
                "-".to_string()
            } else {
                format!("{:.1}%", 100. * share)
            };
            c.text_centered(x + cell / 2, y + cell / 2 - 22, &percent, 2, ink);
            c.text_centered(x + cell / 2, y + cell / 2 + 10, &count.to_string(), 2, ink);
        }
    }
    c.text(
        10,
        height - 30,
        "rows: true class, normalised per row; cells: percent and count",
        2,
        AXIS,
    );
    c.save(path)
}

/// Round tick step (1, 2 or 5 times a power of ten) giving about `target` ticks over `span`.
fn nice_step(span: f64, target: f64) -> f64 {
    let raw = span / target;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1., 2., 5., 10.]
        .iter()
        .map(|m| m * magnitude)
        .find(|&s| s >= raw);
    step.unwrap_or(10. * magnitude)
}

fn format_tick(value: f64, step: f64) -> String {
    let decimals = (-step.log10().floor()).max(0.) as usize;
    let v = if value.abs() < step * 1e-9 { 0. } else { value };
    if decimals == 0 && v.abs() >= 1e5 {
        format!("{v:.0e}")
    } else {
        format!("{v:.decimals$}")
    }
}

fn padded_range(lo: f64, hi: f64, pad: f64) -> (f64, f64) {
    if hi > lo {
        let p = (hi - lo) * pad;
        (lo - p, hi + p)
    } else {
        (lo - 0.5, hi + 0.5)
    }
}

/// Draws named (step, value) curves on shared axes with a legend, e.g. training loss and
/// validation accuracy over steps. Non-finite values break the curve instead of failing.
pub fn curves_png(
    path: &Path,
    title: &str,
    series: &[(&str, Vec<(f64, f64)>)],
) -> anyhow::Result<()> {
    xy_png(path, title, "step", series)
}

/// [`curves_png`] with another x axis than training steps, named `x_label`.
pub fn xy_png(
    path: &Path,
    title: &str,
    x_label: &str,
    series: &[(&str, Vec<(f64, f64)>)],
) -> anyhow::Result<()> {
    let points = || {
        series
            .iter()
            .flat_map(|(_, p)| p.iter())
            .filter(|(x, y)| x.is_finite() && y.is_finite())
    };
    if points().next().is_none() {
        bail!(
            "cannot plot {}: no finite data points in {} series",
            path.display(),
            series.len()
        );
    }
    let fold = |f: fn(&(f64, f64)) -> f64| {
        points()
            .map(f)
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
                (lo.min(v), hi.max(v))
            })
    };
    let (x_lo, x_hi) = fold(|p| p.0);
    let (y_lo, y_hi) = fold(|p| p.1);
    let (x_lo, x_hi) = padded_range(x_lo, x_hi, 0.0);
    let (y_lo, y_hi) = padded_range(y_lo, y_hi, 0.05);
    let (width, height) = (1200i64, 750i64);
    let (left, right, top, bottom) = (150i64, width - 40, 70i64, height - 90);
    let mut c = Canvas::new(width as u32, height as u32);
    c.text_centered(width / 2, 22, title, 3, BLACK);
    let to_px = |x: f64, y: f64| -> (i64, i64) {
        let px = left as f64 + (x - x_lo) / (x_hi - x_lo) * (right - left) as f64;
        let py = bottom as f64 - (y - y_lo) / (y_hi - y_lo) * (bottom - top) as f64;
        (px.round() as i64, py.round() as i64)
    };
    let x_step = nice_step(x_hi - x_lo, 8.);
    let mut tick = (x_lo / x_step).ceil() * x_step;
    while tick <= x_hi + x_step * 1e-9 {
        let (px, _) = to_px(tick, y_lo);
        c.fill_rect(px, top, 1, bottom - top, GRID);
        c.fill_rect(px, bottom, 1, 8, AXIS);
        c.text_centered(px, bottom + 14, &format_tick(tick, x_step), 2, BLACK);
        tick += x_step;
    }
    let y_step = nice_step(y_hi - y_lo, 8.);
    let mut tick = (y_lo / y_step).ceil() * y_step;
    while tick <= y_hi + y_step * 1e-9 {
        let (_, py) = to_px(x_lo, tick);
        c.fill_rect(left, py, right - left, 1, GRID);
        c.fill_rect(left - 8, py, 8, 1, AXIS);
        let label = format_tick(tick, y_step);
        c.text(left - 14 - text_width(&label, 2), py - 8, &label, 2, BLACK);
        tick += y_step;
    }
    c.fill_rect(left, top, 2, bottom - top + 1, AXIS);
    c.fill_rect(left, bottom, right - left + 1, 2, AXIS);
    c.text_centered((left + right) / 2, height - 40, x_label, 2, AXIS);
    for (index, (_, pts)) in series.iter().enumerate() {
        let color = PALETTE[index % PALETTE.len()];
        let mut previous = None;
        for &(x, y) in pts {
            if !(x.is_finite() && y.is_finite()) {
                previous = None;
                continue;
            }
            let p = to_px(x, y);
            match previous {
                Some(q) => c.line(q, p, 3, color),
                None => c.fill_rect(p.0 - 2, p.1 - 2, 5, 5, color),
            }
            previous = Some(p);
        }
    }
    // Legend in the top-right corner of the plot area.
    let legend_width = series
        .iter()
        .map(|(n, _)| text_width(n, 2))
        .max()
        .unwrap_or(0)
        + 60;
    let (lx, ly) = (right - legend_width - 10, top + 10);
    c.fill_rect(lx, ly, legend_width, 26 * series.len() as i64 + 10, WHITE);
    c.rect_outline(lx, ly, legend_width, 26 * series.len() as i64 + 10, AXIS);
    for (index, (name, _)) in series.iter().enumerate() {
        let y = ly + 10 + 26 * index as i64;
        c.fill_rect(lx + 10, y + 6, 30, 4, PALETTE[index % PALETTE.len()]);
        c.text(lx + 50, y, name, 2, BLACK);
    }
    c.save(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(path: &Path) -> RgbImage {
        image::open(path).expect("decodable PNG").to_rgb8()
    }

    fn distinct_colours(img: &RgbImage) -> usize {
        let mut set = std::collections::HashSet::new();
        for p in img.pixels() {
            set.insert(p.0);
        }
        set.len()
    }

    #[test]
    fn confusion_png_is_written_and_shows_cells_and_text() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("confusion.png");
        let names: Vec<String> = crate::labels::class_names(7)
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut confusion = vec![vec![3u64; 7]; 7];
        for (i, row) in confusion.iter_mut().enumerate() {
            row[i] = 40 + 10 * i as u64;
        }
        let metrics = Metrics::from_confusion(confusion, names)?;
        confusion_png(&path, &metrics)?;
        let img = decode(&path);
        assert!(img.width() > 7 * 136 && img.height() > 7 * 136);
        // The diagonal is dark blue (share > 0.6), off-diagonal cells nearly white.
        let dark = img.pixels().filter(|p| p.0[2] > 90 && p.0[0] < 60).count();
        assert!(dark > 6 * 100 * 100, "only {dark} dark pixels");
        assert!(distinct_colours(&img) >= 5);
        Ok(())
    }

    #[test]
    fn curves_png_draws_every_series() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("curves.png");
        let loss: Vec<(f64, f64)> = (0..50)
            .map(|i| (i as f64 * 10., 2.0 * (-0.05 * i as f64).exp()))
            .collect();
        let acc: Vec<(f64, f64)> = (0..10).map(|i| (i as f64 * 50., 0.1 * i as f64)).collect();
        curves_png(&path, "training", &[("train loss", loss), ("val acc", acc)])?;
        let img = decode(&path);
        for colour in [PALETTE[0], PALETTE[1]] {
            let n = img.pixels().filter(|p| **p == colour).count();
            assert!(n > 500, "series colour {colour:?} has only {n} pixels");
        }
        let err = curves_png(&path, "empty", &[("nan", vec![(0., f64::NAN)])]).unwrap_err();
        assert!(err.to_string().contains("no finite data"), "{err}");
        Ok(())
    }

    #[test]
    fn ticks_are_round_numbers() {
        assert_eq!(nice_step(1.0, 8.), 0.2);
        assert_eq!(nice_step(5000., 8.), 1000.);
        assert_eq!(format_tick(0.30000000000000004, 0.1), "0.3");
        assert_eq!(format_tick(2000., 1000.), "2000");
    }
}
