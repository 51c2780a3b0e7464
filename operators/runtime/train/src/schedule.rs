//! Learning-rate schedules as Hugging Face `transformers` defines them
//! (`get_constant_schedule_with_warmup`, `get_linear_schedule_with_warmup`,
//! `get_cosine_schedule_with_warmup` with half a cycle): the rate of optimizer step `k`
//! (0-based) is `lr · λ(k)`; warmup steps are `ceil(warmup_ratio · total)`.

use crate::error::{Result, TrainError};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Scheduler {
    Constant,
    Linear,
    Cosine,
}

impl Scheduler {
    pub const NAMES: [&'static str; 3] = ["constant", "linear", "cosine"];

    pub fn parse(s: &str) -> Result<Scheduler> {
        match s {
            "constant" => Ok(Scheduler::Constant),
            "linear" => Ok(Scheduler::Linear),
            "cosine" => Ok(Scheduler::Cosine),
            other => Err(TrainError::Config(format!(
                "scheduler `{other}` is unknown; use constant, linear or cosine"
            ))),
        }
    }
}

/// Warmup steps for a ratio, as the Trainer's `get_warmup_steps`.
pub fn warmup_steps(ratio: f64, total: usize) -> usize {
    (ratio * total as f64).ceil() as usize
}

/// `λ(step)` for a schedule over `total` steps with `warmup` warmup steps.
pub fn factor(s: Scheduler, step: usize, warmup: usize, total: usize) -> f64 {
    if step < warmup {
        return step as f64 / warmup.max(1) as f64;
    }
    let progress = (step - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
    match s {
        Scheduler::Constant => 1.0,
        Scheduler::Linear => {
            ((total as f64 - step as f64) / (total.saturating_sub(warmup)).max(1) as f64).max(0.0)
        }
        Scheduler::Cosine => (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_match_the_transformers_formulas() {
        // 100 steps, ratio 0.05 → 5 warmup steps.
        let w = warmup_steps(0.05, 100);
        assert_eq!(w, 5);
        assert_eq!(warmup_steps(0.05, 30), 2, "ceil(1.5)");
        assert_eq!(factor(Scheduler::Linear, 0, w, 100), 0.0);
        assert_eq!(factor(Scheduler::Linear, 2, w, 100), 2.0 / 5.0);
        assert_eq!(factor(Scheduler::Linear, 5, w, 100), 1.0);
        assert_eq!(factor(Scheduler::Linear, 50, w, 100), 50.0 / 95.0);
        assert_eq!(factor(Scheduler::Linear, 100, w, 100), 0.0);
        let c = factor(Scheduler::Cosine, 52, w, 100);
        let want = 0.5 * (1.0 + (std::f64::consts::PI * 47.0 / 95.0).cos());
        assert!((c - want).abs() < 1e-15);
        assert_eq!(factor(Scheduler::Constant, 3, w, 100), 3.0 / 5.0);
        assert_eq!(factor(Scheduler::Constant, 70, w, 100), 1.0);
        assert!(Scheduler::parse("polynomial").is_err());
    }
}
