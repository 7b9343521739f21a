//! The fast CPU ops against candle's own reference ops and against finite differences.

use super::*;
use candle_core::{Device, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn random(rng: &mut ChaCha8Rng, shape: (usize, usize, usize, usize)) -> Result<Tensor> {
    let len = shape.0 * shape.1 * shape.2 * shape.3;
    let data: Vec<f32> = (0..len).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
    Tensor::from_vec(data, shape, &Device::Cpu)
}

/// Largest |a - b| relative to the largest |b| (at least 1).
fn relative_error(a: &Tensor, b: &Tensor) -> Result<f32> {
    assert_eq!(a.dims(), b.dims());
    let a = a.flatten_all()?.to_vec1::<f32>()?;
    let b = b.flatten_all()?.to_vec1::<f32>()?;
    let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
    Ok(a.iter()
        .zip(&b)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()))
        / scale)
}

/// (batch, c_in, h, w, c_out, k, stride, padding).
type ConvCase = (usize, usize, usize, usize, usize, usize, usize, usize);

/// ResNet's five conv kinds plus odd sizes,
/// batch 1, and batches large enough to exercise the per-thread groups and image chunks.
const CONV_CASES: &[ConvCase] = &[
    (2, 3, 17, 15, 4, 7, 2, 3),
    (1, 5, 9, 11, 6, 3, 1, 1),
    (3, 4, 7, 8, 5, 3, 2, 1),
    (2, 6, 5, 5, 3, 1, 1, 0),
    (5, 6, 9, 7, 8, 1, 2, 0),
    (1, 2, 1, 1, 3, 3, 1, 1),
    (9, 8, 3, 3, 16, 3, 1, 1),
    (4, 3, 6, 6, 2, 3, 3, 0),
    // A 5x5/2 kernel with even padding: im2col's column phases (the 7x7/2 case has odd).
    (2, 2, 9, 10, 3, 5, 2, 2),
];

/// Gradients of `sum(conv2d(x, w) * probe)` by the definition, in f64: (dL/dx, dL/dw).
/// (candle's own conv2d backward is not the reference: it returns a wrongly shaped input gradient
/// for stride 2 on even sizes, which is one reason these kernels exist.)
fn conv2d_grads_by_definition(
    x: &Tensor,
    w: &Tensor,
    probe: &Tensor,
    stride: usize,
    padding: usize,
) -> Result<(Tensor, Tensor)> {
    let (n, c, h, wd) = x.dims4()?;
    let (o, _, k, _) = w.dims4()?;
    let (_, _, oh, ow) = probe.dims4()?;
    let xs = x.flatten_all()?.to_vec1::<f32>()?;
    let ws = w.flatten_all()?.to_vec1::<f32>()?;
    let ps = probe.flatten_all()?.to_vec1::<f32>()?;
    let mut gx = vec![0f64; xs.len()];
    let mut gw = vec![0f64; ws.len()];
    for b in 0..n {
        for oc in 0..o {
            for i in 0..oh {
                for j in 0..ow {
                    let g = ps[((b * o + oc) * oh + i) * ow + j] as f64;
                    for ic in 0..c {
                        for di in 0..k {
                            for dj in 0..k {
                                let r = (i * stride + di) as isize - padding as isize;
                                let col = (j * stride + dj) as isize - padding as isize;
                                if r < 0 || col < 0 || r as usize >= h || col as usize >= wd {
                                    continue;
                                }
                                let xi = ((b * c + ic) * h + r as usize) * wd + col as usize;
                                let wi = ((oc * c + ic) * k + di) * k + dj;
                                gx[xi] += g * ws[wi] as f64;
                                gw[wi] += g * xs[xi] as f64;
                            }
                        }
                    }
                }
            }
        }
    }
    let to_tensor = |v: Vec<f64>, dims: &[usize]| {
        Tensor::from_vec(
            v.into_iter().map(|x| x as f32).collect::<Vec<_>>(),
            dims,
            &Device::Cpu,
        )
    };
    Ok((to_tensor(gx, x.dims())?, to_tensor(gw, w.dims())?))
}

