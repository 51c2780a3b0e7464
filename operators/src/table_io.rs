//! Reading and writing table artifacts (Parquet), and previewing them for `expflow show`.
//!
//! Table artifacts are content-addressed, so the writer is pinned to give equal bytes for
//! equal content: zstd level 3, row groups of exactly [`ROW_GROUP_ROWS`] rows (the last one
//! shorter) regardless of how the frame is chunked in memory, data pages of at most 1 MiB,
//! min/max/null-count statistics without distinct counts and without truncation, and
//! single-threaded encoding. The file's metadata holds only the Arrow schema and Polars'
//! constant `created_by` string (no timestamps, no host names).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use polars::polars_utils::compression::ZstdLevel;
use polars::prelude::*;

use crate::error::{OperatorError, Result};

/// Rows per Parquet row group.
pub const ROW_GROUP_ROWS: usize = 128 * 1024;
/// Maximum size of a Parquet data page in bytes.
const DATA_PAGE_BYTES: usize = 1024 * 1024;
/// zstd compression level.
const ZSTD_LEVEL: i32 = 3;

/// Reads a Parquet table artifact.
pub fn read_table(path: &Path) -> Result<DataFrame> {
    let file = File::open(path).map_err(|e| OperatorError::io("cannot open table", path, e))?;
    ParquetReader::new(file)
        .finish()
        .map_err(|e| parquet_error(path, e))
}

/// The numeric columns of the Parquet table at `path` as f64, row by row (what a record
/// keeps of a metrics table: training curves). Text and other columns are left out.
pub fn numeric_columns(path: &Path) -> Result<expflow_engine::Series> {
    let df = read_table(path)?;
    let mut out = expflow_engine::Series::new();
    for col in df.columns() {
        if !col.dtype().is_primitive_numeric() {
            continue;
        }
        let cast = col
            .cast(&DataType::Float64)
            .map_err(|e| parquet_error(path, e))?;
        let values = cast.f64().map_err(|e| parquet_error(path, e))?;
        out.insert(
            col.name().to_string(),
            values.iter().map(|v| v.filter(|x| x.is_finite())).collect(),
        );
    }
    Ok(out)
}

/// Writes `df` as Parquet at `path` with the pinned writer settings (see the module docs).
pub fn write_table(df: &mut DataFrame, path: &Path) -> Result<()> {
    let file = File::create(path).map_err(|e| OperatorError::io("cannot create", path, e))?;
    let mut out = BufWriter::new(file);
    let failed = |e: PolarsError| OperatorError::Parse {
        path: path.to_path_buf(),
        format: "Parquet",
        location: String::new(),
        message: format!("writing failed: {e}"),
    };
    let level = ZstdLevel::try_new(ZSTD_LEVEL).map_err(failed)?;
    // Row groups are cut from one contiguous chunk, so the layout depends only on the height.
    df.rechunk_mut();
    let mut writer = ParquetWriter::new(&mut out)
        .with_compression(ParquetCompression::Zstd(Some(level)))
        .with_statistics(StatisticsOptions {
            min_value: true,
            max_value: true,
            distinct_count: false,
            null_count: true,
            binary_statistics_truncate_length: Some(0),
        })
        .with_row_group_size(Some(ROW_GROUP_ROWS))
        .with_data_page_size(Some(DATA_PAGE_BYTES))
        .set_parallel(false)
        .batched(df.schema())
        .map_err(failed)?;
    let mut offset = 0;
    while offset < df.height() {
        let group = df.slice(offset as i64, ROW_GROUP_ROWS);
        writer.write_batch(&group).map_err(failed)?;
        offset += ROW_GROUP_ROWS;
    }
    writer.finish().map_err(failed)?;
    drop(writer);
    out.flush()
        .map_err(|e| OperatorError::io("cannot write", path, e))?;
    out.get_ref()
        .sync_all()
        .map_err(|e| OperatorError::io("cannot sync", path, e))?;
    Ok(())
}

