//! trainer <-> infer parity: a network trained/exported by the trainer gives the same
//! probabilities in `face2exp-infer` (BatchNorm folded, packed kernels) as in the trainer's
//! candle forward in eval mode, for every architecture and stem, on random inputs and on a
//! real face photo; and the two preprocessing paths agree on that photo.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use face2exp_infer::{ImageView, Model, PixelFormat, Session, SessionConfig};
use face2exp_trainer::export::{self, ModelMeta};
use face2exp_trainer::model::{Arch, BnMode, ResNet, ResNetConfig, Stem};
use face2exp_trainer::train::network::seeded_init;

fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.iter().map(|e| e / sum).collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// A trainer network with random weights and non-trivial BatchNorm statistics (a few
/// train-mode passes move the running mean/var away from 0/1, so folding is really tested).
fn trained_like_network(config: &ResNetConfig, seed: u64) -> (VarMap, ResNet) {
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let model = ResNet::new(config, VarBuilder::from_varmap(&varmap, DType::F32, &dev)).unwrap();
    seeded_init(&varmap, seed).unwrap();
    let s = config.input_size;
    for i in 0..3 {
        let x = (Tensor::randn(0f32, 1.0, (4, 3, s, s), &dev).unwrap() + 0.3 * i as f64).unwrap();
        model.forward_with(&x, BnMode::Train).unwrap();
    }
    (varmap, model)
}

fn export_to(dir: &Path, varmap: &VarMap, config: &ResNetConfig) -> PathBuf {
    let path = dir.join(format!(
        "{}_{}_{}.safetensors",
        config.arch, config.stem, config.input_size
    ));
    export::write_weights(
        &path,
        &export::varmap_tensors(varmap),
        &ModelMeta::new(config),
    )
    .unwrap();
    path
}

fn trainer_probs(model: &ResNet, input: &[f32], size: usize) -> Vec<f32> {
    let x = Tensor::from_slice(input, (1, 3, size, size), &Device::Cpu).unwrap();
    let logits: Vec<f32> = model
        .forward_with(&x, BnMode::Eval)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    softmax(&logits)
}

#[test]
fn random_weights_every_architecture_and_stem() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (Arch::Resnet18, Stem::Imagenet, 64),
        (Arch::Resnet18, Stem::Small, 48),
        (Arch::Resnet34, Stem::Imagenet, 48),
        (Arch::Resnet50, Stem::Imagenet, 64),
        (Arch::Resnet50, Stem::Small, 32),
    ];
    for (i, &(arch, stem, size)) in cases.iter().enumerate() {
        let config = ResNetConfig {
            arch,
            stem,
            num_classes: 7,
            input_size: size,
        };
        let (varmap, model) = trained_like_network(&config, 10 + i as u64);
        let path = export_to(dir.path(), &varmap, &config);
        let plan = Model::load(&path).unwrap();
        let mut session = Session::new(&plan, SessionConfig::default());
        for trial in 0..2 {
            let input: Vec<f32> = Tensor::randn(0f32, 1.0, 3 * size * size, &Device::Cpu)
                .unwrap()
                .to_vec1()
                .unwrap();
            let expected = trainer_probs(&model, &input, size);
            let got = softmax(session.forward_chw(&input).unwrap());
            let diff = max_abs_diff(&expected, &got);
            assert!(
                diff < 1e-4,
                "{arch}/{stem}/{size} trial {trial}: max |dp| = {diff}"
            );
        }
    }
}

#[test]
fn real_face_through_both_preprocessing_paths() {
    let photo = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/obama_241x301.png");
    let rgb = image::open(&photo).unwrap().to_rgb8();
    let config = ResNetConfig {
        arch: Arch::Resnet18,
        stem: Stem::Imagenet,
        num_classes: 7,
        input_size: 48,
    };
    let (varmap, model) = trained_like_network(&config, 3);
    let dir = tempfile::tempdir().unwrap();
    let plan = Model::load(export_to(dir.path(), &varmap, &config)).unwrap();
    let mut session = Session::new(&plan, SessionConfig::default());
    let meta = ModelMeta::new(&config);

    // Same preprocessed input: the networks agree to float precision.
    let mut input = vec![0f32; 3 * 48 * 48];
    face2exp_trainer::data::augment::eval_transform(&rgb, 48, meta.mean, meta.std, &mut input);
    let expected = trainer_probs(&model, &input, 48);
    let got = softmax(session.forward_chw(&input).unwrap());
    assert!(max_abs_diff(&expected, &got) < 1e-4);

    // infer's own allocation-free resize of the raw photo gives (nearly) the same input.
    let view = ImageView::packed(
        rgb.as_raw(),
        rgb.width() as usize,
        rgb.height() as usize,
        PixelFormat::Rgb8,
    )
    .unwrap();
    let infer_input = session.preprocess(&view, None).unwrap().to_vec();
    let pixel_diff = max_abs_diff(&input, &infer_input) * meta.std[0] * 255.0;
    assert!(
        pixel_diff <= 1.01,
        "preprocessing differs by {pixel_diff} grey levels"
    );
    let prediction = session.classify(&view).unwrap();
    let diff = max_abs_diff(&expected, &prediction.probs[..7]);
    assert!(diff < 1e-2, "classify vs trainer: max |dp| = {diff}");
}

/// The shipped base network, when present, gives the trainer's probabilities in infer.
#[test]
fn shipped_weights_match_the_trainer() {
    let weights =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../weights/face2exp-base.safetensors");
    if !weights.exists() {
        println!("skipped: {} does not exist yet", weights.display());
        return;
    }
    let (model, meta) = export::load_model(&weights, &Device::Cpu).unwrap();
    let plan = Model::load(&weights).unwrap();
    let mut session = Session::new(&plan, SessionConfig::default());
    let photo = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/obama_241x301.png");
    let rgb = image::open(&photo).unwrap().to_rgb8();
    let s = meta.input_size;
    let mut input = vec![0f32; 3 * s * s];
    face2exp_trainer::data::augment::eval_transform(
        &rgb, s as u32, meta.mean, meta.std, &mut input,
    );
    let expected = trainer_probs(&model, &input, s);
    let got = softmax(session.forward_chw(&input).unwrap());
    let diff = max_abs_diff(&expected, &got);
    assert!(diff < 1e-4, "shipped weights: max |dp| = {diff}");
}
