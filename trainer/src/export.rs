//! The face2exp weights file (docs/FORMAT.md): torchvision-named F32 tensors plus the header
//! metadata that makes the file self-describing. Written atomically, read with errors that
//! name the file and the problem.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::path::Path;
use std::sync::Mutex;

use anyhow::{anyhow, bail, Context};
use candle_core::safetensors::Load;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};
use safetensors::{Dtype, SafeTensors};

use crate::labels::CLASSES;
use crate::model::{Arch, ResNet, ResNetConfig, Stem};

/// The only `face2exp.format` value this version reads and writes.
pub const FORMAT_VERSION: &str = "1";
/// The resize every reader must apply to the face crop (see docs/FORMAT.md).
pub const PREPROCESS_RESIZE_TRIANGLE: &str = "resize-triangle";
/// torchvision's ImageNet normalisation, the default for new models.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

const KEY_FORMAT: &str = "face2exp.format";
const RESERVED_KEYS: [&str; 7] = [
    KEY_FORMAT,
    "arch",
    "stem",
    "input_size",
    "classes",
    "mean",
    "std",
];

/// Everything a reader needs besides the tensors. `extra` carries the remaining header keys
/// (`preprocess` and provenance such as `method`, `net`, `data`, `steps`, `val_*`).
#[derive(Clone, Debug, PartialEq)]
pub struct ModelMeta {
    pub arch: Arch,
    pub stem: Stem,
    pub input_size: usize,
    pub classes: Vec<String>,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub extra: BTreeMap<String, String>,
}

impl ModelMeta {
    /// Metadata for a network trained with `config`: canonical class names, ImageNet
    /// normalisation, `preprocess = resize-triangle`.
    pub fn new(config: &ResNetConfig) -> Self {
        let classes = CLASSES[..config.num_classes.min(CLASSES.len())]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut extra = BTreeMap::new();
        extra.insert("preprocess".into(), PREPROCESS_RESIZE_TRIANGLE.into());
        Self {
            arch: config.arch,
            stem: config.stem,
            input_size: config.input_size,
            classes,
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
            extra,
        }
    }

    pub fn config(&self) -> ResNetConfig {
        ResNetConfig {
            arch: self.arch,
            stem: self.stem,
            num_classes: self.classes.len(),
            input_size: self.input_size,
        }
    }

    /// The `__metadata__` map (all values strings).
    pub fn to_metadata(&self) -> anyhow::Result<HashMap<String, String>> {
        self.validate()?;
        let join = |v: &[f32; 3]| v.map(|x| x.to_string()).join(",");
        let mut map: HashMap<String, String> = self
            .extra
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        map.insert(KEY_FORMAT.into(), FORMAT_VERSION.into());
        map.insert("arch".into(), self.arch.to_string());
        map.insert("stem".into(), self.stem.to_string());
        map.insert("input_size".into(), self.input_size.to_string());
        map.insert("classes".into(), self.classes.join(","));
        map.insert("mean".into(), join(&self.mean));
        map.insert("std".into(), join(&self.std));
        Ok(map)
    }

