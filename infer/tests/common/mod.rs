//! Random-weight ResNet files in the face2exp format, and a naive reference forward pass
//! (direct convolution loops, BatchNorm applied unfused) to check the crate against.
#![allow(dead_code)]

pub mod lfw;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use safetensors::tensor::{Dtype, TensorView};
use std::collections::{BTreeMap, HashMap};

pub const CLASSES7: &str = "neutral,happy,sad,surprise,fear,disgust,anger";

/// Tensors by torchvision name: (shape, values).
pub type Weights = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

pub struct Spec {
    pub arch: &'static str,
    pub stem: &'static str,
    pub input_size: usize,
    pub classes: usize,
}

fn blocks(arch: &str) -> ([usize; 4], bool) {
    match arch {
        "resnet18" => ([2, 2, 2, 2], false),
        "resnet34" => ([3, 4, 6, 3], false),
        "resnet50" => ([3, 4, 6, 3], true),
        _ => panic!("unknown arch {arch}"),
    }
}

/// Random weights with BN statistics that keep activations of order one through the depth.
pub fn random_weights(spec: &Spec, seed: u64) -> Weights {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut w = Weights::new();
    let conv = |w: &mut Weights, rng: &mut ChaCha8Rng, name: &str, o: usize, i: usize, k: usize| {
        let bound = (3.0 / (i * k * k) as f32).sqrt();
        let vals = (0..o * i * k * k)
            .map(|_| rng.gen_range(-bound..bound))
            .collect();
        w.insert(format!("{name}.weight"), (vec![o, i, k, k], vals));
    };
    let bn = |w: &mut Weights, rng: &mut ChaCha8Rng, name: &str, c: usize, gain: f32| {
        let mut put = |suffix: &str, lo: f32, hi: f32, rng: &mut ChaCha8Rng| {
            let vals = (0..c).map(|_| rng.gen_range(lo..hi)).collect();
            w.insert(format!("{name}.{suffix}"), (vec![c], vals));
        };
        put("weight", 0.5 * gain, 1.2 * gain, rng);
        put("bias", -0.1, 0.1, rng);
        put("running_mean", -0.1, 0.1, rng);
        put("running_var", 0.5, 1.5, rng);
    };
    let stem_k = if spec.stem == "imagenet" { 7 } else { 3 };
    conv(&mut w, &mut rng, "conv1", 64, 3, stem_k);
    bn(&mut w, &mut rng, "bn1", 64, 1.0);
    let (counts, bottleneck) = blocks(spec.arch);
    let expansion = if bottleneck { 4 } else { 1 };
    let mut cin = 64;
    for (stage, &count) in counts.iter().enumerate() {
        let width = 64 << stage;
        let cout = width * expansion;
        for i in 0..count {
            let name = format!("layer{}.{}", stage + 1, i);
            let stride = if stage > 0 && i == 0 { 2 } else { 1 };
            if bottleneck {
                conv(&mut w, &mut rng, &format!("{name}.conv1"), width, cin, 1);
                bn(&mut w, &mut rng, &format!("{name}.bn1"), width, 1.0);
                conv(&mut w, &mut rng, &format!("{name}.conv2"), width, width, 3);
                bn(&mut w, &mut rng, &format!("{name}.bn2"), width, 1.0);
                conv(&mut w, &mut rng, &format!("{name}.conv3"), cout, width, 1);
                bn(&mut w, &mut rng, &format!("{name}.bn3"), cout, 0.3);
            } else {
                conv(&mut w, &mut rng, &format!("{name}.conv1"), width, cin, 3);
                bn(&mut w, &mut rng, &format!("{name}.bn1"), width, 1.0);
                conv(&mut w, &mut rng, &format!("{name}.conv2"), width, width, 3);
                bn(&mut w, &mut rng, &format!("{name}.bn2"), width, 0.3);
            }
            if stride != 1 || cin != cout {
                conv(
                    &mut w,
                    &mut rng,
                    &format!("{name}.downsample.0"),
                    cout,
                    cin,
                    1,
                );
                bn(&mut w, &mut rng, &format!("{name}.downsample.1"), cout, 1.0);
            }
            cin = cout;
        }
    }
    let bound = (3.0 / cin as f32).sqrt();
    let fc = (0..spec.classes * cin)
        .map(|_| rng.gen_range(-bound..bound))
        .collect();
    w.insert("fc.weight".into(), (vec![spec.classes, cin], fc));
    let fcb = (0..spec.classes)
        .map(|_| rng.gen_range(-0.1..0.1))
        .collect();
    w.insert("fc.bias".into(), (vec![spec.classes], fcb));
    w
}

