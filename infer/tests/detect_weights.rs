//! The committed detector weights are the documented file, and bad files give errors that say
//! what is wrong, never panics.

use face2exp_infer::detect::{DetectError, Detector, DetectorConfig, DetectorSession};
use face2exp_infer::{ImageView, LoadError, PixelFormat};
use std::path::{Path, PathBuf};

const WEIGHTS: &str = "weights/retinaface_mnet025.safetensors";

fn workspace_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative)
}

/// SHA-256 (FIPS 180-4), so the check needs no extra dependency.
fn sha256(data: &[u8]) -> String {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    let mut message = data.to_vec();
    message.push(0x80);
    while message.len() % 64 != 56 {
        message.push(0);
    }
    message.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for block in message.chunks_exact(64) {
        let mut w = [0u32; 64];
        for (i, word) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let mut v = h;
        for i in 0..64 {
            let s1 = v[4].rotate_right(6) ^ v[4].rotate_right(11) ^ v[4].rotate_right(25);
            let ch = (v[4] & v[5]) ^ (!v[4] & v[6]);
            let t1 = v[7]
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[i])
                .wrapping_add(w[i]);
            let s0 = v[0].rotate_right(2) ^ v[0].rotate_right(13) ^ v[0].rotate_right(22);
            let maj = (v[0] & v[1]) ^ (v[0] & v[2]) ^ (v[1] & v[2]);
            let t2 = s0.wrapping_add(maj);
            v = [
                t1.wrapping_add(t2),
                v[0],
                v[1],
                v[2],
                v[3].wrapping_add(t1),
                v[4],
                v[5],
                v[6],
            ];
        }
        for (hi, vi) in h.iter_mut().zip(v) {
            *hi = hi.wrapping_add(vi);
        }
    }
    h.iter().map(|x| format!("{x:08x}")).collect()
}

