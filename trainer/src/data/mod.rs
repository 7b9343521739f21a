//! The trainer's data pipeline: dataset specs -> item lists -> decoding (optionally preloaded
//! into memory) -> subsets and samplers -> augmentation -> batches from worker threads.
//!
//! Listing a dataset never decodes an image: a [`Dataset`] is a list of [`Item`]s that say
//! where the pixels are ([`ImageSource`]) and which expression they show. Decoding happens in
//! [`decode`] (once, in [`preload()`]) or in the [`loader`]'s worker threads. Every random choice
//! downstream is a pure function of a seed and a batch index, so a resumed run continues
//! bit-for-bit.

pub mod affectnet;
pub mod augment;
pub mod decode;
pub mod fer2013_csv;
pub mod imagefolder;
pub mod loader;
pub mod preload;
pub mod rafdb;
pub mod sampler;
pub mod spec;
pub mod subset;
pub mod unlabeled;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::labels::{Expression, CLASSES, NUM_BASIC};

pub use decode::{SkipReport, SkippedImages};
pub use loader::{
    eval_batches, LabeledBatch, LabeledLoader, LoaderConfig, UnlabeledBatch, UnlabeledLoader,
};
pub use preload::{preload, PreloadOptions};
pub use spec::{DatasetKind, DatasetSpec};

/// File name extensions (lower case) that the folder readers treat as images.
pub const IMAGE_EXTENSIONS: [&str; 5] = ["jpg", "jpeg", "png", "bmp", "webp"];

/// Where one item's pixels are.
#[derive(Clone, Debug, PartialEq)]
pub enum ImageSource {
    /// A whole image file.
    File(PathBuf),
    /// The rectangle (x, y, w, h) of an image file, e.g. an AffectNet face box. The box is
    /// clamped to the image when decoded.
    FileCrop {
        path: PathBuf,
        x: u32,
        y: u32,
        w: u32,
        h: u32,
    },
    /// Pixels already in memory (fer2013.csv rows, preloaded images), row-major,
    /// `channels` = 1 (grey) or 3 (RGB). `origin` names where they came from, stably, so a
    /// subset list can refer to them.
    Pixels {
        width: u32,
        height: u32,
        channels: u8,
        data: Arc<[u8]>,
        origin: Arc<str>,
    },
}

impl ImageSource {
    /// A stable text key for this source: the file path, `path@x,y,w,h` for a crop, or the
    /// origin of in-memory pixels. Subset lists are written in these keys.
    pub fn key(&self) -> String {
        match self {
            ImageSource::File(path) => path.display().to_string(),
            ImageSource::FileCrop { path, x, y, w, h } => {
                format!("{}@{x},{y},{w},{h}", path.display())
            }
            ImageSource::Pixels { origin, .. } => origin.to_string(),
        }
    }

    /// The file this source reads, if any.
    pub fn path(&self) -> Option<&Path> {
        match self {
            ImageSource::File(path) | ImageSource::FileCrop { path, .. } => Some(path),
            ImageSource::Pixels { .. } => None,
        }
    }
}

/// One image of a dataset, not decoded.
#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    pub source: ImageSource,
    /// `None` for unlabeled data (face-recognition sets used by Meta-Face2Exp).
    pub label: Option<Expression>,
}

/// What listing a dataset left out, so the numbers can be reported instead of silently lost.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoadReport {
    /// Rows whose label is not an expression (AffectNet 8 none, 9 uncertain, 10 no-face).
    pub dropped_non_expression: usize,
    /// Listed images whose file does not exist (RAF-DB, AffectNet).
    pub missing_files: usize,
    /// The first few missing files, for the warning.
    pub first_missing: Vec<PathBuf>,
}

impl LoadReport {
    /// How many missing paths are kept for the report.
    pub const KEEP_PATHS: usize = 5;

    pub(crate) fn note_missing(&mut self, path: PathBuf) {
        self.missing_files += 1;
        if self.first_missing.len() < Self::KEEP_PATHS {
            self.first_missing.push(path);
        }
    }
}

