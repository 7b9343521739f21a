//! `--headless`: every frame through the pipeline, results on stdout (JSON lines with
//! `--json`, one readable line per frame without), annotated PNGs with `--out DIR`.
//! This is also the batch CLI for photos and folders. A file that cannot be read is reported
//! (and counted) without stopping the batch; the exit status says whether any failed.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::frame::Frame;
use crate::pipeline::{Analyzer, Pipeline};
use crate::report::JsonLines;
use crate::source::{FrameSource, Next};

pub struct HeadlessOptions {
    pub json: bool,
    pub out: Option<PathBuf>,
    pub max_frames: Option<u64>,
}

/// What a headless run did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub frames: u64,
    pub faces: u64,
    pub failed: u64,
}

pub fn run<A: Analyzer>(
    pipeline: &mut Pipeline<A>,
    source: &mut dyn FrameSource,
    options: &HeadlessOptions,
    out: &mut dyn Write,
) -> Result<Summary> {
    if let Some(dir) = &options.out {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create output folder {}", dir.display()))?;
    }
    let mut frame = Frame::default();
    let mut json = JsonLines::new();
    let mut summary = Summary::default();
    let mut index = 0u64;
    loop {
        if options.max_frames.is_some_and(|max| index >= max) {
            break;
        }
        let step = pipeline.step(source, &mut frame);
        let error = match step {
            Ok(Next::End) => break,
            Ok(Next::Frame) => None,
            // A camera that fails (unplugged, stalled) will not recover: end the run.
            Err(e) if source.is_live() => return Err(e),
            Err(e) => Some(format!("{e:#}")),
        };
        let name = pipeline.frame_name();
        let faces = if error.is_some() {
            &[][..]
        } else {
            pipeline.faces()
        };
        if options.json {
            json.write(
                out,
                index,
                name,
                error.as_deref(),
                faces,
                pipeline.class_names(),
            )
            .context("cannot write to stdout")?;
        } else {
            write_text_line(out, index, name, error.as_deref(), pipeline)?;
        }
        match &error {
            Some(message) => {
                summary.failed += 1;
                if options.json {
                    eprintln!("error: {message}");
                }
            }
            None => {
                summary.faces += faces.len() as u64;
                if let Some(dir) = &options.out {
                    pipeline.draw(&mut frame, false);
                    let path = dir.join(png_name(name, index, source.is_live()));
                    frame.save_png(&path)?;
                }
            }
        }
        summary.frames += 1;
        index += 1;
    }
    out.flush().context("cannot write to stdout")?;
    Ok(summary)
}

fn write_text_line<A: Analyzer>(
    out: &mut dyn Write,
    index: u64,
    name: &str,
    error: Option<&str>,
    pipeline: &Pipeline<A>,
) -> Result<()> {
    write!(out, "{index} {name}: ")?;
    if let Some(message) = error {
        writeln!(out, "error: {message}")?;
        return Ok(());
    }
    let faces = pipeline.faces();
    write!(
        out,
        "{} face{}",
        faces.len(),
        if faces.len() == 1 { "" } else { "s" }
    )?;
    let names = pipeline.class_names();
    for face in faces {
        let (class, p) = face.top_class(names.len());
        let [x, y, w, h] = face.bbox;
        write!(
            out,
            ", {} {:.0}% at [{x:.0}, {y:.0}, {w:.0}, {h:.0}]",
            names[class],
            p * 100.0
        )?;
    }
    writeln!(out)?;
    Ok(())
}

/// `photo.jpg` -> `photo.png`; camera frames -> `frame_000042.png`.
fn png_name(source_name: &str, index: u64, live: bool) -> String {
    let stem = Path::new(source_name).file_stem().and_then(|s| s.to_str());
    match stem {
        Some(stem) if !live => format!("{stem}.png"),
        _ => format!("frame_{index:06}.png"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_names_follow_the_input_file_or_the_frame_number() {
        assert_eq!(png_name("photos/a.b.jpg", 3, false), "a.b.png");
        assert_eq!(png_name("camera:0", 42, true), "frame_000042.png");
    }
}
