//! `--device cpu|cuda:N`, with a clear error when CUDA was not compiled in.

use anyhow::{bail, Context};
use candle_core::Device;

pub fn parse_device(spec: &str) -> anyhow::Result<Device> {
    let spec = spec.trim().to_ascii_lowercase();
    if spec == "cpu" {
        return Ok(Device::Cpu);
    }
    let ordinal = match spec.as_str() {
        "cuda" | "gpu" => 0,
        s => match s.strip_prefix("cuda:") {
            Some(n) => n
                .parse::<usize>()
                .with_context(|| format!("`--device {spec}`: the GPU index must be a number"))?,
            None => bail!("unknown device `{spec}`: use `cpu` or `cuda:N`"),
        },
    };
    if !cfg!(feature = "cuda") {
        bail!(
            "`--device {spec}` needs CUDA, but this face2exp was built without it: rebuild with \
             `cargo build --release -p face2exp-trainer --features cuda` (needs nvcc)"
        );
    }
    Device::new_cuda(ordinal).with_context(|| format!("opening CUDA device {ordinal}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_and_explains_missing_cuda() {
        assert!(parse_device("cpu").unwrap().is_cpu());
        assert!(parse_device("tpu")
            .unwrap_err()
            .to_string()
            .contains("cpu` or `cuda:N"));
        if !cfg!(feature = "cuda") {
            let err = parse_device("cuda:0").unwrap_err().to_string();
            assert!(err.contains("--features cuda"), "{err}");
        }
        assert!(parse_device("cuda:x").is_err());
    }
}
