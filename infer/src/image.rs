//! Borrowed camera/decoder frames and face regions.

use crate::error::ImageError;

/// Byte layout of one pixel (or, for YUYV, of a pair of pixels).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PixelFormat {
    Rgb8,
    Bgr8,
    Rgba8,
    Bgra8,
    /// One grey byte per pixel; replicated to three channels.
    Gray8,
    /// Packed 4:2:2 `Y0 U Y1 V` per two pixels, BT.601 limited range (what UVC cameras send).
    Yuyv,
}

impl PixelFormat {
    /// Bytes per pixel (YUYV: 2, averaged over a pair).
    pub fn bytes_per_pixel(self) -> usize {
        match self {
            PixelFormat::Rgb8 | PixelFormat::Bgr8 => 3,
            PixelFormat::Rgba8 | PixelFormat::Bgra8 => 4,
            PixelFormat::Gray8 => 1,
            PixelFormat::Yuyv => 2,
        }
    }

    /// Every format, for tests and tools.
    pub const ALL: [PixelFormat; 6] = [
        PixelFormat::Rgb8,
        PixelFormat::Bgr8,
        PixelFormat::Rgba8,
        PixelFormat::Bgra8,
        PixelFormat::Gray8,
        PixelFormat::Yuyv,
    ];
}

/// A borrowed image: `height` rows of `stride` bytes, the first `width * bytes_per_pixel` of
/// each holding pixels. Construction checks that every pixel lies inside `data`.
#[derive(Clone, Copy, Debug)]
pub struct ImageView<'a> {
    data: &'a [u8],
    width: usize,
    height: usize,
    stride: usize,
    format: PixelFormat,
}

impl<'a> ImageView<'a> {
    pub fn new(
        data: &'a [u8],
        width: usize,
        height: usize,
        stride: usize,
        format: PixelFormat,
    ) -> Result<Self, ImageError> {
        if width == 0 || height == 0 {
            return Err(ImageError::Empty { width, height });
        }
        if format == PixelFormat::Yuyv && width % 2 != 0 {
            return Err(ImageError::OddYuyvWidth(width));
        }
        let row_bytes = width
            .checked_mul(format.bytes_per_pixel())
            .ok_or(ImageError::TooLarge)?;
        if stride < row_bytes {
            return Err(ImageError::StrideTooSmall { stride, row_bytes });
        }
        let needed = stride
            .checked_mul(height - 1)
            .and_then(|n| n.checked_add(row_bytes))
            .ok_or(ImageError::TooLarge)?;
        if data.len() < needed {
            return Err(ImageError::TooShort {
                needed,
                found: data.len(),
            });
        }
        Ok(ImageView {
            data,
            width,
            height,
            stride,
            format,
        })
    }

    /// A tightly packed image (`stride = width * bytes_per_pixel`).
    pub fn packed(
        data: &'a [u8],
        width: usize,
        height: usize,
        format: PixelFormat,
    ) -> Result<Self, ImageError> {
        let stride = width
            .checked_mul(format.bytes_per_pixel())
            .ok_or(ImageError::TooLarge)?;
        ImageView::new(data, width, height, stride, format)
    }

    pub fn width(&self) -> usize {
        self.width
    }

    pub fn height(&self) -> usize {
        self.height
    }

    pub fn stride(&self) -> usize {
        self.stride
    }

    pub fn format(&self) -> PixelFormat {
        self.format
    }

    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    /// Pixel `(x, y)` as RGB in 0..=255. Callers keep `x < width`, `y < height`.
    #[inline(always)]
    pub(crate) fn rgb(&self, x: usize, y: usize) -> [f32; 3] {
        let row = &self.data[y * self.stride..];
        match self.format {
            PixelFormat::Rgb8 => {
                let p = &row[x * 3..x * 3 + 3];
                [p[0] as f32, p[1] as f32, p[2] as f32]
            }
            PixelFormat::Bgr8 => {
                let p = &row[x * 3..x * 3 + 3];
                [p[2] as f32, p[1] as f32, p[0] as f32]
            }
            PixelFormat::Rgba8 => {
                let p = &row[x * 4..x * 4 + 3];
                [p[0] as f32, p[1] as f32, p[2] as f32]
            }
            PixelFormat::Bgra8 => {
                let p = &row[x * 4..x * 4 + 3];
                [p[2] as f32, p[1] as f32, p[0] as f32]
            }
            PixelFormat::Gray8 => {
                let g = row[x] as f32;
                [g, g, g]
            }
            PixelFormat::Yuyv => {
                let pair = &row[(x / 2) * 4..(x / 2) * 4 + 4];
                yuv_to_rgb(pair[(x % 2) * 2], pair[1], pair[3])
            }
        }
    }
}

/// BT.601 limited-range YCbCr to RGB in 0..=255.
#[inline(always)]
pub fn yuv_to_rgb(y: u8, u: u8, v: u8) -> [f32; 3] {
    let c = 1.164_383 * (y as f32 - 16.0);
    let (d, e) = (u as f32 - 128.0, v as f32 - 128.0);
    let clamp = |x: f32| x.clamp(0.0, 255.0);
    [
        clamp(c + 1.596_027 * e),
        clamp(c - 0.391_762 * d - 0.812_968 * e),
        clamp(c + 2.017_232 * d),
    ]
}

/// Where a face is in an image, as a detector reports it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FaceRegion {
    /// `x, y, width, height` in image pixels (continuous: pixel `i` covers `[i, i+1)`).
    pub bbox: [f32; 4],
    /// Left eye, right eye, nose, left and right mouth corner ("left" = image left), as
    /// RetinaFace orders them. When present the face is aligned to
    /// [`crate::ALIGN_TEMPLATE`] instead of cropped to `bbox`.
    pub landmarks: Option<[[f32; 2]; 5]>,
}

impl FaceRegion {
    pub fn from_bbox(bbox: [f32; 4]) -> FaceRegion {
        FaceRegion {
            bbox,
            landmarks: None,
        }
    }
}
