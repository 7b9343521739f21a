//! Frame pixels to the network input: CHW planes B, G, R as `value - mean` (the Caffe-style
//! preprocessing RetinaFace was trained with), grey replicated to the three planes.

use crate::{yuv_to_rgb, ImageView, PixelFormat};

/// Per-channel means subtracted from B, G, R in 0..=255.
pub(crate) const MEAN_BGR: [f32; 3] = [104.0, 117.0, 127.0];

/// Network input size for a `width x height` frame shrunk by `downscale` (partial blocks at the
/// right and bottom edges count as whole input pixels).
pub(crate) fn network_size(width: usize, height: usize, downscale: usize) -> (usize, usize) {
    (width.div_ceil(downscale), height.div_ceil(downscale))
}

/// Calls `put(x, [r, g, b])` for every pixel of row `y`; the format is matched once per row.
#[inline(always)]
fn for_each_rgb(image: &ImageView<'_>, y: usize, mut put: impl FnMut(usize, [f32; 3])) {
    let row_bytes = image.width() * image.format().bytes_per_pixel();
    let row = &image.data()[y * image.stride()..y * image.stride() + row_bytes];
    let f = |v: u8| v as f32;
    match image.format() {
        PixelFormat::Rgb8 => row
            .chunks_exact(3)
            .enumerate()
            .for_each(|(x, p)| put(x, [f(p[0]), f(p[1]), f(p[2])])),
        PixelFormat::Bgr8 => row
            .chunks_exact(3)
            .enumerate()
            .for_each(|(x, p)| put(x, [f(p[2]), f(p[1]), f(p[0])])),
        PixelFormat::Rgba8 => row
            .chunks_exact(4)
            .enumerate()
            .for_each(|(x, p)| put(x, [f(p[0]), f(p[1]), f(p[2])])),
        PixelFormat::Bgra8 => row
            .chunks_exact(4)
            .enumerate()
            .for_each(|(x, p)| put(x, [f(p[2]), f(p[1]), f(p[0])])),
        PixelFormat::Gray8 => row.iter().enumerate().for_each(|(x, &v)| put(x, [f(v); 3])),
        PixelFormat::Yuyv => {
            for (pair, p) in row.chunks_exact(4).enumerate() {
                put(2 * pair, yuv_to_rgb(p[0], p[1], p[3]));
                put(2 * pair + 1, yuv_to_rgb(p[2], p[1], p[3]));
            }
        }
    }
}

/// Writes the network input for `image` shrunk by `downscale` (box filter: the mean of each
/// `downscale x downscale` block) into `out[..3 * w * h]` for the [`network_size`] `w x h`,
/// which the caller sized for it.
pub(crate) fn fill_network_input(image: &ImageView<'_>, downscale: usize, out: &mut [f32]) {
    let (width, height) = (image.width(), image.height());
    let (nw, nh) = network_size(width, height, downscale);
    let plane = nw * nh;
    let (blue, rest) = out[..3 * plane].split_at_mut(plane);
    let (green, red) = rest.split_at_mut(plane);
    if downscale == 1 {
        for y in 0..height {
            let b = &mut blue[y * width..(y + 1) * width];
            let g = &mut green[y * width..(y + 1) * width];
            let r = &mut red[y * width..(y + 1) * width];
            for_each_rgb(image, y, |x, [pr, pg, pb]| {
                b[x] = pb - MEAN_BGR[0];
                g[x] = pg - MEAN_BGR[1];
                r[x] = pr - MEAN_BGR[2];
            });
        }
        return;
    }
    for oy in 0..nh {
        let b = &mut blue[oy * nw..(oy + 1) * nw];
        let g = &mut green[oy * nw..(oy + 1) * nw];
        let r = &mut red[oy * nw..(oy + 1) * nw];
        b.fill(0.0);
        g.fill(0.0);
        r.fill(0.0);
        let rows = oy * downscale..height.min((oy + 1) * downscale);
        let rows_in_block = rows.len();
        for y in rows {
            for_each_rgb(image, y, |x, [pr, pg, pb]| {
                let ox = x / downscale;
                b[ox] += pb;
                g[ox] += pg;
                r[ox] += pr;
            });
        }
        for ox in 0..nw {
            let cols = width.min((ox + 1) * downscale) - ox * downscale;
            let norm = 1.0 / (cols * rows_in_block) as f32;
            b[ox] = b[ox] * norm - MEAN_BGR[0];
            g[ox] = g[ox] * norm - MEAN_BGR[1];
            r[ox] = r[ox] * norm - MEAN_BGR[2];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_format_gives_the_same_planes() {
        let (w, h) = (4, 2);
        let (r, g, b) = (200u8, 100u8, 50u8);
        let pixel = |format: PixelFormat| -> alloc::vec::Vec<u8> {
            match format {
                PixelFormat::Rgb8 => alloc::vec![r, g, b],
                PixelFormat::Bgr8 => alloc::vec![b, g, r],
                PixelFormat::Rgba8 => alloc::vec![r, g, b, 255],
                PixelFormat::Bgra8 => alloc::vec![b, g, r, 0],
                PixelFormat::Gray8 => alloc::vec![g],
                // A pair of pixels: Y=235 white, neutral chroma.
                PixelFormat::Yuyv => alloc::vec![235, 128, 235, 128],
            }
        };
        for format in PixelFormat::ALL {
            let px = pixel(format);
            let per_unit = if format == PixelFormat::Yuyv { 2 } else { 1 };
            let stride = w * format.bytes_per_pixel() + 3;
            let mut data = alloc::vec![0u8; stride * h];
            for y in 0..h {
                for unit in 0..w / per_unit {
                    let at = y * stride + unit * px.len();
                    data[at..at + px.len()].copy_from_slice(&px);
                }
            }
            let image = ImageView::new(&data, w, h, stride, format).unwrap();
            let mut out = [f32::NAN; 3 * 8];
            fill_network_input(&image, 1, &mut out);
            let want: [f32; 3] = match format {
                PixelFormat::Gray8 => [g as f32, g as f32, g as f32],
                PixelFormat::Yuyv => [255.0, 255.0, 255.0],
                _ => [b as f32, g as f32, r as f32],
            };
            for (c, plane) in out.chunks_exact(8).enumerate() {
                let expect = want[c] - MEAN_BGR[c];
                assert!(
                    plane.iter().all(|&v| (v - expect).abs() < 0.5),
                    "{format:?} channel {c}: {plane:?}"
                );
            }
        }
    }

    #[test]
    fn downscaling_averages_blocks_including_partial_ones() {
        // 5x3 grey ramp shrunk by 2 -> 3x2: blocks of 4, 2 (right edge), 2 (bottom), 1 (corner).
        let data: alloc::vec::Vec<u8> = (0..15).map(|i| i * 10).collect();
        let image = ImageView::packed(&data, 5, 3, PixelFormat::Gray8).unwrap();
        assert_eq!(network_size(5, 3, 2), (3, 2));
        let mut out = [f32::NAN; 18];
        fill_network_input(&image, 2, &mut out);
        let want = [30.0, 50.0, 65.0, 105.0, 125.0, 140.0];
        for (c, plane) in out.chunks_exact(6).enumerate() {
            for (v, w) in plane.iter().zip(want) {
                assert!(
                    (v - (w - MEAN_BGR[c])).abs() < 1e-4,
                    "channel {c}: {plane:?}"
                );
            }
        }
    }
}
