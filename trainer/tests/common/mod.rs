//! Generated datasets for the trainer's integration tests: small PNG class folders whose
//! classes differ visibly (so a few steps of training move the loss), and unlabeled faces.

#![allow(dead_code)]

use std::path::Path;

use face2exp_trainer::model::{Arch, Stem};
use face2exp_trainer::train::config::ModelSpec;
use face2exp_trainer::train::{Method, TrainConfig};
use image::{Rgb, RgbImage};

pub const CLASS_FOLDERS: [&str; 7] = [
    "angry", "disgust", "fear", "happy", "neutral", "sad", "surprise",
];

/// Writes `per_class` images of `size` px per class under `dir/<class>/`.
pub fn write_imagefolder(dir: &Path, per_class: usize, size: u32) {
    for (c, class) in CLASS_FOLDERS.iter().enumerate() {
        let folder = dir.join(class);
        std::fs::create_dir_all(&folder).unwrap();
        for i in 0..per_class {
            let img = RgbImage::from_fn(size, size, |x, y| {
                let stripe = ((x + y * (c as u32 + 1)) / 4 + i as u32) % 2;
                let v = (30 * c as u32 + 60 * stripe + 7 * i as u32) as u8;
                Rgb([v, v.wrapping_mul(3), 255 - v])
            });
            img.save(folder.join(format!("img_{i:03}.png"))).unwrap();
        }
    }
}

/// Writes `count` unlabeled "face" images (smooth gradients) in nested folders, like LFW.
pub fn write_unlabeled(dir: &Path, count: usize, size: u32) {
    for i in 0..count {
        let folder = dir.join(format!("person_{}", i % 3));
        std::fs::create_dir_all(&folder).unwrap();
        let img = RgbImage::from_fn(size, size, |x, y| {
            Rgb([
                (x * 3 + i as u32 * 11) as u8,
                (y * 5) as u8,
                ((x + y) * 2) as u8,
            ])
        });
        img.save(folder.join(format!("face_{i:03}.jpg"))).unwrap();
    }
}

/// A Meta-Face2Exp or SL run of 6 steps on `data/train` (+ `data/faces`), checkpointing
/// and evaluating every 3 steps: ResNet-18 at 32 px, batch 7, mu 2.
pub fn tiny_config(data: &Path, method: Method) -> TrainConfig {
    let mut c = TrainConfig {
        method,
        labeled: format!("imagefolder:{}", data.join("train").display()),
        val: Some(format!("imagefolder:{}", data.join("train").display())),
        unlabeled: Some(format!("folder:{}", data.join("faces").display())),
        steps: 6,
        batch_size: 7,
        model: ModelSpec {
            arch: Arch::Resnet18,
            stem: Stem::Imagenet,
            input_size: 32,
            init: None,
            freeze_batch_norm: false,
        },
        eval_every: 3,
        checkpoint_every: 3,
        log_every: 1,
        workers: 2,
        ..TrainConfig::default()
    };
    c.schedule.warmup_steps = 2;
    c.schedule.lr = 0.05;
    c.meta.mu = 2;
    c.meta.uda_steps = 4;
    c.meta.adaptation_schedule.warmup_steps = 2;
    c.meta.adaptation_schedule.lr = 0.05;
    c
}
