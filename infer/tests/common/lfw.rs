//! The LFW photos of the opt-in detection tests (`FACE2EXP_DATA/lfw/<person>/*.jpg`).

use std::path::{Path, PathBuf};

/// Every photo under `root`, sorted; with `limit`, that many spread evenly over the list.
pub fn photos(root: &Path, limit: Option<usize>) -> Vec<PathBuf> {
    let mut photos = Vec::new();
    for person in std::fs::read_dir(root).unwrap_or_else(|e| panic!("{}: {e}", root.display())) {
        let person = person.unwrap().path();
        if let Ok(files) = std::fs::read_dir(&person) {
            photos.extend(
                files
                    .filter_map(|f| f.ok().map(|f| f.path()))
                    .filter(|p| p.extension().is_some_and(|e| e == "jpg")),
            );
        }
    }
    photos.sort();
    if let Some(limit) = limit {
        let stride = (photos.len() / limit.max(1)).max(1);
        photos = photos.into_iter().step_by(stride).take(limit).collect();
    }
    photos
}
