//! One trainable network of a run (B or A): its variables, model, optimizer, schedule and the
//! optional EMA of its weights, with checkpoint (de)serialisation under a role prefix.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::optim::{Sgd, SgdConfig};
use super::schedule::ScheduleConfig;
use crate::model::{ResNet, ResNetConfig};

/// Exponential moving average of every variable (parameters and BatchNorm statistics).
struct Ema {
    decay: f64,
    shadow: HashMap<String, Tensor>,
}

pub struct Network {
    /// `base` (B) or `adaptation` (A): the prefix of this network's tensors in checkpoints.
    pub role: &'static str,
    pub config: ResNetConfig,
    pub varmap: VarMap,
    pub model: ResNet,
    pub optimizer: Sgd,
    pub schedule: ScheduleConfig,
    ema: Option<Ema>,
}

impl Network {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        role: &'static str,
        config: &ResNetConfig,
        init: Option<&Path>,
        device: &Device,
        sgd: SgdConfig,
        schedule: ScheduleConfig,
        ema_decay: Option<f64>,
        seed: u64,
    ) -> anyhow::Result<Self> {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
        let model = ResNet::new(config, vb)
            .with_context(|| format!("building the {role} network ({config:?})"))?;
        // candle's CPU random generator cannot be seeded, so runs re-draw every weight from a
        // seeded generator: the same seed gives the same initial network on any device.
        seeded_init(&varmap, seed)?;
        if let Some(path) = init {
            crate::model::load_init(&varmap, path).with_context(|| {
                format!("initialising the {role} network from {}", path.display())
            })?;
        }
        let optimizer = Sgd::new(crate::model::trainable_vars(&varmap), sgd);
        let ema = ema_decay.map(|decay| Ema {
            decay,
            shadow: all_vars(&varmap)
                .into_iter()
                .map(|(n, v)| (n, v.as_tensor().copy().expect("copy of a live tensor")))
                .collect(),
        });
        Ok(Self {
            role,
            config: config.clone(),
            varmap,
            model,
            optimizer,
            schedule,
            ema,
        })
    }

    /// Updates the EMA shadow after an optimizer step.
    pub fn update_ema(&mut self) -> candle_core::Result<()> {
        let Some(ema) = &mut self.ema else {
            return Ok(());
        };
        for (name, var) in all_vars(&self.varmap) {
            let shadow = ema
                .shadow
                .get_mut(&name)
                .expect("EMA tracks every variable");
            let param = var.as_tensor();
            if crate::ops::in_place_update_applies(&[&*shadow, param]) {
                shadow.inplace_op2(param, &crate::ops::EmaUpdate { decay: ema.decay })?;
            } else {
                let t = param.detach();
                *shadow = ((&*shadow * ema.decay)? + (t * (1.0 - ema.decay))?)?.detach();
            }
        }
        Ok(())
    }

    /// The weights that evaluation and export use: the EMA when enabled, else the live ones.
    /// A snapshot: copies, since the optimizer and the EMA update their tensors in place.
    pub fn inference_tensors(&self) -> candle_core::Result<HashMap<String, Tensor>> {
        match &self.ema {
            Some(ema) => ema
                .shadow
                .iter()
                .map(|(n, t)| Ok((n.clone(), t.copy()?)))
                .collect(),
            None => all_vars(&self.varmap)
                .into_iter()
                .map(|(n, v)| Ok((n, v.as_tensor().copy()?)))
                .collect(),
        }
    }

    /// Runs `f` with the inference weights swapped in (a no-op swap without EMA).
    pub fn with_inference_weights<T>(
        &self,
        f: impl FnOnce(&ResNet) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let Some(ema) = &self.ema else {
            return f(&self.model);
        };
        let vars = all_vars(&self.varmap);
        let live: Vec<Tensor> = vars
            .iter()
            .map(|(_, v)| v.as_tensor().copy())
            .collect::<candle_core::Result<_>>()?;
        for (name, var) in &vars {
            var.set(&ema.shadow[name])?;
        }
        let result = f(&self.model);
        for ((_, var), t) in vars.iter().zip(live) {
            var.set(&t)?;
        }
        result
    }

    /// Every tensor of this network's training state, prefixed for a checkpoint:
    /// `{role}.{var}`, `{role}.momentum.{param}`, `{role}.ema.{var}`.
    pub fn checkpoint_tensors(&self, out: &mut HashMap<String, Tensor>) {
        for (name, var) in all_vars(&self.varmap) {
            out.insert(format!("{}.{name}", self.role), var.as_tensor().detach());
        }
        for (name, buf) in self.optimizer.state() {
            out.insert(format!("{}.momentum.{name}", self.role), buf.clone());
        }
        if let Some(ema) = &self.ema {
            for (name, t) in &ema.shadow {
                out.insert(format!("{}.ema.{name}", self.role), t.clone());
            }
        }
    }

    /// Restores what [`Network::checkpoint_tensors`] saved; every variable must be present.
    pub fn restore(&mut self, tensors: &HashMap<String, Tensor>) -> anyhow::Result<()> {
        for (name, var) in all_vars(&self.varmap) {
            let key = format!("{}.{name}", self.role);
            let t = tensors
                .get(&key)
                .with_context(|| format!("checkpoint has no tensor `{key}`"))?;
            anyhow::ensure!(
                t.shape() == var.shape(),
                "checkpoint tensor `{key}` has shape {:?}, the network needs {:?}",
                t.shape(),
                var.shape()
            );
            var.set(&t.to_device(var.device())?)?;
        }
        let device = self.model_device();
        // Own copies: the optimizer and the EMA update their tensors in place, and sharing
        // storage with `tensors` would change the caller's map with every step, so a second
        // restore from it (as `face2exp probe-feedback` does per probe step) would not
        // restore the momentum.
        let strip = |prefix: &str| -> candle_core::Result<HashMap<String, Tensor>> {
            tensors
                .iter()
                .filter_map(|(k, t)| k.strip_prefix(prefix).map(|n| (n.to_string(), t)))
                .map(|(n, t)| Ok((n, t.to_device(&device)?.copy()?)))
                .collect()
        };
        let momentum = strip(&format!("{}.momentum.", self.role))?;
        self.optimizer.load_state(momentum)?;
        if let Some(ema) = &mut self.ema {
            let shadow = strip(&format!("{}.ema.", self.role))?;
            anyhow::ensure!(
                shadow.len() == ema.shadow.len(),
                "checkpoint has EMA weights for {} of {} variables of the {} network",
                shadow.len(),
                ema.shadow.len(),
                self.role
            );
            ema.shadow = shadow;
        }
        Ok(())
    }

    fn model_device(&self) -> Device {
        all_vars(&self.varmap)
            .first()
            .map(|(_, v)| v.device().clone())
            .unwrap_or(Device::Cpu)
    }
}