/// A listed dataset.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// The spec it was loaded from (or a derived description for subsets).
    pub name: String,
    pub items: Vec<Item>,
    /// 7, or 8 when contempt occurs.
    pub num_classes: usize,
    pub report: LoadReport,
}

impl Dataset {
    /// Builds a dataset from items, deriving `num_classes` (8 when any item is contempt).
    pub fn new(name: impl Into<String>, items: Vec<Item>) -> Dataset {
        let has_contempt = items.iter().any(|i| i.label == Some(Expression::CONTEMPT));
        Dataset {
            name: name.into(),
            items,
            num_classes: if has_contempt {
                CLASSES.len()
            } else {
                NUM_BASIC
            },
            report: LoadReport::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Items per canonical class (length `num_classes`); unlabeled items are not counted.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.num_classes];
        for label in self.items.iter().filter_map(|i| i.label) {
            if label.index() >= counts.len() {
                counts.resize(label.index() + 1, 0);
            }
            counts[label.index()] += 1;
        }
        counts
    }

    /// True when every item has a label.
    pub fn is_labeled(&self) -> bool {
        !self.items.is_empty() && self.items.iter().all(|i| i.label.is_some())
    }

    /// The items at `indices`, in that order, as a new dataset that keeps this one's class count.
    pub fn select(&self, name: impl Into<String>, indices: &[usize]) -> Dataset {
        Dataset {
            name: name.into(),
            items: indices.iter().map(|&i| self.items[i].clone()).collect(),
            num_classes: self.num_classes,
            report: LoadReport::default(),
        }
    }
}

impl fmt::Display for Dataset {
    /// One line: name, size and the per-class counts.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} images", self.name, self.len())?;
        if self.items.iter().any(|i| i.label.is_some()) {
            let counts = self.class_counts();
            let parts: Vec<String> = counts
                .iter()
                .enumerate()
                .map(|(c, n)| format!("{} {n}", CLASSES[c]))
                .collect();
            write!(f, " ({})", parts.join(", "))?;
        } else {
            f.write_str(" (unlabeled)")?;
        }
        Ok(())
    }
}

/// Lists the dataset a spec names, without decoding any image. Missing files and dropped rows
/// are counted in [`Dataset::report`] and logged once.
pub fn load_dataset(spec: &DatasetSpec) -> anyhow::Result<Dataset> {
    let dataset = match spec.kind {
        DatasetKind::ImageFolder => imagefolder::load(spec)?,
        DatasetKind::Fer2013Csv => fer2013_csv::load(spec)?,
        DatasetKind::RafDb => rafdb::load(spec)?,
        DatasetKind::AffectNet => affectnet::load(spec)?,
        DatasetKind::Folder => unlabeled::load(spec)?,
    };
    let report = &dataset.report;
    if report.missing_files > 0 {
        tracing::warn!(
            "{spec}: {} listed images do not exist and were left out (first: {:?})",
            report.missing_files,
            report.first_missing
        );
    }
    if report.dropped_non_expression > 0 {
        tracing::info!(
            "{spec}: dropped {} rows whose label is not an expression",
            report.dropped_non_expression
        );
    }
    anyhow::ensure!(
        !dataset.is_empty(),
        "{spec}: no images found (missing files: {})",
        report.missing_files
    );
    tracing::info!("{dataset}");
    Ok(dataset)
}

/// True when `path` has one of [`IMAGE_EXTENSIONS`] (case-insensitive).
pub fn is_image_file(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .map(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        .unwrap_or(false)
}

/// Every image file under `dir`, recursively, sorted by path so listings are deterministic.
/// Hidden entries (names starting with '.') are skipped.
pub fn list_images_recursive(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        let entries = std::fs::read_dir(&current)
            .map_err(|e| anyhow::anyhow!("{}: cannot read directory: {e}", current.display()))?;
        for entry in entries {
            let entry =
                entry.map_err(|e| anyhow::anyhow!("{}: cannot list: {e}", current.display()))?;
            let path = entry.path();
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            if path.is_dir() {
                pending.push(path);
            } else if is_image_file(&path) {
                found.push(path);
            }
        }
    }
    found.sort();
    Ok(found)
}

#[cfg(test)]
mod tests;