    /// Parses and validates a `__metadata__` map.
    pub fn from_metadata(map: &HashMap<String, String>) -> anyhow::Result<Self> {
        let get = |key: &str| {
            map.get(key)
                .map(|s| s.trim())
                .ok_or_else(|| anyhow!("metadata key `{key}` is missing"))
        };
        let format = get(KEY_FORMAT)?;
        if format != FORMAT_VERSION {
            bail!(
                "unsupported `{KEY_FORMAT}` `{format}`: this version reads format {FORMAT_VERSION}"
            );
        }
        let input_size = get("input_size")?;
        let meta = Self {
            arch: get("arch")?.parse()?,
            stem: get("stem")?.parse()?,
            input_size: input_size
                .parse()
                .map_err(|_| anyhow!("`input_size` `{input_size}` is not a whole number"))?,
            classes: get("classes")?
                .split(',')
                .map(|s| s.trim().to_string())
                .collect(),
            mean: parse_triple("mean", get("mean")?)?,
            std: parse_triple("std", get("std")?)?,
            extra: map
                .iter()
                .filter(|(k, _)| !RESERVED_KEYS.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        };
        meta.validate()?;
        Ok(meta)
    }

    fn validate(&self) -> anyhow::Result<()> {
        self.config()
            .validate()
            .map_err(|e| anyhow!("invalid model metadata: {e}"))?;
        let mut last = None;
        for name in &self.classes {
            let Some(index) = CLASSES.iter().position(|c| c == name) else {
                bail!(
                    "`classes` has `{name}`, which is not a canonical class ({})",
                    CLASSES.join(",")
                );
            };
            if last.is_some_and(|l| index <= l) {
                bail!(
                    "`classes` must be distinct canonical names in canonical order, got `{}`",
                    self.classes.join(",")
                );
            }
            last = Some(index);
        }
        if self.std.iter().any(|&s| !(s > 0.0 && s.is_finite()))
            || self.mean.iter().any(|m| !m.is_finite())
        {
            bail!(
                "`mean`/`std` must be finite and `std` positive, got {:?} / {:?}",
                self.mean,
                self.std
            );
        }
        for key in self.extra.keys() {
            if RESERVED_KEYS.contains(&key.as_str()) {
                bail!("`extra` must not override the reserved metadata key `{key}`");
            }
        }
        Ok(())
    }
}

fn parse_triple(key: &str, value: &str) -> anyhow::Result<[f32; 3]> {
    let parts: Vec<f32> = value
        .split(',')
        .map(|s| s.trim().parse::<f32>())
        .collect::<Result<_, _>>()
        .map_err(|_| anyhow!("`{key}` `{value}` is not a comma-separated list of numbers"))?;
    <[f32; 3]>::try_from(parts)
        .map_err(|p| anyhow!("`{key}` needs 3 values (R,G,B), got {}", p.len()))
}

/// The tensors of a VarMap sorted by name, ready for [`write_weights`].
pub fn varmap_tensors(varmap: &VarMap) -> Vec<(String, Tensor)> {
    let data = varmap.data().lock().expect("VarMap mutex poisoned");
    let mut tensors: Vec<(String, Tensor)> = data
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
        .collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    tensors
}

/// Writes `tensors` (converted to contiguous F32 on the CPU) and `meta` to `path` atomically:
/// a temporary file in the same directory is written, flushed to disk and renamed over `path`,
/// so a reader never sees a half-written file.
pub fn write_weights(
    path: &Path,
    tensors: &[(String, Tensor)],
    meta: &ModelMeta,
) -> anyhow::Result<()> {
    let metadata = meta.to_metadata()?;
    let mut f32_tensors = Vec::with_capacity(tensors.len());
    let mut seen = BTreeSet::new();
    for (name, tensor) in tensors {
        if !seen.insert(name.as_str()) {
            bail!(
                "cannot write {}: tensor `{name}` is given twice",
                path.display()
            );
        }
        let t = tensor
            .to_device(&Device::Cpu)?
            .to_dtype(DType::F32)?
            .contiguous()?;
        f32_tensors.push((name.as_str(), t));
    }
    let bytes = safetensors::serialize(f32_tensors, Some(metadata))
        .with_context(|| format!("serialising weights for {}", path.display()))?;
    crate::atomic::write_atomically(path, &bytes)
}

fn read_file(path: &Path) -> anyhow::Result<Vec<u8>> {
    fs::read(path).with_context(|| format!("cannot read weights file {}", path.display()))
}

fn parse_safetensors<'a>(path: &Path, bytes: &'a [u8]) -> anyhow::Result<SafeTensors<'a>> {
    SafeTensors::deserialize(bytes).map_err(|e| {
        anyhow!(
            "{} is not a valid safetensors file (truncated or corrupt?): {e}",
            path.display()
        )
    })
}

fn tensors_from(
    path: &Path,
    st: &SafeTensors,
    device: &Device,
) -> anyhow::Result<HashMap<String, Tensor>> {
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        if name.ends_with("num_batches_tracked") {
            continue;
        }
        match view.dtype() {
            Dtype::F32 | Dtype::F16 | Dtype::BF16 => {}
            other => bail!(
                "{}: tensor `{name}` has dtype {other:?}, expected F32, F16 or BF16",
                path.display()
            ),
        }
        let tensor = view
            .load(device)
            .and_then(|t| t.to_dtype(DType::F32))
            .with_context(|| format!("{}: cannot load tensor `{name}`", path.display()))?;
        out.insert(name, tensor);
    }
    Ok(out)
}

