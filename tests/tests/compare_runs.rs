//! `tools/compare_runs.py` computes the paired figures of docs/RESULTS_META.md and
//! docs/RESULTS_FEEDBACK.md, so its arithmetic is checked here on generated run folders whose
//! answers are worked out by hand: paired differences, their mean and standard error, the
//! claim counts, the feedback table (rms f per step from window means and stds), and its
//! handling of broken logs and of flag combinations it refuses.
//!
//! The script needs only Python's standard library; `.ci/run` installs python3. Where no
//! python3 is on PATH the tests print why and skip, so a fresh clone's `cargo test` passes.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/compare_runs.py")
}

fn python_available() -> bool {
    let found = Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("skipped: python3 is not on PATH (tools/compare_runs.py needs it)");
    }
    found
}

fn run(args: &[&str]) -> Output {
    Command::new("python3")
        .arg(script())
        .args(args)
        .output()
        .expect("python3 starts")
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "compare_runs.py failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

/// An evaluation record as `face2exp train` logs it (accuracies as fractions).
fn eval(step: u64, net: &str, overall: f64, mean: f64, std: f64) -> String {
    format!(
        r#"{{"kind":"eval","net":"{net}","step":{step},"overall_acc":{overall},"mean_class_acc":{mean},"std_class_acc":{std}}}"#
    )
}

/// A training window record with the fields the feedback table reads.
fn window(step: u64, f: f64, f_std: f64, f_raw: f64, loss_f: f64) -> String {
    format!(
        r#"{{"kind":"train","step":{step},"f":{f},"f_std":{f_std},"f_raw":{f_raw},"f_positive_ratio":0.5,"loss_f":{loss_f},"loss_s":1.0,"loss_c":1.5,"mask_rate":0.0,"labeled_images_per_s":30.0}}"#
    )
}

fn write_run(root: &Path, name: &str, lines: &[String]) -> String {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let mut text = String::new();
    for line in lines {
        writeln!(text, "{line}").unwrap();
    }
    std::fs::write(dir.join("metrics.jsonl"), text).unwrap();
    dir.to_str().unwrap().to_string()
}

/// Two pairs at step 100. Pair 1: Meta - SL = (+1, +2, -1) points; pair 2: (0, -1, +1).
/// Mean (+0.50, +0.50, +0.00); standard errors stdev/sqrt(2) = (0.50, 1.50, 1.00); one pair
/// with higher mean class accuracy, one with lower std, the same one with both.
fn two_pairs(root: &Path) -> [String; 4] {
    let sl = |name| write_run(root, name, &[eval(100, "base", 0.40, 0.42, 0.15)]);
    let meta1 = write_run(
        root,
        "meta-s1",
        &[
            // A resumed run logs step 100 again; the later record is the one that counts.
            eval(100, "base", 0.10, 0.10, 0.50),
            window(10, 0.01, 0.02, 0.01, 0.02),
            window(20, -0.03, 0.0, -0.03, 0.04),
            eval(100, "base", 0.41, 0.44, 0.14),
            eval(100, "adaptation", 0.30, 0.30, 0.30),
        ],
    );
    let meta2 = write_run(
        root,
        "meta-s2",
        &[
            window(10, 0.0, 0.0, 0.02, 0.0),
            eval(100, "base", 0.40, 0.41, 0.16),
        ],
    );
    [sl("sl-s1"), meta1, sl("sl-s2"), meta2]
}

/// The two pairs in a fresh folder, or None (after saying why) where python3 is missing.
fn fixture() -> Option<(tempfile::TempDir, [String; 4])> {
    if !python_available() {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let runs = two_pairs(dir.path());
    Some((dir, runs))
}

#[test]
fn pair_tables_hold_the_hand_worked_differences() {
    let Some((_dir, [sl1, meta1, sl2, meta2])) = fixture() else {
        return;
    };
    let out = stdout(&run(&["--pair", &sl1, &meta1, "--pair", &sl2, &meta2]));

    assert!(out.contains("| SL overall / mean / std | Meta overall / mean / std | Meta - SL |"));
    assert!(
        out.contains("| meta-s1 | 100 | 40.00 / 42.00 / 15.00 | 41.00 / 44.00 / 14.00 | +1.00 / +2.00 / -1.00 |"),
        "{out}"
    );
    assert!(
        out.contains("| meta-s2 | 100 | 40.00 / 42.00 / 15.00 | 40.00 / 41.00 / 16.00 | +0.00 / -1.00 / +1.00 |"),
        "{out}"
    );
    assert!(
        out.contains("| 100 | 2 | +0.50 / +0.50 / +0.00 | 0.50 / 1.50 / 1.00 | 1 | 1 | 1 |"),
        "{out}"
    );
}

#[test]
fn feedback_table_takes_rms_over_steps_not_windows() {
    let Some((_dir, [_, meta1, _, _])) = fixture() else {
        return;
    };
    let out = stdout(&run(&["--meta", &meta1]));
    // Windows (f, f_std) = (0.01, 0.02) and (-0.03, 0): mean f -0.01, mean |f| 0.02,
    // rms per step sqrt(((0.02^2 + 0.01^2) + 0.03^2) / 2) = sqrt(7e-4) = 2.65e-2,
    // |L_f| / L_s = 0.03, mean f_raw -0.01 with 1 of 2 windows positive.
    let row = out
        .lines()
        .find(|l| l.starts_with("| meta-s1 |"))
        .unwrap_or_else(|| panic!("no meta-s1 row in\n{out}"));
    let cells: Vec<&str> = row.split('|').map(str::trim).collect();
    assert_eq!(
        &cells[1..12],
        [
            "meta-s1",
            "2",
            "-1.00e-02",
            "2.00e-02",
            "2.65e-02",
            "50 %",
            "3.00e-02",
            "-1.00e-02",
            "50 %",
            "1.500",
            "0.0000"
        ],
        "{row}"
    );
}

#[test]
fn labels_and_net_choose_what_the_pair_tables_show() {
    let Some((_dir, [sl1, meta1, _, _])) = fixture() else {
        return;
    };
    let out = stdout(&run(&[
        "--pair",
        &sl1,
        &meta1,
        "--labels",
        "(f = 0)",
        "(1e-2)",
        "--net",
        "adaptation",
    ]));
    assert!(out.contains("| (1e-2) - (f = 0) |"), "{out}");
    assert!(
        out.contains("| 30.00 / 30.00 / 30.00 | -10.00 / -12.00 / +15.00 |"),
        "{out}"
    );
}

#[test]
fn a_torn_last_line_is_ignored_and_a_broken_line_is_named() {
    let Some((dir, [sl1, meta1, _, _])) = fixture() else {
        return;
    };
    let log = Path::new(&meta1).join("metrics.jsonl");
    let whole = std::fs::read_to_string(&log).unwrap();

    // A run killed mid-write: the last line is cut; the figures before it still count.
    std::fs::write(&log, format!("{whole}{{\"kind\":\"tra")).unwrap();
    let output = run(&["--pair", &sl1, &meta1]);
    assert!(stdout(&output).contains("+1.00 / +2.00 / -1.00"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("line 6 is incomplete, ignored"), "{stderr}");

    // A broken line before the end is an error that names the file and the line.
    std::fs::write(&log, format!("not json\n{whole}")).unwrap();
    let output = run(&["--pair", &sl1, &meta1]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("metrics.jsonl: line 1 is not JSON"),
        "{stderr}"
    );

    let missing = dir.path().join("no-such-run");
    let output = run(&["--meta", missing.to_str().unwrap()]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot read"));
}

#[test]
fn flags_that_would_be_ignored_are_refused() {
    let Some((_dir, [sl1, meta1, _, _])) = fixture() else {
        return;
    };
    for args in [
        vec!["--meta", &meta1, "--net", "base"],
        vec!["--meta", &meta1, "--labels", "A", "B"],
        vec!["--meta", &meta1, "--pair", &sl1, &meta1],
        vec![],
    ] {
        let output = run(&args);
        // argparse's usage errors exit with 2 and say why on stderr.
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(
            String::from_utf8_lossy(&output.stderr).contains("error:"),
            "{args:?}"
        );
    }
}

#[test]
fn pairs_without_a_common_step_are_skipped_with_a_reason() {
    let Some((dir, [sl1, meta1, _, _])) = fixture() else {
        return;
    };
    let cut_short = write_run(dir.path(), "cut", &[eval(200, "base", 0.5, 0.5, 0.1)]);
    let output = run(&["--pair", &sl1, &meta1, "--pair", &sl1, &cut_short]);
    assert!(stdout(&output).contains("| 100 | 1 |"));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no evaluation step in common"));

    let output = run(&["--pair", &sl1, &cut_short]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("no pair has an evaluation step"));
}
