//! `folder:DIR` — unlabeled faces (LFW, VGGFace2, ...): every image file under DIR,
//! recursively, sorted by path so the listing and everything seeded from it is deterministic.

use super::{list_images_recursive, Dataset, DatasetSpec, ImageSource, Item};

pub fn load(spec: &DatasetSpec) -> anyhow::Result<Dataset> {
    anyhow::ensure!(
        spec.path.is_dir(),
        "{spec}: {} is not a directory",
        spec.path.display()
    );
    let items = list_images_recursive(&spec.path)?
        .into_iter()
        .map(|path| Item {
            source: ImageSource::File(path),
            label: None,
        })
        .collect();
    Ok(Dataset::new(spec.to_string(), items))
}
