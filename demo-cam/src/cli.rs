//! Command-line options.

use std::path::PathBuf;

use face2exp_infer::LatePrecision;

use clap::Parser;

use crate::camera::{Encoding, ModeRequest};
use crate::track::TrackerConfig;

/// Live facial-expression recognition: camera or image files -> face detection ->
/// expression classification -> a window with the overlay, or JSON lines.
#[derive(Parser, Debug, Clone)]
#[command(name = "face2exp-demo", version, about)]
#[command(after_help = "Examples:\n  \
    face2exp-demo                                   # camera 0 in a window\n  \
    face2exp-demo --input demo-cam/assets/           # images of a folder, in name order\n  \
    face2exp-demo --input 'photos/*.jpg' --headless --json --out annotated/\n  \
    face2exp-demo --list-cameras")]
pub struct Args {
    /// An image, a folder of images (name order) or a quoted glob, instead of a camera.
    #[arg(long, value_name = "PATH")]
    pub input: Option<String>,

    /// Camera index (see --list-cameras).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub camera: u32,

    /// List the cameras and the modes they offer, then exit.
    #[arg(long)]
    pub list_cameras: bool,

    /// Requested capture width; the nearest offered mode is used.
    #[arg(long, default_value_t = 640)]
    pub width: u32,

    /// Requested capture height.
    #[arg(long, default_value_t = 480)]
    pub height: u32,

    /// Requested capture frame rate.
    #[arg(long, default_value_t = 30)]
    pub fps: u32,

    /// Force a capture encoding (default: the best match, YUYV before MJPEG).
    #[arg(long, value_enum, value_name = "ENCODING")]
    pub format: Option<Encoding>,

    /// Seconds without a frame after which the camera counts as gone.
    #[arg(long, value_name = "SECONDS", default_value_t = 3.0)]
    pub frame_timeout: f32,

    /// No window: process every frame and print results on stdout.
    #[arg(long)]
    pub headless: bool,

    /// With --headless: print one JSON object per frame (one line each).
    #[arg(long, requires = "headless")]
    pub json: bool,

    /// With --headless: also write each annotated frame as a PNG into this folder.
    #[arg(long, value_name = "DIR", requires = "headless")]
    pub out: Option<PathBuf>,

    /// Stop after this many frames.
    #[arg(long, value_name = "N")]
    pub max_frames: Option<u64>,

    /// Expression classifier (.safetensors); default: the weights embedded at build time.
    #[arg(long, value_name = "PATH", env = "FACE2EXP_WEIGHTS")]
    pub weights: Option<PathBuf>,

    /// Face detector (.safetensors); default: the detector embedded at build time.
    #[arg(long, value_name = "PATH", env = "FACE2EXP_DETECTOR")]
    pub detector: Option<PathBuf>,

    /// Treat each frame as one face crop (for pre-cropped faces such as FER2013); no detector.
    #[arg(long)]
    pub whole_image: bool,

    /// Worker threads for detection and classification (default: one per CPU core).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,

    /// Most faces per frame.
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub max_faces: usize,

    /// Detect faces on the frame shrunk by this factor K (1..=8), about K^2 times cheaper; faces
    /// at least 32 x K px wide are found (measured on LFW, docs/RESULTS.md), so 2 suits a
    /// webcam at arm's length and 4 a selfie distance (default: 2 for a camera, 1 for files).
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u8).range(1..=8))]
    pub detect_downscale: Option<u8>,

    /// Keep the classifier's late-layer weights (its memory-bound last stages) as half
    /// floats: about 1.3x faster per face; on FER2013 val 100.00% of predictions agree, at
    /// 65.87% accuracy, the same (probabilities move by at most 2.3e-4), see
    /// docs/BENCHMARKS.md.
    #[arg(long)]
    pub half_weights: bool,

    /// Keep the classifier's late-layer weights as signed bytes with one scale per output
    /// channel: a quarter of the memory traffic of single precision, faster still per face;
    /// on FER2013 val 99.83% of predictions agree, at 65.92% accuracy against 65.87%
    /// (probabilities move by at most 1.3e-2), see docs/BENCHMARKS.md.
    #[arg(long, conflicts_with = "half_weights")]
    pub int8_weights: bool,

    /// Also classify each face mirrored left-right and average the two predictions: on
    /// FER2013 val 66.54% accuracy instead of 65.87% (docs/RESULTS.md), for 1.5-2x the
    /// classification time (docs/BENCHMARKS.md). `auto`: on for image files, off for a camera.
    #[arg(long, value_enum, value_name = "WHEN", default_value = "auto")]
    pub flip_average: Switch,

    /// Detect and classify each frame in turn, every thread on one stage at a time. By
    /// default, with 2 or more threads, the next frame's faces are detected on a thread of
    /// its own while this frame's are classified (the threads split between the two stages):
    /// 1.2x the frame rate on 2 cores, for one frame of extra latency.
    #[arg(long)]
    pub no_pipeline: bool,

    /// Least detector confidence for a face.
    #[arg(long, value_name = "P", default_value_t = 0.6)]
    pub score_threshold: f32,

    /// Track faces and smooth their probabilities across frames (on by default for cameras).
    #[arg(long)]
    pub track: bool,

    /// Weight of the newest frame in the smoothed probabilities (1 = no smoothing).
    #[arg(long, value_name = "ALPHA", default_value_t = TrackerConfig::default().alpha)]
    pub smoothing: f32,

    /// Frames a tracked face may go undetected before its state is dropped.
    #[arg(long, value_name = "FRAMES", default_value_t = TrackerConfig::default().patience)]
    pub track_patience: u32,

    /// Window: seconds each image of a folder or glob stays on screen.
    #[arg(long, value_name = "SECONDS", default_value_t = 2.0)]
    pub delay: f32,

    /// Window: folder for the screenshots the `s` key saves.
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub screenshot_dir: PathBuf,

    /// Window: start mirrored (the `m` key toggles).
    #[arg(long)]
    pub mirror: bool,
}

