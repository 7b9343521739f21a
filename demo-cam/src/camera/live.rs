//! The nokhwa side of capture: device queries, opening with a chosen mode, and the capture
//! thread.

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::thread;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use nokhwa::utils::{
    ApiBackend, CameraFormat, CameraIndex, FrameFormat, RequestedFormat, RequestedFormatType,
};
use nokhwa::Camera;

use super::{choose_mode, Encoding, Mode, ModeRequest};
use crate::frame::Frame;
use crate::source::{FrameSource, Next};

const NO_CAMERA: &str = "no camera found; use --input PATH";
/// How long opening a camera may take before we give up on it.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// Frame formats we ask nokhwa for; every one of them is decoded in [`decode`].
const DECODABLE: [FrameFormat; 4] = [
    FrameFormat::YUYV,
    FrameFormat::MJPEG,
    FrameFormat::GRAY,
    FrameFormat::RAWRGB,
];

fn encoding_of(format: FrameFormat) -> Option<Encoding> {
    match format {
        FrameFormat::YUYV => Some(Encoding::Yuyv),
        FrameFormat::MJPEG => Some(Encoding::Mjpeg),
        FrameFormat::GRAY => Some(Encoding::Gray),
        FrameFormat::RAWRGB => Some(Encoding::Rgb),
        FrameFormat::NV12 | FrameFormat::RAWBGR => None,
    }
}

fn format_of(encoding: Encoding) -> FrameFormat {
    match encoding {
        Encoding::Yuyv => FrameFormat::YUYV,
        Encoding::Mjpeg => FrameFormat::MJPEG,
        Encoding::Gray => FrameFormat::GRAY,
        Encoding::Rgb => FrameFormat::RAWRGB,
    }
}

fn query_cameras() -> Result<Vec<nokhwa::utils::CameraInfo>> {
    let cameras = nokhwa::query(ApiBackend::Auto).map_err(|e| anyhow!("{NO_CAMERA} ({e})"))?;
    if cameras.is_empty() {
        bail!(NO_CAMERA);
    }
    Ok(cameras)
}

/// `--list-cameras`: every camera with the modes it offers.
pub fn list_cameras() -> Result<()> {
    for info in query_cameras()? {
        println!(
            "{}: {} ({})",
            info.index(),
            info.human_name(),
            info.description()
        );
        let modes = Camera::new(
            info.index().clone(),
            RequestedFormat::with_formats(RequestedFormatType::None, &DECODABLE),
        )
        .and_then(|mut camera| camera.compatible_camera_formats());
        match modes {
            Ok(modes) => {
                for m in modes.iter().filter_map(to_mode) {
                    println!("    {m}");
                }
            }
            Err(e) => println!("    (cannot list modes: {e})"),
        }
    }
    Ok(())
}

fn to_mode(format: &CameraFormat) -> Option<Mode> {
    Some(Mode {
        width: format.width(),
        height: format.height(),
        fps: format.frame_rate(),
        encoding: encoding_of(format.format())?,
    })
}

/// Raw bytes of one captured frame, recycled between the capture thread and the pipeline.
struct RawFrame {
    mode: Mode,
    bytes: Vec<u8>,
}

type Captured = std::result::Result<RawFrame, String>;

/// A camera on its capture thread.
pub struct CameraSource {
    name: String,
    mode: Mode,
    filled: Receiver<Captured>,
    empty: SyncSender<RawFrame>,
    frame_timeout: Duration,
}

impl CameraSource {
    /// Opens camera `index` in the mode nearest `request` and starts streaming.
    pub fn open(index: u32, request: ModeRequest, frame_timeout: Duration) -> Result<CameraSource> {
        let cameras = query_cameras()?;
        if !cameras
            .iter()
            .any(|c| *c.index() == CameraIndex::Index(index))
        {
            let known: Vec<String> = cameras.iter().map(|c| c.index().to_string()).collect();
            bail!(
                "no camera {index}; cameras found: {} (see --list-cameras)",
                known.join(", ")
            );
        }
        let (ready_tx, ready_rx) = mpsc::sync_channel::<std::result::Result<Mode, String>>(1);
        let (filled_tx, filled_rx) = mpsc::sync_channel::<Captured>(2);
        let (empty_tx, empty_rx) = mpsc::sync_channel::<RawFrame>(2);
        thread::Builder::new()
            .name(format!("camera {index}"))
            .spawn(move || capture_thread(index, request, ready_tx, filled_tx, empty_rx))
            .context("cannot start the capture thread")?;
        let mode = match ready_rx.recv_timeout(OPEN_TIMEOUT) {
            Ok(Ok(mode)) => mode,
            Ok(Err(e)) => bail!("cannot open camera {index}: {e}"),
            Err(_) => bail!(
                "camera {index} did not open within {} s",
                OPEN_TIMEOUT.as_secs()
            ),
        };
        let frame_bytes = (mode.width * mode.height * 3) as usize;
        for _ in 0..2 {
            let buffer = RawFrame {
                mode,
                bytes: Vec::with_capacity(frame_bytes),
            };
            empty_tx
                .send(buffer)
                .context("the capture thread stopped while starting")?;
        }
        Ok(CameraSource {
            name: format!("camera:{index}"),
            mode,
            filled: filled_rx,
            empty: empty_tx,
            frame_timeout,
        })
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }
}

