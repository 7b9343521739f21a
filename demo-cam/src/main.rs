//! face2exp-demo: live facial-expression recognition from a camera, or a batch CLI for photos.
//! See `face2exp-demo --help`; the stages are source -> engine (detect + classify) ->
//! track -> overlay, each in its own module.

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;

use face2exp_demo::cli::Args;
use face2exp_demo::engine::{Engine, EngineConfig};
use face2exp_demo::headless::{self, HeadlessOptions};
use face2exp_demo::pipeline::Pipeline;
use face2exp_demo::source::{FrameSource, ImageFiles};
use face2exp_demo::{camera, weights};

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("face2exp-demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<ExitCode> {
    if args.list_cameras {
        camera::list_cameras()?;
        return Ok(ExitCode::SUCCESS);
    }
    let classifier = weights::resolve(
        args.weights.as_deref(),
        weights::embedded_classifier(),
        "classifier",
        "--weights",
    )?;
    let detector = if args.whole_image {
        None
    } else {
        Some(weights::resolve(
            args.detector.as_deref(),
            weights::embedded_detector(),
            "detector",
            "--detector",
        )?)
    };
    // Without a display the window cannot open: fall back to the text output, not an error.
    let headless = args.headless || (cfg!(feature = "window") && !display_available());
    if headless && !args.headless {
        eprintln!("no display found; running headless (pass --headless to skip this check)");
    }
    let mut source = open_source(args, headless)?;
    let tracking = (source.is_live() || args.track).then(|| args.tracker_config());
    let config = EngineConfig {
        threads: args.thread_count(),
        max_faces: args.max_faces.max(1),
        score_threshold: args.score_threshold,
        detect_downscale: args.detect_downscale_for(source.is_live()),
        late_weights: args.late_weights(),
        pipelined: args.pipelined(),
        flip_average: args.flip_average_for(source.is_live()),
    };
    let engine = Engine::load(&classifier, detector.as_ref(), &config)?;
    let mut pipeline = Pipeline::new(engine, tracking);
    pipeline.mirror = args.mirror;

    if headless {
        let options = HeadlessOptions {
            json: args.json,
            out: args.out.clone(),
            max_frames: args.max_frames,
        };
        let summary = headless::run(
            &mut pipeline,
            source.as_mut(),
            &options,
            &mut std::io::stdout().lock(),
        )?;
        eprintln!(
            "{} frames, {} faces, {} unreadable",
            summary.frames, summary.faces, summary.failed
        );
        return Ok(if summary.failed == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    run_window(args, &mut pipeline, source.as_mut())?;
    Ok(ExitCode::SUCCESS)
}

/// The bundled sample photos, shown when the demo is started without a camera or input.
const BUNDLED_ASSETS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/assets");

fn open_source(args: &Args, headless: bool) -> Result<Box<dyn FrameSource>> {
    if let Some(input) = &args.input {
        return Ok(Box::new(ImageFiles::open(input)?));
    }
    match open_camera(args) {
        Ok(camera) => Ok(camera),
        // A first run on a machine without a camera still shows something: the bundled photos.
        // Explicit batch use (--headless) keeps the plain error.
        Err(error) if !args.headless && std::path::Path::new(BUNDLED_ASSETS).is_dir() => {
            let shown = if headless { "processing" } else { "showing" };
            eprintln!("{error:#}; {shown} the bundled photos in {BUNDLED_ASSETS}");
            Ok(Box::new(ImageFiles::open(BUNDLED_ASSETS)?))
        }
        Err(error) => Err(error),
    }
}

fn open_camera(args: &Args) -> Result<Box<dyn FrameSource>> {
    #[cfg(feature = "camera")]
    {
        let timeout = std::time::Duration::from_secs_f32(args.frame_timeout.max(0.1));
        let camera = camera::CameraSource::open(args.camera, args.mode_request(), timeout)?;
        eprintln!("camera {}: {}", args.camera, camera.mode());
        Ok(Box::new(camera))
    }
    #[cfg(not(feature = "camera"))]
    {
        let _ = args;
        anyhow::bail!("this face2exp-demo was built without the `camera` feature; use --input PATH")
    }
}

/// Whether an X11 or Wayland display is there for the window.
fn display_available() -> bool {
    ["DISPLAY", "WAYLAND_DISPLAY"]
        .iter()
        .any(|var| std::env::var_os(var).is_some_and(|v| !v.is_empty()))
}

#[cfg(feature = "window")]
fn run_window<A: face2exp_demo::pipeline::Analyzer>(
    args: &Args,
    pipeline: &mut Pipeline<A>,
    source: &mut dyn FrameSource,
) -> Result<()> {
    let options = face2exp_demo::window::WindowOptionsCli {
        delay: std::time::Duration::from_secs_f32(args.delay.max(0.0)),
        screenshot_dir: args.screenshot_dir.clone(),
        max_frames: args.max_frames,
    };
    face2exp_demo::window::run(pipeline, source, &options)
}

#[cfg(not(feature = "window"))]
fn run_window<A: face2exp_demo::pipeline::Analyzer>(
    _args: &Args,
    _pipeline: &mut Pipeline<A>,
    _source: &mut dyn FrameSource,
) -> Result<()> {
    anyhow::bail!("this face2exp-demo was built without the `window` feature; use --headless")
}
