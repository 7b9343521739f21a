//! The batch CLI end to end: the real binary on the fixture photos (tests/fixtures, see its
//! README for their licences), with the shipped detector. Face counts and boxes are checked
//! against the reference RetinaFace outputs stored next to the photos; probabilities against
//! the schema and the simplex. Skips, saying why, when the detector weights are absent.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

fn demo(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_face2exp-demo"))
        .args(args)
        .env_remove("FACE2EXP_WEIGHTS")
        .env_remove("FACE2EXP_DETECTOR")
        .output()
        .expect("the face2exp-demo binary runs")
}

fn json_lines(output: &Output) -> Vec<Value> {
    String::from_utf8(output.stdout.clone())
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect()
}

fn detector_or_skip() -> Option<String> {
    let found = common::detector_weights();
    if found.is_none() {
        eprintln!("SKIPPED: weights/retinaface_mnet025.safetensors is missing");
    }
    found.map(|p| p.display().to_string())
}

fn iou(a: &[f64], b: &[f64]) -> f64 {
    let ix = ((a[0] + a[2]).min(b[0] + b[2]) - a[0].max(b[0])).max(0.0);
    let iy = ((a[1] + a[3]).min(b[1] + b[3]) - a[1].max(b[1])).max(0.0);
    ix * iy / (a[2] * a[3] + b[2] * b[3] - ix * iy)
}

fn as_f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// Boxes of the reference detections (`face score x y w h lx ly ...` lines, written by
/// tools/retinaface_reference.py) with a score above the demo's default threshold, 0.6.
fn reference_boxes(path: &Path) -> Vec<Vec<f64>> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .filter_map(|line| line.strip_prefix("face "))
        .map(|rest| {
            rest.split_whitespace()
                .map(|v| v.parse::<f64>().unwrap())
                .collect::<Vec<_>>()
        })
        .filter(|values| values[0] > 0.6)
        .map(|values| values[1..5].to_vec())
        .collect()
}

/// Checks one frame record against the schema and against the reference detections.
fn check_record(record: &Value, reference: &Path, class_count: usize) {
    let expected_faces = reference_boxes(reference);
    let faces = record["faces"].as_array().unwrap();
    assert_eq!(
        faces.len(),
        expected_faces.len(),
        "face count in {}",
        record["source"]
    );
    for face in faces {
        let bbox = as_f64s(&face["box"]);
        assert_eq!(bbox.len(), 4);
        let best = expected_faces
            .iter()
            .map(|e| iou(&bbox, e))
            .fold(0.0, f64::max);
        assert!(
            best > 0.8,
            "box {bbox:?} matches no reference face (best IoU {best:.3})"
        );
        let score = face["score"].as_f64().unwrap();
        assert!((0.6..=1.0).contains(&score), "score {score}");
        let landmarks = face["landmarks"].as_array().unwrap();
        assert_eq!(landmarks.len(), 5);
        assert!(landmarks.iter().all(|p| as_f64s(p).len() == 2));
        let probs = face["probs"].as_object().unwrap();
        assert_eq!(probs.len(), class_count);
        let sum: f64 = probs.values().map(|p| p.as_f64().unwrap()).sum();
        assert!((sum - 1.0).abs() < 1e-4, "probabilities sum to {sum}");
        assert!(probs
            .values()
            .all(|p| (0.0..=1.0).contains(&p.as_f64().unwrap())));
        let expression = face["expression"].as_str().unwrap();
        let top = probs
            .iter()
            .max_by(|a, b| a.1.as_f64().unwrap().total_cmp(&b.1.as_f64().unwrap()))
            .unwrap();
        assert_eq!(expression, top.0, "expression is the most probable class");
    }
}

