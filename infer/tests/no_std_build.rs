//! The crate's core promises to build without `std` (`--no-default-features`: `no_std` +
//! `alloc`, for embedded targets). Nothing else compiles it that way, so a `std`-only call
//! slipping into the core (it happened once: `f32::round` in the int8 quantiser) would go
//! unnoticed; this test runs that build.

use std::process::Command;

#[test]
fn the_core_builds_without_std() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // A target directory of its own: the outer `cargo test` may still hold the lock on ours.
    let target_dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("no-std-check");
    let output = Command::new(cargo)
        .args([
            "check",
            "--quiet",
            "--lib",
            "--no-default-features",
            "--manifest-path",
        ])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .output()
        .expect("cargo runs");
    assert!(
        output.status.success(),
        "`cargo check --no-default-features` failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
