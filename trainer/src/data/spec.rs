//! Dataset spec strings, `KIND:PATH[#SPLIT]`, as the command line and configs name datasets.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// The dataset layouts face2exp reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DatasetKind {
    /// `imagefolder:DIR` — `DIR/<class>/*.{jpg,jpeg,png,bmp,webp}`, torchvision's ImageFolder.
    ImageFolder,
    /// `fer2013-csv:FILE[#train|publictest|privatetest]` — the original fer2013.csv.
    Fer2013Csv,
    /// `rafdb:DIR[#train|test]` — RAF-DB basic with its aligned faces.
    RafDb,
    /// `affectnet:CSV` — AffectNet's training.csv / validation.csv with face boxes.
    AffectNet,
    /// `folder:DIR` — unlabeled: every image under DIR, recursively.
    Folder,
}

impl DatasetKind {
    pub const ALL: [DatasetKind; 5] = [
        DatasetKind::ImageFolder,
        DatasetKind::Fer2013Csv,
        DatasetKind::RafDb,
        DatasetKind::AffectNet,
        DatasetKind::Folder,
    ];

    /// The prefix used in spec strings.
    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::ImageFolder => "imagefolder",
            DatasetKind::Fer2013Csv => "fer2013-csv",
            DatasetKind::RafDb => "rafdb",
            DatasetKind::AffectNet => "affectnet",
            DatasetKind::Folder => "folder",
        }
    }

    /// The `#SPLIT` values this kind accepts (empty: none).
    pub fn splits(self) -> &'static [&'static str] {
        match self {
            DatasetKind::Fer2013Csv => &["train", "publictest", "privatetest"],
            DatasetKind::RafDb => &["train", "test"],
            _ => &[],
        }
    }

    /// One line per kind with its syntax, for error messages and `--help`.
    pub fn usage() -> String {
        DatasetKind::ALL
            .iter()
            .map(|k| match k.splits() {
                [] => format!("{}:PATH", k.name()),
                splits => format!("{}:PATH[#{}]", k.name(), splits.join("|")),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl fmt::Display for DatasetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A parsed `KIND:PATH[#SPLIT]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DatasetSpec {
    pub kind: DatasetKind,
    pub path: PathBuf,
    /// Lower-case split name, one of `kind.splits()`; `None` means every row.
    pub split: Option<String>,
}

/// Why a spec string was rejected; the message lists the accepted forms.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("dataset spec {0:?} has no KIND: prefix; expected one of: {usage}", usage = DatasetKind::usage())]
    MissingKind(String),
    #[error("dataset spec {spec:?}: unknown kind {kind:?}; expected one of: {usage}", usage = DatasetKind::usage())]
    UnknownKind { spec: String, kind: String },
    #[error("dataset spec {0:?} has an empty path")]
    EmptyPath(String),
    #[error(
        "dataset spec {spec:?}: unknown split {split:?} for {kind}; expected one of: {accepted}"
    )]
    UnknownSplit {
        spec: String,
        kind: DatasetKind,
        split: String,
        accepted: String,
    },
}

impl FromStr for DatasetSpec {
    type Err = SpecError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (kind_text, rest) = text
            .split_once(':')
            .ok_or_else(|| SpecError::MissingKind(text.to_string()))?;
        let kind = DatasetKind::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(kind_text.trim()))
            .ok_or_else(|| SpecError::UnknownKind {
                spec: text.to_string(),
                kind: kind_text.to_string(),
            })?;
        // Only kinds with splits treat '#' specially, so other paths may contain it.
        let (path, split) = match rest.rsplit_once('#') {
            Some((path, split)) if !kind.splits().is_empty() => (path, Some(split)),
            _ => (rest, None),
        };
        if path.is_empty() {
            return Err(SpecError::EmptyPath(text.to_string()));
        }
        let split = match split {
            None => None,
            Some(split) => {
                let lower = split.trim().to_ascii_lowercase();
                if !kind.splits().contains(&lower.as_str()) {
                    return Err(SpecError::UnknownSplit {
                        spec: text.to_string(),
                        kind,
                        split: split.to_string(),
                        accepted: kind.splits().join(", "),
                    });
                }
                Some(lower)
            }
        };
        Ok(DatasetSpec {
            kind,
            path: PathBuf::from(path),
            split,
        })
    }
}

impl fmt::Display for DatasetSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.path.display())?;
        if let Some(split) = &self.split {
            write!(f, "#{split}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_round_trip_through_display() {
        for text in [
            "imagefolder:/data/fer2013/train",
            "fer2013-csv:/data/fer2013.csv#publictest",
            "rafdb:/data/RAF-DB/basic#test",
            "affectnet:/data/AffectNet/training.csv",
            "folder:/data/lfw",
        ] {
            let spec: DatasetSpec = text.parse().unwrap();
            assert_eq!(spec.to_string(), text);
        }
        let spec: DatasetSpec = "RAFDB:/x#Train".parse().unwrap();
        assert_eq!(spec.kind, DatasetKind::RafDb);
        assert_eq!(spec.split.as_deref(), Some("train"));
        // '#' is an ordinary path character for kinds without splits.
        let spec: DatasetSpec = "folder:/data/set#1".parse().unwrap();
        assert_eq!(spec.path, PathBuf::from("/data/set#1"));
    }

    #[test]
    fn bad_specs_explain_what_is_accepted() {
        let err = "lfw:/data/lfw"
            .parse::<DatasetSpec>()
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown kind \"lfw\""), "{err}");
        for kind in DatasetKind::ALL {
            assert!(err.contains(kind.name()), "{err}");
        }
        let err = "/data/lfw".parse::<DatasetSpec>().unwrap_err().to_string();
        assert!(err.contains("no KIND: prefix"), "{err}");
        let err = "rafdb:/x#val"
            .parse::<DatasetSpec>()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unknown split \"val\"") && err.contains("train, test"),
            "{err}"
        );
        assert_eq!(
            "folder:".parse::<DatasetSpec>(),
            Err(SpecError::EmptyPath("folder:".into()))
        );
    }
}