#[test]
fn folder_of_fixture_photos_gives_one_json_object_per_photo() {
    let Some(detector) = detector_or_skip() else {
        return;
    };
    let classifier = common::classifier_weights();
    let dir = tempfile::tempdir().unwrap();
    for name in ["obama_241x301.png", "two_portraits.png"] {
        std::fs::copy(common::fixtures().join(name), dir.path().join(name)).unwrap();
    }
    let out = dir.path().join("annotated");
    let output = demo(&[
        "--input",
        dir.path().to_str().unwrap(),
        "--headless",
        "--json",
        "--out",
        out.to_str().unwrap(),
        "--weights",
        classifier.to_str().unwrap(),
        "--detector",
        &detector,
    ]);
    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let records = json_lines(&output);
    assert_eq!(records.len(), 2);
    for (i, (record, stem)) in records
        .iter()
        .zip(["obama_241x301", "two_portraits"])
        .enumerate()
    {
        assert_eq!(record["frame"], i as u64);
        assert!(record["source"]
            .as_str()
            .unwrap()
            .ends_with(&format!("{stem}.png")));
        check_record(
            record,
            &common::fixtures().join(format!("{stem}.retinaface.txt")),
            7,
        );
        // The annotated PNG is the photo with boxes drawn: same size, different pixels.
        let annotated = image::open(out.join(format!("{stem}.png")))
            .unwrap()
            .into_rgb8();
        let original = image::open(common::fixtures().join(format!("{stem}.png")))
            .unwrap()
            .into_rgb8();
        assert_eq!(annotated.dimensions(), original.dimensions());
        let changed = annotated
            .pixels()
            .zip(original.pixels())
            .filter(|(a, b)| a != b)
            .count();
        assert!(changed > 500, "only {changed} pixels annotated in {stem}");
    }
}

#[test]
fn glob_input_and_text_output() {
    let Some(detector) = detector_or_skip() else {
        return;
    };
    let classifier = common::classifier_weights();
    let pattern = format!("{}/two_*.png", common::fixtures().display());
    let output = demo(&[
        "--input",
        &pattern,
        "--headless",
        "--weights",
        classifier.to_str().unwrap(),
        "--detector",
        &detector,
    ]);
    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains("two_portraits.png: 2 faces, "), "{text}");
}

#[test]
fn unreadable_files_are_reported_by_name_and_the_batch_goes_on() {
    let Some(detector) = detector_or_skip() else {
        return;
    };
    let classifier = common::classifier_weights();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a_truncated.png"), b"\x89PNG\r\n\x1a\n\0\0").unwrap();
    std::fs::copy(
        common::fixtures().join("obama_241x301.png"),
        dir.path().join("b.png"),
    )
    .unwrap();
    let output = demo(&[
        "--input",
        dir.path().to_str().unwrap(),
        "--headless",
        "--json",
        "--weights",
        classifier.to_str().unwrap(),
        "--detector",
        &detector,
    ]);
    assert_eq!(
        output.status.code(),
        Some(1),
        "a failed file makes the exit status 1"
    );
    let records = json_lines(&output);
    assert_eq!(records.len(), 2);
    assert!(records[0]["error"]
        .as_str()
        .unwrap()
        .contains("a_truncated.png"));
    assert_eq!(records[0]["faces"], serde_json::json!([]));
    assert_eq!(records[1]["faces"].as_array().unwrap().len(), 1);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("2 frames, 1 faces, 1 unreadable"),
        "{stderr}"
    );
}