pub fn metadata(spec: &Spec) -> HashMap<String, String> {
    let classes: Vec<&str> = CLASSES7
        .split(',')
        .chain(["contempt"])
        .take(spec.classes)
        .collect();
    HashMap::from([
        ("face2exp.format".to_string(), "1".to_string()),
        ("arch".to_string(), spec.arch.to_string()),
        ("stem".to_string(), spec.stem.to_string()),
        ("input_size".to_string(), spec.input_size.to_string()),
        ("classes".to_string(), classes.join(",")),
        ("mean".to_string(), "0.485,0.456,0.406".to_string()),
        ("std".to_string(), "0.229,0.224,0.225".to_string()),
        ("preprocess".to_string(), "resize-triangle".to_string()),
    ])
}

/// Serialises `weights` as F32 safetensors with `meta` as header metadata.
pub fn to_safetensors(weights: &Weights, meta: HashMap<String, String>) -> Vec<u8> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = weights
        .iter()
        .map(|(name, (shape, vals))| {
            (
                name.clone(),
                shape.clone(),
                vals.iter().flat_map(|v| v.to_le_bytes()).collect(),
            )
        })
        .collect();
    let views = bytes.iter().map(|(name, shape, data)| {
        (
            name.clone(),
            TensorView::new(Dtype::F32, shape.clone(), data).unwrap(),
        )
    });
    safetensors::tensor::serialize(views, Some(meta)).unwrap()
}

pub fn model_file(spec: &Spec, seed: u64) -> Vec<u8> {
    to_safetensors(&random_weights(spec, seed), metadata(spec))
}

// ---------------------------------------------------------------- reference forward pass

struct Tensor {
    c: usize,
    h: usize,
    w: usize,
    data: Vec<f64>,
}

fn conv(x: &Tensor, w: &Weights, name: &str, stride: usize, pad: usize) -> Tensor {
    let (shape, wt) = &w[&format!("{name}.weight")];
    let (o, i, k) = (shape[0], shape[1], shape[2]);
    assert_eq!(i, x.c);
    let oh = (x.h + 2 * pad - k) / stride + 1;
    let ow = (x.w + 2 * pad - k) / stride + 1;
    let mut out = vec![0.0f64; o * oh * ow];
    for oc in 0..o {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut s = 0.0f64;
                for ic in 0..i {
                    for ky in 0..k {
                        for kx in 0..k {
                            let iy = (oy * stride + ky) as isize - pad as isize;
                            let ix = (ox * stride + kx) as isize - pad as isize;
                            if iy >= 0 && ix >= 0 && (iy as usize) < x.h && (ix as usize) < x.w {
                                let xv = x.data[(ic * x.h + iy as usize) * x.w + ix as usize];
                                s += xv * wt[((oc * i + ic) * k + ky) * k + kx] as f64;
                            }
                        }
                    }
                }
                out[(oc * oh + oy) * ow + ox] = s;
            }
        }
    }
    Tensor {
        c: o,
        h: oh,
        w: ow,
        data: out,
    }
}

fn batch_norm(x: &mut Tensor, w: &Weights, name: &str) {
    let get = |s: &str| &w[&format!("{name}.{s}")].1;
    let (g, b, m, v) = (
        get("weight"),
        get("bias"),
        get("running_mean"),
        get("running_var"),
    );
    let hw = x.h * x.w;
    for c in 0..x.c {
        let denom = (v[c] as f64 + 1e-5).sqrt();
        for val in &mut x.data[c * hw..(c + 1) * hw] {
            *val = (*val - m[c] as f64) / denom * g[c] as f64 + b[c] as f64;
        }
    }
}

fn relu(x: &mut Tensor) {
    x.data.iter_mut().for_each(|v| *v = v.max(0.0));
}

