use std::path::PathBuf;

/// Why an image or mask could not be read.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a NIfTI file: {reason}")]
    Nifti { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    Dicom { path: PathBuf, reason: String },
    #[error("{path}: DICOM series cannot be made into one volume: {reason}")]
    Series { path: PathBuf, reason: String },
    #[error("mask does not fit the image: {0}")]
    GridMismatch(String),
    #[error("{path}: {what} not found; available: {available}")]
    NotFound {
        path: PathBuf,
        what: String,
        available: String,
    },
}

impl VolumeError {
    pub(crate) fn dicom(path: &std::path::Path, reason: impl Into<String>) -> Self {
        VolumeError::Dicom {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }
}
