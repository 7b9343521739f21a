//! Shared by the integration tests: locating the shipped weights and fixture photos, and,
//! while the trained classifier is not in weights/ yet, writing a ResNet-18 in the shipped
//! format (docs/FORMAT.md) with seeded random weights. Such a model exercises every real code
//! path (loading, cropping, the network, softmax, JSON, overlay) but its expressions are
//! meaningless, so tests built on it check structure and invariants, never accuracy.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn fixtures() -> PathBuf {
    workspace_root().join("tests/fixtures")
}

pub fn detector_weights() -> Option<PathBuf> {
    let path = workspace_root().join("weights/retinaface_mnet025.safetensors");
    path.is_file().then_some(path)
}

/// The trained classifier when shipped, else a generated random-weight ResNet-18.
pub fn classifier_weights() -> PathBuf {
    let shipped = workspace_root().join("weights/face2exp-base.safetensors");
    if shipped.is_file() {
        return shipped;
    }
    static GENERATED: OnceLock<PathBuf> = OnceLock::new();
    GENERATED
        .get_or_init(|| {
            // Deterministic content, so test binaries share one file: written under a
            // private name, then renamed into place (atomic; a concurrent writer is harmless).
            let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
            let path = dir.join("demo-random-resnet18-7cls-seed5eed.safetensors");
            if !path.is_file() {
                let partial = dir.join(format!(
                    "demo-random-resnet18.{}.partial",
                    std::process::id()
                ));
                write_random_resnet18(&partial, 7, 0x5eed);
                std::fs::rename(&partial, &path).unwrap();
            }
            path
        })
        .clone()
}

struct Rng(u64);

impl Rng {
    fn uniform(&mut self) -> f32 {
        // xorshift64*: plenty for initialising weights reproducibly.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let bits = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40;
        bits as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

/// Writes a torchvision-named ResNet-18 (`imagenet` stem, 64 px input) as safetensors with
/// the header metadata of docs/FORMAT.md, convolutions He-uniform, BN at identity.
pub fn write_random_resnet18(path: &Path, num_classes: usize, seed: u64) {
    let mut rng = Rng(seed | 1);
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    let conv = |name: String, out: usize, inp: usize, k: usize, rng: &mut Rng| {
        let fan_in = (inp * k * k) as f32;
        let bound = (6.0 / fan_in).sqrt();
        let data = (0..out * inp * k * k)
            .map(|_| rng.uniform() * bound)
            .collect();
        (name, vec![out, inp, k, k], data)
    };
    let bn = |prefix: &str, c: usize| {
        [
            ("weight", 1.0),
            ("bias", 0.0),
            ("running_mean", 0.0),
            ("running_var", 1.0),
        ]
        .map(|(n, v)| (format!("{prefix}.{n}"), vec![c], vec![v; c]))
    };
    tensors.push(conv("conv1.weight".into(), 64, 3, 7, &mut rng));
    tensors.extend(bn("bn1", 64));
    let mut inp = 64;
    for (stage, width) in [64, 128, 256, 512].into_iter().enumerate() {
        for block in 0..2 {
            let p = format!("layer{}.{block}", stage + 1);
            let block_in = if block == 0 { inp } else { width };
            tensors.push(conv(
                format!("{p}.conv1.weight"),
                width,
                block_in,
                3,
                &mut rng,
            ));
            tensors.extend(bn(&format!("{p}.bn1"), width));
            tensors.push(conv(format!("{p}.conv2.weight"), width, width, 3, &mut rng));
            tensors.extend(bn(&format!("{p}.bn2"), width));
            if block == 0 && stage > 0 {
                tensors.push(conv(
                    format!("{p}.downsample.0.weight"),
                    width,
                    block_in,
                    1,
                    &mut rng,
                ));
                tensors.extend(bn(&format!("{p}.downsample.1"), width));
            }
        }
        inp = width;
    }
    let fc_bound = (1.0 / 512f32).sqrt();
    tensors.push((
        "fc.weight".into(),
        vec![num_classes, 512],
        (0..num_classes * 512)
            .map(|_| rng.uniform() * fc_bound)
            .collect(),
    ));
    tensors.push(("fc.bias".into(), vec![num_classes], vec![0.0; num_classes]));

    let classes = [
        "neutral", "happy", "sad", "surprise", "fear", "disgust", "anger", "contempt",
    ][..num_classes]
        .join(",");
    let mut header = serde_json::Map::new();
    let metadata = serde_json::json!({
        "face2exp.format": "1", "arch": "resnet18", "stem": "imagenet", "input_size": "64",
        "classes": classes, "mean": "0.485,0.456,0.406", "std": "0.229,0.224,0.225",
        "preprocess": "resize-triangle", "method": "random-init", "net": "test",
    });
    header.insert("__metadata__".into(), metadata);
    let mut offset = 0usize;
    for (name, shape, data) in &tensors {
        let end = offset + data.len() * 4;
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut header_bytes = serde_json::to_vec(&header).unwrap();
    while header_bytes.len() % 8 != 0 {
        header_bytes.push(b' ');
    }
    let mut file = Vec::with_capacity(8 + header_bytes.len() + offset);
    file.extend_from_slice(&(header_bytes.len() as u64).to_le_bytes());
    file.extend_from_slice(&header_bytes);
    for (_, _, data) in &tensors {
        for v in data {
            file.extend_from_slice(&v.to_le_bytes());
        }
    }
    std::fs::write(path, file).unwrap();
}
