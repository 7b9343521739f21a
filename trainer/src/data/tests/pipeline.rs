//! Subsets, samplers, augmentation and loaders: balance, reproducibility under a seed, and
//! batch b being the same whichever worker makes it and whether or not the run resumed.

use std::sync::Arc;

use image::{Rgb, RgbImage};

use super::image_folder;
use crate::data::augment::{eval_transform, random_erasing, strong_view, weak_view};
use crate::data::sampler::{rng_for, ClassBalancedSampler};
use crate::data::subset::{balanced_fraction, read_list, stratified_fraction, write_list};
use crate::data::{
    eval_batches, Dataset, ImageSource, Item, LabeledLoader, LoaderConfig, UnlabeledLoader,
};
use crate::labels::Expression;

/// An in-memory labeled dataset with `counts[c]` items of class c (no files needed).
fn memory_dataset(counts: &[usize]) -> Dataset {
    let mut items = Vec::new();
    for (class, &count) in counts.iter().enumerate() {
        for i in 0..count {
            let data: Vec<u8> = (0..3 * 20 * 18)
                .map(|p| ((p * 7 + i * 13 + class * 29) % 256) as u8)
                .collect();
            items.push(Item {
                source: ImageSource::Pixels {
                    width: 20,
                    height: 18,
                    channels: 3,
                    data: data.into(),
                    origin: format!("memory:{class}:{i}").into(),
                },
                label: Some(Expression(class)),
            });
        }
    }
    Dataset::new("memory", items)
}

#[test]
fn balanced_subset_follows_the_documented_rule_and_is_reproducible() {
    // FER2013-like imbalance: 20% of 300 = 60 -> the 5-item class gives all, the rest 9 each,
    // and 60 - (5 + 6 * 9) = 1 extra goes to the first class with items left.
    let dataset = memory_dataset(&[50, 70, 40, 30, 60, 5, 45]);
    let subset = balanced_fraction(&dataset, 0.2, 11).unwrap();
    assert_eq!(subset.len(), 60);
    assert_eq!(subset.class_counts(), [10, 9, 9, 9, 9, 5, 9]);
    assert_eq!(subset, balanced_fraction(&dataset, 0.2, 11).unwrap());
    let other = balanced_fraction(&dataset, 0.2, 12).unwrap();
    assert_eq!(other.class_counts(), subset.class_counts());
    assert_ne!(other.items, subset.items, "another seed picks other items");

    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("subset.txt");
    write_list(&subset, &list).unwrap();
    assert_eq!(read_list(&list, &dataset).unwrap().items, subset.items);
    std::fs::write(&list, "memory:0:0\tsad\n").unwrap();
    let error = read_list(&list, &dataset).unwrap_err().to_string();
    assert!(
        error.contains("subset.txt:1: \"memory:0:0\" is labeled neutral"),
        "{error}"
    );
}

#[test]
fn stratified_subset_keeps_class_proportions() {
    let dataset = memory_dataset(&[50, 70, 40, 30, 60, 5, 45]);
    let subset = stratified_fraction(&dataset, 0.2, 3).unwrap();
    assert_eq!(subset.len(), 60);
    assert_eq!(subset.class_counts(), [10, 14, 8, 6, 12, 1, 9]);
}

#[test]
fn class_balanced_sampler_draws_classes_equally() {
    let labels: Vec<Option<usize>> = [(0, 500), (1, 20), (3, 3), (6, 77)]
        .iter()
        .flat_map(|&(class, n)| std::iter::repeat_n(Some(class), n))
        .collect();
    let mut sampler = ClassBalancedSampler::new(&labels, 32, 5).unwrap();
    let mut per_class = [0usize; 7];
    let mut per_item = vec![0usize; labels.len()];
    for b in 0..250 {
        for index in sampler.batch(b) {
            per_class[labels[index].unwrap()] += 1;
            per_item[index] += 1;
        }
    }
    // 8,000 draws over 4 classes: 2,000 each, within one block's rounding.
    for class in [0, 1, 3, 6] {
        assert!((per_class[class] as i64 - 2000).abs() <= 1, "{per_class:?}");
    }
    // Items of a class are cycled through: the 20 items of class 1 are drawn 100 times each.
    let class1 = &per_item[500..520];
    assert!(class1.iter().all(|&n| n == 100), "{class1:?}");
}

fn test_image() -> RgbImage {
    RgbImage::from_fn(40, 36, |x, y| {
        Rgb([(x * 6) as u8, (y * 7) as u8, ((x + y) * 3) as u8])
    })
}

