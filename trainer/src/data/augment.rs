//! Image transforms from decoded u8 RGB images to network input.
//!
//! - [`eval_transform`]: resize to S x S with `FilterType::Triangle`, then CHW f32 normalised by
//!   mean/std. This exact transform is the contract with `infer/` (docs/FORMAT.md
//!   `preprocess = resize-triangle`).
//! - [`weak_view`]: random resized crop (area 80-100 %, aspect 3/4-4/3), horizontal flip
//!   (p = 0.5) and a small rotation (+-10 degrees).
//! - [`strong_view`]: the weak geometry, then [`rand_augment`] and [`cutout`], as FixMatch's
//!   RandAugmentMC does for its strong view.
//! - [`random_erasing`]: torchvision's `RandomErasing` on the normalised CHW tensor, optional
//!   for labeled batches (`--random-erasing P`).
//!
//! Every random choice comes from the generator passed in, so a seeded ChaCha stream gives
//! the same pixels on every run and every thread.

use image::imageops::{self, FilterType};
use image::{Rgb, RgbImage};
use rand::Rng;

/// Grey used to fill pixels that geometric ops uncover and cutout squares (PIL's 128 / 127).
const FILL: [u8; 3] = [128, 128, 128];

/// Resizes to `size` x `size` with the triangle filter and writes CHW f32, normalised as
/// `(pixel / 255 - mean[c]) / std[c]`, into `out` (length 3 * size * size).
pub fn eval_transform(image: &RgbImage, size: u32, mean: [f32; 3], std: [f32; 3], out: &mut [f32]) {
    if image.dimensions() == (size, size) {
        to_chw(image, mean, std, out);
    } else {
        let resized = imageops::resize(image, size, size, FilterType::Triangle);
        to_chw(&resized, mean, std, out);
    }
}

/// Writes an image as CHW f32 normalised by mean/std into `out` (length 3 * w * h).
pub fn to_chw(image: &RgbImage, mean: [f32; 3], std: [f32; 3], out: &mut [f32]) {
    let plane = (image.width() * image.height()) as usize;
    assert_eq!(out.len(), 3 * plane, "output buffer does not fit the image");
    let scale: [f32; 3] = std::array::from_fn(|c| 1.0 / (255.0 * std[c]));
    let offset: [f32; 3] = std::array::from_fn(|c| mean[c] / std[c]);
    for (i, pixel) in image.pixels().enumerate() {
        for c in 0..3 {
            out[c * plane + i] = pixel.0[c] as f32 * scale[c] - offset[c];
        }
    }
}

/// The weak view: random resized crop to `size`, horizontal flip, rotation within +-10 deg.
pub fn weak_view(image: &RgbImage, size: u32, rng: &mut impl Rng) -> RgbImage {
    let mut view = random_resized_crop(image, size, (0.8, 1.0), rng);
    if rng.gen_bool(0.5) {
        imageops::flip_horizontal_in_place(&mut view);
    }
    let degrees = rng.gen_range(-10.0f32..=10.0);
    rotate(&view, degrees)
}

/// The strong view: the weak view, then RandAugment(`n`, `m`) and a cutout of half the side.
pub fn strong_view(image: &RgbImage, size: u32, n: usize, m: u32, rng: &mut impl Rng) -> RgbImage {
    let mut view = weak_view(image, size, rng);
    view = rand_augment(&view, n, m, rng);
    cutout(&mut view, 0.5, rng);
    view
}

/// torchvision's `RandomErasing(p, scale=(0.02, 0.33), ratio=(0.3, 3.3), value=0)` on one
/// normalised CHW image of side `size`: with probability `p`, a rectangle covering 2-33 % of
/// the area with a log-uniform aspect ratio in [0.3, 3.3] is set to 0, the dataset's mean
/// colour. Like torchvision it tries 10 shapes and erases nothing when none fits. Draws
/// nothing from `rng` when `p` is 0, so runs without erasing keep their random streams.
pub fn random_erasing(chw: &mut [f32], size: usize, p: f32, rng: &mut impl Rng) {
    if p <= 0.0 || rng.gen::<f32>() >= p {
        return;
    }
    let area = (size * size) as f32;
    let (log_low, log_high) = (0.3f32.ln(), 3.3f32.ln());
    for _ in 0..10 {
        let erase_area = area * rng.gen_range(0.02f32..0.33);
        let aspect = rng.gen_range(log_low..log_high).exp();
        let h = (erase_area * aspect).sqrt().round() as usize;
        let w = (erase_area / aspect).sqrt().round() as usize;
        if h == 0 || w == 0 || h >= size || w >= size {
            continue;
        }
        let (top, left) = (rng.gen_range(0..=size - h), rng.gen_range(0..=size - w));
        for plane in chw.chunks_mut(size * size) {
            for row in plane.chunks_mut(size).skip(top).take(h) {
                row[left..left + w].fill(0.0);
            }
        }
        return;
    }
}

