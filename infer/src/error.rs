//! Typed errors: every message names what was wrong and where.

use crate::kernels::KernelError;
use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// Why a weights file could not become a [`crate::Model`].
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum LoadError {
    /// The file could not be read.
    Io {
        path: String,
        message: String,
    },
    /// Any other error, with the file it came from.
    InFile {
        path: String,
        error: Box<LoadError>,
    },
    /// Not a safetensors container: truncated, bad header length, invalid JSON, offsets out of range.
    Container(String),
    /// A required `__metadata__` key is absent.
    MissingMetadata(&'static str),
    /// A `__metadata__` value cannot be used.
    BadMetadata {
        key: &'static str,
        value: String,
        problem: &'static str,
    },
    /// `arch` (or `stem`) names a network this crate does not run.
    UnknownArch(String),
    MissingTensor(String),
    WrongShape {
        tensor: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    /// Neither F32, F16 nor BF16.
    WrongDtype {
        tensor: String,
        dtype: String,
    },
    /// NaN or infinite weights, negative BatchNorm variance.
    BadValues {
        tensor: String,
        problem: &'static str,
    },
    /// A layer could not be built (a bug if the checks above passed).
    Kernel {
        layer: String,
        error: KernelError,
    },
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Io { path, message } => write!(f, "{path}: cannot read: {message}"),
            LoadError::InFile { path, error } => write!(f, "{path}: {error}"),
            LoadError::Container(msg) => write!(f, "not a valid safetensors file: {msg}"),
            LoadError::MissingMetadata(key) => write!(f, "header metadata has no `{key}` entry"),
            LoadError::BadMetadata {
                key,
                value,
                problem,
            } => {
                write!(f, "header metadata `{key}` = {value:?}: {problem}")
            }
            LoadError::UnknownArch(arch) => {
                write!(f, "unknown architecture {arch:?} (expected resnet18, resnet34 or resnet50 with stem imagenet or small)")
            }
            LoadError::MissingTensor(name) => write!(f, "tensor `{name}` is missing"),
            LoadError::WrongShape {
                tensor,
                expected,
                found,
            } => {
                write!(
                    f,
                    "tensor `{tensor}` has shape {found:?}, expected {expected:?}"
                )
            }
            LoadError::WrongDtype { tensor, dtype } => {
                write!(
                    f,
                    "tensor `{tensor}` has dtype {dtype}, expected F32, F16 or BF16"
                )
            }
            LoadError::BadValues { tensor, problem } => write!(f, "tensor `{tensor}`: {problem}"),
            LoadError::Kernel { layer, error } => write!(f, "layer `{layer}`: {error}"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for LoadError {}

/// Why an [`crate::ImageView`] could not be built.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ImageError {
    /// Width or height is zero.
    Empty { width: usize, height: usize },
    /// YUYV stores pixel pairs, so its width must be even.
    OddYuyvWidth(usize),
    /// `stride` is smaller than one row of pixels.
    StrideTooSmall { stride: usize, row_bytes: usize },
    /// `data` is shorter than `stride * (height - 1) + row_bytes`.
    TooShort { needed: usize, found: usize },
    /// The sizes overflow `usize`.
    TooLarge,
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageError::Empty { width, height } => write!(f, "image is empty ({width}x{height})"),
            ImageError::OddYuyvWidth(w) => {
                write!(f, "YUYV image width {w} is odd; YUYV stores pixel pairs")
            }
            ImageError::StrideTooSmall { stride, row_bytes } => {
                write!(
                    f,
                    "stride {stride} is smaller than a row of {row_bytes} bytes"
                )
            }
            ImageError::TooShort { needed, found } => {
                write!(
                    f,
                    "pixel buffer has {found} bytes, the image needs {needed}"
                )
            }
            ImageError::TooLarge => write!(f, "image size overflows"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for ImageError {}

/// Why a classification could not run.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum ClassifyError {
    /// The image (or the face crop) exceeds the session's configured maximum.
    TooLarge {
        width: usize,
        height: usize,
        max_width: usize,
        max_height: usize,
    },
    /// The face box is empty, not finite, or entirely outside the image.
    BadFace(&'static str),
    /// `forward_chw` input or `classify_batch` output has the wrong length.
    Length {
        what: &'static str,
        expected: usize,
        found: usize,
    },
    Kernel(KernelError),
}

impl fmt::Display for ClassifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClassifyError::TooLarge {
                width,
                height,
                max_width,
                max_height,
            } => write!(
                f,
                "image {width}x{height} exceeds the session maximum {max_width}x{max_height}"
            ),
            ClassifyError::BadFace(why) => write!(f, "bad face region: {why}"),
            ClassifyError::Length {
                what,
                expected,
                found,
            } => {
                write!(f, "{what}: expected {expected} values, found {found}")
            }
            ClassifyError::Kernel(e) => write!(f, "kernel error: {e}"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for ClassifyError {}

impl From<KernelError> for ClassifyError {
    fn from(e: KernelError) -> Self {
        ClassifyError::Kernel(e)
    }
}