/// All tensors of a safetensors file as F32 on `device` (F16/BF16 converted,
/// `num_batches_tracked` skipped); the file need not carry face2exp metadata (`--init`).
pub fn read_tensors(path: &Path, device: &Device) -> anyhow::Result<HashMap<String, Tensor>> {
    let bytes = read_file(path)?;
    let st = parse_safetensors(path, &bytes)?;
    tensors_from(path, &st, device)
}

/// The tensors and metadata of a face2exp weights file.
pub fn read_weights(
    path: &Path,
    device: &Device,
) -> anyhow::Result<(HashMap<String, Tensor>, ModelMeta)> {
    let bytes = read_file(path)?;
    let st = parse_safetensors(path, &bytes)?;
    let (_, header) = SafeTensors::read_metadata(&bytes)
        .map_err(|e| anyhow!("{}: unreadable safetensors header: {e}", path.display()))?;
    let metadata = header.metadata().as_ref().ok_or_else(|| {
        anyhow!(
            "{} has no face2exp metadata (`__metadata__` is empty): not written by `face2exp export`?",
            path.display()
        )
    })?;
    let meta = ModelMeta::from_metadata(metadata)
        .with_context(|| format!("{}: bad face2exp metadata", path.display()))?;
    Ok((tensors_from(path, &st, device)?, meta))
}

/// A `VarBuilder` backend over a file's tensors that records what the model asked for, so that
/// every missing, misshapen and unused tensor is reported at once.
struct CheckedTensors {
    tensors: HashMap<String, Tensor>,
    used: Mutex<BTreeSet<String>>,
    problems: Mutex<Vec<String>>,
}