/// Takes a random crop covering `scale` of the area with aspect ratio in [3/4, 4/3]
/// (log-uniform), resized to `size` x `size` with the triangle filter; after ten misses
/// the whole image is used, as torchvision's RandomResizedCrop does.
pub fn random_resized_crop(
    image: &RgbImage,
    size: u32,
    scale: (f32, f32),
    rng: &mut impl Rng,
) -> RgbImage {
    let (width, height) = image.dimensions();
    let area = (width * height) as f32;
    let (log_low, log_high) = ((3.0f32 / 4.0).ln(), (4.0f32 / 3.0).ln());
    for _ in 0..10 {
        let target = area * rng.gen_range(scale.0..=scale.1);
        let ratio = rng.gen_range(log_low..=log_high).exp();
        let w = (target * ratio).sqrt().round() as u32;
        let h = (target / ratio).sqrt().round() as u32;
        if w > 0 && h > 0 && w <= width && h <= height {
            let x = rng.gen_range(0..=width - w);
            let y = rng.gen_range(0..=height - h);
            let crop = imageops::crop_imm(image, x, y, w, h).to_image();
            return imageops::resize(&crop, size, size, FilterType::Triangle);
        }
    }
    imageops::resize(image, size, size, FilterType::Triangle)
}

/// Samples through an inverse affine map: output pixel centre (x, y) reads the source at
/// (a x + b y + c, d x + e y + f), bilinearly; outside the source it is [`FILL`].
fn affine(image: &RgbImage, inverse: [f32; 6]) -> RgbImage {
    let (width, height) = image.dimensions();
    let [a, b, c, d, e, f] = inverse;
    RgbImage::from_fn(width, height, |x, y| {
        let (px, py) = (x as f32 + 0.5, y as f32 + 0.5);
        let sx = a * px + b * py + c - 0.5;
        let sy = d * px + e * py + f - 0.5;
        sample_bilinear(image, sx, sy)
    })
}

fn sample_bilinear(image: &RgbImage, x: f32, y: f32) -> Rgb<u8> {
    let (width, height) = image.dimensions();
    if x <= -1.0 || y <= -1.0 || x >= width as f32 || y >= height as f32 {
        return Rgb(FILL);
    }
    let (x0, y0) = (x.floor(), y.floor());
    let (fx, fy) = (x - x0, y - y0);
    let fetch = |xi: f32, yi: f32| -> [f32; 3] {
        if xi < 0.0 || yi < 0.0 || xi >= width as f32 || yi >= height as f32 {
            FILL.map(f32::from)
        } else {
            image.get_pixel(xi as u32, yi as u32).0.map(f32::from)
        }
    };
    let (p00, p10) = (fetch(x0, y0), fetch(x0 + 1.0, y0));
    let (p01, p11) = (fetch(x0, y0 + 1.0), fetch(x0 + 1.0, y0 + 1.0));
    Rgb(std::array::from_fn(|c| {
        let top = p00[c] + (p10[c] - p00[c]) * fx;
        let bottom = p01[c] + (p11[c] - p01[c]) * fx;
        (top + (bottom - top) * fy).round().clamp(0.0, 255.0) as u8
    }))
}

/// Rotates about the centre by `degrees` (counter-clockwise, as PIL), same size.
pub fn rotate(image: &RgbImage, degrees: f32) -> RgbImage {
    let (sin, cos) = degrees.to_radians().sin_cos();
    let (cx, cy) = (image.width() as f32 / 2.0, image.height() as f32 / 2.0);
    // Inverse of a counter-clockwise rotation in image coordinates (y down).
    affine(
        image,
        [
            cos,
            -sin,
            cx - cos * cx + sin * cy,
            sin,
            cos,
            cy - sin * cx - cos * cy,
        ],
    )
}

/// Shears about the centre: x' = x + shear * (y - cy) (vertical = false) or the transpose.
pub fn shear(image: &RgbImage, shear: f32, vertical: bool) -> RgbImage {
    let (cx, cy) = (image.width() as f32 / 2.0, image.height() as f32 / 2.0);
    if vertical {
        affine(image, [1.0, 0.0, 0.0, -shear, 1.0, shear * cx])
    } else {
        affine(image, [1.0, -shear, shear * cy, 0.0, 1.0, 0.0])
    }
}

/// Moves the content by (dx, dy) pixels.
pub fn translate(image: &RgbImage, dx: f32, dy: f32) -> RgbImage {
    affine(image, [1.0, 0.0, -dx, 0.0, 1.0, -dy])
}

