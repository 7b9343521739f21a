//! `affectnet:CSV` — AffectNet's `training.csv` / `validation.csv`: one row per image with its
//! face box and expression. Images are found relative to the CSV's folder, or in a sibling
//! `Manually_Annotated_Images/`; each item is the face box of its image.

use std::path::{Path, PathBuf};

use super::{Dataset, DatasetSpec, ImageSource, Item};
use crate::labels::from_affectnet_id;

/// The columns of AffectNet's CSVs, in their order (validation.csv ships without this header).
pub const COLUMNS: [&str; 9] = [
    "subDirectory_filePath",
    "face_x",
    "face_y",
    "face_width",
    "face_height",
    "facial_landmarks",
    "expression",
    "valence",
    "arousal",
];

/// AffectNet's image folder name, tried next to the CSV and one level up.
pub const IMAGE_DIR: &str = "Manually_Annotated_Images";

/// Highest AffectNet expression id (10 = no face); 8..=10 are dropped, not errors.
const MAX_ID: u32 = 10;

pub fn load(spec: &DatasetSpec) -> anyhow::Result<Dataset> {
    let csv_path = &spec.path;
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_path(csv_path)
        .map_err(|e| anyhow::anyhow!("{spec}: cannot open {}: {e}", csv_path.display()))?;
    let bases = image_bases(csv_path);
    // The base that last resolved a file is tried first: all rows normally share one.
    let mut preferred = 0;
    let mut columns: Option<[usize; 6]> = None;
    let mut dataset = Dataset::new(spec.to_string(), Vec::new());
    let mut items = Vec::new();
    for (row, record) in reader.records().enumerate() {
        let line = row + 1;
        let record = record
            .map_err(|e| anyhow::anyhow!("{}:{line}: unreadable row: {e}", csv_path.display()))?;
        let cols = match columns {
            Some(cols) => cols,
            None => {
                let cols = column_positions(&record, csv_path)?;
                columns = Some(cols.0);
                if cols.1 {
                    continue; // that row was the header
                }
                cols.0
            }
        };
        let field = |i: usize| record.get(cols[i]).unwrap_or("").trim();
        let number = |i: usize| {
            field(i).parse::<u32>().map_err(|_| {
                anyhow::anyhow!(
                    "{}:{line}: {} is {:?}, expected a non-negative integer",
                    csv_path.display(),
                    USED[i],
                    field(i)
                )
            })
        };
        let id = number(5)?;
        anyhow::ensure!(
            id <= MAX_ID,
            "{}:{line}: expression {id} is not an AffectNet id 0..=10",
            csv_path.display()
        );
        let Some(label) = from_affectnet_id(id) else {
            dataset.report.dropped_non_expression += 1;
            continue;
        };
        let (x, y, w, h) = (number(1)?, number(2)?, number(3)?, number(4)?);
        anyhow::ensure!(
            w > 0 && h > 0,
            "{}:{line}: empty face box {w}x{h}",
            csv_path.display()
        );
        let relative = field(0);
        let found = std::iter::once(preferred)
            .chain(0..bases.len())
            .find(|&b| bases[b].join(relative).is_file());
        let Some(base) = found else {
            dataset.report.note_missing(bases[0].join(relative));
            continue;
        };
        preferred = base;
        items.push(Item {
            source: ImageSource::FileCrop {
                path: bases[base].join(relative),
                x,
                y,
                w,
                h,
            },
            label: Some(label),
        });
    }
    let report = dataset.report;
    dataset = Dataset::new(spec.to_string(), items);
    dataset.report = report;
    Ok(dataset)
}

/// The columns the reader uses, in the order of its position array.
const USED: [&str; 6] = [
    COLUMNS[0], COLUMNS[1], COLUMNS[2], COLUMNS[3], COLUMNS[4], COLUMNS[6],
];

/// Positions of the [`USED`] columns from the first row, and whether that row is a header.
/// Without a header the standard [`COLUMNS`] order is assumed.
fn column_positions(first: &csv::StringRecord, path: &Path) -> anyhow::Result<([usize; 6], bool)> {
    let is_header = first.get(0).map(str::trim) == Some(COLUMNS[0]);
    let mut positions = [0; 6];
    for (slot, name) in USED.iter().enumerate() {
        positions[slot] = if is_header {
            first
                .iter()
                .position(|h| h.trim() == *name)
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "{}: no {name:?} column; found {:?}, expected {}",
                        path.display(),
                        first.iter().collect::<Vec<_>>(),
                        COLUMNS.join(",")
                    )
                })?
        } else {
            COLUMNS.iter().position(|c| c == name).unwrap_or(0)
        };
    }
    Ok((positions, is_header))
}

/// Where a CSV's relative image paths are looked up, in order: the CSV's folder, its
/// `Manually_Annotated_Images/`, and a sibling `../Manually_Annotated_Images/`.
pub fn image_bases(csv_path: &Path) -> Vec<PathBuf> {
    let folder = csv_path.parent().unwrap_or(Path::new(".")).to_path_buf();
    vec![
        folder.clone(),
        folder.join(IMAGE_DIR),
        folder.join("..").join(IMAGE_DIR),
    ]
}
