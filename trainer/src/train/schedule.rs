//! Learning-rate schedules: linear warm-up followed by cosine decay (or a constant rate).

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    Cosine,
    Constant,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScheduleConfig {
    pub kind: ScheduleKind,
    pub lr: f64,
    pub warmup_steps: u64,
    /// Fraction of `lr` reached at the last step of the cosine decay.
    pub final_lr_fraction: f64,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            kind: ScheduleKind::Cosine,
            lr: 0.05,
            warmup_steps: 200,
            final_lr_fraction: 0.0,
        }
    }
}

impl ScheduleConfig {
    /// Learning rate for the 0-based `step` of a run of `total_steps`.
    pub fn lr_at(&self, step: u64, total_steps: u64) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        match self.kind {
            ScheduleKind::Constant => self.lr,
            ScheduleKind::Cosine => {
                let span = total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
                let progress = ((step - self.warmup_steps) as f64 / span).min(1.0);
                let floor = self.lr * self.final_lr_fraction;
                floor + (self.lr - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine() {
        let s = ScheduleConfig {
            kind: ScheduleKind::Cosine,
            lr: 0.1,
            warmup_steps: 10,
            final_lr_fraction: 0.0,
        };
        assert!((s.lr_at(0, 110) - 0.01).abs() < 1e-12);
        assert!((s.lr_at(9, 110) - 0.1).abs() < 1e-12);
        assert!((s.lr_at(10, 110) - 0.1).abs() < 1e-12);
        assert!((s.lr_at(60, 110) - 0.05).abs() < 1e-12);
        assert!(s.lr_at(110, 110).abs() < 1e-12);
        let c = ScheduleConfig {
            kind: ScheduleKind::Constant,
            ..s
        };
        assert_eq!(c.lr_at(100, 110), 0.1);
    }
}