fn capture_thread(
    index: u32,
    request: ModeRequest,
    ready: SyncSender<std::result::Result<Mode, String>>,
    filled: SyncSender<Captured>,
    empty: Receiver<RawFrame>,
) {
    let opened = open_camera(index, &request);
    let mut camera = match opened {
        Ok((camera, mode)) => {
            if ready.send(Ok(mode)).is_err() {
                return;
            }
            camera
        }
        Err(e) => {
            let _ = ready.send(Err(format!("{e:#}")));
            return;
        }
    };
    // Each empty buffer is filled from the camera's own (mmap) buffer and sent back.
    while let Ok(mut raw) = empty.recv() {
        let result = camera.frame_raw().map(|bytes| {
            raw.bytes.clear();
            raw.bytes.extend_from_slice(&bytes);
        });
        let message = match result {
            Ok(()) => Ok(raw),
            Err(e) => Err(format!("camera {index} stopped: {e}")),
        };
        let failed = message.is_err();
        if filled.send(message).is_err() || failed {
            return;
        }
    }
}

fn open_camera(index: u32, request: &ModeRequest) -> Result<(Camera, Mode)> {
    let any = RequestedFormat::with_formats(RequestedFormatType::None, &DECODABLE);
    let mut camera = Camera::new(CameraIndex::Index(index), any)?;
    let offered: Vec<Mode> = camera
        .compatible_camera_formats()?
        .iter()
        .filter_map(to_mode)
        .collect();
    let mode = choose_mode(&offered, request)
        .ok_or_else(|| anyhow!("camera {index} offers no MJPEG, YUYV, GRAY or RGB mode"))?;
    let format =
        CameraFormat::new_from(mode.width, mode.height, format_of(mode.encoding), mode.fps);
    if let Err(e) = camera.set_camera_requset(RequestedFormat::with_formats(
        RequestedFormatType::Exact(format),
        &DECODABLE,
    )) {
        eprintln!("camera {index}: cannot switch to {mode} ({e}); keeping its current mode");
    }
    camera.open_stream()?;
    let actual = camera.camera_format();
    let mode = to_mode(&actual).unwrap_or(mode);
    if mode.width != request.width || mode.height != request.height || mode.fps != request.fps {
        eprintln!(
            "camera {index}: asked for {}x{} @ {} fps, streaming {mode}",
            request.width, request.height, request.fps
        );
    }
    Ok((camera, mode))
}

/// Decodes one raw frame into `frame`.
fn decode(raw: &RawFrame, frame: &mut Frame) -> Result<()> {
    let Mode {
        width,
        height,
        encoding,
        ..
    } = raw.mode;
    let (w, h) = (width as usize, height as usize);
    match encoding {
        Encoding::Yuyv => frame.copy_from_yuyv(w, h, &raw.bytes, w * 2),
        Encoding::Gray => frame.copy_from_gray8(w, h, &raw.bytes, w),
        Encoding::Rgb => frame.copy_from_rgb8(w, h, &raw.bytes, w * 3),
        Encoding::Mjpeg => {
            let rgb = image::load_from_memory_with_format(&raw.bytes, image::ImageFormat::Jpeg)
                .context("bad MJPEG frame")?
                .into_rgb8();
            frame.copy_from_rgb8(
                rgb.width() as usize,
                rgb.height() as usize,
                rgb.as_raw(),
                rgb.width() as usize * 3,
            )
        }
    }
}

impl FrameSource for CameraSource {
    fn next_frame(&mut self, frame: &mut Frame) -> Result<Next> {
        let raw = match self.filled.recv_timeout(self.frame_timeout) {
            Ok(Ok(raw)) => raw,
            Ok(Err(message)) => bail!("{message}"),
            Err(RecvTimeoutError::Timeout) => bail!(
                "{} sent no frame for {:.1} s (unplugged or in use?)",
                self.name,
                self.frame_timeout.as_secs_f32()
            ),
            Err(RecvTimeoutError::Disconnected) => bail!("{} stopped", self.name),
        };
        let decoded = decode(&raw, frame);
        // Hand the buffer back even when decoding failed; the thread waits for it.
        let _ = self.empty.send(raw);
        decoded.with_context(|| self.name.clone())?;
        Ok(Next::Frame)
    }

    fn frame_name(&self) -> &str {
        &self.name
    }

    fn is_live(&self) -> bool {
        true
    }
}
