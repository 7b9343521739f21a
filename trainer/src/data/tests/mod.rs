//! Tests of the data pipeline on fixtures generated in temporary folders: real PNG/JPEG files
//! written with the image crate in each dataset's exact layout.

mod loading;
mod pipeline;
mod real_data;

use std::path::Path;

use image::{Rgb, RgbImage};

/// Writes a `width` x `height` image whose pixels depend on `seed`, in the format the
/// extension names.
pub(super) fn write_image(path: &Path, width: u32, height: u32, seed: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let image = RgbImage::from_fn(width, height, |x, y| {
        let v = x.wrapping_mul(31) ^ y.wrapping_mul(17) ^ seed.wrapping_mul(97);
        Rgb([
            (v % 251) as u8,
            ((v / 3 + x) % 253) as u8,
            ((y * 5 + seed) % 256) as u8,
        ])
    });
    image.save(path).unwrap();
}

/// Writes a grey image, the way FER2013's files are stored.
pub(super) fn write_grey(path: &Path, side: u32, seed: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::GrayImage::from_fn(side, side, |x, y| {
        image::Luma([((x * 7 + y * 3 + seed) % 256) as u8])
    })
    .save(path)
    .unwrap();
}

/// An imagefolder tree with `per_class[c]` images in class folder `names[c]`.
pub(super) fn image_folder(root: &Path, names: &[&str], per_class: &[usize]) {
    for (c, (name, &count)) in names.iter().zip(per_class).enumerate() {
        for i in 0..count {
            let ext = if i % 2 == 0 { "png" } else { "jpg" };
            write_image(
                &root.join(name).join(format!("{i:03}.{ext}")),
                20 + i as u32 % 5,
                24,
                (c * 100 + i) as u32,
            );
        }
    }
}
