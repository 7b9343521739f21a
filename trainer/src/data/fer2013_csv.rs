//! `fer2013-csv:FILE[#train|publictest|privatetest]` — the original Kaggle fer2013.csv
//! (`emotion,pixels,Usage`), read into memory as 48x48 grey images.

use std::sync::Arc;

use super::{Dataset, DatasetSpec, ImageSource, Item};
use crate::labels::from_fer2013_id;

/// FER2013's image side.
pub const SIDE: u32 = 48;

/// The `Usage` column value of each split name accepted in the spec.
fn usage_of_split(split: &str) -> &'static str {
    match split {
        "train" => "Training",
        "publictest" => "PublicTest",
        _ => "PrivateTest",
    }
}

pub fn load(spec: &DatasetSpec) -> anyhow::Result<Dataset> {
    let path = &spec.path;
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_path(path)
        .map_err(|e| anyhow::anyhow!("{spec}: cannot open {}: {e}", path.display()))?;
    let headers = reader
        .headers()
        .map_err(|e| anyhow::anyhow!("{}: cannot read the header: {e}", path.display()))?
        .clone();
    let column = |name: &str| {
        headers
            .iter()
            .position(|h| h.trim() == name)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "{}: no {name:?} column; found {:?}, expected emotion,pixels,Usage",
                    path.display(),
                    headers.iter().collect::<Vec<_>>()
                )
            })
    };
    let (emotion_col, pixels_col) = (column("emotion")?, column("pixels")?);
    let usage_col = headers.iter().position(|h| h.trim() == "Usage");
    let wanted = spec.split.as_deref().map(usage_of_split);
    if wanted.is_some() && usage_col.is_none() {
        anyhow::bail!(
            "{spec}: a split was asked for but {} has no Usage column",
            path.display()
        );
    }
    let file_name = path.display().to_string();
    let mut items = Vec::new();
    for (row, record) in reader.records().enumerate() {
        // Line numbers as an editor shows them: the header is line 1.
        let line = row + 2;
        let record = record
            .map_err(|e| anyhow::anyhow!("{}:{line}: unreadable row: {e}", path.display()))?;
        if let (Some(wanted), Some(col)) = (wanted, usage_col) {
            if record.get(col).map(str::trim) != Some(wanted) {
                continue;
            }
        }
        let field = |col: usize| record.get(col).unwrap_or("").trim();
        let label = field(emotion_col)
            .parse::<u32>()
            .ok()
            .and_then(from_fer2013_id)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "{}:{line}: emotion {:?} is not a FER2013 label 0..6",
                    path.display(),
                    field(emotion_col)
                )
            })?;
        let pixels: Vec<u8> = field(pixels_col)
            .split_ascii_whitespace()
            .map(str::parse::<u8>)
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow::anyhow!("{}:{line}: bad pixel value: {e}", path.display()))?;
        anyhow::ensure!(
            pixels.len() == (SIDE * SIDE) as usize,
            "{}:{line}: {} pixel values, expected {} (48x48)",
            path.display(),
            pixels.len(),
            SIDE * SIDE
        );
        items.push(Item {
            source: ImageSource::Pixels {
                width: SIDE,
                height: SIDE,
                channels: 1,
                data: pixels.into(),
                origin: Arc::from(format!("{file_name}:{line}")),
            },
            label: Some(label),
        });
    }
    Ok(Dataset::new(spec.to_string(), items))
}
