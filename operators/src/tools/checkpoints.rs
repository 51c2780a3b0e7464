//! The saved checkpoints of an external trainer: which adapters exist, the best by a dev
//! score, and the scores joined to the metrics rows. The evaluation itself (native runtime)
//! is `train::checkpoints`, passed in by the training operators. Each `checkpoint-<step>/` LoRA adapter (PEFT layout) is applied to the base model on
//! the native runtime, the dev rows are answered, and the task metric (`eval_accuracy` or
//! `eval_rouge_l`) is computed per checkpoint; the best checkpoint by that metric is the one
//! the node outputs. The tools' own `compute_accuracy` is token-level teacher-forced
//! accuracy, not answer accuracy, which is why expflow does this itself.

use std::path::{Path, PathBuf};

use expflow_train::MetricRow;

/// The adapters a trainer saved under `output_dir`: every `checkpoint-<step>/` holding
/// `adapter_model.safetensors`, by step, and the final adapter in `output_dir` itself at
/// `final_step` when no checkpoint has that step.
pub fn saved_adapters(output_dir: &Path, final_step: Option<usize>) -> Vec<(usize, PathBuf)> {
    let mut out: Vec<(usize, PathBuf)> = std::fs::read_dir(output_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let step = name.strip_prefix("checkpoint-")?.parse().ok()?;
            let dir = e.path();
            dir.join("adapter_model.safetensors")
                .is_file()
                .then_some((step, dir))
        })
        .collect();
    out.sort();
    if let Some(step) = final_step
        && !out.iter().any(|(s, _)| *s == step)
        && output_dir.join("adapter_model.safetensors").is_file()
    {
        out.push((step, output_dir.to_path_buf()));
    }
    out
}

/// The best of `scores` (step, value): the highest, the earliest step among equals.
pub fn best(scores: &[(usize, f64)]) -> Option<(usize, f64)> {
    scores
        .iter()
        .copied()
        .fold(None, |best: Option<(usize, f64)>, (s, v)| match best {
            Some((_, b)) if b >= v => best,
            _ => Some((s, v)),
        })
}

/// Puts `eval_<metric>` of each step into the metrics rows: into the evaluation row of that
/// step when the trainer logged one (its `eval_loss`), else as a row of its own; rows stay in
/// step order.
pub fn merge_scores(rows: &mut Vec<MetricRow>, metric: &str, scores: &[(usize, f64)]) {
    let name = format!("eval_{metric}");
    for &(step, v) in scores {
        match rows
            .iter_mut()
            .find(|r| r.step == step && r.loss.is_none() && r.values.contains_key("eval_loss"))
        {
            Some(r) => {
                r.values.insert(name.clone(), v);
            }
            None => {
                let epoch = rows
                    .iter()
                    .find(|r| r.step == step)
                    .map_or(f64::NAN, |r| r.epoch);
                rows.push(MetricRow {
                    step,
                    epoch,
                    lr: f64::NAN,
                    loss: None,
                    grad_norm: None,
                    values: [(name.clone(), v)].into_iter().collect(),
                });
            }
        }
    }
    rows.sort_by_key(|r| r.step);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_best_is_the_highest_and_the_earliest_among_equals() {
        assert_eq!(best(&[(2, 0.25), (4, 0.5), (6, 0.5)]), Some((4, 0.5)));
        assert_eq!(best(&[(2, 0.75), (4, 0.5)]), Some((2, 0.75)));
        assert_eq!(best(&[]), None);
    }

    #[test]
    fn scores_join_the_evaluation_rows_of_their_step() {
        let row = |step, loss: Option<f64>, eval: Option<f64>| MetricRow {
            step,
            epoch: step as f64 / 4.0,
            lr: 0.1,
            loss,
            grad_norm: None,
            values: eval
                .map(|e| ("eval_loss".to_string(), e))
                .into_iter()
                .collect(),
        };
        let mut rows = vec![
            row(1, Some(2.0), None),
            row(2, Some(1.5), None),
            row(2, None, Some(1.7)),
            row(3, Some(1.2), None),
        ];
        merge_scores(&mut rows, "accuracy", &[(2, 0.5), (3, 0.75)]);
        assert_eq!(rows.len(), 5);
        assert_eq!(rows[2].values["eval_accuracy"], 0.5);
        assert!(!rows[1].values.contains_key("eval_accuracy"));
        let last = rows.last().unwrap();
        assert_eq!((last.step, last.values["eval_accuracy"]), (3, 0.75));
        assert_eq!(last.epoch, 0.75);
    }

    #[test]
    fn saved_adapters_are_the_checkpoints_by_step_and_a_distinct_final_one() {
        let d = tempfile::tempdir().unwrap();
        for s in [10, 2] {
            let c = d.path().join(format!("checkpoint-{s}"));
            std::fs::create_dir_all(&c).unwrap();
            std::fs::write(c.join("adapter_model.safetensors"), b"x").unwrap();
        }
        std::fs::create_dir_all(d.path().join("checkpoint-4")).unwrap();
        std::fs::write(d.path().join("adapter_model.safetensors"), b"x").unwrap();
        let steps = |v: Vec<(usize, PathBuf)>| v.into_iter().map(|(s, _)| s).collect::<Vec<_>>();
        assert_eq!(steps(saved_adapters(d.path(), Some(10))), vec![2, 10]);
        assert_eq!(steps(saved_adapters(d.path(), Some(11))), vec![2, 10, 11]);
    }
}
