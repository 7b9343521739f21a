//! The real window under a virtual X server: the demo opens on the fixture photos, a real `s`
//! key press (XTEST, through xdotool) saves a screenshot, `q` quits. The screenshot must be
//! the annotated last photo: its size, many colours, and the overlay's box colours present.
//! Skips, saying why, without Xvfb, xdotool or the detector weights.

#![cfg(feature = "window")]

mod common;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use face2exp_demo::overlay::CLASS_COLORS;

/// Kills and reaps a child process when dropped, so a failing assertion leaves nothing behind.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Stops a child with SIGTERM (then reaps it) when dropped: Xvfb removes its socket and lock
/// file on SIGTERM, where SIGKILL would leave them behind for the next run.
struct Terminated(Child);

impl Drop for Terminated {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the pid of a child this process has not reaped yet.
        if unsafe { libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM) } != 0 {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn wait_for(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn xdotool(display: &str, args: &[&str]) -> Option<String> {
    let output = Command::new("xdotool")
        .args(args)
        .env("DISPLAY", display)
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// Holds `key` down for 200 ms: longer than a frame of the demo's event loop, as a person
/// presses keys (an instant press and release could fall between two polls).
fn press(display: &str, key: &str) {
    let _ = xdotool(display, &["keydown", key]);
    std::thread::sleep(Duration::from_millis(200));
    let _ = xdotool(display, &["keyup", key]);
}

fn screenshots(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "png"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn window_shows_the_annotated_photos_and_s_saves_a_screenshot() {
    for tool in ["Xvfb", "xdotool"] {
        if !have(tool) {
            eprintln!("SKIPPED: {tool} is not installed (apt-get install xvfb xdotool)");
            return;
        }
    }
    let Some(detector) = common::detector_weights() else {
        eprintln!("SKIPPED: weights/retinaface_mnet025.safetensors is missing");
        return;
    };
    let classifier = common::classifier_weights();
    // One retry, for one failure only: the demo exiting before its window appeared happened
    // once in dozens of runs on a loaded 2-core machine, without a message that explained it.
    // The first failure's message (with the demo's own output) is printed either way.
    let first = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run_once(&classifier, &detector)
    }));
    if let Err(panic) = first {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        if !message.contains("exited early") {
            std::panic::resume_unwind(panic);
        }
        eprintln!("first attempt failed, retrying once with a fresh Xvfb: {message}");
        run_once(&classifier, &detector);
    }
}

fn run_once(classifier: &Path, detector: &Path) {
    // `-displayfd 1`: Xvfb picks a free display number itself and writes it to stdout once it
    // accepts connections, so neither a display held by someone else nor the stale socket and
    // lock files of an Xvfb killed earlier can make the demo connect too early or to nothing.
    let xvfb_log = tempfile::NamedTempFile::new().unwrap();
    let xvfb = Command::new("Xvfb")
        .args([
            "-displayfd",
            "1",
            "-screen",
            "0",
            "800x600x24",
            "-nolisten",
            "tcp",
        ])
        .stdout(Stdio::piped())
        .stderr(xvfb_log.reopen().unwrap())
        .spawn();
    let Ok(mut xvfb) = xvfb else {
        eprintln!("SKIPPED: Xvfb would not start");
        return;
    };
    let mut number = String::new();
    let _ = std::io::BufReader::new(xvfb.stdout.take().unwrap()).read_line(&mut number);
    let _xvfb = Terminated(xvfb);
    let number = number.trim();
    assert!(
        !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit()),
        "Xvfb did not report a display (got {number:?}); its log:\n{}",
        std::fs::read_to_string(xvfb_log.path()).unwrap_or_default()
    );
    let display = format!(":{number}");

    let photos = tempfile::tempdir().unwrap();
    for name in ["obama_241x301.png", "two_portraits.png"] {
        std::fs::copy(common::fixtures().join(name), photos.path().join(name)).unwrap();
    }
    let shots = tempfile::tempdir().unwrap();
    let demo_log = tempfile::NamedTempFile::new().unwrap();
    let demo = Command::new(env!("CARGO_BIN_EXE_face2exp-demo"))
        .args(["--input", photos.path().to_str().unwrap(), "--delay", "0.2"])
        .args([
            "--weights",
            classifier.to_str().unwrap(),
            "--detector",
            detector.to_str().unwrap(),
        ])
        .args(["--screenshot-dir", shots.path().to_str().unwrap()])
        .env("DISPLAY", &display)
        .stdout(Stdio::null())
        .stderr(demo_log.reopen().unwrap())
        .spawn()
        .unwrap();
    let mut demo = Reaped(demo);

    let mut window = String::new();
    wait_for("the demo window", Duration::from_secs(60), || {
        if let Ok(Some(status)) = demo.0.try_wait() {
            panic!(
                "face2exp-demo exited early with {status}; it printed:\n{}",
                std::fs::read_to_string(demo_log.path()).unwrap_or_default()
            );
        }
        window = xdotool(&display, &["search", "--name", "face2exp-demo"]).unwrap_or_default();
        !window.is_empty()
    });
    let window = window.lines().next().unwrap().to_string();
    // Give the folder time to advance to its last photo, then press `s` with the pointer
    // over the window (no window manager: focus follows the pointer).
    std::thread::sleep(Duration::from_secs(2));
    xdotool(&display, &["mousemove", "--window", &window, "20", "20"]).expect("xdotool mousemove");
    wait_for("a screenshot", Duration::from_secs(30), || {
        press(&display, "s");
        std::thread::sleep(Duration::from_millis(300));
        !screenshots(shots.path()).is_empty()
    });
    press(&display, "q");
    wait_for("the demo to quit on q", Duration::from_secs(10), || {
        matches!(demo.0.try_wait(), Ok(Some(_)))
    });
    assert!(demo.0.try_wait().unwrap().unwrap().success());

    let shot = image::open(&screenshots(shots.path())[0])
        .unwrap()
        .into_rgb8();
    assert_eq!(
        shot.dimensions(),
        (370, 216),
        "the screenshot is the last photo, two_portraits.png"
    );
    let mut colours: Vec<u32> = shot
        .pixels()
        .map(|p| u32::from_be_bytes([0, p[0], p[1], p[2]]))
        .collect();
    let overlay_pixels = colours.iter().filter(|c| CLASS_COLORS.contains(c)).count();
    colours.sort_unstable();
    colours.dedup();
    assert!(
        colours.len() > 1000,
        "a blank-looking screenshot: {} colours",
        colours.len()
    );
    assert!(
        overlay_pixels > 300,
        "only {overlay_pixels} pixels in overlay colours"
    );
}
