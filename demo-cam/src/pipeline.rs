//! One frame's journey, the same for the window, the headless CLI and the benchmark:
//! capture -> detect + classify ([`Analyzer`]) -> track + smooth -> overlay. Every buffer
//! lives in [`Pipeline`] or the caller's [`Frame`] and is reused, so once the largest frame
//! and face count have been seen a frame allocates nothing here.

use std::time::{Duration, Instant};

use anyhow::Result;

use crate::faces::FaceResult;
use crate::frame::Frame;
use crate::overlay::{self, StageTimes};
use crate::source::{FrameSource, Next};
use crate::track::{Tracker, TrackerConfig};

/// Time spent in each half of the analysis of one frame.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct AnalyzeTimes {
    pub detect: Duration,
    pub classify: Duration,
}

/// Finds faces in a frame and classifies their expressions.
pub trait Analyzer {
    /// Class names in output order (the model's classes, canonical order).
    fn class_names(&self) -> &[&'static str];

    /// Replaces `faces` with this frame's faces, probabilities filled in.
    fn analyze(&mut self, frame: &Frame, faces: &mut Vec<FaceResult>) -> Result<AnalyzeTimes>;
}

/// Exponential moving average of the frame rate, robust to a first slow frame.
#[derive(Clone, Copy, Debug, Default)]
pub struct FpsMeter {
    last: Option<Instant>,
    fps: f32,
}

impl FpsMeter {
    pub fn tick(&mut self, now: Instant) -> f32 {
        if let Some(last) = self.last {
            let dt = (now - last).as_secs_f32();
            if dt > 0.0 {
                let instant = 1.0 / dt;
                self.fps = if self.fps == 0.0 {
                    instant
                } else {
                    0.9 * self.fps + 0.1 * instant
                };
            }
        }
        self.last = Some(now);
        self.fps
    }
}

pub struct Pipeline<A: Analyzer> {
    analyzer: A,
    tracker: Option<Tracker>,
    faces: Vec<FaceResult>,
    times: StageTimes,
    fps: FpsMeter,
    frames: u64,
    /// Flip frames left-right before analysis (the window's `m` key).
    pub mirror: bool,
}

impl<A: Analyzer> Pipeline<A> {
    /// `tracking`: `Some` to follow faces across frames and smooth their probabilities.
    pub fn new(analyzer: A, tracking: Option<TrackerConfig>) -> Pipeline<A> {
        Pipeline {
            analyzer,
            tracker: tracking.map(Tracker::new),
            faces: Vec::with_capacity(16),
            times: StageTimes::default(),
            fps: FpsMeter::default(),
            frames: 0,
            mirror: false,
        }
    }

    pub fn class_names(&self) -> &[&'static str] {
        self.analyzer.class_names()
    }

    /// The faces of the last processed frame.
    pub fn faces(&self) -> &[FaceResult] {
        &self.faces
    }

    pub fn times(&self) -> &StageTimes {
        &self.times
    }

    /// Frames read so far (including ones that failed to decode).
    pub fn frames_read(&self) -> u64 {
        self.frames
    }

    /// Reads the next frame from `source` into `frame` and analyses it. A read error leaves
    /// the last frame's faces cleared and is returned; the source has then moved on.
    pub fn step(&mut self, source: &mut dyn FrameSource, frame: &mut Frame) -> Result<Next> {
        let start = Instant::now();
        let next = source.next_frame(frame);
        if !matches!(next, Ok(Next::End)) {
            self.frames += 1;
        }
        let next = match next {
            Ok(next) => next,
            Err(e) => {
                self.faces.clear();
                return Err(e);
            }
        };
        if next == Next::End {
            return Ok(Next::End);
        }
        if self.mirror {
            frame.mirror();
        }
        self.times.capture_ms = start.elapsed().as_secs_f32() * 1e3;
        self.process(frame)?;
        self.times.fps = self.fps.tick(Instant::now());
        Ok(Next::Frame)
    }

    /// Analyses a frame already in `frame` (detect, classify, track).
    pub fn process(&mut self, frame: &Frame) -> Result<()> {
        let analyzed = self.analyzer.analyze(frame, &mut self.faces);
        let times = match analyzed {
            Ok(times) => times,
            Err(e) => {
                self.faces.clear();
                return Err(e);
            }
        };
        self.times.detect_ms = times.detect.as_secs_f32() * 1e3;
        self.times.classify_ms = times.classify.as_secs_f32() * 1e3;
        if let Some(tracker) = &mut self.tracker {
            tracker.update(&mut self.faces);
        }
        Ok(())
    }

    /// Draws the faces of the last frame, and the stats panel when `stats` is set.
    pub fn draw(&self, frame: &mut Frame, stats: bool) {
        let scale = overlay::scale_for(frame);
        overlay::draw_faces(frame, &self.faces, self.analyzer.class_names(), scale);
        if stats {
            overlay::draw_stats(frame, &self.times, scale);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fps_meter_converges_on_the_frame_interval() {
        let mut meter = FpsMeter::default();
        let t0 = Instant::now();
        assert_eq!(meter.tick(t0), 0.0);
        let mut fps = 0.0;
        for i in 1..=100 {
            fps = meter.tick(t0 + Duration::from_millis(20 * i));
        }
        assert!((fps - 50.0).abs() < 0.5, "{fps}");
    }
}
