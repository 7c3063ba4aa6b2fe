//! The site's registered tables as the hub may see them: the schema (column names) and the row
//! count, the count only at or above the study's minimum. The rows themselves never leave.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::policy::SitePolicy;

/// What the hub is told about one table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableInfo {
    pub id: String,
    pub study: String,
    pub format: String,
    pub columns: Vec<String>,
    /// `None` when below the study's minimum count (or unreadable).
    pub rows: Option<u64>,
    /// Why the table cannot be read, if it cannot (a clear message, no cell values).
    pub error: Option<String>,
}

fn csv_schema(path: &Path) -> Result<(Vec<String>, u64), String> {
    let mut r = csv::Reader::from_path(path).map_err(|e| e.to_string())?;
    let columns = r
        .headers()
        .map_err(|e| e.to_string())?
        .iter()
        .map(str::to_string)
        .collect();
    let mut rows = 0;
    let mut rec = csv::ByteRecord::new();
    while r
        .read_byte_record(&mut rec)
        .map_err(|e| format!("row {}: {e}", rows + 1))?
    {
        rows += 1;
    }
    Ok((columns, rows))
}

fn parquet_schema(path: &Path) -> Result<(Vec<String>, u64), String> {
    use parquet::file::reader::FileReader;
    let f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let reader = parquet::file::reader::SerializedFileReader::new(f).map_err(|e| e.to_string())?;
    let meta = reader.metadata().file_metadata();
    let columns = meta
        .schema_descr()
        .columns()
        .iter()
        .map(|c| c.path().string())
        .collect();
    Ok((columns, meta.num_rows().max(0) as u64))
}

/// Describe every registered table.
pub fn describe(policy: &SitePolicy) -> Vec<TableInfo> {
    policy
        .tables
        .iter()
        .map(|t| {
            let format = t
                .path
                .extension()
                .map(|e| e.to_string_lossy().to_ascii_lowercase())
                .unwrap_or_default();
            let read = match format.as_str() {
                "csv" => csv_schema(&t.path),
                "parquet" => parquet_schema(&t.path),
                other => Err(format!(
                    "unsupported table format {other:?} (csv or parquet)"
                )),
            };
            let min = policy
                .study(&t.study)
                .map_or(u64::MAX, |s| u64::from(s.min_count));
            match read {
                Ok((columns, rows)) => TableInfo {
                    id: t.id.clone(),
                    study: t.study.clone(),
                    format,
                    columns,
                    rows: (rows >= min).then_some(rows),
                    error: None,
                },
                Err(e) => TableInfo {
                    id: t.id.clone(),
                    study: t.study.clone(),
                    format,
                    columns: Vec::new(),
                    rows: None,
                    error: Some(format!("{}: {e}", t.path.display())),
                },
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemas_are_shown_and_small_counts_are_not() {
        let d = tempfile::tempdir().unwrap();
        let mut big = String::from("age,sex,target\n");
        for i in 0..25 {
            big.push_str(&format!("{},{},{}\n", 40 + i, i % 2, i % 3 == 0));
        }
        std::fs::write(d.path().join("big.csv"), big).unwrap();
        std::fs::write(d.path().join("small.csv"), "age,target\n50,1\n60,0\n").unwrap();
        std::fs::write(d.path().join("x.xlsx"), "no").unwrap();
        let policy = SitePolicy::parse(&format!(
            "[[study]]\nid = \"s\"\nallow = [\"federated-learning\"]\nmin_count = 10\n\
             [[table]]\nid = \"big\"\nstudy = \"s\"\npath = \"{0}/big.csv\"\n\
             [[table]]\nid = \"small\"\nstudy = \"s\"\npath = \"{0}/small.csv\"\n\
             [[table]]\nid = \"odd\"\nstudy = \"s\"\npath = \"{0}/x.xlsx\"\n",
            d.path().display()
        ))
        .unwrap();
        let t = describe(&policy);
        assert_eq!(t[0].columns, vec!["age", "sex", "target"]);
        assert_eq!(t[0].rows, Some(25));
        assert_eq!((t[1].columns.len(), t[1].rows), (2, None));
        assert!(t[2].error.as_deref().unwrap().contains("unsupported"));
        // A table for a study the site does not take part in is a configuration error.
        assert!(
            SitePolicy::parse("[[table]]\nid = \"t\"\nstudy = \"nope\"\npath = \"t.csv\"\n")
                .is_err()
        );
    }
}
