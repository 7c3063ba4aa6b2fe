//! Feature tables: one row per region, one column per IBSI feature tag, written as CSV or Parquet
//! (chosen by the file extension) through a temporary name, with a JSON sidecar
//! (`<table>.settings.json`) holding the complete settings, medfed's version and every input.
//!
//! Every row also carries `medfed_version` and `settings_sha256`, so a row copied out of its
//! table still says how it was made.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parquet::basic::{Compression, Repetition, Type as PhysicalType};
use parquet::data_type::{ByteArray, ByteArrayType, DoubleType};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::Type;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::{FeatureSink, RadiomicsError, RadiomicsSettings};

/// Features of one region, or why there are none.
#[derive(Debug, Clone, Serialize)]
pub struct FeatureRow {
    pub case_id: String,
    pub image: String,
    pub mask: String,
    /// Label value or ROI / segment name.
    pub region: String,
    #[serde(skip)]
    pub features: FeatureSink,
    /// Set when extraction failed; the row then has no feature values.
    pub error: Option<String>,
}

/// A table of feature rows made under one set of settings.
pub struct FeatureTable {
    pub settings: RadiomicsSettings,
    pub rows: Vec<FeatureRow>,
}

const ID_COLUMNS: [&str; 7] = [
    "case_id",
    "image",
    "mask",
    "region",
    "error",
    "medfed_version",
    "settings_sha256",
];

impl FeatureTable {
    /// Feature tags in column order: those of the first successful row.
    pub fn tags(&self) -> Vec<String> {
        self.rows
            .iter()
            .find(|r| r.error.is_none())
            .map(|r| r.features.values.iter().map(|(t, _)| t.clone()).collect())
            .unwrap_or_default()
    }

    pub fn settings_sha256(&self) -> String {
        let digest = Sha256::digest(self.settings.to_toml().as_bytes());
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Sidecar path for a table path.
    pub fn sidecar_path(table: &Path) -> PathBuf {
        let mut s = table.as_os_str().to_owned();
        s.push(".settings.json");
        PathBuf::from(s)
    }

    /// Write the table (CSV unless the name ends in `.parquet`) and its sidecar.
    pub fn write(&self, path: &Path) -> Result<(), RadiomicsError> {
        let parquet = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("parquet"));
        let bytes = if parquet {
            self.parquet_bytes()?
        } else {
            self.csv_bytes()?
        };
        write_atomically(path, &bytes)?;
        let sidecar = serde_json::json!({
            "medfed_version": env!("CARGO_PKG_VERSION"),
            "settings_sha256": self.settings_sha256(),
            "settings": self.settings,
            "settings_toml": self.settings.to_toml(),
            "standard": "IBSI 1 (Zwanenburg et al., Radiology 2020; arXiv:1612.07003)",
            "rows": self.rows,
        });
        let text = serde_json::to_vec_pretty(&sidecar)
            .map_err(|e| RadiomicsError::Output(e.to_string()))?;
        write_atomically(&Self::sidecar_path(path), &text)
    }

    fn id_values(&self, r: &FeatureRow, sha: &str) -> [String; 7] {
        [
            r.case_id.clone(),
            r.image.clone(),
            r.mask.clone(),
            r.region.clone(),
            r.error.clone().unwrap_or_default(),
            env!("CARGO_PKG_VERSION").to_string(),
            sha.to_string(),
        ]
    }

    fn value(r: &FeatureRow, i: usize, tag: &str) -> Option<f64> {
        // Rows share the column order; fall back to a lookup if one differs.
        match r.features.values.get(i) {
            Some((t, v)) if t == tag => Some(*v),
            _ => r.features.get(tag),
        }
    }

