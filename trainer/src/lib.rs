//! face2exp-trainer: supervised and Meta-Face2Exp training of facial-expression networks on candle.
//!
//! Data flows `data` -> `model` -> `train` -> `export`; `eval` and `plot` report on the way.

pub mod atomic;
pub mod average;
pub mod commands;
pub mod data;
pub mod eval;
pub mod export;
pub mod labels;
pub mod model;
pub mod ops;
pub mod plot;
pub mod train;
