//! Where frames come from: a camera, or image files (one file, a folder in name order, or a
//! glob), all behind [`FrameSource`] so the pipeline, the overlay and the JSON output are the
//! same for every input.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::frame::Frame;

/// Image extensions a folder listing picks up (what the `image` crate is built to decode).
pub const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "bmp", "webp", "gif", "tif", "tiff"];

/// What a source said about the frame it just delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// A new frame is in the buffer.
    Frame,
    /// The input is exhausted (files) or closed.
    End,
}

/// A producer of frames that refills one caller-owned [`Frame`] in place.
pub trait FrameSource {
    /// Reads the next frame into `frame`. A file that cannot be decoded is an error naming
    /// the file, after which the source has moved on and the next call reads the next file.
    fn next_frame(&mut self, frame: &mut Frame) -> Result<Next>;

    /// Names the frame last delivered (its path, or `camera:N`), for the JSON `source` field.
    fn frame_name(&self) -> &str;

    /// Live sources (cameras) keep producing; file sources end, and the window then keeps
    /// showing the last image until the user quits.
    fn is_live(&self) -> bool;
}

/// Images from disk, in a fixed order.
#[derive(Debug)]
pub struct ImageFiles {
    paths: Vec<PathBuf>,
    names: Vec<String>,
    next: usize,
}

impl ImageFiles {
    /// Resolves `--input`: an image file, a folder (its images in name order, not recursive),
    /// or a glob pattern such as `photos/*.jpg` (matches in name order).
    pub fn open(input: &str) -> Result<ImageFiles> {
        let path = Path::new(input);
        let paths = if path.is_dir() {
            list_folder(path)?
        } else if path.is_file() {
            vec![path.to_path_buf()]
        } else if input.contains(['*', '?', '[']) {
            let matches =
                glob::glob(input).with_context(|| format!("bad glob pattern {input:?}"))?;
            let mut paths = Vec::new();
            for entry in matches {
                let entry = entry.with_context(|| format!("cannot read a match of {input:?}"))?;
                if entry.is_file() {
                    paths.push(entry);
                }
            }
            paths.sort();
            if paths.is_empty() {
                bail!("no files match the glob {input:?}");
            }
            paths
        } else {
            bail!(
                "input {input:?} does not exist (expected an image, a folder of images or a glob)"
            );
        };
        Ok(ImageFiles::from_paths(paths))
    }

    pub fn from_paths(paths: Vec<PathBuf>) -> ImageFiles {
        let names = paths.iter().map(|p| p.display().to_string()).collect();
        ImageFiles {
            paths,
            names,
            next: 0,
        }
    }

    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }
}

fn list_folder(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot list folder {}", dir.display()))?;
    let mut paths = Vec::new();
    for entry in entries {
        let path = entry
            .with_context(|| format!("cannot list folder {}", dir.display()))?
            .path();
        let is_image = path.extension().and_then(|e| e.to_str()).is_some_and(|e| {
            IMAGE_EXTENSIONS
                .iter()
                .any(|known| e.eq_ignore_ascii_case(known))
        });
        if is_image && path.is_file() {
            paths.push(path);
        }
    }
    paths.sort();
    if paths.is_empty() {
        bail!(
            "folder {} holds no images (looked for .{})",
            dir.display(),
            IMAGE_EXTENSIONS.join(", .")
        );
    }
    Ok(paths)
}

/// Decodes one image file into `frame` (grey and RGBA are converted to RGB).
pub fn load_image(path: &Path, frame: &mut Frame) -> Result<()> {
    let decoded = image::ImageReader::open(path)
        .with_context(|| format!("cannot open image {}", path.display()))?
        .with_guessed_format()
        .with_context(|| format!("cannot read image {}", path.display()))?
        .decode()
        .with_context(|| format!("cannot decode image {}", path.display()))?;
    let (width, height) = (decoded.width() as usize, decoded.height() as usize);
    if width == 0 || height == 0 {
        bail!("image {} is empty ({width}x{height})", path.display());
    }
    let copied = match decoded {
        image::DynamicImage::ImageLuma8(gray) => {
            frame.copy_from_gray8(width, height, gray.as_raw(), width)
        }
        other => {
            let rgb = other.into_rgb8();
            frame.copy_from_rgb8(width, height, rgb.as_raw(), width * 3)
        }
    };
    copied.with_context(|| format!("image {}", path.display()))
}