#[test]
fn conv2d_forward_and_gradients_match_the_reference() -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for &(n, c, h, w, o, k, s, p) in CONV_CASES {
        let x = Var::from_tensor(&random(&mut rng, (n, c, h, w))?)?;
        let weight = Var::from_tensor(&random(&mut rng, (o, c, k, k))?)?;
        let fast = conv2d(x.as_tensor(), weight.as_tensor(), s, p)?;
        let reference = x.as_tensor().conv2d(weight.as_tensor(), p, s, 1, 1)?;
        let case = format!("n{n} c{c} {h}x{w} o{o} k{k} s{s} p{p}");
        assert!(relative_error(&fast, &reference)? < 1e-5, "forward {case}");

        // A loss that weights every output differently, so a misplaced gradient shows.
        let probe = random(&mut rng, reference.dims4()?)?;
        let grads = (fast * &probe)?.sum_all()?.backward()?;
        let (want_x, want_w) =
            conv2d_grads_by_definition(x.as_tensor(), weight.as_tensor(), &probe, s, p)?;
        let got_x = grads.get(x.as_tensor()).expect("input gradient");
        let got_w = grads.get(weight.as_tensor()).expect("weight gradient");
        assert!(
            relative_error(got_x, &want_x)? < 1e-5,
            "input gradient {case}"
        );
        assert!(
            relative_error(got_w, &want_w)? < 1e-5,
            "weight gradient {case}"
        );
    }
    Ok(())
}

#[test]
fn conv2d_gradients_match_finite_differences() -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let (x, weight) = (
        random(&mut rng, (2, 2, 5, 4))?,
        random(&mut rng, (3, 2, 3, 3))?,
    );
    let probe = random(&mut rng, (2, 3, 3, 2))?;
    let loss = |x: &Tensor, w: &Tensor| -> Result<f64> {
        let y = conv2d(&x.to_dtype(DType::F64)?.to_dtype(DType::F32)?, w, 2, 1)?;
        (y * &probe)?
            .sum_all()?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()
    };
    let (xv, wv) = (Var::from_tensor(&x)?, Var::from_tensor(&weight)?);
    let grads = (conv2d(xv.as_tensor(), wv.as_tensor(), 2, 1)? * &probe)?
        .sum_all()?
        .backward()?;
    let eps = 1e-2f32;
    for (which, base) in [(0, &x), (1, &weight)] {
        let analytic = grads
            .get(if which == 0 {
                xv.as_tensor()
            } else {
                wv.as_tensor()
            })
            .unwrap();
        let analytic = analytic.flatten_all()?.to_vec1::<f32>()?;
        let values = base.flatten_all()?.to_vec1::<f32>()?;
        for i in (0..values.len()).step_by(3) {
            let shifted = |delta: f32| -> Result<f64> {
                let mut v = values.clone();
                v[i] += delta;
                let t = Tensor::from_vec(v, base.dims(), &Device::Cpu)?;
                if which == 0 {
                    loss(&t, &weight)
                } else {
                    loss(&x, &t)
                }
            };
            // The loss is linear in each argument, so the central difference is exact up to rounding.
            let numeric = (shifted(eps)? - shifted(-eps)?) / (2.0 * eps as f64);
            let err = (numeric - analytic[i] as f64).abs();
            assert!(
                err < 2e-3,
                "arg {which} element {i}: numeric {numeric} vs analytic {}",
                analytic[i]
            );
        }
    }
    Ok(())
}

#[test]
fn conv2d_computes_no_gradient_for_a_plain_image() -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let image = random(&mut rng, (2, 3, 8, 8))?;
    let weight = Var::from_tensor(&random(&mut rng, (4, 3, 3, 3))?)?;
    let grads = conv2d(&image, weight.as_tensor(), 1, 1)?
        .sum_all()?
        .backward()?;
    assert!(
        grads.get(&image).is_none(),
        "the image is no variable and needs no gradient"
    );
    assert!(grads.get(weight.as_tensor()).is_some());
    Ok(())
}