/// The pipelined default (2 threads) reads one frame ahead; every record must still come out in file order, with
/// the right name, and match the sequential run: errors first, in the middle and last.
#[test]
fn pipelined_batch_matches_the_sequential_one_record_for_record() {
    let Some(detector) = detector_or_skip() else {
        return;
    };
    let classifier = common::classifier_weights();
    let dir = tempfile::tempdir().unwrap();
    let bad = b"\x89PNG\r\n\x1a\n\0\0";
    std::fs::write(dir.path().join("a_bad.png"), bad).unwrap();
    let photos = [
        ("b.png", "obama_241x301.png"),
        ("d.png", "two_portraits.png"),
    ];
    for (name, fixture) in photos {
        std::fs::copy(common::fixtures().join(fixture), dir.path().join(name)).unwrap();
    }
    std::fs::write(dir.path().join("c_bad.png"), bad).unwrap();
    std::fs::write(dir.path().join("e_bad.png"), bad).unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec![
            "--input",
            dir.path().to_str().unwrap(),
            "--headless",
            "--json",
            "--threads",
            "2",
            "--weights",
            classifier.to_str().unwrap(),
            "--detector",
            &detector,
        ];
        args.extend_from_slice(extra);
        let output = demo(&args);
        assert_eq!(output.status.code(), Some(1), "{output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("5 frames, 3 faces, 3 unreadable"),
            "{stderr}"
        );
        json_lines(&output)
    };
    let sequential = run(&["--no-pipeline"]);
    let pipelined = run(&[]);
    assert_eq!(sequential.len(), 5);
    assert_eq!(pipelined.len(), 5);
    let face_counts = [0, 1, 0, 2, 0];
    for (i, (s, p)) in sequential.iter().zip(&pipelined).enumerate() {
        assert_eq!(s["frame"], p["frame"]);
        assert_eq!(s["source"], p["source"], "record {i}");
        assert_eq!(
            s["error"].is_string(),
            face_counts[i] == 0,
            "record {i}: {s}"
        );
        assert_eq!(
            p["error"].is_string(),
            face_counts[i] == 0,
            "record {i}: {p}"
        );
        let (s_faces, p_faces) = (
            s["faces"].as_array().unwrap(),
            p["faces"].as_array().unwrap(),
        );
        assert_eq!(s_faces.len(), face_counts[i], "record {i}: {s}");
        assert_eq!(p_faces.len(), face_counts[i], "record {i}: {p}");
        for (a, b) in s_faces.iter().zip(p_faces) {
            assert_eq!(a["expression"], b["expression"]);
            let close = |x: &Value, y: &Value, tol: f64| {
                as_f64s(x)
                    .iter()
                    .zip(as_f64s(y))
                    .all(|(x, y)| (x - y).abs() <= tol)
            };
            assert!(close(&a["box"], &b["box"], 1e-3), "{a} vs {b}");
            let probs = a["probs"].as_object().unwrap();
            assert!(
                probs.iter().all(
                    |(k, p)| (p.as_f64().unwrap() - b["probs"][k].as_f64().unwrap()).abs() <= 1e-4
                ),
                "{a} vs {b}"
            );
        }
    }
}

#[test]
fn whole_image_mode_classifies_each_photo_as_one_face_without_a_detector() {
    let classifier = common::classifier_weights();
    let input = common::fixtures().join("two_portraits.png");
    let output = demo(&[
        "--input",
        input.to_str().unwrap(),
        "--headless",
        "--json",
        "--whole-image",
        "--weights",
        classifier.to_str().unwrap(),
    ]);
    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let records = json_lines(&output);
    let faces = records[0]["faces"].as_array().unwrap();
    assert_eq!(faces.len(), 1);
    assert_eq!(faces[0]["box"], serde_json::json!([0.0, 0.0, 370.0, 216.0]));
    let sum: f64 = faces[0]["probs"]
        .as_object()
        .unwrap()
        .values()
        .map(|p| p.as_f64().unwrap())
        .sum();
    assert!((sum - 1.0).abs() < 1e-4);
}

#[test]
fn bad_invocations_fail_with_a_clear_message() {
    let missing = demo(&[
        "--input",
        "/nonexistent/photos",
        "--headless",
        "--whole-image",
        "--weights",
        "/nonexistent/w.safetensors",
    ]);
    assert_eq!(missing.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(stderr.contains("/nonexistent/w.safetensors"), "{stderr}");

    if face2exp_demo::weights::embedded_classifier().is_none() {
        let output = demo(&["--input", "x.png", "--headless"]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("no embedded classifier weights in this build; pass --weights PATH"),
            "{stderr}"
        );
    }

    let not_a_model = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(not_a_model.path(), b"definitely not safetensors").unwrap();
    let input = common::fixtures().join("obama_241x301.png");
    let output = demo(&[
        "--input",
        input.to_str().unwrap(),
        "--headless",
        "--whole-image",
        "--weights",
        not_a_model.path().to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(not_a_model.path().to_str().unwrap()),
        "error names the file: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn without_a_camera_the_demo_says_so_instead_of_hanging_or_panicking() {
    let has_camera = std::fs::read_dir("/dev")
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .any(|e| e.file_name().to_string_lossy().starts_with("video"))
        })
        .unwrap_or(false);
    if has_camera || !cfg!(feature = "camera") {
        eprintln!("SKIPPED: this machine has a /dev/video* device, or the camera feature is off");
        return;
    }
    let classifier = common::classifier_weights();
    for args in [
        &["--list-cameras"][..],
        &["--headless", "--weights", classifier.to_str().unwrap()][..],
    ] {
        let output = demo(args);
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("no camera found; use --input PATH"),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
