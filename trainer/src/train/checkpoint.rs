//! Training checkpoints: every variable of every network, the optimizer state and the loop
//! state in one safetensors file, written atomically so a kill at any moment leaves either the
//! old or the new checkpoint on disk, never a torn one.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context};
use candle_core::{Device, Tensor};

/// The checkpoint format version, stored under this metadata key.
const FORMAT_KEY: &str = "face2exp.checkpoint";
const FORMAT_VERSION: &str = "1";

/// Saves `tensors` with string `metadata` as a checkpoint at `path` (atomically).
pub fn save(
    path: &Path,
    tensors: &HashMap<String, Tensor>,
    mut metadata: HashMap<String, String>,
) -> anyhow::Result<()> {
    metadata.insert(FORMAT_KEY.into(), FORMAT_VERSION.into());
    let mut sorted: Vec<(&String, &Tensor)> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let bytes = safetensors::serialize(sorted, Some(metadata))
        .with_context(|| format!("serialising checkpoint {}", path.display()))?;
    crate::atomic::write_atomically(path, &bytes)
}

/// Loads a checkpoint written by [`save`], with a clear error for a file that is missing,
/// truncated, not safetensors, or not a face2exp checkpoint.
pub fn load(
    path: &Path,
    device: &Device,
) -> anyhow::Result<(HashMap<String, Tensor>, HashMap<String, String>)> {
    let bytes =
        std::fs::read(path).with_context(|| format!("reading checkpoint {}", path.display()))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .with_context(|| format!("{} is not a readable safetensors file", path.display()))?;
    let metadata = header.metadata().clone().unwrap_or_default();
    match metadata.get(FORMAT_KEY).map(String::as_str) {
        Some(FORMAT_VERSION) => {}
        Some(other) => bail!(
            "{}: checkpoint format {other} is not supported (expected {FORMAT_VERSION})",
            path.display()
        ),
        None => bail!(
            "{} is not a face2exp training checkpoint (no `{FORMAT_KEY}` metadata); \
             inference weights are evaluated with `face2exp eval`, not resumed",
            path.display()
        ),
    }
    let tensors = candle_core::safetensors::load_buffer(&bytes, device)
        .with_context(|| format!("decoding tensors of checkpoint {}", path.display()))?;
    Ok((tensors, metadata))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_clear_errors() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("checkpoint.safetensors");
        let dev = Device::Cpu;
        let mut tensors = HashMap::new();
        tensors.insert(
            "base.fc.weight".to_string(),
            Tensor::randn(0f32, 1., (3, 4), &dev)?,
        );
        let meta = HashMap::from([("step".to_string(), "12".to_string())]);
        save(&path, &tensors, meta)?;
        let (back, meta) = load(&path, &dev)?;
        assert_eq!(meta["step"], "12");
        let diff = (&back["base.fc.weight"] - &tensors["base.fc.weight"])?
            .abs()?
            .sum_all()?
            .to_scalar::<f32>()?;
        assert_eq!(diff, 0.0);

        // A truncated file names the file and says what is wrong.
        let bytes = std::fs::read(&path)?;
        let cut = dir.path().join("cut.safetensors");
        std::fs::write(&cut, &bytes[..bytes.len() / 2])?;
        let err = format!("{:#}", load(&cut, &dev).unwrap_err());
        assert!(err.contains("cut.safetensors"), "{err}");

        // Inference weights (no checkpoint marker) are refused with a hint.
        let plain = dir.path().join("plain.safetensors");
        candle_core::safetensors::save(&tensors, &plain)?;
        let err = format!("{:#}", load(&plain, &dev).unwrap_err());
        assert!(err.contains("not a face2exp training checkpoint"), "{err}");
        Ok(())
    }
}