fn max_pool_3x3_s2_p1(x: &Tensor) -> Tensor {
    let oh = (x.h + 2 - 3) / 2 + 1;
    let ow = (x.w + 2 - 3) / 2 + 1;
    let mut out = vec![f64::NEG_INFINITY; x.c * oh * ow];
    for c in 0..x.c {
        for oy in 0..oh {
            for ox in 0..ow {
                for ky in 0..3 {
                    for kx in 0..3 {
                        let iy = (oy * 2 + ky) as isize - 1;
                        let ix = (ox * 2 + kx) as isize - 1;
                        if iy >= 0 && ix >= 0 && (iy as usize) < x.h && (ix as usize) < x.w {
                            let v = x.data[(c * x.h + iy as usize) * x.w + ix as usize];
                            let o = &mut out[(c * oh + oy) * ow + ox];
                            *o = o.max(v);
                        }
                    }
                }
            }
        }
    }
    Tensor {
        c: x.c,
        h: oh,
        w: ow,
        data: out,
    }
}

/// Logits of a normalised `[3, S, S]` input, straight from the definitions.
pub fn reference_forward(spec: &Spec, w: &Weights, input: &[f32]) -> Vec<f32> {
    let s = spec.input_size;
    let mut x = Tensor {
        c: 3,
        h: s,
        w: s,
        data: input.iter().map(|&v| v as f64).collect(),
    };
    x = if spec.stem == "imagenet" {
        conv(&x, w, "conv1", 2, 3)
    } else {
        conv(&x, w, "conv1", 1, 1)
    };
    batch_norm(&mut x, w, "bn1");
    relu(&mut x);
    if spec.stem == "imagenet" {
        x = max_pool_3x3_s2_p1(&x);
    }
    let (counts, bottleneck) = blocks(spec.arch);
    for (stage, &count) in counts.iter().enumerate() {
        for i in 0..count {
            let name = format!("layer{}.{}", stage + 1, i);
            let stride = if stage > 0 && i == 0 { 2 } else { 1 };
            let mut y = if bottleneck {
                let mut t = conv(&x, w, &format!("{name}.conv1"), 1, 0);
                batch_norm(&mut t, w, &format!("{name}.bn1"));
                relu(&mut t);
                let mut t = conv(&t, w, &format!("{name}.conv2"), stride, 1);
                batch_norm(&mut t, w, &format!("{name}.bn2"));
                relu(&mut t);
                let mut t = conv(&t, w, &format!("{name}.conv3"), 1, 0);
                batch_norm(&mut t, w, &format!("{name}.bn3"));
                t
            } else {
                let mut t = conv(&x, w, &format!("{name}.conv1"), stride, 1);
                batch_norm(&mut t, w, &format!("{name}.bn1"));
                relu(&mut t);
                let mut t = conv(&t, w, &format!("{name}.conv2"), 1, 1);
                batch_norm(&mut t, w, &format!("{name}.bn2"));
                t
            };
            let shortcut = if w.contains_key(&format!("{name}.downsample.0.weight")) {
                let mut d = conv(&x, w, &format!("{name}.downsample.0"), stride, 0);
                batch_norm(&mut d, w, &format!("{name}.downsample.1"));
                d
            } else {
                x
            };
            for (a, b) in y.data.iter_mut().zip(&shortcut.data) {
                *a += b;
            }
            relu(&mut y);
            x = y;
        }
    }
    let hw = x.h * x.w;
    let pooled: Vec<f64> = (0..x.c)
        .map(|c| x.data[c * hw..(c + 1) * hw].iter().sum::<f64>() / hw as f64)
        .collect();
    let (_, fcw) = &w["fc.weight"];
    let (_, fcb) = &w["fc.bias"];
    (0..spec.classes)
        .map(|o| {
            (fcb[o] as f64
                + (0..x.c)
                    .map(|i| fcw[o * x.c + i] as f64 * pooled[i])
                    .sum::<f64>()) as f32
        })
        .collect()
}

/// A deterministic pseudo-random normalised input.
pub fn random_input(size: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..3 * size * size)
        .map(|_| rng.gen_range(-2.0..2.0))
        .collect()
}

/// Random 8-bit pixels.
pub fn random_pixels(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..len).map(|_| rng.gen()).collect()
}
