//! The de-identification crate's error type.

use std::path::PathBuf;

/// Errors a caller of `medfed-deid` can act on. Per-file refusals are not errors: they are
/// [`crate::Outcome::Refused`] entries of the batch report.
#[derive(Debug, thiserror::Error)]
pub enum DeidError {
    #[error("action table: {0}")]
    ActionTable(String),
    #[error("profile {path}: {message}")]
    Profile { path: PathBuf, message: String },
    #[error("unknown de-identification option {0:?} (see `medfed deid --help`)")]
    UnknownOption(String),
    #[error("options {0} and {1} cannot be combined")]
    ConflictingOptions(&'static str, &'static str),
    #[error("site key {path}: {message}")]
    SiteKey { path: PathBuf, message: String },
    #[error("re-identification table {path}: {message}")]
    ReidTable { path: PathBuf, message: String },
    #[error("no re-identification entry for pseudonym {0:?}")]
    UnknownPseudonym(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("output folder {out} must not lie inside the input folder {input}")]
    OutputInsideInput { input: PathBuf, out: PathBuf },
}

impl DeidError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