#[test]
fn conv2d_accepts_non_contiguous_inputs_and_reports_bad_shapes() -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let x = random(&mut rng, (2, 3, 6, 7))?;
    let w = random(&mut rng, (4, 3, 3, 3))?;
    let x_t = x.transpose(2, 3)?; // (2, 3, 7, 6), strided
    let fast = conv2d(&x_t, &w, 1, 1)?;
    let reference = x_t.contiguous()?.conv2d(&w, 1, 1, 1, 1)?;
    assert!(relative_error(&fast, &reference)? < 1e-5);
    let bad = random(&mut rng, (4, 2, 3, 3))?;
    let err = conv2d(&x, &bad, 1, 1).unwrap_err().to_string();
    assert!(err.contains("3 channels"), "{err}");
    Ok(())
}

#[test]
fn max_pool_matches_a_direct_loop_and_the_portable_version() -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for &(n, c, h, w) in &[
        (2usize, 3usize, 7usize, 7usize),
        (1, 2, 8, 5),
        (2, 1, 1, 1),
        (3, 2, 2, 3),
        (1, 4, 12, 9),
    ] {
        let x = Var::from_tensor(&random(&mut rng, (n, c, h, w))?)?;
        let data = x.as_tensor().flatten_all()?.to_vec1::<f32>()?;
        let (oh, ow) = ((h - 1) / 2 + 1, (w - 1) / 2 + 1);
        let fast = max_pool_3x3_s2_p1(x.as_tensor())?;
        assert_eq!(fast.dims4()?, (n, c, oh, ow));
        let got = fast.flatten_all()?.to_vec1::<f32>()?;
        for plane in 0..n * c {
            for i in 0..oh {
                for j in 0..ow {
                    let mut m = f32::NEG_INFINITY;
                    for di in 0..3 {
                        for dj in 0..3 {
                            let (r, col) = ((2 * i + di) as isize - 1, (2 * j + dj) as isize - 1);
                            if r >= 0 && col >= 0 && (r as usize) < h && (col as usize) < w {
                                m = m.max(data[plane * h * w + r as usize * w + col as usize]);
                            }
                        }
                    }
                    assert_eq!(got[plane * oh * ow + i * ow + j], m);
                }
            }
        }
        let portable = max_pool_3x3_s2_p1_candle(x.as_tensor())?;
        assert_eq!(relative_error(&fast, &portable)?, 0.0);
        // With continuous random inputs there are no ties, so both route each output's gradient
        // to the same single input.
        let probe = random(&mut rng, (n, c, oh, ow))?;
        let g_fast = (fast * &probe)?.sum_all()?.backward()?;
        let g_portable = (portable * &probe)?.sum_all()?.backward()?;
        let (a, b) = (
            g_fast.get(x.as_tensor()).unwrap(),
            g_portable.get(x.as_tensor()).unwrap(),
        );
        assert!(
            relative_error(a, b)? < 1e-6,
            "max pool gradient {n}x{c}x{h}x{w}"
        );
    }
    Ok(())
}

#[test]
fn max_pool_sends_a_tied_window_gradient_to_one_input() -> Result<()> {
    let x = Var::from_tensor(&Tensor::ones((1, 1, 4, 4), DType::F32, &Device::Cpu)?)?;
    let y = max_pool_3x3_s2_p1(x.as_tensor())?;
    let grads = y.sum_all()?.backward()?;
    let g = grads
        .get(x.as_tensor())
        .unwrap()
        .flatten_all()?
        .to_vec1::<f32>()?;
    // Four outputs, each choosing the first maximum of its window: (0,0), (0,1), (1,0), (1,1).
    assert_eq!(g.iter().sum::<f32>(), 4.0);
    assert_eq!(&g[..2], &[1.0, 1.0]);
    assert_eq!(&g[4..6], &[1.0, 1.0]);
    Ok(())
}

