#![cfg_attr(not(feature = "std"), no_std)]
//! Allocation-free CPU inference of face2exp expression networks.
//!
//! A [`Model`] is the immutable plan: loaded once from a weights file (docs/FORMAT.md),
//! validated, BatchNorm folded into the convolutions, weights packed for the kernels.
//! A [`Session`] is the state: it owns every buffer, sized at creation for a maximum image
//! size, so [`Session::classify`] and friends never touch the heap.
//!
//! ```no_run
//! use face2exp_infer::{ImageView, Model, PixelFormat, Session, SessionConfig};
//! let model = Model::load("weights/base.safetensors")?;
//! let mut session = Session::new(&model, SessionConfig::default());
//! let pixels = vec![128u8; 48 * 48];
//! let image = ImageView::packed(&pixels, 48, 48, PixelFormat::Gray8)?;
//! let prediction = session.classify(&image)?;
//! println!("{} ({:.2})", model.class_names()[prediction.class], prediction.confidence);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Without the default `std` feature the crate is `no_std` + `alloc`: load with
//! [`Model::from_bytes`], one thread.

extern crate alloc;

mod align;
pub mod detect;
mod error;
mod image;
pub mod kernels;
mod model;
mod network;
#[cfg(feature = "std")]
mod pool;
mod preprocess;
mod session;
mod tensor_read;

pub use align::ALIGN_TEMPLATE;
pub use error::{ClassifyError, ImageError, LoadError};
pub use image::{yuv_to_rgb, FaceRegion, ImageView, PixelFormat};
pub use kernels::conv::LatePrecision;
pub use model::{Arch, Model, BN_EPS, MAX_CLASSES, MAX_INPUT_SIZE, MIN_INPUT_SIZE};
pub use network::Stem;
#[cfg(feature = "std")]
pub use pool::WorkerPool;
pub use session::{Prediction, Session, SessionConfig, MAX_BATCH, MAX_SIDE, MAX_THREADS};