#[test]
fn augmentations_are_deterministic_under_a_seed() {
    let image = test_image();
    let weak = weak_view(&image, 32, &mut rng_for(&[1, 2]));
    assert_eq!(weak.dimensions(), (32, 32));
    assert_eq!(weak, weak_view(&image, 32, &mut rng_for(&[1, 2])));
    assert_ne!(weak, weak_view(&image, 32, &mut rng_for(&[1, 3])));
    let strong = strong_view(&image, 32, 2, 10, &mut rng_for(&[4]));
    assert_eq!(strong.dimensions(), (32, 32));
    assert_eq!(strong, strong_view(&image, 32, 2, 10, &mut rng_for(&[4])));
    let differing = (0..20u64)
        .filter(|&s| strong_view(&image, 32, 2, 10, &mut rng_for(&[s])) != strong)
        .count();
    assert!(
        differing >= 19,
        "strong views barely depend on the seed: {differing}/20"
    );
}

#[test]
fn random_erasing_zeroes_one_rectangle_in_every_channel() {
    use rand::Rng;
    let size = 32;
    let original: Vec<f32> = (0..3 * size * size).map(|i| 1.0 + i as f32).collect();
    // p = 0: nothing changes and the stream is untouched (older runs keep their pixels).
    let (mut image, mut rng) = (original.clone(), rng_for(&[9]));
    random_erasing(&mut image, size, 0.0, &mut rng);
    assert_eq!(image, original);
    assert_eq!(rng.gen::<u64>(), rng_for(&[9]).gen::<u64>());
    let mut fractions = Vec::new();
    for seed in 0..200u64 {
        let mut image = original.clone();
        random_erasing(&mut image, size, 1.0, &mut rng_for(&[seed]));
        let erased: Vec<Vec<usize>> = image
            .chunks(size * size)
            .map(|plane| (0..size * size).filter(|&i| plane[i] == 0.0).collect())
            .collect();
        assert!(
            erased.iter().all(|e| *e == erased[0]),
            "seed {seed}: channels differ"
        );
        let (rows, cols): (Vec<usize>, Vec<usize>) =
            erased[0].iter().map(|&i| (i / size, i % size)).unzip();
        if rows.is_empty() {
            continue; // no shape fitted in 10 tries, as torchvision
        }
        let height = rows.iter().max().unwrap() - rows.iter().min().unwrap() + 1;
        let width = cols.iter().max().unwrap() - cols.iter().min().unwrap() + 1;
        assert_eq!(height * width, rows.len(), "seed {seed}: not a rectangle");
        fractions.push(rows.len() as f32 / (size * size) as f32);
    }
    assert!(
        fractions.len() >= 190,
        "erased only {} of 200",
        fractions.len()
    );
    let lowest = fractions.iter().cloned().fold(f32::MAX, f32::min);
    let highest = fractions.iter().cloned().fold(0.0, f32::max);
    // 2-33 % of the area, up to rounding of each side.
    assert!(lowest >= 0.01 && highest <= 0.37, "{lowest}..{highest}");
    assert!(
        highest - lowest > 0.2,
        "sizes barely vary: {lowest}..{highest}"
    );
}

#[test]
fn eval_transform_is_triangle_resize_then_normalise() {
    let image = test_image();
    let (mean, std) = ([0.5, 0.4, 0.3], [0.2, 0.25, 0.3]);
    let mut out = vec![0.0; 3 * 24 * 24];
    eval_transform(&image, 24, mean, std, &mut out);
    let resized = image::imageops::resize(&image, 24, 24, image::imageops::FilterType::Triangle);
    for (i, pixel) in resized.pixels().enumerate() {
        for c in 0..3 {
            let expected = (pixel.0[c] as f32 / 255.0 - mean[c]) / std[c];
            assert!((out[c * 576 + i] - expected).abs() < 1e-5);
        }
    }
}

fn loader_config(workers: usize) -> LoaderConfig {
    LoaderConfig {
        batch_size: 6,
        input_size: 16,
        workers,
        prefetch: 3,
        seed: 9,
        ..LoaderConfig::default()
    }
}

