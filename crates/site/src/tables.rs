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

/// A Parquet table as numbers (booleans as 0/1, text parsed or missing), and the text of
/// column `keep` for every row (the split column of a federated run).
pub(crate) fn parquet_table(
    path: &Path,
    keep: Option<&str>,
) -> Result<(medfed_federated::table::Table, Vec<String>), String> {
    use parquet::file::reader::FileReader;
    use parquet::record::Field;
    let f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let reader = parquet::file::reader::SerializedFileReader::new(f).map_err(|e| e.to_string())?;
    let (columns, _) = parquet_schema(path)?;
    let kept = match keep {
        Some(k) => Some(
            columns
                .iter()
                .position(|c| c == k)
                .ok_or_else(|| format!("column {k:?} is not in the table"))?,
        ),
        None => None,
    };
    let number = |f: &Field| -> f64 {
        match f {
            Field::Bool(b) => f64::from(u8::from(*b)),
            Field::Byte(v) => f64::from(*v),
            Field::Short(v) => f64::from(*v),
            Field::Int(v) => f64::from(*v),
            Field::Long(v) => *v as f64,
            Field::UByte(v) => f64::from(*v),
            Field::UShort(v) => f64::from(*v),
            Field::UInt(v) => f64::from(*v),
            Field::ULong(v) => *v as f64,
            Field::Float(v) => f64::from(*v),
            Field::Double(v) => *v,
            Field::Str(s) => s.trim().parse().unwrap_or(f64::NAN),
            _ => f64::NAN,
        }
    };
    let (mut rows, mut texts) = (Vec::new(), Vec::new());
    for row in reader.get_row_iter(None).map_err(|e| e.to_string())? {
        let row = row.map_err(|e| e.to_string())?;
        let fields: Vec<&Field> = row.get_column_iter().map(|(_, f)| f).collect();
        if let Some(k) = kept {
            texts.push(match fields.get(k) {
                Some(Field::Str(s)) => s.trim().to_string(),
                Some(Field::Null) | None => String::new(),
                Some(other) => other.to_string(),
            });
        }
        rows.push(fields.iter().map(|f| number(f)).collect());
    }
    Ok((medfed_federated::table::Table { columns, rows }, texts))
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

    /// A CSV table rewritten as Parquet: numbers as optional DOUBLE (empty cells null), the
    /// named text columns as strings.
    fn csv_to_parquet(csv_text: &str, text_columns: &[&str], out: &Path) {
        use parquet::basic::{LogicalType, Repetition, Type as Physical};
        use parquet::data_type::{ByteArray, ByteArrayType, DoubleType};
        use parquet::file::writer::SerializedFileWriter;
        use parquet::schema::types::Type;
        use std::sync::Arc;
        let mut lines = csv_text.lines();
        let header: Vec<&str> = lines.next().unwrap().split(',').collect();
        let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
        let fields = header
            .iter()
            .map(|h| {
                let t = if text_columns.contains(h) {
                    Type::primitive_type_builder(h, Physical::BYTE_ARRAY)
                        .with_logical_type(Some(LogicalType::String))
                } else {
                    Type::primitive_type_builder(h, Physical::DOUBLE)
                };
                Arc::new(t.with_repetition(Repetition::OPTIONAL).build().unwrap())
            })
            .collect();
        let schema = Arc::new(
            Type::group_type_builder("t")
                .with_fields(fields)
                .build()
                .unwrap(),
        );
        let file = std::fs::File::create(out).unwrap();
        let mut w = SerializedFileWriter::new(file, schema, Default::default()).unwrap();
        let mut g = w.next_row_group().unwrap();
        for (c, h) in header.iter().enumerate() {
            let mut col = g.next_column().unwrap().unwrap();
            let defs: Vec<i16> = rows.iter().map(|r| i16::from(!r[c].is_empty())).collect();
            if text_columns.contains(h) {
                let v: Vec<ByteArray> = rows
                    .iter()
                    .filter(|r| !r[c].is_empty())
                    .map(|r| ByteArray::from(r[c]))
                    .collect();
                col.typed::<ByteArrayType>()
                    .write_batch(&v, Some(&defs), None)
                    .unwrap();
            } else {
                let v: Vec<f64> = rows
                    .iter()
                    .filter(|r| !r[c].is_empty())
                    .map(|r| r[c].parse().unwrap())
                    .collect();
                col.typed::<DoubleType>()
                    .write_batch(&v, Some(&defs), None)
                    .unwrap();
            }
            col.close().unwrap();
        }
        g.close().unwrap();
        w.close().unwrap();
    }

    #[test]
    fn a_parquet_table_gives_a_federated_run_the_same_rows_as_its_csv() {
        let csv_text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../medfed/demo-data/heart/cleveland.csv"),
        )
        .unwrap();
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("heart.parquet");
        csv_to_parquet(&csv_text, &["flamby_split"], &path);
        let spec = medfed_federated::spec::StudySpec::from_toml(
            "study = \"s\"\n[data]\ntable = \"t\"\nlabel = \"target\"\nfeatures = [\"age\", \"cp=4\", \"oldpeak\"]\nsplit = { column = \"flamby_split\" }\n[algorithm]\nkind = \"newton-logistic\"\n",
        )
        .unwrap();
        let (table, texts) = parquet_table(&path, Some("flamby_split")).unwrap();
        let from_parquet =
            medfed_federated::run::SiteData::from_table(table, &texts, &spec).unwrap();
        let from_csv = medfed_federated::run::SiteData::from_csv(&csv_text, &spec).unwrap();
        assert_eq!(from_parquet.train, from_csv.train);
        assert_eq!(from_parquet.test, from_csv.test);
        assert_eq!(
            from_csv.train.rows(),
            199,
            "FLamby's Cleveland training rows"
        );
        assert!(
            parquet_table(&path, Some("nope"))
                .unwrap_err()
                .contains("not in the table")
        );
    }

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
