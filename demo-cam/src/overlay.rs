//! Draws the demo's overlay into a `0x00RRGGBB` frame: a box per face in its expression's
//! colour, a label with the expression and confidence, a bar chart of the class
//! probabilities beside the box, landmarks, and FPS plus per-stage latency in the top-left
//! corner. Text uses the public-domain 8x8 bitmap font from `font8x8`, scaled by whole pixels.
//! Nothing here allocates: numbers are formatted into a stack buffer.

use std::fmt::Write;

use crate::faces::{FaceResult, MAX_CLASSES};
use crate::frame::{rgb_word, Frame};

/// One colour per canonical class (neutral, happy, sad, surprise, fear, disgust, anger,
/// contempt), chosen to stay distinct on skin and on each other.
pub const CLASS_COLORS: [u32; MAX_CLASSES] = [
    rgb_word(200, 200, 200),
    rgb_word(255, 210, 0),
    rgb_word(60, 120, 255),
    rgb_word(255, 120, 0),
    rgb_word(170, 80, 255),
    rgb_word(40, 200, 80),
    rgb_word(255, 40, 40),
    rgb_word(0, 200, 200),
];
pub const TEXT_COLOR: u32 = rgb_word(255, 255, 255);
pub const PANEL_COLOR: u32 = rgb_word(0, 0, 0);
pub const BAR_TRACK_COLOR: u32 = rgb_word(60, 60, 60);
pub const GLYPH: usize = 8;
/// Length of a 100% bar, in glyph widths.
pub const BAR_GLYPHS: usize = 8;

/// Wall-clock milliseconds of each stage of the last frame, and the frame rate.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StageTimes {
    pub capture_ms: f32,
    pub detect_ms: f32,
    pub classify_ms: f32,
    pub fps: f32,
}

/// Text scale for a frame: 8 px glyphs up to 480 px wide, 16 px above.
pub fn scale_for(frame: &Frame) -> usize {
    if frame.width() > 480 {
        2
    } else {
        1
    }
}

/// A clipped drawing surface over a frame.
pub struct Canvas<'a> {
    pixels: &'a mut [u32],
    width: i64,
    height: i64,
}

impl<'a> Canvas<'a> {
    pub fn new(frame: &'a mut Frame) -> Canvas<'a> {
        let (width, height) = (frame.width() as i64, frame.height() as i64);
        Canvas {
            pixels: frame.pixels_mut(),
            width,
            height,
        }
    }

    /// Fills `[x, x+w) x [y, y+h)`, clipped to the frame.
    pub fn fill_rect(&mut self, x: i64, y: i64, w: i64, h: i64, color: u32) {
        let (x0, y0) = (x.max(0), y.max(0));
        let (x1, y1) = ((x + w).min(self.width), (y + h).min(self.height));
        if x0 >= x1 || y0 >= y1 {
            return;
        }
        for row in y0..y1 {
            let start = (row * self.width) as usize;
            self.pixels[start + x0 as usize..start + x1 as usize].fill(color);
        }
    }

    /// Draws a rectangle outline `thickness` pixels wide, inside `[x, x+w) x [y, y+h)`.
    pub fn stroke_rect(&mut self, x: i64, y: i64, w: i64, h: i64, thickness: i64, color: u32) {
        let t = thickness.min(w / 2).min(h / 2).max(1);
        self.fill_rect(x, y, w, t, color);
        self.fill_rect(x, y + h - t, w, t, color);
        self.fill_rect(x, y + t, t, h - 2 * t, color);
        self.fill_rect(x + w - t, y + t, t, h - 2 * t, color);
    }

    /// Draws ASCII text with its top-left corner at (x, y); other characters show as `?`.
    /// Returns the width drawn.
    pub fn text(&mut self, x: i64, y: i64, text: &str, scale: usize, color: u32) -> i64 {
        let s = scale.max(1) as i64;
        let mut cx = x;
        for ch in text.chars() {
            let code = if ch.is_ascii() {
                ch as usize
            } else {
                '?' as usize
            };
            let glyph = font8x8::legacy::BASIC_LEGACY[code];
            for (gy, bits) in glyph.iter().enumerate() {
                for gx in 0..GLYPH {
                    // font8x8 stores the leftmost pixel in bit 0.
                    if bits >> gx & 1 == 1 {
                        self.fill_rect(cx + gx as i64 * s, y + gy as i64 * s, s, s, color);
                    }
                }
            }
            cx += GLYPH as i64 * s;
        }
        cx - x
    }

    /// Text on a filled panel one pixel-scale wider on each side; returns the panel's size.
    pub fn label(
        &mut self,
        x: i64,
        y: i64,
        text: &str,
        scale: usize,
        fg: u32,
        bg: u32,
    ) -> (i64, i64) {
        let s = scale.max(1) as i64;
        let w = text.chars().count() as i64 * GLYPH as i64 * s + 2 * s;
        let h = GLYPH as i64 * s + 2 * s;
        self.fill_rect(x, y, w, h, bg);
        self.text(x + s, y + s, text, scale, fg);
        (w, h)
    }
}

/// A fixed-capacity string for formatting numbers without allocating.
pub struct StackText<const N: usize> {
    bytes: [u8; N],
    len: usize,
}

impl<const N: usize> StackText<N> {
    pub fn new() -> Self {
        StackText {
            bytes: [0; N],
            len: 0,
        }
    }

