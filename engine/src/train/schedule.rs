//! Learning-rate schedules exactly as transformers defines them
//! (`get_linear_schedule_with_warmup`, `get_cosine_schedule_with_warmup` with half a cycle,
//! `get_constant_schedule_with_warmup`), with the warmup length HF's `TrainingArguments` derives
//! from a ratio: ceil(ratio * total steps). The rate of optimizer step k (0-based) is
//! base * lambda(k): the scheduler steps after the optimizer, so a run with warmup starts at 0.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    Linear,
    Cosine,
    Constant,
}

impl std::str::FromStr for ScheduleKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "linear" => Ok(ScheduleKind::Linear),
            "cosine" => Ok(ScheduleKind::Cosine),
            "constant" => Ok(ScheduleKind::Constant),
            other => Err(format!(
                "unknown schedule {other:?}: expected linear, cosine or constant"
            )),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub kind: ScheduleKind,
    pub base_lr: f64,
    pub warmup_steps: usize,
    pub total_steps: usize,
}

/// ceil(ratio * total), as `TrainingArguments.get_warmup_steps` computes it.
pub fn warmup_steps(ratio: f64, total_steps: usize) -> usize {
    (ratio * total_steps as f64).ceil() as usize
}

impl Schedule {
    pub fn new(kind: ScheduleKind, base_lr: f64, warmup_ratio: f64, total_steps: usize) -> Schedule {
        Schedule {
            kind,
            base_lr,
            warmup_steps: warmup_steps(warmup_ratio, total_steps),
            total_steps,
        }
    }

    /// The multiplier of step `step` (0-based).
    pub fn factor(&self, step: usize) -> f64 {
        let (step, warmup, total) = (step as f64, self.warmup_steps as f64, self.total_steps as f64);
        if step < warmup {
            return step / warmup.max(1.0);
        }
        match self.kind {
            ScheduleKind::Constant => 1.0,
            ScheduleKind::Linear => ((total - step) / (total - warmup).max(1.0)).max(0.0),
            ScheduleKind::Cosine => {
                let progress = (step - warmup) / (total - warmup).max(1.0);
                (0.5 * (1.0 + (std::f64::consts::PI * 0.5 * 2.0 * progress).cos())).max(0.0)
            }
        }
    }

    pub fn lr(&self, step: usize) -> f64 {
        self.base_lr * self.factor(step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_rounds_up() {
        assert_eq!(warmup_steps(0.03, 375), 12);
        assert_eq!(warmup_steps(0.05, 760), 38);
        assert_eq!(warmup_steps(0.0, 100), 0);
    }

    #[test]
    fn linear_matches_transformers() {
        // Values of transformers' get_linear_schedule_with_warmup(opt, 2, 10) for steps 0..11.
        let s = Schedule::new(ScheduleKind::Linear, 1.0, 0.2, 10);
        let expected = [
            0.0, 0.5, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125, 0.0, 0.0,
        ];
        for (k, e) in expected.iter().enumerate() {
            assert!(
                (s.factor(k) - e).abs() < 1e-12,
                "step {k}: {} vs {e}",
                s.factor(k)
            );
        }
    }

    #[test]
    fn cosine_matches_transformers() {
        let s = Schedule::new(ScheduleKind::Cosine, 2.0, 0.1, 10);
        assert_eq!(s.warmup_steps, 1);
        assert_eq!(s.lr(0), 0.0);
        assert!((s.lr(1) - 2.0).abs() < 1e-12);
        // Step 5 is 4/9 of the way through the decay.
        assert!((s.factor(5) - 0.5 * (1.0 + (std::f64::consts::PI * 4.0 / 9.0).cos())).abs() < 1e-12);
        assert!(s.factor(10).abs() < 1e-12);
    }
}
