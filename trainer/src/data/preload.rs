//! Decoding a whole dataset once, in parallel, into memory at a bounded size, so that training
//! steps never wait on JPEG/PNG decoding. This is how FER2013 (28,709 images of 48x48) and LFW
//! (13,233 of 250x250) are meant to be used on a CPU.

use std::sync::Arc;

use image::imageops::FilterType;
use image::DynamicImage;
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;

use super::decode::{center_crop_box, decode, SkipReport, SkippedImages};
use super::{Dataset, ImageSource, Item};

/// How preloaded images are stored.
#[derive(Clone, Debug, PartialEq)]
pub struct PreloadOptions {
    /// Images whose shorter side exceeds this are shrunk (triangle filter, aspect kept) so
    /// that it equals this. Pick at least the training input size.
    pub max_short_side: u32,
    /// Centred fraction kept before shrinking (1.0 keeps all). When used here, leave the
    /// loader's `center_crop` at 1.0 so the crop is not applied twice.
    pub center_crop: f32,
    /// Show an indicatif progress bar on stderr.
    pub progress: bool,
}

impl Default for PreloadOptions {
    fn default() -> Self {
        PreloadOptions {
            max_short_side: 112,
            center_crop: 1.0,
            progress: true,
        }
    }
}

/// Decodes every item of `dataset` once (rayon, all cores) into [`ImageSource::Pixels`]; grey
/// images stay one channel. Items that cannot be decoded are left out, counted in the returned
/// [`SkipReport`] and logged once. The item order is kept.
pub fn preload(
    dataset: &Dataset,
    options: &PreloadOptions,
) -> anyhow::Result<(Dataset, SkipReport)> {
    let bar = if options.progress {
        let bar = ProgressBar::new(dataset.len() as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "preload {msg} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, eta {eta})",
            )
            .expect("static progress template"),
        );
        bar.set_message(dataset.name.clone());
        bar
    } else {
        ProgressBar::hidden()
    };
    let skipped = SkippedImages::default();
    let decoded: Vec<Option<Item>> = dataset
        .items
        .par_iter()
        .map(|item| {
            let result = decode(&item.source).map(|image| Item {
                source: to_memory(image, &item.source, options),
                label: item.label,
            });
            bar.inc(1);
            match result {
                Ok(item) => Some(item),
                Err(error) => {
                    skipped.record(item.source.key(), &error);
                    None
                }
            }
        })
        .collect();
    bar.finish_and_clear();
    let report = skipped.report();
    report.warn(&format!("preload {}", dataset.name));
    let items: Vec<Item> = decoded.into_iter().flatten().collect();
    anyhow::ensure!(
        !items.is_empty(),
        "preload {}: no image could be decoded ({report})",
        dataset.name
    );
    let mut loaded = Dataset::new(dataset.name.clone(), items);
    loaded.num_classes = dataset.num_classes;
    loaded.report = dataset.report.clone();
    Ok((loaded, report))
}

/// Crops, shrinks and stores one decoded image as in-memory pixels.
fn to_memory(image: DynamicImage, source: &ImageSource, options: &PreloadOptions) -> ImageSource {
    let image = match center_crop_box(image.width(), image.height(), options.center_crop) {
        Some((x, y, w, h)) => image.crop_imm(x, y, w, h),
        None => image,
    };
    let (width, height) = (image.width(), image.height());
    let short = width.min(height);
    let image = if short > options.max_short_side && options.max_short_side > 0 {
        let scale = options.max_short_side as f64 / short as f64;
        let new_w = ((width as f64 * scale).round() as u32).max(1);
        let new_h = ((height as f64 * scale).round() as u32).max(1);
        image.resize_exact(new_w, new_h, FilterType::Triangle)
    } else {
        image
    };
    let (width, height) = (image.width(), image.height());
    let (channels, data): (u8, Vec<u8>) = match image {
        DynamicImage::ImageLuma8(grey) => (1, grey.into_raw()),
        other => (3, other.into_rgb8().into_raw()),
    };
    ImageSource::Pixels {
        width,
        height,
        channels,
        data: Arc::from(data),
        origin: Arc::from(source.key()),
    }
}
