//! Detection on its own thread, so that frame k+1's faces are found while frame k is being
//! classified: the two stages then overlap on two cores instead of taking turns, which matters
//! because the detector gains little from a second thread of its own (docs/BENCHMARKS.md).
//!
//! Frames and face lists travel by value through one-slot channels and come back, so the
//! buffers rotate between the caller and the worker and nothing is allocated per frame.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};

use super::DetectStage;
use crate::faces::FaceResult;
use crate::frame::Frame;

struct Job {
    frame: Frame,
    faces: Vec<FaceResult>,
}

struct Done {
    frame: Frame,
    faces: Vec<FaceResult>,
    result: Result<Duration>,
}

pub(super) struct DetectWorker {
    jobs: Option<SyncSender<Job>>,
    done: Receiver<Done>,
    thread: Option<JoinHandle<()>>,
    /// The face list the next job is sent with (the caller's previous one, recycled).
    spare_faces: Vec<FaceResult>,
    in_flight: bool,
}

impl DetectWorker {
    pub(super) fn spawn(mut stage: DetectStage, max_faces: usize) -> Result<DetectWorker> {
        let (jobs, job_rx) = sync_channel::<Job>(1);
        let (done_tx, done) = sync_channel::<Done>(1);
        let thread = std::thread::Builder::new()
            .name("face2exp-detect".into())
            .spawn(move || {
                for Job { frame, mut faces } in job_rx {
                    let start = Instant::now();
                    let result = stage.detect(&frame, &mut faces).map(|()| start.elapsed());
                    if done_tx
                        .send(Done {
                            frame,
                            faces,
                            result,
                        })
                        .is_err()
                    {
                        break;
                    }
                }
            })
            .map_err(|e| anyhow!("cannot start the detection thread: {e}"))?;
        Ok(DetectWorker {
            jobs: Some(jobs),
            done,
            thread: Some(thread),
            spare_faces: Vec::with_capacity(max_faces),
            in_flight: false,
        })
    }

    /// Hands `frame` to the detection thread. One frame at a time: call [`Self::collect`]
    /// before submitting the next.
    pub(super) fn submit(&mut self, frame: Frame) -> Result<()> {
        if self.in_flight {
            return Err(anyhow!(
                "a frame is already being detected; collect it first"
            ));
        }
        let faces = std::mem::take(&mut self.spare_faces);
        self.jobs
            .as_ref()
            .and_then(|jobs| jobs.send(Job { frame, faces }).ok())
            .ok_or_else(|| anyhow!("the detection thread has stopped"))?;
        self.in_flight = true;
        Ok(())
    }

    /// Waits for the submitted frame. Returns it with its detection time (or the detection
    /// error); `faces` is replaced by the faces found.
    pub(super) fn collect(
        &mut self,
        faces: &mut Vec<FaceResult>,
    ) -> Result<(Frame, Result<Duration>)> {
        if !self.in_flight {
            return Err(anyhow!("no frame is being detected"));
        }
        self.in_flight = false;
        let Done {
            frame,
            faces: mut found,
            result,
        } = self
            .done
            .recv()
            .map_err(|_| anyhow!("the detection thread stopped unexpectedly"))?;
        std::mem::swap(faces, &mut found);
        found.clear();
        self.spare_faces = found;
        Ok((frame, result))
    }
}

impl Drop for DetectWorker {
    fn drop(&mut self) {
        // Closing the job channel ends the thread's loop; a frame still in flight is dropped.
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