#[test]
fn sha256_matches_known_vectors() {
    assert_eq!(
        sha256(b""),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert_eq!(
        sha256(b"abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    let long = b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    assert_eq!(
        sha256(long),
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
    );
}

#[test]
fn committed_weights_match_the_documented_checksum() {
    let readme =
        std::fs::read_to_string(workspace_file("weights/README.md")).expect("weights/README.md");
    // The model card states it as "sha256 `<hex>`" on the line naming the file.
    let documented = readme
        .lines()
        .filter(|l| l.contains("retinaface_mnet025.safetensors") && l.contains("sha256"))
        .find_map(|l| {
            l.split('`')
                .find(|w| w.len() == 64 && w.chars().all(|c| c.is_ascii_hexdigit()))
        })
        .expect("weights/README.md documents the sha256 of retinaface_mnet025.safetensors");
    let bytes = std::fs::read(workspace_file(WEIGHTS)).unwrap();
    assert_eq!(
        sha256(&bytes),
        documented,
        "{WEIGHTS} differs from the file weights/README.md documents"
    );
}

fn load_error(bytes: &[u8]) -> String {
    Detector::from_bytes(bytes)
        .expect_err("must be rejected")
        .to_string()
}

/// A copy of the committed file with `metadata` replaced and tensors filtered.
fn rewritten(metadata: &[(&str, &str)], keep: impl Fn(&str) -> bool) -> Vec<u8> {
    let bytes = std::fs::read(workspace_file(WEIGHTS)).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let tensors: Vec<(String, safetensors::tensor::TensorView<'_>)> = file
        .tensors()
        .into_iter()
        .filter(|(name, _)| keep(name))
        .collect();
    let meta = metadata
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    safetensors::serialize(tensors, Some(meta)).unwrap()
}

#[test]
fn bad_files_are_errors_that_name_the_problem() {
    let good_meta = [("face2exp.format", "1"), ("arch", "retinaface-mnet0.25")];
    assert!(Detector::from_bytes(&rewritten(&good_meta, |_| true)).is_ok());

    assert!(load_error(b"").contains("safetensors"));
    let bytes = std::fs::read(workspace_file(WEIGHTS)).unwrap();
    assert!(load_error(&bytes[..bytes.len() / 2]).contains("safetensors"));
    let e = load_error(&rewritten(
        &[("face2exp.format", "1"), ("arch", "resnet18")],
        |_| true,
    ));
    assert!(e.contains("arch") && e.contains("resnet18"), "{e}");
    let e = load_error(&rewritten(&[("arch", "retinaface-mnet0.25")], |_| true));
    assert!(e.contains("face2exp.format"), "{e}");
    let e = load_error(&rewritten(&good_meta, |n| n != "ssh2.conv7X7_2.0.bias"));
    assert!(e.contains("ssh2.conv7X7_2.0.bias"), "{e}");

    let missing = workspace_file("weights/no_such_detector.safetensors");
    let e = Detector::load(&missing).unwrap_err();
    assert!(
        matches!(e, LoadError::Io { .. }) && e.to_string().contains("no_such_detector"),
        "{e}"
    );
    let not_weights = workspace_file("tests/fixtures/two_portraits.png");
    let e = Detector::load(&not_weights).unwrap_err().to_string();
    assert!(
        e.contains("two_portraits.png") && e.contains("safetensors"),
        "{e}"
    );
}

#[test]
fn bad_configurations_and_frames_are_errors() {
    let detector = Detector::load(workspace_file(WEIGHTS)).unwrap();
    let base = DetectorConfig {
        max_width: 64,
        max_height: 48,
        ..DetectorConfig::default()
    };
    for bad in [
        DetectorConfig {
            max_width: 0,
            ..base
        },
        DetectorConfig {
            max_faces: 0,
            ..base
        },
        DetectorConfig {
            score_threshold: 1.0,
            ..base
        },
        DetectorConfig {
            score_threshold: f32::NAN,
            ..base
        },
        DetectorConfig {
            nms_iou: -0.1,
            ..base
        },
        DetectorConfig { threads: 0, ..base },
        DetectorConfig {
            downscale: 0,
            ..base
        },
        DetectorConfig {
            downscale: 9,
            ..base
        },
        DetectorConfig {
            max_width: 100_000,
            max_height: 100_000,
            ..base
        },
    ] {
        assert!(
            matches!(
                DetectorSession::new(&detector, bad),
                Err(DetectError::InvalidConfig(_))
            ),
            "{bad:?}"
        );
    }
    let mut session = DetectorSession::new(&detector, base).unwrap();
    let big = vec![0u8; 65 * 48];
    let e = session
        .detect(&ImageView::packed(&big, 65, 48, PixelFormat::Gray8).unwrap())
        .unwrap_err();
    assert!(
        e.to_string().contains("65x48") && e.to_string().contains("64x48"),
        "{e}"
    );
}

#[test]
fn any_frame_size_and_content_runs_without_panic() {
    let detector = Detector::load(workspace_file(WEIGHTS)).unwrap();
    let config = DetectorConfig {
        max_width: 97,
        max_height: 61,
        score_threshold: 0.0,
        ..DetectorConfig::default()
    };
    let mut session = DetectorSession::new(&detector, config).unwrap();
    let mut state = 0x2545_f491_u32;
    let mut noise = move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        (state >> 24) as u8
    };
    for (w, h) in [
        (1, 1),
        (1, 61),
        (97, 1),
        (2, 3),
        (17, 9),
        (32, 32),
        (33, 31),
        (97, 61),
    ] {
        for content in 0..3 {
            let pixels: Vec<u8> = (0..w * h * 3)
                .map(|_| match content {
                    0 => 0,
                    1 => 255,
                    _ => noise(),
                })
                .collect();
            let view = ImageView::packed(&pixels, w, h, PixelFormat::Rgb8).unwrap();
            let faces = session.detect(&view).unwrap();
            // Threshold 0 keeps every anchor before NMS: the face cap must hold.
            assert!(faces.len() <= config.max_faces, "{w}x{h}");
            for face in faces {
                assert!(
                    face.score.is_finite() && face.bbox.iter().all(|v| v.is_finite()),
                    "{w}x{h}: {face:?}"
                );
            }
        }
    }
}