impl SimpleBackend for CheckedTensors {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.used.lock().expect("poisoned").insert(name.to_string());
        let problem = match self.tensors.get(name) {
            Some(t) if t.shape() == &shape => return t.to_device(dev)?.to_dtype(dtype),
            Some(t) => format!(
                "tensor `{name}` has shape {:?}, expected {:?}",
                t.dims(),
                shape.dims()
            ),
            None => format!("missing tensor `{name}` (shape {:?})", shape.dims()),
        };
        self.problems.lock().expect("poisoned").push(problem);
        // A stand-in so the build goes on and collects every problem; the model is discarded.
        Tensor::zeros(shape, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.used.lock().expect("poisoned").insert(name.to_string());
        match self.tensors.get(name) {
            Some(t) => t.to_device(dev)?.to_dtype(dtype),
            None => candle_core::bail!("missing tensor `{name}`"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

/// Builds an eval-ready network from `tensors` as `config` describes it. Missing, misshapen and
/// left-over tensors are errors naming `source` (the file) and each tensor.
pub fn model_from_tensors(
    source: &Path,
    config: &ResNetConfig,
    tensors: HashMap<String, Tensor>,
    device: &Device,
) -> anyhow::Result<ResNet> {
    let checked = std::sync::Arc::new(CheckedTensors {
        tensors,
        used: Mutex::default(),
        problems: Mutex::default(),
    });
    let vb = VarBuilder::from_backend(
        Box::new(ArcBackend(checked.clone())),
        DType::F32,
        device.clone(),
    );
    let model = ResNet::new(config, vb).with_context(|| {
        format!(
            "{}: cannot build {} / {}",
            source.display(),
            config.arch,
            config.stem
        )
    })?;
    let mut problems = checked.problems.lock().expect("poisoned").clone();
    let used = checked.used.lock().expect("poisoned");
    let mut unused: Vec<&String> = checked
        .tensors
        .keys()
        .filter(|k| !used.contains(*k))
        .collect();
    unused.sort();
    if !unused.is_empty() {
        problems.push(format!(
            "unexpected tensor{} {} (not part of {} with stem {})",
            if unused.len() > 1 { "s" } else { "" },
            unused
                .iter()
                .take(5)
                .map(|s| format!("`{s}`"))
                .collect::<Vec<_>>()
                .join(", "),
            config.arch,
            config.stem
        ));
    }
    if !problems.is_empty() {
        let more = problems.len().saturating_sub(10);
        problems.truncate(10);
        bail!(
            "{} does not match {} / {} with {} classes: {}{}",
            source.display(),
            config.arch,
            config.stem,
            config.num_classes,
            problems.join("; "),
            if more > 0 {
                format!("; and {more} more")
            } else {
                String::new()
            }
        );
    }
    Ok(model)
}

struct ArcBackend(std::sync::Arc<CheckedTensors>);

impl SimpleBackend for ArcBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.0.get(s, name, h, dtype, dev)
    }
    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.0.get_unchecked(name, dtype, dev)
    }
    fn contains_tensor(&self, name: &str) -> bool {
        self.0.contains_tensor(name)
    }
}

/// Loads a face2exp weights file into an eval-ready network (use `forward_t(x, false)`).
pub fn load_model(path: &Path, device: &Device) -> anyhow::Result<(ResNet, ModelMeta)> {
    let (tensors, meta) = read_weights(path, device)?;
    let model = model_from_tensors(path, &meta.config(), tensors, device)?;
    Ok((model, meta))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::BnMode;

    fn small_model() -> anyhow::Result<(VarMap, ResNet, ModelMeta)> {
        let config = ResNetConfig {
            arch: Arch::Resnet18,
            stem: Stem::Imagenet,
            num_classes: 7,
            input_size: 48,
        };
        let varmap = VarMap::new();
        let model = ResNet::new(
            &config,
            VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
        )?;
        let mut meta = ModelMeta::new(&config);
        meta.extra.insert("method".into(), "meta".into());
        Ok((varmap, model, meta))
    }

    fn header(meta: &ModelMeta) -> HashMap<String, String> {
        meta.to_metadata().unwrap()
    }

    #[test]
    fn round_trip_keeps_tensors_metadata_and_outputs() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("model.safetensors");
        let (varmap, model, meta) = small_model()?;
        // Move the running statistics away from their init so the round trip is not trivial.
        let x = Tensor::randn(0f32, 1., (4, 3, 48, 48), &Device::Cpu)?;
        model.forward_with(&x, BnMode::Train)?;
        write_weights(&path, &varmap_tensors(&varmap), &meta)?;
        let leftovers: Vec<_> = fs::read_dir(dir.path())?.collect();
        assert_eq!(leftovers.len(), 1, "temporary file left behind");
        let (tensors, read_meta) = read_weights(&path, &Device::Cpu)?;
        assert_eq!(read_meta, meta);
        assert_eq!(read_meta.extra["preprocess"], "resize-triangle");
        assert_eq!(tensors.len(), 102);
        let (loaded, _) = load_model(&path, &Device::Cpu)?;
        let want = model.forward_t(&x, false)?;
        let got = loaded.forward_t(&x, false)?;
        let diff = (want - got)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert_eq!(diff, 0.0);
        Ok(())
    }

    #[test]
    fn half_precision_and_num_batches_tracked_are_accepted() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("half.safetensors");
        let (varmap, _, meta) = small_model()?;
        let mut tensors: Vec<(String, Tensor)> = varmap_tensors(&varmap)
            .into_iter()
            .map(|(k, t)| (k, t.to_dtype(DType::F16).unwrap()))
            .collect();
        tensors.push((
            "bn1.num_batches_tracked".into(),
            Tensor::new(3i64, &Device::Cpu)?,
        ));
        let views: Vec<(&str, &Tensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
        fs::write(&path, safetensors::serialize(views, Some(header(&meta)))?)?;
        let (model, _) = load_model(&path, &Device::Cpu)?;
        let x = Tensor::randn(0f32, 1., (1, 3, 48, 48), &Device::Cpu)?;
        assert_eq!(model.forward_t(&x, false)?.dims(), [1, 7]);
        let (read, _) = read_weights(&path, &Device::Cpu)?;
        assert_eq!(read["fc.weight"].dtype(), DType::F32);
        assert!(!read.contains_key("bn1.num_batches_tracked"));
        Ok(())
    }