impl FrameSource for ImageFiles {
    fn next_frame(&mut self, frame: &mut Frame) -> Result<Next> {
        let Some(path) = self.paths.get(self.next) else {
            return Ok(Next::End);
        };
        self.next += 1;
        load_image(path, frame)?;
        Ok(Next::Frame)
    }

    fn frame_name(&self) -> &str {
        self.names
            .get(self.next.saturating_sub(1))
            .map_or("", String::as_str)
    }

    fn is_live(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_png(path: &Path, width: u32, height: u32, value: u8) {
        let rgb = vec![value; (width * height * 3) as usize];
        image::save_buffer(path, &rgb, width, height, image::ExtendedColorType::Rgb8).unwrap();
    }

    #[test]
    fn folder_lists_images_in_name_order_and_skips_other_files() {
        let dir = tempfile::tempdir().unwrap();
        write_png(&dir.path().join("b.png"), 4, 3, 200);
        write_png(&dir.path().join("a.PNG"), 2, 2, 100);
        std::fs::write(dir.path().join("notes.txt"), "not an image").unwrap();
        let mut source = ImageFiles::open(dir.path().to_str().unwrap()).unwrap();
        let mut frame = Frame::default();
        assert_eq!(source.next_frame(&mut frame).unwrap(), Next::Frame);
        assert!(source.frame_name().ends_with("a.PNG"));
        assert_eq!((frame.width(), frame.height()), (2, 2));
        assert_eq!(frame.pixels()[0], 0x00646464);
        assert_eq!(source.next_frame(&mut frame).unwrap(), Next::Frame);
        assert!(source.frame_name().ends_with("b.png"));
        assert_eq!((frame.width(), frame.height()), (4, 3));
        assert_eq!(source.next_frame(&mut frame).unwrap(), Next::End);
    }

    #[test]
    fn glob_matches_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["z.png", "m.png", "skip.bmp"] {
            write_png(&dir.path().join(name), 2, 2, 1);
        }
        let pattern = format!("{}/*.png", dir.path().display());
        let source = ImageFiles::open(&pattern).unwrap();
        let names: Vec<_> = source
            .paths()
            .iter()
            .map(|p| p.file_name().unwrap().to_owned())
            .collect();
        assert_eq!(names, ["m.png", "z.png"]);
        let none = format!("{}/*.jpg", dir.path().display());
        assert!(ImageFiles::open(&none)
            .unwrap_err()
            .to_string()
            .contains("no files match"));
    }

    #[test]
    fn bad_inputs_name_the_path_and_the_source_moves_on() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.png");
        let err = ImageFiles::open(missing.to_str().unwrap()).unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
        let empty = ImageFiles::open(dir.path().to_str().unwrap()).unwrap_err();
        assert!(empty.to_string().contains("holds no images"), "{empty}");

        std::fs::write(
            dir.path().join("a_broken.png"),
            b"\x89PNG\r\n\x1a\nnot really",
        )
        .unwrap();
        write_png(&dir.path().join("b_good.png"), 3, 3, 9);
        let mut source = ImageFiles::open(dir.path().to_str().unwrap()).unwrap();
        let mut frame = Frame::default();
        let err = source.next_frame(&mut frame).unwrap_err();
        assert!(format!("{err:#}").contains("a_broken.png"), "{err:#}");
        assert_eq!(source.next_frame(&mut frame).unwrap(), Next::Frame);
        assert!(source.frame_name().ends_with("b_good.png"));
    }
}
