//! The Rust RetinaFace port against the original runtime: reference outputs computed once with
//! onnxruntime by `tools/retinaface_reference.py` on real photos in `tests/fixtures/`.

use face2exp_infer::detect::{iou, Detector, DetectorConfig, DetectorSession, Face};
use face2exp_infer::{ImageView, PixelFormat};
use std::path::{Path, PathBuf};

fn workspace_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative)
}

fn detector() -> Detector {
    Detector::load(workspace_file("weights/retinaface_mnet025.safetensors"))
        .expect("committed detector weights load")
}

/// One `*.retinaface.txt` fixture.
struct Reference {
    size: (usize, usize),
    anchors: usize,
    threshold: f32,
    nms_iou: f32,
    faces: Vec<Face>,
    /// `(index, score, 4 box deltas, 10 landmark deltas)`.
    top_anchors: Vec<(usize, f32, Vec<f32>)>,
}

fn read_reference(name: &str) -> Reference {
    let path = workspace_file(&format!("tests/fixtures/{name}"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut reference = Reference {
        size: (0, 0),
        anchors: 0,
        threshold: 0.0,
        nms_iou: 0.0,
        faces: Vec::new(),
        top_anchors: Vec::new(),
    };
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let mut fields = line.split_whitespace();
        let key = fields.next().unwrap();
        let values: Vec<f64> = fields.map(|v| v.parse().unwrap()).collect();
        match key {
            "size" => reference.size = (values[0] as usize, values[1] as usize),
            "anchors" => reference.anchors = values[0] as usize,
            "threshold" => reference.threshold = values[0] as f32,
            "nms_iou" => reference.nms_iou = values[0] as f32,
            "face" => {
                let v: Vec<f32> = values.iter().map(|&x| x as f32).collect();
                reference.faces.push(Face {
                    score: v[0],
                    bbox: [v[1], v[2], v[3], v[4]],
                    landmarks: std::array::from_fn(|k| [v[5 + 2 * k], v[6 + 2 * k]]),
                });
            }
            "anchor" => reference.top_anchors.push((
                values[0] as usize,
                values[1] as f32,
                values[2..].iter().map(|&x| x as f32).collect(),
            )),
            other => panic!("{}: unknown line kind {other}", path.display()),
        }
    }
    reference
}

/// RGB bytes of a fixture PNG.
fn load_rgb(name: &str) -> (Vec<u8>, usize, usize) {
    let path = workspace_file(&format!("tests/fixtures/{name}"));
    let image = image::open(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_rgb8();
    let (w, h) = image.dimensions();
    (image.into_raw(), w as usize, h as usize)
}

/// Grey exactly as PIL's `convert("L")` computes it (ITU-R 601-2 luma, fixed point), which the
/// reference used.
fn pil_luma(rgb: &[u8]) -> Vec<u8> {
    rgb.chunks_exact(3)
        .map(|p| {
            ((p[0] as u32 * 19595 + p[1] as u32 * 38470 + p[2] as u32 * 7471 + 0x8000) >> 16) as u8
        })
        .collect()
}

fn config_for(reference: &Reference, threads: usize) -> DetectorConfig {
    DetectorConfig {
        max_width: 400,
        max_height: 320,
        max_faces: 16,
        score_threshold: reference.threshold,
        nms_iou: reference.nms_iou,
        threads,
        downscale: 1,
    }
}

fn assert_close(what: &str, found: f32, expected: f32, tolerance: f32) {
    let kind = what
        .split_whitespace()
        .rev()
        .find(|w| w.starts_with(char::is_alphabetic))
        .unwrap_or(what)
        .trim_end_matches(|c: char| !c.is_alphabetic());
    let error = (found - expected).abs();
    MAX_ERROR.with(|m| {
        let mut m = m.borrow_mut();
        match m.iter_mut().find(|(k, _)| k == kind) {
            Some((_, e)) => *e = e.max(error),
            None => m.push((kind.to_string(), error)),
        }
    });
    assert!(
        (found - expected).abs() <= tolerance,
        "{what}: found {found}, onnxruntime {expected} (tolerance {tolerance})"
    );
}

thread_local! {
    /// Largest deviation from onnxruntime seen per quantity, printed with `--nocapture`.
    static MAX_ERROR: std::cell::RefCell<Vec<(String, f32)>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Checks raw anchors and decoded faces of `session`'s last frame against `reference`.
fn check_against(
    session: &DetectorSession<'_>,
    faces: &[Face],
    reference: &Reference,
    label: &str,
) {
    assert!(
        session.anchor_output(reference.anchors - 1).is_some(),
        "{label}: too few anchors"
    );
    assert!(
        session.anchor_output(reference.anchors).is_none(),
        "{label}: too many anchors"
    );
    for (index, score, deltas) in &reference.top_anchors {
        let out = session.anchor_output(*index).unwrap();
        assert_close(
            &format!("{label} anchor {index} score"),
            out.score,
            *score,
            1e-5,
        );
        let ours = out.box_deltas.iter().chain(&out.landmark_deltas);
        for (k, (a, b)) in ours.zip(deltas).enumerate() {
            assert_close(&format!("{label} anchor {index} delta {k}"), *a, *b, 1e-4);
        }
    }
    assert_eq!(
        faces.len(),
        reference.faces.len(),
        "{label}: face count {faces:?}"
    );
    for (i, (face, expected)) in faces.iter().zip(&reference.faces).enumerate() {
        assert_close(
            &format!("{label} face {i} score"),
            face.score,
            expected.score,
            1e-5,
        );
        for k in 0..4 {
            assert_close(
                &format!("{label} face {i} bbox[{k}]"),
                face.bbox[k],
                expected.bbox[k],
                5e-3,
            );
        }
        for (k, (p, q)) in face.landmarks.iter().zip(&expected.landmarks).enumerate() {
            assert_close(
                &format!("{label} face {i} landmark {k} x"),
                p[0],
                q[0],
                5e-3,
            );
            assert_close(
                &format!("{label} face {i} landmark {k} y"),
                p[1],
                q[1],
                5e-3,
            );
        }
    }
}

#[test]
fn rgb_and_gray_frames_match_onnxruntime() {
    let detector = detector();
    for image in ["two_portraits", "obama_241x301"] {
        let (rgb, w, h) = load_rgb(&format!("{image}.png"));
        let grey = pil_luma(&rgb);
        for (suffix, pixels, format) in [
            ("", &rgb, PixelFormat::Rgb8),
            (".gray", &grey, PixelFormat::Gray8),
        ] {
            let reference = read_reference(&format!("{image}{suffix}.retinaface.txt"));
            assert_eq!(reference.size, (w, h));
            let mut session = DetectorSession::new(&detector, config_for(&reference, 1)).unwrap();
            let view = ImageView::packed(pixels, w, h, format).unwrap();
            let faces = session.detect(&view).unwrap().to_vec();
            check_against(&session, &faces, &reference, &format!("{image}{suffix}"));
        }
    }
    MAX_ERROR.with(|m| println!("largest deviation from onnxruntime: {:?}", m.borrow()));
}

#[test]
fn two_threads_give_the_same_faces_as_one() {
    let detector = detector();
    let (rgb, w, h) = load_rgb("two_portraits.png");
    let reference = read_reference("two_portraits.retinaface.txt");
    let view = ImageView::packed(&rgb, w, h, PixelFormat::Rgb8).unwrap();
    let mut one = DetectorSession::new(&detector, config_for(&reference, 1)).unwrap();
    let mut two = DetectorSession::new(&detector, config_for(&reference, 2)).unwrap();
    let a = one.detect(&view).unwrap().to_vec();
    let b = two.detect(&view).unwrap().to_vec();
    check_against(&two, &b, &reference, "two threads");
    assert_eq!(a, b, "the split must not change the arithmetic");
}

/// The fixture in another byte layout, rows padded to `stride` with junk.
fn convert(rgb: &[u8], w: usize, h: usize, format: PixelFormat) -> (Vec<u8>, usize) {
    let stride = w * format.bytes_per_pixel() + 7;
    let mut out = vec![0xA5u8; stride * h];
    for y in 0..h {
        let row = &mut out[y * stride..];
        for x in 0..w {
            let p = &rgb[(y * w + x) * 3..][..3];
            match format {
                PixelFormat::Rgb8 => row[x * 3..x * 3 + 3].copy_from_slice(p),
                PixelFormat::Bgr8 => row[x * 3..x * 3 + 3].copy_from_slice(&[p[2], p[1], p[0]]),
                PixelFormat::Rgba8 => row[x * 4..x * 4 + 4].copy_from_slice(&[p[0], p[1], p[2], 9]),
                PixelFormat::Bgra8 => row[x * 4..x * 4 + 4].copy_from_slice(&[p[2], p[1], p[0], 9]),
                PixelFormat::Gray8 | PixelFormat::Yuyv => unreachable!(),
            }
        }
    }
    (out, stride)
}

#[test]
fn colour_layouts_and_strides_give_identical_faces() {
    let detector = detector();
    let (rgb, w, h) = load_rgb("two_portraits.png");
    let reference = read_reference("two_portraits.retinaface.txt");
    let mut session = DetectorSession::new(&detector, config_for(&reference, 1)).unwrap();
    let packed = ImageView::packed(&rgb, w, h, PixelFormat::Rgb8).unwrap();
    let expected = session.detect(&packed).unwrap().to_vec();
    for format in [
        PixelFormat::Rgb8,
        PixelFormat::Bgr8,
        PixelFormat::Rgba8,
        PixelFormat::Bgra8,
    ] {
        let (data, stride) = convert(&rgb, w, h, format);
        let view = ImageView::new(&data, w, h, stride, format).unwrap();
        assert_eq!(session.detect(&view).unwrap(), &expected[..], "{format:?}");
    }
}

#[test]
fn yuyv_frames_find_the_same_faces() {
    // BT.601 limited range, the inverse of the YUYV decoder, two pixels sharing chroma.
    let detector = detector();
    let (rgb, full_w, h) = load_rgb("two_portraits.png");
    let w = full_w & !1;
    let mut yuyv = vec![0u8; w * 2 * h];
    for y in 0..h {
        for pair in 0..w / 2 {
            let px = |x: usize| {
                let p = &rgb[(y * full_w + x) * 3..][..3];
                (p[0] as f32, p[1] as f32, p[2] as f32)
            };
            let luma =
                |(r, g, b): (f32, f32, f32)| 16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0;
            let (a, b) = (px(2 * pair), px(2 * pair + 1));
            let (r, g, bl) = ((a.0 + b.0) / 2.0, (a.1 + b.1) / 2.0, (a.2 + b.2) / 2.0);
            let u = 128.0 + (-37.797 * r - 74.203 * g + 112.0 * bl) / 255.0;
            let v = 128.0 + (112.0 * r - 93.786 * g - 18.214 * bl) / 255.0;
            let at = y * w * 2 + pair * 4;
            yuyv[at..at + 4].copy_from_slice(&[
                luma(a).round() as u8,
                u.round() as u8,
                luma(b).round() as u8,
                v.round() as u8,
            ]);
        }
    }
    let reference = read_reference("two_portraits.retinaface.txt");
    let mut session = DetectorSession::new(&detector, config_for(&reference, 1)).unwrap();
    let view = ImageView::packed(&yuyv, w, h, PixelFormat::Yuyv).unwrap();
    let faces = session.detect(&view).unwrap();
    assert_eq!(faces.len(), reference.faces.len(), "{faces:?}");
    for (face, expected) in faces.iter().zip(&reference.faces) {
        assert!(
            iou(&face.bbox, &expected.bbox) > 0.9,
            "{face:?} vs {expected:?}"
        );
        for (p, q) in face.landmarks.iter().zip(&expected.landmarks) {
            assert!(
                (p[0] - q[0]).abs() < 1.5 && (p[1] - q[1]).abs() < 1.5,
                "{face:?} vs {expected:?}"
            );
        }
    }
}

#[test]
fn finds_each_face_with_landmarks_in_place() {
    // Default thresholds (0.9, NMS 0.4): Biden on the left, Obama on the right; one Obama.
    let detector = detector();
    let mut session = DetectorSession::new(&detector, DetectorConfig::default()).unwrap();
    for (image, expected) in [("two_portraits.png", 2), ("obama_241x301.png", 1)] {
        let (rgb, w, h) = load_rgb(image);
        let view = ImageView::packed(&rgb, w, h, PixelFormat::Rgb8).unwrap();
        let faces = session.detect(&view).unwrap();
        assert_eq!(faces.len(), expected, "{image}: {faces:?}");
        for face in faces {
            assert!(face.score > 0.99, "{image}: {face:?}");
            let [x, y, bw, bh] = face.bbox;
            assert!(
                bw > 40.0 && bh > 50.0 && bh > bw,
                "{image}: a portrait face box, {face:?}"
            );
            let [le, re, nose, lm, rm] = face.landmarks;
            for p in face.landmarks {
                assert!(
                    p[0] > x && p[0] < x + bw && p[1] > y && p[1] < y + bh,
                    "{image}: {face:?}"
                );
            }
            // Upright frontal faces: eyes level and apart, nose between and below, mouth below.
            assert!(
                re[0] - le[0] > 0.3 * bw && (re[1] - le[1]).abs() < 0.1 * bh,
                "{image}: eyes {face:?}"
            );
            assert!(
                nose[0] > le[0] && nose[0] < re[0] && nose[1] > le[1].max(re[1]),
                "{image}: nose {face:?}"
            );
            assert!(
                lm[1] > nose[1] && rm[1] > nose[1] && rm[0] - lm[0] > 0.2 * bw,
                "{image}: mouth {face:?}"
            );
        }
        if image == "two_portraits.png" {
            // Sorted by score; one face per half of the composite.
            let mut centres: Vec<f32> = faces.iter().map(|f| f.bbox[0] + f.bbox[2] / 2.0).collect();
            centres.sort_by(f32::total_cmp);
            assert!(
                centres[0] < w as f32 * 0.45 && centres[1] > w as f32 * 0.55,
                "{faces:?}"
            );
        }
    }
}

#[test]
fn downscaled_detection_reports_frame_coordinates() {
    // Every pixel of the fixture repeated 3x3: shrinking by 3 gives back the fixture exactly,
    // so the faces must be the reference's, scaled by 3.
    let detector = detector();
    let (rgb, w, h) = load_rgb("obama_241x301.png");
    let k = 3;
    let mut big = vec![0u8; w * k * h * k * 3];
    for y in 0..h * k {
        for x in 0..w * k {
            let src = ((y / k) * w + x / k) * 3;
            big[(y * w * k + x) * 3..][..3].copy_from_slice(&rgb[src..src + 3]);
        }
    }
    let reference = read_reference("obama_241x301.retinaface.txt");
    let config = DetectorConfig {
        max_width: w * k,
        max_height: h * k,
        downscale: k,
        ..config_for(&reference, 1)
    };
    let mut session = DetectorSession::new(&detector, config).unwrap();
    let view = ImageView::packed(&big, w * k, h * k, PixelFormat::Rgb8).unwrap();
    let faces = session.detect(&view).unwrap();
    assert_eq!(faces.len(), reference.faces.len());
    let k = k as f32;
    for (face, expected) in faces.iter().zip(&reference.faces) {
        assert_close("downscaled score", face.score, expected.score, 1e-5);
        for (a, b) in face.bbox.iter().zip(&expected.bbox) {
            assert_close("downscaled bbox", *a, b * k, 5e-3 * k);
        }
        for (p, q) in face.landmarks.iter().zip(&expected.landmarks) {
            assert_close("downscaled landmark x", p[0], q[0] * k, 5e-3 * k);
            assert_close("downscaled landmark y", p[1], q[1] * k, 5e-3 * k);
        }
    }
}
