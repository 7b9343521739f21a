//! The one pixel buffer every stage shares: a frame of `0x00RRGGBB` words.
//!
//! minifb displays exactly this layout, the overlay draws into it, and on a little-endian CPU
//! its bytes read as B, G, R, X, which `infer` accepts as `PixelFormat::Bgra8`; so a frame
//! is captured once and never converted again on its way to the detector, the classifier and
//! the screen.

use std::path::Path;

use anyhow::{bail, Context, Result};

#[cfg(not(target_endian = "little"))]
compile_error!(
    "face2exp-demo views its 0RGB frame words as BGRA bytes, which needs a little-endian CPU"
);

/// A packed `0x00RRGGBB` frame whose storage is reused from one capture to the next.
#[derive(Clone, Debug, Default)]
pub struct Frame {
    width: usize,
    height: usize,
    pixels: Vec<u32>,
}

impl Frame {
    pub fn new(width: usize, height: usize) -> Frame {
        Frame {
            width,
            height,
            pixels: vec![0; width * height],
        }
    }

    pub fn width(&self) -> usize {
        self.width
    }

    pub fn height(&self) -> usize {
        self.height
    }

    pub fn pixels(&self) -> &[u32] {
        &self.pixels
    }

    pub fn pixels_mut(&mut self) -> &mut [u32] {
        &mut self.pixels
    }

    /// The frame as B, G, R, X bytes (`PixelFormat::Bgra8`, stride `4 * width`).
    pub fn as_bgra_bytes(&self) -> &[u8] {
        bytemuck::cast_slice(&self.pixels)
    }

    /// Changes the frame's size; only allocates when it grows past anything seen before.
    pub fn resize(&mut self, width: usize, height: usize) {
        self.width = width;
        self.height = height;
        self.pixels.resize(width * height, 0);
    }

    pub fn fill(&mut self, color: u32) {
        self.pixels.fill(color);
    }

    /// Fills the frame from packed RGB8 rows (`stride` bytes apart).
    pub fn copy_from_rgb8(
        &mut self,
        width: usize,
        height: usize,
        rgb: &[u8],
        stride: usize,
    ) -> Result<()> {
        check_len("RGB8", rgb.len(), stride, width * 3, height)?;
        self.resize(width, height);
        for (y, row) in self.pixels.chunks_exact_mut(width).enumerate() {
            let src = &rgb[y * stride..y * stride + width * 3];
            for (dst, px) in row.iter_mut().zip(src.chunks_exact(3)) {
                *dst = rgb_word(px[0], px[1], px[2]);
            }
        }
        Ok(())
    }

    /// Fills the frame from 8-bit grey rows.
    pub fn copy_from_gray8(
        &mut self,
        width: usize,
        height: usize,
        gray: &[u8],
        stride: usize,
    ) -> Result<()> {
        check_len("grey", gray.len(), stride, width, height)?;
        self.resize(width, height);
        for (y, row) in self.pixels.chunks_exact_mut(width).enumerate() {
            let src = &gray[y * stride..y * stride + width];
            for (dst, &g) in row.iter_mut().zip(src) {
                *dst = rgb_word(g, g, g);
            }
        }
        Ok(())
    }

    /// Fills the frame from YUYV 4:2:2 rows (Y0 U Y1 V per pixel pair, BT.601 limited range,
    /// as UVC webcams send it).
    pub fn copy_from_yuyv(
        &mut self,
        width: usize,
        height: usize,
        yuyv: &[u8],
        stride: usize,
    ) -> Result<()> {
        if width % 2 != 0 {
            bail!("YUYV frame width {width} is odd; YUYV packs pixels in pairs");
        }
        check_len("YUYV", yuyv.len(), stride, width * 2, height)?;
        self.resize(width, height);
        for (y, row) in self.pixels.chunks_exact_mut(width).enumerate() {
            let src = &yuyv[y * stride..y * stride + width * 2];
            for (dst, quad) in row.chunks_exact_mut(2).zip(src.chunks_exact(4)) {
                let (u, v) = (quad[1], quad[3]);
                dst[0] = yuv_word(quad[0], u, v);
                dst[1] = yuv_word(quad[2], u, v);
            }
        }
        Ok(())
    }