#[test]
fn labeled_loader_is_in_order_and_resumable_whatever_the_workers() {
    let dataset = Arc::new(memory_dataset(&[7, 3, 5, 0, 2, 4, 6]));
    for balanced in [false, true] {
        let mut one =
            LabeledLoader::new(Arc::clone(&dataset), &loader_config(1), balanced, 0).unwrap();
        let reference: Vec<_> = (0..8).map(|_| one.next_batch().unwrap()).collect();
        let mut three =
            LabeledLoader::new(Arc::clone(&dataset), &loader_config(3), balanced, 0).unwrap();
        for expected in &reference {
            assert_eq!(&three.next_batch().unwrap(), expected);
        }
        let mut resumed =
            LabeledLoader::new(Arc::clone(&dataset), &loader_config(2), balanced, 5).unwrap();
        assert_eq!(resumed.next_batch_index(), 5);
        assert_eq!(resumed.next_batch().unwrap(), reference[5]);
        assert_eq!(resumed.next_batch().unwrap(), reference[6]);
        assert_ne!(reference[0], reference[1]);
        assert_eq!(reference[0].images.len(), 6 * 3 * 16 * 16);
    }
    let batch = LabeledLoader::new(dataset, &loader_config(1), true, 0)
        .unwrap()
        .next_batch()
        .unwrap();
    let device = candle_core::Device::Cpu;
    assert_eq!(batch.to_tensor(&device).unwrap().dims(), [6, 3, 16, 16]);
    assert_eq!(
        batch
            .labels_tensor(&device)
            .unwrap()
            .to_vec1::<u32>()
            .unwrap(),
        batch.labels
    );
}

#[test]
fn labeled_loader_erases_only_when_asked() {
    let dataset = Arc::new(memory_dataset(&[7, 3, 5, 0, 2, 4, 6]));
    let plain = LabeledLoader::new(Arc::clone(&dataset), &loader_config(1), false, 0)
        .unwrap()
        .next_batch()
        .unwrap();
    let cfg = LoaderConfig {
        random_erasing: 1.0,
        ..loader_config(2)
    };
    let erased = LabeledLoader::new(dataset, &cfg, false, 0)
        .unwrap()
        .next_batch()
        .unwrap();
    assert_eq!(erased.labels, plain.labels);
    let plane = 3 * 16 * 16;
    let zeros = |images: &[f32]| images.iter().filter(|&&v| v == 0.0).count();
    for (e, p) in erased.images.chunks(plane).zip(plain.images.chunks(plane)) {
        // Same geometry (the erasing draws after it), a rectangle of zeros on top.
        let changed = e.iter().zip(p).filter(|(a, b)| a != b).count();
        assert!(
            changed > 0 && zeros(e) >= changed,
            "{changed} changed, {} zero",
            zeros(e)
        );
        assert!(e.iter().zip(p).all(|(a, b)| a == b || *a == 0.0));
    }
}

#[test]
fn unlabeled_loader_gives_two_reproducible_views() {
    let mut dataset = memory_dataset(&[9]);
    dataset.items.iter_mut().for_each(|i| i.label = None);
    let dataset = Arc::new(dataset);
    let cfg = LoaderConfig {
        center_crop: 0.6,
        ..loader_config(1)
    };
    let mut one = UnlabeledLoader::new(Arc::clone(&dataset), &cfg, 0).unwrap();
    let reference: Vec<_> = (0..4).map(|_| one.next_batch().unwrap()).collect();
    let mut resumed =
        UnlabeledLoader::new(dataset, &LoaderConfig { workers: 3, ..cfg }, 2).unwrap();
    assert_eq!(resumed.next_batch().unwrap(), reference[2]);
    assert_ne!(reference[0].weak, reference[0].strong);
    assert_eq!(reference[0].strong.len(), 6 * 3 * 16 * 16);
}

#[test]
fn eval_batches_cover_every_item_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    image_folder(dir.path(), &["fear", "surprise"], &[4, 3]);
    let dataset = crate::data::load_dataset(
        &format!("imagefolder:{}", dir.path().display())
            .parse()
            .unwrap(),
    )
    .unwrap();
    let cfg = LoaderConfig {
        batch_size: 3,
        input_size: 8,
        ..LoaderConfig::default()
    };
    let batches: Vec<_> = eval_batches(&dataset, &cfg).map(Result::unwrap).collect();
    let labels: Vec<u32> = batches.iter().flat_map(|b| b.labels.clone()).collect();
    // fear (4) folder first, then surprise (3).
    assert_eq!(labels, [4, 4, 4, 4, 3, 3, 3]);
    assert_eq!(batches.iter().map(|b| b.n).collect::<Vec<_>>(), [3, 3, 1]);
    let again: Vec<_> = eval_batches(&dataset, &cfg).map(Result::unwrap).collect();
    assert_eq!(batches, again);
}
