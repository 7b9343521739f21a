//! `imagefolder:DIR` — torchvision's ImageFolder layout, `DIR/<class>/*.{jpg,png,...}`, with the
//! class folder names mapped onto the canonical classes through their aliases.

use super::{list_images_recursive, Dataset, DatasetSpec, ImageSource, Item};
use crate::labels::{Expression, CLASSES};

/// Lists `DIR/<class>/**/<image>`; every sub-folder of DIR must name an expression.
pub fn load(spec: &DatasetSpec) -> anyhow::Result<Dataset> {
    let root = &spec.path;
    let entries = std::fs::read_dir(root)
        .map_err(|e| anyhow::anyhow!("{spec}: cannot read directory {}: {e}", root.display()))?;
    let mut class_dirs = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| anyhow::anyhow!("{}: cannot list: {e}", root.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.path().is_dir() && !name.starts_with('.') {
            class_dirs.push((name, entry.path()));
        }
    }
    class_dirs.sort();
    anyhow::ensure!(
        !class_dirs.is_empty(),
        "{spec}: {} has no class folders; expected DIR/<class>/<image> with class one of: {}",
        root.display(),
        CLASSES.join(", ")
    );
    let unknown: Vec<&str> = class_dirs
        .iter()
        .filter(|(name, _)| Expression::from_alias(name).is_none())
        .map(|(name, _)| name.as_str())
        .collect();
    if !unknown.is_empty() {
        let found: Vec<&str> = class_dirs.iter().map(|(n, _)| n.as_str()).collect();
        anyhow::bail!(
            "{spec}: unknown class folder(s) {unknown:?} in {}; found {found:?}; accepted: {} \
             (or aliases such as angry, happiness, surprised, fearful, disgusted, sadness)",
            root.display(),
            CLASSES.join(", ")
        );
    }
    let mut items = Vec::new();
    for (name, dir) in &class_dirs {
        let label = Expression::from_alias(name);
        for path in list_images_recursive(dir)? {
            items.push(Item {
                source: ImageSource::File(path),
                label,
            });
        }
    }
    Ok(Dataset::new(spec.to_string(), items))
}
