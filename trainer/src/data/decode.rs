//! Decoding an [`ImageSource`] into pixels, and the accounting of images that cannot be
//! decoded: those are skipped and counted, then reported once, never a crash.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::{Arc, Mutex};

use image::{DynamicImage, GrayImage, ImageReader, RgbImage};

use super::ImageSource;

/// Decodes a source as stored: grey stays grey (one channel), everything else becomes RGB.
/// Crops are clamped to the image; an empty result is an error naming the file.
pub fn decode(source: &ImageSource) -> anyhow::Result<DynamicImage> {
    match source {
        ImageSource::File(path) => read_file(path),
        ImageSource::FileCrop { path, x, y, w, h } => {
            let image = read_file(path)?;
            let (width, height) = (image.width(), image.height());
            let (x0, y0) = ((*x).min(width), (*y).min(height));
            let (x1, y1) = (
                x.saturating_add(*w).min(width),
                y.saturating_add(*h).min(height),
            );
            anyhow::ensure!(
                x1 > x0 && y1 > y0,
                "{}: face box {x},{y} {w}x{h} lies outside the {width}x{height} image",
                path.display()
            );
            Ok(image.crop_imm(x0, y0, x1 - x0, y1 - y0))
        }
        ImageSource::Pixels {
            width,
            height,
            channels,
            data,
            origin,
        } => {
            let bad = || {
                anyhow::anyhow!(
                    "{origin}: {width}x{height}x{channels} buffer of {} bytes",
                    data.len()
                )
            };
            match channels {
                1 => GrayImage::from_raw(*width, *height, data.to_vec())
                    .map(DynamicImage::ImageLuma8)
                    .ok_or_else(bad),
                3 => RgbImage::from_raw(*width, *height, data.to_vec())
                    .map(DynamicImage::ImageRgb8)
                    .ok_or_else(bad),
                _ => Err(bad()),
            }
        }
    }
}

/// Decodes a source to RGB (grey replicated to three channels) and keeps the centred
/// `center_crop` fraction of its width and height (1.0 keeps everything).
pub fn decode_rgb(source: &ImageSource, center_crop: f32) -> anyhow::Result<RgbImage> {
    Ok(center_crop_rgb(decode(source)?.into_rgb8(), center_crop))
}

/// Keeps the centred `fraction` of width and height, e.g. 0.46 keeps the central 115 px of an
/// LFW 250x250 image, where the face is. Fractions >= 1 (or not finite) keep the whole image.
pub fn center_crop_rgb(image: RgbImage, fraction: f32) -> RgbImage {
    match center_crop_box(image.width(), image.height(), fraction) {
        None => image,
        Some((x, y, w, h)) => image::imageops::crop_imm(&image, x, y, w, h).to_image(),
    }
}

/// The centred crop box (x, y, w, h) for a fraction, or `None` when nothing is cut.
pub fn center_crop_box(width: u32, height: u32, fraction: f32) -> Option<(u32, u32, u32, u32)> {
    if !(fraction.is_finite() && fraction > 0.0 && fraction < 1.0) {
        return None;
    }
    let w = ((width as f32 * fraction).round() as u32).clamp(1, width);
    let h = ((height as f32 * fraction).round() as u32).clamp(1, height);
    Some(((width - w) / 2, (height - h) / 2, w, h))
}

fn read_file(path: &std::path::Path) -> anyhow::Result<DynamicImage> {
    let image = ImageReader::open(path)
        .map_err(|e| anyhow::anyhow!("{}: cannot open: {e}", path.display()))?
        .with_guessed_format()
        .map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", path.display()))?
        .decode()
        .map_err(|e| anyhow::anyhow!("{}: cannot decode: {e}", path.display()))?;
    Ok(match image {
        DynamicImage::ImageLuma8(_) => image,
        DynamicImage::ImageLuma16(_)
        | DynamicImage::ImageLumaA8(_)
        | DynamicImage::ImageLumaA16(_) => DynamicImage::ImageLuma8(image.into_luma8()),
        DynamicImage::ImageRgb8(_) => image,
        other => DynamicImage::ImageRgb8(other.into_rgb8()),
    })
}

/// Images that could not be decoded: how many, and the first few with their errors.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SkipReport {
    pub count: usize,
    /// Up to [`SkipReport::KEEP`] messages, each naming the file and the problem.
    pub first: Vec<String>,
}

impl SkipReport {
    pub const KEEP: usize = 5;

    /// Logs the report once as a warning (nothing when no image was skipped).
    pub fn warn(&self, context: &str) {
        if self.count > 0 {
            tracing::warn!("{context}: {self}");
        }
    }
}

impl fmt::Display for SkipReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "skipped {} unreadable image(s)", self.count)?;
        if !self.first.is_empty() {
            write!(f, "; first: {}", self.first.join("; "))?;
        }
        Ok(())
    }
}

/// A shared, thread-safe tally of skipped images. An item is counted once however often it is
/// drawn, so the count is the number of distinct bad images met.
#[derive(Clone, Debug, Default)]
pub struct SkippedImages {
    inner: Arc<Mutex<(BTreeSet<String>, SkipReport)>>,
}

impl SkippedImages {
    pub fn record(&self, key: String, error: &anyhow::Error) {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (seen, report) = &mut *guard;
        if seen.insert(key) {
            report.count += 1;
            if report.first.len() < SkipReport::KEEP {
                report.first.push(format!("{error:#}"));
            }
        }
    }

    pub fn report(&self) -> SkipReport {
        let guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        guard.1.clone()
    }
}
