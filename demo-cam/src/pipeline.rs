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

    /// Whether detection runs on a thread of its own, through [`Analyzer::submit`] and
    /// [`Analyzer::collect`]; the pipeline then overlaps it with classification.
    fn is_pipelined(&self) -> bool;

    /// Pipelined: starts detecting faces in `frame` on the detection thread.
    fn submit(&mut self, frame: Frame) -> Result<()>;

    /// Pipelined: waits for the submitted frame; returns it with its detection time or
    /// error, and its faces (probabilities zero) in `faces`.
    fn collect(&mut self, faces: &mut Vec<FaceResult>) -> Result<(Frame, Result<Duration>)>;

    /// Fills in the probabilities of faces found earlier in `frame`.
    fn classify(&mut self, frame: &Frame, faces: &mut [FaceResult]) -> Result<()>;
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
    /// Name of the frame last returned by [`Pipeline::step`] (its file, or `camera:N`).
    frame_name: String,
    /// Pipelined mode only: the state of the frame read ahead.
    ahead: ReadAhead,
    /// Flip frames left-right before analysis (the window's `m` key).
    pub mirror: bool,
}

/// In pipelined mode the pipeline reads one frame ahead: while frame k is classified, frame
/// k+1 is already with the detection thread. What happened to that read is kept here and
/// reported when frame k+1's turn comes, so every frame, error and end arrives in order.
#[derive(Default)]
struct ReadAhead {
    /// A frame is with the detection thread.
    in_flight: bool,
    /// The source ended on the read-ahead.
    ended: bool,
    /// The read-ahead failed: reported by the next step.
    error: Option<anyhow::Error>,
    /// Name of the frame read ahead.
    name: String,
    /// The buffer the next frame is read into (frames rotate: caller, this, detector).
    spare: Frame,
    /// Capture time of the frame read ahead, in ms.
    capture_ms: f32,
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
            frame_name: String::with_capacity(256),
            ahead: ReadAhead {
                name: String::with_capacity(256),
                ..ReadAhead::default()
            },
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

    /// Frames delivered so far by [`Pipeline::step`] (including ones that failed to decode).
    pub fn frames_read(&self) -> u64 {
        self.frames
    }

    /// Name of the frame the last [`Pipeline::step`] delivered, for the JSON `source` field.
    pub fn frame_name(&self) -> &str {
        &self.frame_name
    }

    /// Reads the next frame from `source` into `frame` and analyses it. A read error leaves
    /// the last frame's faces cleared and is returned; the source has then moved on.
    ///
    /// A pipelined analyzer reads one frame ahead (see [`ReadAhead`]); frames, faces and
    /// errors still come back in source order, one per call.
    pub fn step(&mut self, source: &mut dyn FrameSource, frame: &mut Frame) -> Result<Next> {
        if self.analyzer.is_pipelined() {
            return self.step_pipelined(source, frame);
        }
        let start = Instant::now();
        let next = source.next_frame(frame);
        self.set_name(source);
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

    fn set_name(&mut self, source: &dyn FrameSource) {
        self.frame_name.clear();
        self.frame_name.push_str(source.frame_name());
    }

    fn step_pipelined(&mut self, source: &mut dyn FrameSource, frame: &mut Frame) -> Result<Next> {
        if !self.ahead.in_flight {
            if let Some(e) = self.ahead.error.take() {
                // The read-ahead that failed: its turn has come.
                return Err(self.failed_read(e));
            }
            if self.ahead.ended {
                return Ok(Next::End);
            }
            // Nothing read ahead yet (first frame, or after an error): read this frame now.
            match self.read_ahead(source) {
                Ok(Next::Frame) => {}
                Ok(Next::End) => return Ok(Next::End),
                Err(e) => return Err(self.failed_read(e)),
            }
        }
        // Frame k: its detection has been running while the caller used frame k-1.
        let (mut current, detected) = self.analyzer.collect(&mut self.faces)?;
        self.ahead.in_flight = false;
        std::mem::swap(&mut self.frame_name, &mut self.ahead.name);
        self.frames += 1;
        let capture_ms = self.ahead.capture_ms;
        // The caller's buffer (frame k-1, already shown) takes frame k; k-1's buffer becomes
        // the spare that frame k+1 is read into.
        std::mem::swap(frame, &mut current);
        self.ahead.spare = current;
        // Frame k+1 goes to the detection thread before frame k is classified, so the two
        // overlap. Its errors and end are reported on the next call, in order.
        match self.read_ahead(source) {
            Ok(_) => {}
            Err(e) => self.ahead.error = Some(e),
        }
        let detect = match detected {
            Ok(detect) => detect,
            Err(e) => {
                self.faces.clear();
                return Err(e);
            }
        };
        let classify_start = Instant::now();
        if let Err(e) = self.analyzer.classify(frame, &mut self.faces) {
            self.faces.clear();
            return Err(e);
        }
        self.times.capture_ms = capture_ms;
        self.finish(AnalyzeTimes {
            detect,
            classify: classify_start.elapsed(),
        });
        self.times.fps = self.fps.tick(Instant::now());
        Ok(Next::Frame)
    }

    /// Makes a failed read-ahead the frame this step delivers: its name, its count, no faces.
    fn failed_read(&mut self, error: anyhow::Error) -> anyhow::Error {
        std::mem::swap(&mut self.frame_name, &mut self.ahead.name);
        self.frames += 1;
        self.faces.clear();
        error
    }

    /// Reads the next frame into the spare buffer and hands it to the detection thread.
    /// `Ok(End)` marks the source ended; on a read error the name of what failed is kept in
    /// `ahead.name` for the report.
    fn read_ahead(&mut self, source: &mut dyn FrameSource) -> Result<Next> {
        let start = Instant::now();
        let mut spare = std::mem::take(&mut self.ahead.spare);
        let next = source.next_frame(&mut spare);
        self.ahead.name.clear();
        self.ahead.name.push_str(source.frame_name());
        match next {
            Ok(Next::Frame) => {}
            Ok(Next::End) => {
                self.ahead.spare = spare;
                self.ahead.ended = true;
                return Ok(Next::End);
            }
            Err(e) => {
                self.ahead.spare = spare;
                return Err(e);
            }
        }
        if self.mirror {
            spare.mirror();
        }
        self.ahead.capture_ms = start.elapsed().as_secs_f32() * 1e3;
        self.analyzer.submit(spare)?;
        self.ahead.in_flight = true;
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
        self.finish(times);
        Ok(())
    }

    /// Records an analysed frame's stage times and follows its faces.
    fn finish(&mut self, times: AnalyzeTimes) {
        self.times.detect_ms = times.detect.as_secs_f32() * 1e3;
        self.times.classify_ms = times.classify.as_secs_f32() * 1e3;
        if let Some(tracker) = &mut self.tracker {
            tracker.update(&mut self.faces);
        }
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