    #[test]
    fn truncated_and_corrupt_files_are_clear_errors() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("model.safetensors");
        let (varmap, _, meta) = small_model()?;
        write_weights(&path, &varmap_tensors(&varmap), &meta)?;
        let bytes = fs::read(&path)?;
        fs::write(&path, &bytes[..bytes.len() / 2])?;
        let err = format!("{:#}", load_model(&path, &Device::Cpu).unwrap_err());
        assert!(
            err.contains("model.safetensors") && err.contains("truncated or corrupt"),
            "{err}"
        );
        fs::write(&path, b"not a safetensors file at all")?;
        let err = format!("{:#}", read_weights(&path, &Device::Cpu).unwrap_err());
        assert!(err.contains("truncated or corrupt"), "{err}");
        let missing = dir.path().join("absent.safetensors");
        let err = format!("{:#}", load_model(&missing, &Device::Cpu).unwrap_err());
        assert!(err.contains("absent.safetensors"), "{err}");
        Ok(())
    }

    #[test]
    fn wrong_metadata_is_rejected_with_the_key() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("meta.safetensors");
        let (varmap, _, meta) = small_model()?;
        let tensors = varmap_tensors(&varmap);
        let views = || {
            tensors
                .iter()
                .map(|(k, t)| (k.as_str(), t))
                .collect::<Vec<_>>()
        };
        let cases: [(&str, &str, &str); 6] = [
            ("face2exp.format", "2", "unsupported `face2exp.format` `2`"),
            ("arch", "resnet19", "unknown architecture `resnet19`"),
            ("classes", "neutral,happy,smirk", "`smirk`"),
            ("classes", "happy,neutral", "canonical order"),
            ("mean", "0.5,0.5", "needs 3 values"),
            ("input_size", "big", "`input_size` `big`"),
        ];
        for (key, value, expected) in cases {
            let mut map = header(&meta);
            map.insert(key.into(), value.into());
            fs::write(&path, safetensors::serialize(views(), Some(map))?)?;
            let err = format!("{:#}", read_weights(&path, &Device::Cpu).unwrap_err());
            assert!(
                err.contains(expected) && err.contains("meta.safetensors"),
                "{err}"
            );
        }
        fs::write(&path, safetensors::serialize(views(), None)?)?;
        let err = format!("{:#}", read_weights(&path, &Device::Cpu).unwrap_err());
        assert!(err.contains("no face2exp metadata"), "{err}");
        let mut bad = meta.clone();
        bad.extra.insert("arch".into(), "resnet50".into());
        assert!(write_weights(&path, &tensors, &bad).is_err());
        Ok(())
    }

    #[test]
    fn missing_misshapen_and_mistyped_tensors_are_named() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("broken.safetensors");
        let (varmap, _, meta) = small_model()?;
        let mut tensors = varmap_tensors(&varmap);
        tensors.retain(|(k, _)| k != "layer1.0.conv1.weight");
        for (k, t) in tensors.iter_mut() {
            if k == "fc.weight" {
                *t = Tensor::zeros((8, 512), DType::F32, &Device::Cpu)?;
            }
        }
        tensors.push((
            "extra.weight".into(),
            Tensor::zeros(3, DType::F32, &Device::Cpu)?,
        ));
        write_weights(&path, &tensors, &meta)?;
        let err = format!("{:#}", load_model(&path, &Device::Cpu).unwrap_err());
        for needle in [
            "broken.safetensors",
            "missing tensor `layer1.0.conv1.weight`",
            "`fc.weight` has shape [8, 512], expected [7, 512]",
            "unexpected tensor `extra.weight`",
        ] {
            assert!(err.contains(needle), "`{needle}` not in: {err}");
        }
        let ints = Tensor::zeros(64, DType::U32, &Device::Cpu)?;
        let views = vec![("bn1.weight", &ints)];
        fs::write(&path, safetensors::serialize(views, Some(header(&meta)))?)?;
        let err = format!("{:#}", read_weights(&path, &Device::Cpu).unwrap_err());
        assert!(err.contains("`bn1.weight` has dtype U32"), "{err}");
        Ok(())
    }
}
