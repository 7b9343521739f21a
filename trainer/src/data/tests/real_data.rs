//! Opt-in checks on the real data (`FACE2EXP_DATA`, see /work/shared/data/README.md); they
//! skip with a printed reason when the variable is unset.

use std::path::PathBuf;
use std::time::Instant;

use crate::data::subset::balanced_fraction;
use crate::data::{load_dataset, preload, PreloadOptions};

fn data_root() -> Option<PathBuf> {
    match std::env::var_os("FACE2EXP_DATA") {
        Some(root) => Some(PathBuf::from(root)),
        None => {
            eprintln!("skipped: FACE2EXP_DATA is not set (the real FER2013/LFW folders)");
            None
        }
    }
}

#[test]
fn fer2013_train_folder_has_the_documented_class_counts() {
    let Some(root) = data_root() else { return };
    let spec = format!("imagefolder:{}", root.join("fer2013/train").display());
    let dataset = load_dataset(&spec.parse().unwrap()).unwrap();
    // README: angry 3995, disgust 436, fear 4097, happy 7215, neutral 4965, sad 4830,
    // surprise 3171, in canonical order neutral, happy, sad, surprise, fear, disgust, anger.
    assert_eq!(
        dataset.class_counts(),
        [4965, 7215, 4830, 3171, 4097, 436, 3995]
    );
    assert_eq!(dataset.len(), 28_709);
    // The balanced-subset rule as documented in subset.rs, on the real imbalance.
    let tenth = balanced_fraction(&dataset, 0.1, 0).unwrap();
    assert_eq!(tenth.class_counts(), [411, 410, 410, 410, 410, 410, 410]);
    let fifth = balanced_fraction(&dataset, 0.2, 0).unwrap();
    assert_eq!(fifth.class_counts(), [885, 885, 884, 884, 884, 436, 884]);
    if std::env::var_os("FACE2EXP_PRELOAD").is_some() {
        let start = Instant::now();
        let options = PreloadOptions {
            max_short_side: 48,
            center_crop: 1.0,
            progress: false,
        };
        let (loaded, report) = preload(&dataset, &options).unwrap();
        eprintln!(
            "preload {}: {} images in {:.2?}, {report}",
            spec,
            loaded.len(),
            start.elapsed()
        );
        assert_eq!(report.count, 0);
        assert_eq!(loaded.class_counts(), dataset.class_counts());
    }
}

#[test]
fn lfw_folder_lists_every_face() {
    let Some(root) = data_root() else { return };
    let spec = format!("folder:{}", root.join("lfw").display());
    let dataset = load_dataset(&spec.parse().unwrap()).unwrap();
    assert_eq!(dataset.len(), 13_233);
    assert!(dataset.items.iter().all(|i| i.label.is_none()));
    if std::env::var_os("FACE2EXP_PRELOAD").is_some() {
        let start = Instant::now();
        // The face fills the central ~115 of 250 px.
        let options = PreloadOptions {
            max_short_side: 64,
            center_crop: 0.46,
            progress: false,
        };
        let (loaded, report) = preload(&dataset, &options).unwrap();
        eprintln!(
            "preload {}: {} images in {:.2?}, {report}",
            spec,
            loaded.len(),
            start.elapsed()
        );
        assert_eq!(report.count, 0);
        assert_eq!(loaded.len(), dataset.len());
    }
}
