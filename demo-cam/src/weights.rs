//! The weights compiled into the binary by build.rs (when `weights/` had them at build time)
//! and the loading of `--weights` / `--detector` overrides.

use std::path::Path;

use anyhow::{bail, Context, Result};

#[cfg(embedded_classifier)]
const CLASSIFIER: Option<&[u8]> = Some(include_bytes!(env!("FACE2EXP_EMBEDDED_CLASSIFIER")));
#[cfg(not(embedded_classifier))]
const CLASSIFIER: Option<&[u8]> = None;

#[cfg(embedded_detector)]
const DETECTOR: Option<&[u8]> = Some(include_bytes!(env!("FACE2EXP_EMBEDDED_DETECTOR")));
#[cfg(not(embedded_detector))]
const DETECTOR: Option<&[u8]> = None;

/// Classifier bytes embedded from `weights/face2exp-base.safetensors`, if it existed.
pub fn embedded_classifier() -> Option<&'static [u8]> {
    CLASSIFIER
}

/// Detector bytes embedded from `weights/retinaface_mnet025.safetensors`, if it existed.
pub fn embedded_detector() -> Option<&'static [u8]> {
    DETECTOR
}

/// Weight bytes from a file given on the command line, else the embedded ones, else a clear
/// error telling the user which flag to pass.
pub fn resolve(
    path: Option<&Path>,
    embedded: Option<&'static [u8]>,
    what: &str,
    flag: &str,
) -> Result<WeightBytes> {
    match (path, embedded) {
        (Some(path), _) => {
            let bytes = std::fs::read(path)
                .with_context(|| format!("cannot read {what} weights {}", path.display()))?;
            Ok(WeightBytes {
                bytes: bytes.into(),
                origin: path.display().to_string(),
            })
        }
        (None, Some(bytes)) => Ok(WeightBytes {
            bytes: bytes.into(),
            origin: format!("embedded {what} weights"),
        }),
        (None, None) => bail!("no embedded {what} weights in this build; pass {flag} PATH"),
    }
}

/// Loaded weight bytes and where they came from (for error messages).
pub struct WeightBytes {
    pub bytes: std::borrow::Cow<'static, [u8]>,
    pub origin: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_weights_name_the_flag_and_bad_paths_name_the_file() {
        let err = resolve(None, None, "classifier", "--weights")
            .err()
            .unwrap();
        assert_eq!(
            err.to_string(),
            "no embedded classifier weights in this build; pass --weights PATH"
        );
        let err = resolve(
            Some(Path::new("/nonexistent/w.safetensors")),
            None,
            "detector",
            "--detector",
        )
        .err()
        .unwrap();
        assert!(
            err.to_string().contains("/nonexistent/w.safetensors"),
            "{err}"
        );
        let found = resolve(None, Some(&b"abc"[..]), "classifier", "--weights").unwrap();
        assert_eq!(&*found.bytes, b"abc");
        assert_eq!(found.origin, "embedded classifier weights");
    }
}