/// Every variable of a VarMap (parameters and BatchNorm statistics), sorted by name.
pub fn all_vars(varmap: &VarMap) -> Vec<(String, Var)> {
    let data = varmap.data().lock().expect("VarMap lock poisoned");
    let mut vars: Vec<(String, Var)> = data.iter().map(|(n, v)| (n.clone(), v.clone())).collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

/// Re-draws every parameter as torchvision initialises ResNets, from a seeded generator:
/// convs kaiming-normal (fan_out, ReLU gain), BatchNorm weight 1 / bias 0, running stats 0 / 1,
/// `fc` uniform(+-1/sqrt(fan_in)) like `nn.Linear`.
pub fn seeded_init(varmap: &VarMap, seed: u64) -> candle_core::Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for (name, var) in all_vars(varmap) {
        let dims = var.dims().to_vec();
        let n: usize = dims.iter().product();
        let values: Vec<f32> = if name.ends_with("running_var") || is_bn_param(&name, "weight") {
            vec![1.0; n]
        } else if name.ends_with("running_mean")
            || is_bn_param(&name, "bias")
            || name.ends_with("num_batches_tracked")
        {
            vec![0.0; n]
        } else if dims.len() == 4 {
            let fan_out = dims[0] * dims[2] * dims[3];
            let std = (2.0 / fan_out as f64).sqrt();
            (0..n).map(|_| (normal(&mut rng) * std) as f32).collect()
        } else {
            let fan_in = if name.ends_with("fc.bias") {
                varmap_fc_fan_in(varmap).unwrap_or(n)
            } else {
                dims.get(1).copied().unwrap_or(n)
            };
            let bound = 1.0 / (fan_in as f64).sqrt();
            (0..n)
                .map(|_| rng.gen_range(-bound..bound) as f32)
                .collect()
        };
        let t = Tensor::from_vec(values, dims.as_slice(), &Device::Cpu)?
            .to_dtype(var.dtype())?
            .to_device(var.device())?;
        var.set(&t)?;
    }
    Ok(())
}