#[test]
fn batch_norm_train_matches_candle_ops_forward_and_backward() -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    for &(n, c, h, w) in &[
        (2usize, 3usize, 5usize, 4usize),
        (1, 4, 3, 3),
        (5, 2, 1, 1),
        (3, 6, 7, 2),
    ] {
        for relu in [false, true] {
            let x = Var::from_tensor(&random(&mut rng, (n, c, h, w))?.affine(3.0, 0.5)?)?;
            let weight = Var::from_tensor(&random(&mut rng, (1, c, 1, 1))?.flatten_all()?)?;
            let bias = Var::from_tensor(&random(&mut rng, (1, c, 1, 1))?.flatten_all()?)?;
            let probe = random(&mut rng, (n, c, h, w))?;
            let (x_t, w_t, b_t) = (x.as_tensor(), weight.as_tensor(), bias.as_tensor());
            let (fast, mean, var) = batch_norm_train(x_t, w_t, b_t, 1e-5, relu)?;
            let (slow, mean_ref, var_ref) = batch_norm_train_candle(x_t, w_t, b_t, 1e-5)?;
            let slow = if relu { slow.relu()? } else { slow };
            let case = format!("{n}x{c}x{h}x{w}, relu {relu}");
            if relu {
                let negative = slow.lt(0.0)?.to_dtype(DType::F32)?.sum_all()?;
                assert_eq!(negative.to_scalar::<f32>()?, 0.0, "{case}");
            }
            assert!(relative_error(&fast, &slow)? < 1e-5, "forward {case}");
            assert!(relative_error(&mean, &mean_ref)? < 1e-6, "mean {case}");
            assert!(relative_error(&var, &var_ref)? < 1e-5, "var {case}");
            let g_fast = (fast * &probe)?.sum_all()?.backward()?;
            let g_slow = (slow * &probe)?.sum_all()?.backward()?;
            for (name, v) in [("x", &x), ("weight", &weight), ("bias", &bias)] {
                let (a, b) = (
                    g_fast.get(v.as_tensor()).unwrap(),
                    g_slow.get(v.as_tensor()).unwrap(),
                );
                assert!(relative_error(a, b)? < 1e-4, "{name} gradient {case}");
            }
        }
    }
    let one = Tensor::ones((1, 2, 1, 1), DType::F32, &Device::Cpu)?;
    let wb = Tensor::ones(2, DType::F32, &Device::Cpu)?;
    let err = batch_norm_train(&one, &wb, &wb, 1e-5, true)
        .unwrap_err()
        .to_string();
    assert!(err.contains("more than one value per channel"), "{err}");
    Ok(())
}

/// The statistics where E[x^2] - E[x]^2 in f32 would lose every digit: an offset of 1000 and a
/// spread of 0.01, against the same f32 values' statistics in f64, with the channel's first
/// value an outlier (five spreads out) in one channel.
#[test]
fn batch_norm_statistics_survive_a_large_offset() -> Result<()> {
    let (n, c, h, w) = (6usize, 3usize, 5usize, 7usize);
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let mut values: Vec<f32> = random(&mut rng, (n, c, h, w))?
        .affine(0.01, 1000.0)?
        .flatten_all()?
        .to_vec1()?;
    values[h * w] = 1000.05;
    let x = Tensor::from_vec(values.clone(), (n, c, h, w), &Device::Cpu)?;
    let ones = Tensor::ones(c, DType::F32, &Device::Cpu)?;
    let zeros = Tensor::zeros(c, DType::F32, &Device::Cpu)?;
    let (_, mean, var) = batch_norm_train(&x, &ones, &zeros, 1e-5, false)?;
    let (mean, var) = (mean.to_vec1::<f32>()?, var.to_vec1::<f32>()?);
    for ch in 0..c {
        let channel: Vec<f64> = (0..n)
            .flat_map(|b| &values[(b * c + ch) * h * w..(b * c + ch + 1) * h * w])
            .map(|v| *v as f64)
            .collect();
        let want_mean = channel.iter().sum::<f64>() / channel.len() as f64;
        let want_var = channel
            .iter()
            .map(|v| (v - want_mean) * (v - want_mean))
            .sum::<f64>()
            / channel.len() as f64;
        assert!(
            (mean[ch] as f64 - want_mean).abs() < 1e-4,
            "channel {ch} mean {} vs {want_mean}",
            mean[ch]
        );
        let relative = (var[ch] as f64 - want_var).abs() / want_var;
        assert!(
            relative < 1e-4,
            "channel {ch} var {} vs {want_var}",
            var[ch]
        );
    }
    Ok(())
}

