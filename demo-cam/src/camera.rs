//! Live capture. The camera lives on its own thread (nokhwa's handles are not `Send`, and a
//! v4l2 read can block forever when a device vanishes); frames travel to the pipeline in two
//! byte buffers that cycle through bounded channels, so steady-state capture allocates
//! nothing for YUYV, and a dead or silent camera surfaces as an error after a timeout, not a
//! hang.
//!
//! Mode choice is plain logic over the modes a device reports ([`choose_mode`]), so the
//! fallback rules are tested without a camera.

use std::fmt;

/// Pixel encodings the demo decodes itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Encoding {
    Mjpeg,
    Yuyv,
    Gray,
    Rgb,
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Encoding::Mjpeg => "MJPEG",
            Encoding::Yuyv => "YUYV",
            Encoding::Gray => "GRAY",
            Encoding::Rgb => "RGB",
        })
    }
}

/// One capture mode a camera offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mode {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub encoding: Encoding,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}x{} {} @ {} fps",
            self.width, self.height, self.encoding, self.fps
        )
    }
}

/// What the user asked for with --width/--height/--fps/--format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModeRequest {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub encoding: Option<Encoding>,
}

/// Picks the offered mode nearest the request: the requested encoding when one was forced
/// (otherwise any), then the nearest resolution, then a frame rate at or above the request
/// (the nearest below when none reaches it), then YUYV before MJPEG (no decode) before the
/// rest. `None` only when nothing decodable is offered.
pub fn choose_mode(offered: &[Mode], request: &ModeRequest) -> Option<Mode> {
    let wanted_encoding = |m: &&Mode| request.encoding.is_none_or(|e| e == m.encoding);
    let candidates = || offered.iter().filter(wanted_encoding);
    let candidates_any = candidates().next().is_some();
    let pool: Vec<&Mode> = if candidates_any {
        candidates().collect()
    } else {
        // The forced encoding is not offered: fall back to what is.
        offered.iter().collect()
    };
    pool.into_iter()
        .min_by_key(|m| {
            let dw = (m.width as i64 - request.width as i64).abs();
            let dh = (m.height as i64 - request.height as i64).abs();
            let fps_penalty = if m.fps >= request.fps {
                (m.fps - request.fps) as i64
            } else {
                1_000 + (request.fps - m.fps) as i64
            };
            let rank = match m.encoding {
                Encoding::Yuyv => 0,
                Encoding::Mjpeg => 1,
                Encoding::Rgb => 2,
                Encoding::Gray => 3,
            };
            (dw + dh, fps_penalty, rank)
        })
        .copied()
}

#[cfg(feature = "camera")]
pub use live::{list_cameras, CameraSource};

#[cfg(feature = "camera")]
mod live;

#[cfg(not(feature = "camera"))]
pub fn list_cameras() -> anyhow::Result<()> {
    anyhow::bail!("this face2exp-demo was built without the `camera` feature; use --input PATH")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(width: u32, height: u32, fps: u32, encoding: Encoding) -> Mode {
        Mode {
            width,
            height,
            fps,
            encoding,
        }
    }

    fn request(width: u32, height: u32, fps: u32, encoding: Option<Encoding>) -> ModeRequest {
        ModeRequest {
            width,
            height,
            fps,
            encoding,
        }
    }

    const WEBCAM: [Mode; 6] = [
        Mode {
            width: 640,
            height: 480,
            fps: 30,
            encoding: Encoding::Yuyv,
        },
        Mode {
            width: 1280,
            height: 720,
            fps: 10,
            encoding: Encoding::Yuyv,
        },
        Mode {
            width: 640,
            height: 480,
            fps: 30,
            encoding: Encoding::Mjpeg,
        },
        Mode {
            width: 1280,
            height: 720,
            fps: 30,
            encoding: Encoding::Mjpeg,
        },
        Mode {
            width: 1280,
            height: 720,
            fps: 60,
            encoding: Encoding::Mjpeg,
        },
        Mode {
            width: 320,
            height: 240,
            fps: 30,
            encoding: Encoding::Yuyv,
        },
    ];

    #[test]
    fn exact_matches_prefer_yuyv_and_forced_encodings_are_honoured() {
        assert_eq!(
            choose_mode(&WEBCAM, &request(640, 480, 30, None)),
            Some(WEBCAM[0])
        );
        let mjpeg = request(640, 480, 30, Some(Encoding::Mjpeg));
        assert_eq!(choose_mode(&WEBCAM, &mjpeg), Some(WEBCAM[2]));
    }

    #[test]
    fn frame_rate_beats_encoding_and_falls_back_to_the_nearest_below() {
        // 720p at 30 fps only exists as MJPEG; YUYV 720p runs at 10 fps.
        assert_eq!(
            choose_mode(&WEBCAM, &request(1280, 720, 30, None)),
            Some(WEBCAM[3])
        );
        assert_eq!(
            choose_mode(&WEBCAM, &request(1280, 720, 45, None)),
            Some(WEBCAM[4])
        );
        // 120 fps is offered nowhere: the fastest 720p mode.
        assert_eq!(
            choose_mode(&WEBCAM, &request(1280, 720, 120, None)),
            Some(WEBCAM[4])
        );
    }

    #[test]
    fn unavailable_resolutions_and_encodings_fall_back_gracefully() {
        assert_eq!(
            choose_mode(&WEBCAM, &request(352, 288, 30, None)),
            Some(WEBCAM[5])
        );
        let gray_only = [mode(640, 480, 30, Encoding::Gray)];
        assert_eq!(
            choose_mode(&gray_only, &request(640, 480, 30, Some(Encoding::Mjpeg))),
            Some(gray_only[0])
        );
        assert_eq!(choose_mode(&[], &request(640, 480, 30, None)), None);
    }
}