fn is_bn_param(name: &str, leaf: &str) -> bool {
    let Some(module) = name.strip_suffix(leaf).and_then(|m| m.strip_suffix('.')) else {
        return false;
    };
    let last = module.rsplit('.').next().unwrap_or(module);
    last.starts_with("bn") || module.ends_with("downsample.1")
}

fn varmap_fc_fan_in(varmap: &VarMap) -> Option<usize> {
    let data = varmap.data().lock().ok()?;
    data.get("fc.weight").map(|v| v.dims()[1])
}

/// A standard normal sample (Box-Muller), so initialisation needs no extra crate.
fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
    let u2: f64 = rng.gen::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::{Device, Tensor};

    use super::{all_vars, Network};
    use crate::model::{Arch, BnMode, ResNetConfig, Stem};
    use crate::train::losses::cross_entropy;
    use crate::train::optim::SgdConfig;
    use crate::train::schedule::ScheduleConfig;

    fn sgd_step(net: &mut Network, seed: u64) {
        // candle's CPU generator cannot be seeded: the same `seed` must give the same batch.
        let values: Vec<f32> = (0..4 * 3 * 32 * 32)
            .map(|i| ((i as u64 * 7919 + seed * 104_729) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let x = Tensor::from_vec(values, (4, 3, 32, 32), &Device::Cpu).unwrap();
        let y = Tensor::new(&[0u32, 1, 2, 3], &Device::Cpu).unwrap();
        let logits = net.model.forward_with(&x, BnMode::Train).unwrap();
        let grads = cross_entropy(&logits, &y, 0.0).unwrap().backward().unwrap();
        net.optimizer.step(&grads, 0.1).unwrap();
        net.update_ema().unwrap();
    }

    fn snapshot(net: &Network) -> HashMap<String, Vec<f32>> {
        let mut tensors = HashMap::new();
        net.checkpoint_tensors(&mut tensors);
        tensors
            .into_iter()
            .map(|(k, t)| (k, t.flatten_all().unwrap().to_vec1().unwrap()))
            .collect()
    }

    #[test]
    fn restoring_the_same_tensors_twice_restores_momentum_and_ema_both_times() {
        let config = ResNetConfig {
            arch: Arch::Resnet18,
            stem: Stem::Imagenet,
            num_classes: 7,
            input_size: 32,
        };
        let sgd = SgdConfig {
            momentum: 0.9,
            nesterov: true,
            weight_decay: 5e-4,
        };
        let schedule = ScheduleConfig::default();
        let mut net = Network::new(
            "base",
            &config,
            None,
            &Device::Cpu,
            sgd,
            schedule,
            Some(0.9),
            3,
        )
        .unwrap();
        sgd_step(&mut net, 1);
        let mut saved = HashMap::new();
        net.checkpoint_tensors(&mut saved);
        let saved: HashMap<String, Tensor> = saved
            .into_iter()
            .map(|(k, t)| (k, t.copy().unwrap()))
            .collect();
        let before = snapshot(&net);
        assert!(before.keys().any(|k| k.contains(".momentum.")));
        assert!(before.keys().any(|k| k.contains(".ema.")));

        net.restore(&saved).unwrap();
        sgd_step(&mut net, 2);
        let first = snapshot(&net);
        net.restore(&saved).unwrap();
        assert_eq!(
            snapshot(&net),
            before,
            "the second restore is the saved state"
        );
        sgd_step(&mut net, 2);
        assert_eq!(
            snapshot(&net),
            first,
            "and the same step from it gives the same state"
        );
        assert_ne!(first, before);
        assert!(!all_vars(&net.varmap).is_empty());
    }
}