    pub fn csv_bytes(&self) -> Result<Vec<u8>, RadiomicsError> {
        let err = |e: csv::Error| RadiomicsError::Output(e.to_string());
        let tags = self.tags();
        let sha = self.settings_sha256();
        let mut w = csv::Writer::from_writer(Vec::new());
        let mut header: Vec<String> = ID_COLUMNS.iter().map(|s| s.to_string()).collect();
        header.extend(tags.iter().cloned());
        w.write_record(&header).map_err(err)?;
        for r in &self.rows {
            let mut rec: Vec<String> = self.id_values(r, &sha).into();
            for (i, t) in tags.iter().enumerate() {
                rec.push(match Self::value(r, i, t) {
                    Some(v) if v.is_finite() => format!("{v}"),
                    Some(v) if v.is_nan() => "NaN".into(),
                    Some(v) => format!("{v}"),
                    None => String::new(),
                });
            }
            w.write_record(&rec).map_err(err)?;
        }
        w.into_inner()
            .map_err(|e| RadiomicsError::Output(e.to_string()))
    }

    pub fn parquet_bytes(&self) -> Result<Vec<u8>, RadiomicsError> {
        let err = |e: parquet::errors::ParquetError| RadiomicsError::Output(e.to_string());
        let tags = self.tags();
        let sha = self.settings_sha256();
        let mut fields = Vec::new();
        for c in ID_COLUMNS {
            fields.push(Arc::new(
                Type::primitive_type_builder(c, PhysicalType::BYTE_ARRAY)
                    .with_repetition(Repetition::REQUIRED)
                    .with_logical_type(Some(parquet::basic::LogicalType::String))
                    .build()
                    .map_err(err)?,
            ));
        }
        for t in &tags {
            fields.push(Arc::new(
                Type::primitive_type_builder(t, PhysicalType::DOUBLE)
                    .with_repetition(Repetition::OPTIONAL)
                    .build()
                    .map_err(err)?,
            ));
        }
        let schema = Arc::new(
            Type::group_type_builder("medfed_features")
                .with_fields(fields)
                .build()
                .map_err(err)?,
        );
        let props = Arc::new(
            WriterProperties::builder()
                .set_compression(Compression::SNAPPY)
                .set_created_by(format!("medfed {}", env!("CARGO_PKG_VERSION")))
                .build(),
        );
        let mut buf = Vec::new();
        {
            let mut writer = SerializedFileWriter::new(&mut buf, schema, props).map_err(err)?;
            let mut group = writer.next_row_group().map_err(err)?;
            for c in 0..ID_COLUMNS.len() {
                let vals: Vec<ByteArray> = self
                    .rows
                    .iter()
                    .map(|r| ByteArray::from(self.id_values(r, &sha)[c].as_str()))
                    .collect();
                let mut col = group.next_column().map_err(err)?.ok_or_else(|| {
                    RadiomicsError::Output("parquet schema has fewer columns than written".into())
                })?;
                col.typed::<ByteArrayType>()
                    .write_batch(&vals, None, None)
                    .map_err(err)?;
                col.close().map_err(err)?;
            }
            for (i, t) in tags.iter().enumerate() {
                let mut vals = Vec::new();
                let mut defs = Vec::new();
                for r in &self.rows {
                    match Self::value(r, i, t) {
                        Some(v) => {
                            vals.push(v);
                            defs.push(1i16);
                        }
                        None => defs.push(0),
                    }
                }
                let mut col = group.next_column().map_err(err)?.ok_or_else(|| {
                    RadiomicsError::Output("parquet schema has fewer columns than written".into())
                })?;
                col.typed::<DoubleType>()
                    .write_batch(&vals, Some(&defs), None)
                    .map_err(err)?;
                col.close().map_err(err)?;
            }
            group.close().map_err(err)?;
            writer.close().map_err(err)?;
        }
        Ok(buf)
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), RadiomicsError> {
    let err = |e: std::io::Error| RadiomicsError::Output(format!("{}: {e}", path.display()));
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    medfed_durable::write_atomically(path, bytes, medfed_durable::Publish::REPLACE).map_err(err)
}