fn map_pixels(image: &mut RgbImage, f: impl Fn(usize, u8) -> u8) {
    for pixel in image.pixels_mut() {
        for c in 0..3 {
            pixel.0[c] = f(c, pixel.0[c]);
        }
    }
}

/// PIL's blend: degenerate + factor * (image - degenerate), clamped.
fn blend(image: &mut RgbImage, degenerate: &RgbImage, factor: f32) {
    for (pixel, base) in image.pixels_mut().zip(degenerate.pixels()) {
        for c in 0..3 {
            let (p, b) = (pixel.0[c] as f32, base.0[c] as f32);
            pixel.0[c] = (b + factor * (p - b)).round().clamp(0.0, 255.0) as u8;
        }
    }
}

fn luma(pixel: &Rgb<u8>) -> u8 {
    let [r, g, b] = pixel.0.map(u32::from);
    ((r * 299 + g * 587 + b * 114 + 500) / 1000) as u8
}

/// Saturation (PIL ImageEnhance.Color): 0 grey, 1 unchanged.
pub fn color(image: &mut RgbImage, factor: f32) {
    let grey = RgbImage::from_fn(image.width(), image.height(), |x, y| {
        let l = luma(image.get_pixel(x, y));
        Rgb([l, l, l])
    });
    blend(image, &grey, factor);
}

/// PIL ImageEnhance.Contrast: blend with the mean grey level.
pub fn contrast(image: &mut RgbImage, factor: f32) {
    let count = (image.width() * image.height()).max(1) as f32;
    let mean = (image.pixels().map(|p| luma(p) as f32).sum::<f32>() / count).round() as u8;
    let flat = RgbImage::from_pixel(image.width(), image.height(), Rgb([mean; 3]));
    blend(image, &flat, factor);
}

/// PIL ImageEnhance.Brightness: blend with black.
pub fn brightness(image: &mut RgbImage, factor: f32) {
    map_pixels(image, |_, v| {
        (v as f32 * factor).round().clamp(0.0, 255.0) as u8
    });
}

/// PIL ImageEnhance.Sharpness: blend with PIL's SMOOTH filter (border pixels kept).
pub fn sharpness(image: &mut RgbImage, factor: f32) {
    let (width, height) = image.dimensions();
    let mut smooth = image.clone();
    for y in 1..height.saturating_sub(1) {
        for x in 1..width.saturating_sub(1) {
            let mut sum = [0u32; 3];
            for (dy, dx) in (0..3).flat_map(|dy| (0..3).map(move |dx| (dy, dx))) {
                let weight = if (dx, dy) == (1, 1) { 5 } else { 1 };
                let p = image.get_pixel(x + dx - 1, y + dy - 1);
                for (total, &value) in sum.iter_mut().zip(&p.0) {
                    *total += weight * value as u32;
                }
            }
            smooth.put_pixel(x, y, Rgb(sum.map(|s| ((s + 6) / 13) as u8)));
        }
    }
    blend(image, &smooth, factor);
}

/// Stretches each channel so its darkest value becomes 0 and its brightest 255.
pub fn autocontrast(image: &mut RgbImage) {
    let mut low = [255u8; 3];
    let mut high = [0u8; 3];
    for pixel in image.pixels() {
        for c in 0..3 {
            low[c] = low[c].min(pixel.0[c]);
            high[c] = high[c].max(pixel.0[c]);
        }
    }
    map_pixels(image, |c, v| {
        if high[c] <= low[c] {
            v
        } else {
            ((v - low[c]) as f32 * 255.0 / (high[c] - low[c]) as f32).round() as u8
        }
    });
}

/// Histogram equalisation per channel, PIL's ImageOps.equalize rule.
pub fn equalize(image: &mut RgbImage) {
    let mut luts = [[0u8; 256]; 3];
    for (c, lut) in luts.iter_mut().enumerate() {
        let mut histogram = [0usize; 256];
        for pixel in image.pixels() {
            histogram[pixel.0[c] as usize] += 1;
        }
        let last = histogram
            .iter()
            .rposition(|&h| h > 0)
            .map_or(0, |i| histogram[i]);
        let step = (histogram.iter().sum::<usize>() - last) / 255;
        for (v, entry) in lut.iter_mut().enumerate() {
            *entry = v as u8;
        }
        if step == 0 {
            continue;
        }
        let mut running = step / 2;
        for (v, entry) in lut.iter_mut().enumerate() {
            *entry = (running / step).min(255) as u8;
            running += histogram[v];
        }
    }
    map_pixels(image, |c, v| luts[c][v as usize]);
}