/// An option that is on, off, or decided by the kind of input.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Switch {
    Auto,
    On,
    Off,
}

impl Args {
    /// How the classifier's late-layer weights are stored (`--half-weights`, `--int8-weights`).
    pub fn late_weights(&self) -> Option<LatePrecision> {
        if self.int8_weights {
            Some(LatePrecision::Int8)
        } else if self.half_weights {
            Some(LatePrecision::F16)
        } else {
            None
        }
    }

    /// `--threads`, or one per CPU core.
    pub fn thread_count(&self) -> usize {
        self.threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .max(1)
    }

    /// `--detect-downscale`, or its default for this kind of source.
    pub fn detect_downscale_for(&self, live: bool) -> usize {
        self.detect_downscale
            .map_or(if live { 2 } else { 1 }, usize::from)
    }

    /// `--flip-average`, with `auto` resolved: off for a camera (speed), on for files.
    pub fn flip_average_for(&self, live: bool) -> bool {
        match self.flip_average {
            Switch::Auto => !live,
            Switch::On => true,
            Switch::Off => false,
        }
    }

    /// Pipelined unless `--no-pipeline` or a single thread.
    pub fn pipelined(&self) -> bool {
        !self.no_pipeline && self.thread_count() >= 2
    }

    pub fn mode_request(&self) -> ModeRequest {
        ModeRequest {
            width: self.width,
            height: self.height,
            fps: self.fps,
            encoding: self.format,
        }
    }

    pub fn tracker_config(&self) -> TrackerConfig {
        TrackerConfig {
            alpha: self.smoothing,
            patience: self.track_patience,
            ..TrackerConfig::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_dependent_flags() {
        let args = Args::try_parse_from(["face2exp-demo"]).unwrap();
        assert_eq!(
            (args.camera, args.width, args.height, args.fps, args.threads),
            (0, 640, 480, 30, None)
        );
        assert!(args.thread_count() >= 1);
        assert_eq!(args.pipelined(), args.thread_count() >= 2);
        assert_eq!(
            (
                args.detect_downscale_for(true),
                args.detect_downscale_for(false)
            ),
            (2, 1)
        );
        assert_eq!(
            (args.flip_average_for(true), args.flip_average_for(false)),
            (false, true)
        );
        for (flag, want) in [("on", true), ("off", false)] {
            let args = Args::try_parse_from(["face2exp-demo", "--flip-average", flag]).unwrap();
            assert_eq!(
                (args.flip_average_for(true), args.flip_average_for(false)),
                (want, want)
            );
        }
        assert!(Args::try_parse_from(["face2exp-demo", "--flip-average", "maybe"]).is_err());
        let args = Args::try_parse_from([
            "face2exp-demo",
            "--threads",
            "2",
            "--no-pipeline",
            "--detect-downscale",
            "3",
        ])
        .unwrap();
        assert_eq!(args.thread_count(), 2);
        assert!(!args.pipelined());
        assert_eq!(args.detect_downscale_for(true), 3);
        assert!(!args.headless && args.input.is_none());
        let args = Args::try_parse_from([
            "face2exp-demo",
            "--input",
            "a/",
            "--headless",
            "--json",
            "--format",
            "yuyv",
        ])
        .unwrap();
        assert_eq!(args.mode_request().encoding, Some(Encoding::Yuyv));
        // --json and --out only make sense without a window.
        assert!(Args::try_parse_from(["face2exp-demo", "--json"]).is_err());
        assert!(Args::try_parse_from(["face2exp-demo", "--out", "x"]).is_err());
    }
}
