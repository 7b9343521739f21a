//! Training: the supervised baseline (`sl`) and Meta-Face2Exp (`meta`) share one run loop
//! (`run`): data, networks, schedules, evaluation, metrics log, checkpoints and resume.

pub mod alignment;
pub mod checkpoint;
pub mod config;
pub mod device;
pub mod feedback_probe;
pub mod losses;
pub mod meta;
pub mod metrics_log;
pub mod network;
pub mod optim;
pub mod run;
pub mod schedule;
pub mod sl;

pub use config::{Feedback, JudgeStatistics, Method, PseudoView, TrainConfig};
pub use run::{train, RunOptions, RunSummary};