    pub fn as_str(&self) -> &str {
        // Only whole `&str`s are ever copied in, so the prefix is valid UTF-8.
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or("")
    }
}

impl<const N: usize> Default for StackText<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> Write for StackText<N> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        if end > N {
            return Err(std::fmt::Error);
        }
        self.bytes[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Three-letter names for the bar chart rows.
fn short_name(name: &str) -> &str {
    name.get(..3).unwrap_or(name)
}

/// Rectangles `[x, y, w, h]` already drawn, so later charts can avoid them. A fixed array:
/// the overlay must not allocate, and beyond its capacity charts simply stop avoiding.
struct Occupied {
    rects: [[i64; 4]; 64],
    len: usize,
}

impl Occupied {
    fn push(&mut self, rect: [i64; 4]) {
        if self.len < self.rects.len() {
            self.rects[self.len] = rect;
            self.len += 1;
        }
    }

    fn overlaps(&self, r: [i64; 4]) -> bool {
        self.rects[..self.len].iter().any(|o| {
            r[0] < o[0] + o[2] && o[0] < r[0] + r[2] && r[1] < o[1] + o[3] && o[1] < r[1] + r[3]
        })
    }
}

/// Where a face's chart goes: right of the box, else left, below, above, whichever first lies
/// wholly in the frame without covering another face or chart; else right of the box, clipped.
/// `face` is the box; its label takes `label_h` pixels above it.
fn place_chart(
    face: [i64; 4],
    label_h: i64,
    size: (i64, i64),
    gap: i64,
    frame: (i64, i64),
    occupied: &Occupied,
) -> (i64, i64) {
    let [x, y, w, h] = face;
    let (cw, ch) = size;
    let candidates = [
        (x + w + gap, y),
        (x - gap - cw, y),
        (x, y + h + gap),
        (x, y - label_h - gap - ch),
    ];
    let fits = |&(cx, cy): &(i64, i64)| {
        cx >= 0
            && cy >= 0
            && cx + cw <= frame.0
            && cy + ch <= frame.1
            && !occupied.overlaps([cx, cy, cw, ch])
    };
    candidates
        .iter()
        .copied()
        .find(|c| fits(c))
        .unwrap_or(candidates[0])
}

/// Draws every face: box, landmarks, "expression NN%" label above (or inside, at the top
/// edge) and the probability bars beside the box (see [`place_chart`]).
pub fn draw_faces(frame: &mut Frame, faces: &[FaceResult], class_names: &[&str], scale: usize) {
    let n = class_names.len().min(MAX_CLASSES);
    let s = scale.max(1) as i64;
    let frame_size = (frame.width() as i64, frame.height() as i64);
    let mut canvas = Canvas::new(frame);
    let label_h = (GLYPH as i64 + 2) * s;
    let boxes = faces
        .iter()
        .map(|f| f.bbox.map(|v| v.round().clamp(-1e6, 1e6) as i64));
    let mut occupied = Occupied {
        rects: [[0; 4]; 64],
        len: 0,
    };
    for [x, y, w, h] in boxes.clone() {
        occupied.push([x, y - label_h, w, h + label_h]);
    }
    for (face, [x, y, w, h]) in faces.iter().zip(boxes) {
        let (class, confidence) = face.top_class(n);
        let color = CLASS_COLORS[class];
        canvas.stroke_rect(x, y, w, h, 2 * s, color);
        if let Some(points) = &face.landmarks {
            for p in points {
                let [px, py] = p.map(|v| v.round().clamp(-1e6, 1e6) as i64);
                canvas.fill_rect(px - s, py - s, 2 * s + 1, 2 * s + 1, color);
            }
        }
        let mut text = StackText::<48>::new();
        let name = class_names.get(class).copied().unwrap_or("?");
        let _ = write!(text, "{name} {:.0}%", confidence * 100.0);
        let label_y = if y >= label_h { y - label_h } else { y };
        canvas.label(x, label_y, text.as_str(), scale, PANEL_COLOR, color);

        let row_h = (GLYPH as i64 + 2) * s;
        let bar_max = (BAR_GLYPHS * GLYPH) as i64 * s;
        let chart_size = (
            (4 * GLYPH) as i64 * s + bar_max + 2 * s,
            row_h * n as i64 + s,
        );
        let (chart_x, chart_y) = place_chart(
            [x, y, w, h],
            label_h,
            chart_size,
            2 * s,
            frame_size,
            &occupied,
        );
        occupied.push([chart_x, chart_y, chart_size.0, chart_size.1]);
        canvas.fill_rect(chart_x, chart_y, chart_size.0, chart_size.1, PANEL_COLOR);
        for (i, name) in class_names.iter().take(n).enumerate() {
            let row_y = chart_y + s + i as i64 * row_h;
            let text_w = canvas.text(chart_x + s, row_y, short_name(name), scale, TEXT_COLOR);
            let bar_x = chart_x + s + text_w + (GLYPH as i64) * s;
            let bar_len = (face.probs[i].clamp(0.0, 1.0) * bar_max as f32).round() as i64;
            canvas.fill_rect(bar_x, row_y, bar_max, GLYPH as i64 * s, BAR_TRACK_COLOR);
            canvas.fill_rect(bar_x, row_y, bar_len, GLYPH as i64 * s, CLASS_COLORS[i]);
        }
    }
}

/// Draws "FPS", then capture / detect / classify milliseconds, in the top-left corner.
pub fn draw_stats(frame: &mut Frame, times: &StageTimes, scale: usize) {
    let s = scale.max(1) as i64;
    let mut canvas = Canvas::new(frame);
    let rows: [(&str, f32, &str); 4] = [
        ("FPS      ", times.fps, ""),
        ("capture  ", times.capture_ms, " ms"),
        ("detect   ", times.detect_ms, " ms"),
        ("classify ", times.classify_ms, " ms"),
    ];
    let row_h = (GLYPH as i64 + 2) * s;
    for (i, (name, value, unit)) in rows.iter().enumerate() {
        let mut text = StackText::<40>::new();
        let _ = write!(text, "{name}{value:6.1}{unit}");
        canvas.label(
            s,
            s + i as i64 * row_h,
            text.as_str(),
            scale,
            TEXT_COLOR,
            PANEL_COLOR,
        );
    }
}

#[cfg(test)]
mod tests;
