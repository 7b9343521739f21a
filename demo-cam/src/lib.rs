//! face2exp-demo as a library, so the binary, the integration tests and the benchmark drive
//! the same pipeline: [`source`] -> [`engine`] (detect + classify) -> [`track`] ->
//! [`overlay`], with [`report`] for JSON lines and [`headless`] / `window` as front ends.

pub mod camera;
pub mod cli;
pub mod engine;
pub mod faces;
pub mod frame;
pub mod headless;
pub mod overlay;
pub mod pipeline;
pub mod report;
pub mod source;
pub mod track;
pub mod weights;
#[cfg(feature = "window")]
pub mod window;