    /// Flips the frame left-right in place (the `m` key: a webcam then behaves like a mirror).
    pub fn mirror(&mut self) {
        if self.width == 0 {
            return;
        }
        for row in self.pixels.chunks_exact_mut(self.width) {
            row.reverse();
        }
    }

    /// Writes the frame as an RGB PNG, naming the file in any error.
    pub fn save_png(&self, path: &Path) -> Result<()> {
        let mut rgb = Vec::with_capacity(self.pixels.len() * 3);
        for &p in &self.pixels {
            rgb.extend_from_slice(&[(p >> 16) as u8, (p >> 8) as u8, p as u8]);
        }
        image::save_buffer(
            path,
            &rgb,
            self.width as u32,
            self.height as u32,
            image::ExtendedColorType::Rgb8,
        )
        .with_context(|| format!("cannot write PNG {}", path.display()))
    }
}

pub const fn rgb_word(r: u8, g: u8, b: u8) -> u32 {
    ((r as u32) << 16) | ((g as u32) << 8) | b as u32
}

/// BT.601 limited-range YCbCr to RGB in 16.16 fixed point.
fn yuv_word(y: u8, u: u8, v: u8) -> u32 {
    let c = (y as i32 - 16).max(0) * 76284;
    let d = u as i32 - 128;
    let e = v as i32 - 128;
    let clamp = |x: i32| ((x + 32768) >> 16).clamp(0, 255) as u8;
    rgb_word(
        clamp(c + 104595 * e),
        clamp(c - 25690 * d - 53281 * e),
        clamp(c + 132186 * d),
    )
}

fn check_len(what: &str, len: usize, stride: usize, row_bytes: usize, height: usize) -> Result<()> {
    if stride < row_bytes {
        bail!("{what} stride {stride} is shorter than a row of {row_bytes} bytes");
    }
    let needed = if height == 0 {
        0
    } else {
        stride * (height - 1) + row_bytes
    };
    if len < needed {
        bail!("{what} buffer holds {len} bytes, a {height}-row frame needs {needed}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rgb_and_gray_pack_into_0rgb_words_and_bgra_bytes() {
        let mut frame = Frame::default();
        frame
            .copy_from_rgb8(2, 1, &[10, 20, 30, 40, 50, 60], 6)
            .unwrap();
        assert_eq!(frame.pixels(), &[0x000a141e, 0x0028323c]);
        assert_eq!(&frame.as_bgra_bytes()[..4], &[30, 20, 10, 0]);
        frame.copy_from_gray8(1, 2, &[7, 0, 9], 2).unwrap();
        assert_eq!(frame.pixels(), &[0x00070707, 0x00090909]);
    }

    #[test]
    fn yuyv_converts_with_bt601_limited_range() {
        let mut frame = Frame::default();
        // Black (Y=16), white (Y=235) with neutral chroma, then a pure-red pair.
        frame
            .copy_from_yuyv(4, 1, &[16, 128, 235, 128, 81, 90, 81, 240], 8)
            .unwrap();
        let px = frame.pixels();
        assert_eq!(px[0], 0);
        assert_eq!(px[1], 0x00ffffff);
        let (r, g, b) = (px[2] >> 16 & 255, px[2] >> 8 & 255, px[2] & 255);
        assert!(r > 250 && g < 5 && b < 5, "red came out as {r},{g},{b}");
    }

    #[test]
    fn short_buffers_and_odd_yuyv_widths_are_errors() {
        let mut frame = Frame::default();
        let err = frame.copy_from_rgb8(4, 4, &[0; 40], 12).unwrap_err();
        assert!(err.to_string().contains("needs 48"), "{err}");
        assert!(frame.copy_from_yuyv(3, 1, &[0; 8], 8).is_err());
    }

    #[test]
    fn mirror_reverses_each_row() {
        let mut frame = Frame::default();
        frame.copy_from_gray8(3, 2, &[1, 2, 3, 4, 5, 6], 3).unwrap();
        frame.mirror();
        let first: Vec<u32> = frame.pixels().iter().map(|p| p & 255).collect();
        assert_eq!(first, [3, 2, 1, 6, 5, 4]);
    }
}
