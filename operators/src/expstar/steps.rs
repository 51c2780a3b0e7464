//! The step table: one row per step, written by `expstar.scan` and extended by
//! `expstar.cut_clips`. Rows are sorted by subject, unit, experiment number (numeric), title
//! and step index, so the order never depends on directory listing order.

use std::path::Path;

use polars::prelude::*;

use crate::error::{OperatorError, Result};
use crate::table_io::{read_table, write_table};

/// One step of one experiment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepRow {
    pub subject: String,
    pub unit: String,
    /// The experiment number as written (`02`).
    pub exp_num: String,
    /// `<NN>-<title_zh>`: always a hyphen, as in the original outputs.
    pub exp_dir: String,
    pub title_zh: String,
    pub title_en: String,
    /// 1-based position in the `steps` array (the original's `step_number`).
    pub step_index: i64,
    /// The `step` field of the step file.
    pub step: i64,
    pub step_zh: String,
    pub step_en: String,
    /// The times used for cutting.
    pub start: String,
    pub end: String,
    pub given_start: String,
    pub given_end: String,
    pub derived_start: String,
    pub derived_end: String,
    /// Whether the given times equal the derived ones (true when either is missing).
    pub times_agree: bool,
    /// Paths relative to the raw tree.
    pub video: String,
    pub step_file: String,
    pub asr_file: String,
    /// The step's annotations as a JSON array (Python style).
    pub annotations: String,
    /// The clip's path relative to the clips directory (empty before cutting).
    pub clip: String,
    pub clip_ok: bool,
}

impl StepRow {
    /// `<NN>-<title>_step_<k>`.
    pub fn stem(&self) -> String {
        format!("{}_step_{}", self.exp_dir, self.step_index)
    }

    /// Sort key: subject, unit, numeric experiment number, directory name, step index.
    pub fn order_key(&self) -> (String, String, u64, String, i64) {
        (
            self.subject.clone(),
            self.unit.clone(),
            self.exp_num.parse().unwrap_or(u64::MAX),
            self.exp_dir.clone(),
            self.step_index,
        )
    }
}

macro_rules! str_cols {
    ($rows:expr, $($f:ident),*) => {
        vec![$(Column::new(stringify!($f).into(), $rows.iter().map(|r| r.$f.as_str()).collect::<Vec<_>>())),*]
    };
}

/// Writes the step table.
pub fn write_steps(rows: &[StepRow], path: &Path) -> Result<()> {
    let mut cols = str_cols!(rows, subject, unit, exp_num, exp_dir, title_zh, title_en);
    cols.push(Column::new(
        "step_index".into(),
        rows.iter().map(|r| r.step_index).collect::<Vec<_>>(),
    ));
    cols.push(Column::new(
        "step".into(),
        rows.iter().map(|r| r.step).collect::<Vec<_>>(),
    ));
    cols.extend(str_cols!(
        rows,
        step_zh,
        step_en,
        start,
        end,
        given_start,
        given_end,
        derived_start,
        derived_end
    ));
    cols.push(Column::new(
        "times_agree".into(),
        rows.iter().map(|r| r.times_agree).collect::<Vec<_>>(),
    ));
    cols.extend(str_cols!(
        rows,
        video,
        step_file,
        asr_file,
        annotations,
        clip
    ));
    cols.push(Column::new(
        "clip_ok".into(),
        rows.iter().map(|r| r.clip_ok).collect::<Vec<_>>(),
    ));
    let mut df = DataFrame::new(rows.len(), cols)
        .map_err(|e| OperatorError::polars("expstar", "building the step table", e))?;
    write_table(&mut df, path)
}

/// Reads a step table written by [`write_steps`].
pub fn read_steps(path: &Path) -> Result<Vec<StepRow>> {
    let df = read_table(path)?;
    let bad = |e: PolarsError| OperatorError::Parse {
        path: path.to_path_buf(),
        format: "an ExpStar step table",
        location: String::new(),
        message: e.to_string(),
    };
    let s = |name: &str| -> Result<Vec<String>> {
        let c = df.column(name).map_err(bad)?;
        Ok(c.str()
            .map_err(bad)?
            .iter()
            .map(|v| v.unwrap_or("").to_string())
            .collect())
    };
    let i = |name: &str| -> Result<Vec<i64>> {
        let c = df.column(name).map_err(bad)?;
        Ok(c.i64()
            .map_err(bad)?
            .iter()
            .map(|v| v.unwrap_or(0))
            .collect())
    };
    let b = |name: &str| -> Result<Vec<bool>> {
        let c = df.column(name).map_err(bad)?;
        Ok(c.bool()
            .map_err(bad)?
            .iter()
            .map(|v| v.unwrap_or(false))
            .collect())
    };
    let (subject, unit, exp_num, exp_dir) =
        (s("subject")?, s("unit")?, s("exp_num")?, s("exp_dir")?);
    let (title_zh, title_en, step_zh, step_en) =
        (s("title_zh")?, s("title_en")?, s("step_zh")?, s("step_en")?);
    let (step_index, step) = (i("step_index")?, i("step")?);
    let (start, end, given_start, given_end) =
        (s("start")?, s("end")?, s("given_start")?, s("given_end")?);
    let (derived_start, derived_end, times_agree) =
        (s("derived_start")?, s("derived_end")?, b("times_agree")?);
    let (video, step_file, asr_file, annotations) = (
        s("video")?,
        s("step_file")?,
        s("asr_file")?,
        s("annotations")?,
    );
    let (clip, clip_ok) = (s("clip")?, b("clip_ok")?);
    Ok((0..df.height())
        .map(|k| StepRow {
            subject: subject[k].clone(),
            unit: unit[k].clone(),
            exp_num: exp_num[k].clone(),
            exp_dir: exp_dir[k].clone(),
            title_zh: title_zh[k].clone(),
            title_en: title_en[k].clone(),
            step_index: step_index[k],
            step: step[k],
            step_zh: step_zh[k].clone(),
            step_en: step_en[k].clone(),
            start: start[k].clone(),
            end: end[k].clone(),
            given_start: given_start[k].clone(),
            given_end: given_end[k].clone(),
            derived_start: derived_start[k].clone(),
            derived_end: derived_end[k].clone(),
            times_agree: times_agree[k],
            video: video[k].clone(),
            step_file: step_file[k].clone(),
            asr_file: asr_file[k].clone(),
            annotations: annotations[k].clone(),
            clip: clip[k].clone(),
            clip_ok: clip_ok[k],
        })
        .collect())
}
