//! `rafdb:DIR[#train|test]` — RAF-DB basic: labels in `DIR/EmoLabel/list_patition_label.txt`
//! (lines `train_00001.jpg 5`, the file name's misspelling is RAF-DB's), aligned 100x100 faces
//! in `DIR/Image/aligned/train_00001_aligned.jpg`.

use std::path::Path;

use super::{Dataset, DatasetSpec, ImageSource, Item};
use crate::labels::from_rafdb_id;

/// The label file, relative to the dataset folder.
pub const LABEL_FILE: &str = "EmoLabel/list_patition_label.txt";
/// The aligned-face folder, relative to the dataset folder.
pub const ALIGNED_DIR: &str = "Image/aligned";

pub fn load(spec: &DatasetSpec) -> anyhow::Result<Dataset> {
    let label_path = spec.path.join(LABEL_FILE);
    let text = std::fs::read_to_string(&label_path).map_err(|e| {
        anyhow::anyhow!(
            "{spec}: cannot read {} (expected RAF-DB basic layout DIR/{LABEL_FILE}): {e}",
            label_path.display()
        )
    })?;
    let aligned = spec.path.join(ALIGNED_DIR);
    let mut dataset = Dataset::new(spec.to_string(), Vec::new());
    let mut items = Vec::new();
    for (line_no, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let bad = |why: &str| {
            anyhow::anyhow!(
                "{}:{}: {why} in {line:?}; expected \"train_00001.jpg 5\" with a label 1..7",
                label_path.display(),
                line_no + 1
            )
        };
        let mut fields = line.split_whitespace();
        let (Some(name), Some(id), None) = (fields.next(), fields.next(), fields.next()) else {
            return Err(bad("expected two fields"));
        };
        let id: u32 = id.parse().map_err(|_| bad("label is not a number"))?;
        let label = from_rafdb_id(id).ok_or_else(|| bad("label out of range"))?;
        if let Some(split) = &spec.split {
            if !name.starts_with(&format!("{split}_")) {
                continue;
            }
        }
        let stem = Path::new(name)
            .file_stem()
            .and_then(|s| s.to_str())
            .ok_or_else(|| bad("no file name"))?;
        let path = aligned.join(format!("{stem}_aligned.jpg"));
        if !path.is_file() {
            dataset.report.note_missing(path);
            continue;
        }
        items.push(Item {
            source: ImageSource::File(path),
            label: Some(label),
        });
    }
    let report = dataset.report;
    dataset = Dataset::new(spec.to_string(), items);
    dataset.report = report;
    Ok(dataset)
}