/// Inverts every value at or above `threshold`.
pub fn solarize(image: &mut RgbImage, threshold: u8) {
    map_pixels(image, |_, v| if v >= threshold { 255 - v } else { v });
}

/// Keeps the top `bits` bits of each value.
pub fn posterize(image: &mut RgbImage, bits: u32) {
    let mask = (0xFFu32 << (8 - bits.clamp(1, 8))) as u8;
    map_pixels(image, |_, v| v & mask);
}

/// Fills a square of side `fraction` x the shorter side, centred at a random pixel (it may be
/// clipped by the border), with grey: FixMatch's CutoutAbs.
pub fn cutout(image: &mut RgbImage, fraction: f32, rng: &mut impl Rng) {
    let (width, height) = image.dimensions();
    let side = (fraction * width.min(height) as f32).round() as i64;
    if side <= 0 {
        return;
    }
    let (cx, cy) = (
        rng.gen_range(0..width) as i64,
        rng.gen_range(0..height) as i64,
    );
    let (x0, y0) = ((cx - side / 2).max(0), (cy - side / 2).max(0));
    let (x1, y1) = (
        (x0 + side).min(width as i64),
        (y0 + side).min(height as i64),
    );
    for y in y0..y1 {
        for x in x0..x1 {
            image.put_pixel(x as u32, y as u32, Rgb([127; 3]));
        }
    }
}

/// The operations RandAugment picks from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AugmentOp {
    Identity,
    AutoContrast,
    Equalize,
    Rotate,
    Solarize,
    Color,
    Posterize,
    Contrast,
    Brightness,
    Sharpness,
    ShearX,
    ShearY,
    TranslateX,
    TranslateY,
}

impl AugmentOp {
    pub const ALL: [AugmentOp; 14] = [
        AugmentOp::Identity,
        AugmentOp::AutoContrast,
        AugmentOp::Equalize,
        AugmentOp::Rotate,
        AugmentOp::Solarize,
        AugmentOp::Color,
        AugmentOp::Posterize,
        AugmentOp::Contrast,
        AugmentOp::Brightness,
        AugmentOp::Sharpness,
        AugmentOp::ShearX,
        AugmentOp::ShearY,
        AugmentOp::TranslateX,
        AugmentOp::TranslateY,
    ];

    /// Applies the op at `level` in [0, 1] (magnitude / 10); signed ops pick a random sign.
    /// Full level: rotate 30 deg, shear 0.3, translate 30 % of the side, enhance factors
    /// 1 +- 0.9, solarize threshold 0, posterize to 4 bits.
    pub fn apply(self, image: &RgbImage, level: f32, rng: &mut impl Rng) -> RgbImage {
        let sign = if rng.gen_bool(0.5) { 1.0 } else { -1.0 };
        let signed = sign * level;
        let mut out = image.clone();
        match self {
            AugmentOp::Identity => {}
            AugmentOp::AutoContrast => autocontrast(&mut out),
            AugmentOp::Equalize => equalize(&mut out),
            AugmentOp::Rotate => out = rotate(image, 30.0 * signed),
            AugmentOp::Solarize => solarize(&mut out, (255.0 * (1.0 - level)).round() as u8),
            AugmentOp::Color => color(&mut out, 1.0 + 0.9 * signed),
            AugmentOp::Posterize => posterize(&mut out, 8 - (4.0 * level).round() as u32),
            AugmentOp::Contrast => contrast(&mut out, 1.0 + 0.9 * signed),
            AugmentOp::Brightness => brightness(&mut out, 1.0 + 0.9 * signed),
            AugmentOp::Sharpness => sharpness(&mut out, 1.0 + 0.9 * signed),
            AugmentOp::ShearX => out = shear(image, 0.3 * signed, false),
            AugmentOp::ShearY => out = shear(image, 0.3 * signed, true),
            AugmentOp::TranslateX => {
                out = translate(image, 0.3 * signed * image.width() as f32, 0.0)
            }
            AugmentOp::TranslateY => {
                out = translate(image, 0.0, 0.3 * signed * image.height() as f32)
            }
        }
        out
    }
}

/// RandAugment as FixMatch's RandAugmentMC: `n` ops drawn uniformly (with replacement), each
/// applied with probability 0.5 at a magnitude drawn uniformly from 1..=`m` (of 10).
pub fn rand_augment(image: &RgbImage, n: usize, m: u32, rng: &mut impl Rng) -> RgbImage {
    let mut out = image.clone();
    for _ in 0..n {
        let op = AugmentOp::ALL[rng.gen_range(0..AugmentOp::ALL.len())];
        let magnitude = rng.gen_range(1..=m.clamp(1, 10));
        if rng.gen_bool(0.5) {
            out = op.apply(&out, magnitude as f32 / 10.0, rng);
        }
    }
    out
}
