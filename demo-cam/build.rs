//! Embeds the shipped weights into the binary when they exist, so `face2exp-demo` runs from
//! any directory. A missing file only turns its cfg off: the crate still builds, and the
//! binary then asks for `--weights` / `--detector` at run time.

use std::path::Path;

/// (file in weights/, cfg name, env var carrying its absolute path to `include_bytes!`)
const WEIGHTS: [(&str, &str, &str); 2] = [
    (
        "face2exp-base.safetensors",
        "embedded_classifier",
        "FACE2EXP_EMBEDDED_CLASSIFIER",
    ),
    (
        "retinaface_mnet025.safetensors",
        "embedded_detector",
        "FACE2EXP_EMBEDDED_DETECTOR",
    ),
];

fn main() {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let weights_dir = Path::new(&manifest_dir).join("../weights");
    // The directory's mtime changes when a file appears or disappears.
    println!("cargo:rerun-if-changed={}", weights_dir.display());
    println!("cargo:rerun-if-env-changed=FACE2EXP_DEMO_NO_EMBED");
    let skip = std::env::var_os("FACE2EXP_DEMO_NO_EMBED").is_some();
    for (file, cfg, env) in WEIGHTS {
        println!("cargo:rustc-check-cfg=cfg({cfg})");
        let path = weights_dir.join(file);
        if !path.is_file() {
            // Watching a missing file would rerun this script on every build; the folder's
            // mtime already tells when the file appears.
            continue;
        }
        println!("cargo:rerun-if-changed={}", path.display());
        if skip {
            continue;
        }
        let path = path.canonicalize().expect("an existing file canonicalises");
        println!("cargo:rustc-cfg={cfg}");
        println!("cargo:rustc-env={env}={}", path.display());
    }
}
