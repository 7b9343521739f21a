//! Every way a weights file can be wrong gives a typed error that names the problem.

mod common;

use common::{metadata, random_weights, to_safetensors, Spec};
use face2exp_infer::{LoadError, Model};

const SPEC: Spec = Spec {
    arch: "resnet18",
    stem: "small",
    input_size: 8,
    classes: 7,
};

fn load_with(
    edit: impl FnOnce(&mut common::Weights, &mut std::collections::HashMap<String, String>),
) -> LoadError {
    let mut weights = random_weights(&SPEC, 1);
    let mut meta = metadata(&SPEC);
    edit(&mut weights, &mut meta);
    Model::from_bytes(&to_safetensors(&weights, meta)).unwrap_err()
}

#[test]
fn missing_tensor_is_named() {
    let err = load_with(|w, _| {
        w.remove("layer3.1.bn2.running_var");
    });
    assert_eq!(
        err,
        LoadError::MissingTensor("layer3.1.bn2.running_var".into())
    );
    assert!(err.to_string().contains("layer3.1.bn2.running_var"));
}

#[test]
fn misshaped_tensor_is_named_with_both_shapes() {
    let err = load_with(|w, _| {
        w.insert(
            "layer2.0.conv1.weight".into(),
            (vec![128, 64, 3, 1], vec![0.0; 128 * 64 * 3]),
        );
    });
    assert_eq!(
        err,
        LoadError::WrongShape {
            tensor: "layer2.0.conv1.weight".into(),
            expected: vec![128, 64, 3, 3],
            found: vec![128, 64, 3, 1],
        }
    );
}

#[test]
fn bad_values_and_metadata_are_rejected() {
    let err = load_with(|w, _| w.get_mut("fc.bias").unwrap().1[2] = f32::NAN);
    assert!(
        matches!(err, LoadError::BadValues { ref tensor, .. } if tensor == "fc.bias"),
        "{err}"
    );
    let err = load_with(|w, _| w.get_mut("bn1.running_var").unwrap().1[0] = -1.0);
    assert!(
        matches!(err, LoadError::BadValues { ref tensor, .. } if tensor == "bn1.running_var"),
        "{err}"
    );
    let err = load_with(|_, m| {
        m.insert("arch".into(), "vgg16".into());
    });
    assert_eq!(err, LoadError::UnknownArch("vgg16".into()));
    let err = load_with(|_, m| {
        m.remove("input_size");
    });
    assert_eq!(err, LoadError::MissingMetadata("input_size"));
    let err = load_with(|_, m| {
        m.insert("face2exp.format".into(), "2".into());
    });
    assert!(
        matches!(
            err,
            LoadError::BadMetadata {
                key: "face2exp.format",
                ..
            }
        ),
        "{err}"
    );
    let err = load_with(|_, m| {
        m.insert("mean".into(), "0.5,0.5".into());
    });
    assert!(
        matches!(err, LoadError::BadMetadata { key: "mean", .. }),
        "{err}"
    );
    let err = load_with(|_, m| {
        m.insert("input_size".into(), "4".into());
    });
    assert!(
        matches!(
            err,
            LoadError::BadMetadata {
                key: "input_size",
                ..
            }
        ),
        "{err}"
    );
    let err = load_with(|_, m| {
        m.insert("classes".into(), "a,b,c,d,e,f,g,h,i".into());
    });
    assert!(
        matches!(err, LoadError::BadMetadata { key: "classes", .. }),
        "{err}"
    );
}

#[test]
fn wrong_dtype_is_named() {
    let weights = random_weights(&SPEC, 1);
    let raw: Vec<(String, Vec<usize>, Vec<u8>, safetensors::Dtype)> = weights
        .iter()
        .map(|(n, (s, v))| {
            if n == "conv1.weight" {
                let ints: Vec<u8> = v.iter().flat_map(|x| (*x as i32).to_le_bytes()).collect();
                (n.clone(), s.clone(), ints, safetensors::Dtype::I32)
            } else {
                (
                    n.clone(),
                    s.clone(),
                    v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                    safetensors::Dtype::F32,
                )
            }
        })
        .collect();
    let views = raw.iter().map(|(n, s, d, t)| {
        (
            n.clone(),
            safetensors::tensor::TensorView::new(*t, s.clone(), d).unwrap(),
        )
    });
    let bytes = safetensors::tensor::serialize(views, Some(metadata(&SPEC))).unwrap();
    let err = Model::from_bytes(&bytes).unwrap_err();
    assert!(
        matches!(err, LoadError::WrongDtype { ref tensor, .. } if tensor == "conv1.weight"),
        "{err}"
    );
}

#[test]
fn truncated_and_missing_files_name_the_file() {
    let bytes = common::model_file(&SPEC, 2);
    for cut in [0, 7, 8, 100, bytes.len() / 2, bytes.len() - 1] {
        let err = Model::from_bytes(&bytes[..cut]).unwrap_err();
        assert!(
            matches!(err, LoadError::Container(_)),
            "cut at {cut}: {err}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("truncated.safetensors");
    std::fs::write(&path, &bytes[..bytes.len() - 4]).unwrap();
    let msg = Model::load(&path).unwrap_err().to_string();
    assert!(
        msg.contains("truncated.safetensors") && msg.contains("safetensors"),
        "{msg}"
    );
    let msg = Model::load(dir.path().join("absent.safetensors"))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("absent.safetensors"), "{msg}");
    std::fs::write(&path, &bytes).unwrap();
    assert_eq!(Model::load(&path).unwrap().num_classes(), 7);
}