#[test]
fn add_relu_matches_candle_ops_forward_and_backward() -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(10);
    for shape in [
        (2usize, 3usize, 5usize, 4usize),
        (1, 1, 1, 1),
        (3, 64, 9, 9),
    ] {
        let a = Var::from_tensor(&random(&mut rng, shape)?)?;
        let b = Var::from_tensor(&random(&mut rng, shape)?)?;
        // An input that takes no gradient (like the image) must not get one.
        let fixed = random(&mut rng, shape)?;
        let probe = random(&mut rng, shape)?;
        let fast = add_relu(a.as_tensor(), b.as_tensor())?;
        let slow = (a.as_tensor() + b.as_tensor())?.relu()?;
        assert_eq!(relative_error(&fast, &slow)?, 0.0, "forward {shape:?}");
        let g_fast = (&fast * &probe)?.sum_all()?.backward()?;
        let g_slow = (&slow * &probe)?.sum_all()?.backward()?;
        for v in [&a, &b] {
            let (x, y) = (
                g_fast.get(v.as_tensor()).unwrap(),
                g_slow.get(v.as_tensor()).unwrap(),
            );
            assert_eq!(relative_error(x, y)?, 0.0, "gradient {shape:?}");
        }
        let half = add_relu(a.as_tensor(), &fixed)?;
        let grads = half.sum_all()?.backward()?;
        assert!(grads.get(&fixed).is_none() && grads.get(a.as_tensor()).is_some());
    }
    let err = add_relu(
        &Tensor::zeros((1, 2, 2, 2), DType::F32, &Device::Cpu)?,
        &Tensor::zeros((1, 2, 2, 3), DType::F32, &Device::Cpu)?,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("differs"), "{err}");
    Ok(())
}

/// A NaN anywhere in a window makes its output NaN (as PyTorch's max pool), and the gradient
/// goes to that NaN; the windows without one are untouched by it.
#[test]
fn max_pool_propagates_nan_and_routes_its_gradient_there() -> Result<()> {
    let mut data: Vec<f32> = (0..16).map(|i| i as f32).collect();
    data[5] = f32::NAN; // (1, 1): inside all four windows of a 4x4 plane...
    data[15] = f32::NAN; // ...and (3, 3): only in the last one.
    let x = Var::from_tensor(&Tensor::from_vec(data, (1, 1, 4, 4), &Device::Cpu)?)?;
    let y = max_pool_3x3_s2_p1(x.as_tensor())?;
    assert!(y
        .flatten_all()?
        .to_vec1::<f32>()?
        .iter()
        .all(|v| v.is_nan()));
    let probe = Tensor::ones((1, 1, 2, 2), DType::F32, &Device::Cpu)?;
    // The loss is NaN, but its gradient with respect to each output is the probe's 1.
    let grads = (y * &probe)?.sum_all()?.backward()?;
    let g = grads
        .get(x.as_tensor())
        .unwrap()
        .flatten_all()?
        .to_vec1::<f32>()?;
    assert_eq!(
        g[5], 4.0,
        "every window's first NaN in row-major order is (1, 1): {g:?}"
    );
    assert_eq!(g.iter().sum::<f32>(), 4.0);
    Ok(())
}
