//! The interactive window (minifb): the frame with its overlay, refreshed as frames arrive.
//! Keys: q / Esc quit, s saves a PNG screenshot, space pauses, m mirrors.
//! Files are shown one after another (`--delay` seconds each), the last one stays up.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use minifb::{Key, KeyRepeat, ScaleMode, Window, WindowOptions};

use crate::frame::{rgb_word, Frame};
use crate::overlay::{Canvas, PANEL_COLOR, TEXT_COLOR};
use crate::pipeline::{Analyzer, Pipeline};
use crate::source::{FrameSource, Next};

pub const TITLE: &str = "face2exp-demo";

pub struct WindowOptionsCli {
    pub delay: Duration,
    pub screenshot_dir: PathBuf,
    pub max_frames: Option<u64>,
}

pub fn run<A: Analyzer>(
    pipeline: &mut Pipeline<A>,
    source: &mut dyn FrameSource,
    options: &WindowOptionsCli,
) -> Result<()> {
    let mut frame = Frame::default();
    // The first frame decides the window size; a source that fails at once is an error.
    pipeline.step(source, &mut frame)?;
    pipeline.draw(&mut frame, true);
    let mut window = Window::new(
        TITLE,
        frame.width(),
        frame.height(),
        WindowOptions {
            resize: true,
            scale_mode: ScaleMode::AspectRatioStretch,
            ..WindowOptions::default()
        },
    )
    .map_err(|e| anyhow!("cannot open a window ({e}); use --headless without a display"))?;
    let live = source.is_live();
    let mut paused = false;
    let mut ended = false;
    let mut shown_at = Instant::now();
    let mut screenshots = 0u32;
    let mut status: Option<(String, Instant)> = None;
    while window.is_open() && !window.is_key_down(Key::Escape) && !window.is_key_down(Key::Q) {
        if window.is_key_pressed(Key::Space, KeyRepeat::No) {
            paused = !paused;
        }
        if window.is_key_pressed(Key::M, KeyRepeat::No) {
            pipeline.mirror = !pipeline.mirror;
        }
        if window.is_key_pressed(Key::S, KeyRepeat::No) {
            screenshots += 1;
            let path = screenshot_path(&options.screenshot_dir, screenshots);
            let message = match frame.save_png(&path) {
                Ok(()) => format!("saved {}", path.display()),
                Err(e) => format!("{e:#}"),
            };
            eprintln!("{message}");
            status = Some((message, Instant::now()));
        }
        let frames_left = options
            .max_frames
            .is_none_or(|max| pipeline.frames_read() < max);
        let due = live || shown_at.elapsed() >= options.delay;
        let mut fresh = false;
        if !paused && !ended && due && frames_left {
            match pipeline.step(source, &mut frame) {
                Ok(Next::Frame) => {
                    pipeline.draw(&mut frame, true);
                    shown_at = Instant::now();
                    fresh = true;
                }
                Ok(Next::End) => ended = true,
                Err(e) => {
                    let message = format!("{e:#}");
                    eprintln!("error: {message}");
                    if live {
                        // A camera that fails (unplugged, stalled) ends the session cleanly.
                        return Err(e);
                    }
                    status = Some((message, Instant::now()));
                }
            }
        }
        if let Some((message, since)) = &status {
            if since.elapsed() < Duration::from_secs(3) {
                draw_status(&mut frame, message, paused);
            } else {
                status = None;
            }
        } else if paused {
            draw_status(&mut frame, "paused (space resumes)", paused);
        }
        window
            .update_with_buffer(frame.pixels(), frame.width(), frame.height())
            .map_err(|e| anyhow!("window update failed: {e}"))?;
        if !fresh {
            // Nothing new to show: keep the window responsive without spinning a core.
            std::thread::sleep(Duration::from_millis(15));
        }
    }
    Ok(())
}

fn screenshot_path(dir: &Path, n: u32) -> PathBuf {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    dir.join(format!("face2exp-screenshot-{stamp}-{n}.png"))
}

/// A one-line message along the bottom edge.
fn draw_status(frame: &mut Frame, message: &str, paused: bool) {
    let scale = crate::overlay::scale_for(frame);
    let y = frame.height() as i64 - (10 * scale) as i64;
    let bg = if paused {
        rgb_word(120, 0, 0)
    } else {
        PANEL_COLOR
    };
    Canvas::new(frame).label(0, y, message, scale, TEXT_COLOR, bg);
}