/// The schema and the first `rows` rows of a table, as text.
pub fn preview(path: &Path, rows: usize) -> Result<String> {
    let file = File::open(path).map_err(|e| OperatorError::io("cannot open table", path, e))?;
    let mut reader = ParquetReader::new(file);
    let total = reader.num_rows().map_err(|e| parquet_error(path, e))?;
    let head = reader
        .with_slice(Some((0, rows)))
        .finish()
        .map_err(|e| parquet_error(path, e))?;
    let mut text = format!("{total} rows, {} columns\n", head.width());
    for (name, dtype) in head.schema().iter() {
        text.push_str(&format!("  {name}: {dtype}\n"));
    }
    if head.width() > 0 {
        text.push_str(&format!("{head}\n"));
    }
    Ok(text)
}

fn parquet_error(path: &Path, e: PolarsError) -> OperatorError {
    OperatorError::Parse {
        path: path.to_path_buf(),
        format: "Parquet",
        location: String::new(),
        message: format!("{e}; is it a table artifact?"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame() -> DataFrame {
        df!(
            "id" => [1i64, 2, 3, 4],
            "lang" => ["en", "de", "en", "fr"],
            "score" => [Some(0.5f64), None, Some(0.25), Some(1.0)],
        )
        .unwrap()
    }

    #[test]
    fn equal_content_gives_equal_bytes_and_rereads_equal() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.parquet"), dir.path().join("b.parquet"));
        let mut df = frame();
        write_table(&mut df, &a).unwrap();
        // The same content built from two chunks must not change the bytes.
        let mut chunked = frame().slice(0, 2);
        chunked.vstack_mut(&frame().slice(2, 2)).unwrap();
        assert!(chunked.first_col_n_chunks() > 1);
        write_table(&mut chunked, &b).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        assert_eq!(read_table(&a).unwrap(), frame());
    }

    #[test]
    fn writer_bytes_are_pinned() {
        // A change of this digest means table artifacts change bytes (a Polars upgrade or a
        // writer setting): every downstream key changes with it, so it must be deliberate.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.parquet");
        write_table(&mut frame(), &p).unwrap();
        let digest = blake3::hash(&std::fs::read(&p).unwrap())
            .to_hex()
            .to_string();
        assert_eq!(
            digest,
            "76892884c21b08b22d042d821ea6cfee86b2d959af6be08ac21d21e8718dce42"
        );
    }

    #[test]
    fn row_groups_have_the_pinned_size() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big.parquet");
        let n = ROW_GROUP_ROWS + 10;
        let mut df = df!("x" => (0..n as i64).collect::<Vec<_>>()).unwrap();
        write_table(&mut df, &p).unwrap();
        let mut reader = ParquetReader::new(File::open(&p).unwrap());
        let meta = reader.get_metadata().unwrap();
        let sizes: Vec<usize> = meta.row_groups.iter().map(|g| g.num_rows()).collect();
        assert_eq!(sizes, vec![ROW_GROUP_ROWS, 10]);
        assert_eq!(read_table(&p).unwrap(), df);
    }

    #[test]
    fn empty_tables_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("e.parquet");
        let mut df = frame().slice(0, 0);
        write_table(&mut df, &p).unwrap();
        let back = read_table(&p).unwrap();
        assert_eq!(back.height(), 0);
        assert_eq!(back.schema(), frame().schema());
    }

    #[test]
    fn preview_shows_schema_and_head() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.parquet");
        write_table(&mut frame(), &p).unwrap();
        let text = preview(&p, 2).unwrap();
        assert!(text.starts_with("4 rows, 3 columns\n"), "{text}");
        assert!(text.contains("  lang: str\n"), "{text}");
        assert!(
            text.contains("en") && text.contains("de") && !text.contains("fr"),
            "{text}"
        );
    }

    #[test]
    fn reading_a_non_table_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("notes.txt");
        std::fs::write(&p, "hello").unwrap();
        let e = read_table(&p).unwrap_err().to_string();
        assert!(e.contains("notes.txt") && e.contains("Parquet"), "{e}");
    }
}
