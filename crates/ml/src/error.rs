//! The crate's one error type.

use std::path::PathBuf;

/// What can go wrong in medfed-ml; each variant names what caused it.
#[derive(Debug, thiserror::Error)]
pub enum MlError {
    /// A network or training configuration that cannot be built.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A tensor or sample whose shape the operation cannot take.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// The requested device is not available (for example CUDA without a driver).
    #[error("device unavailable: {0}")]
    Device(String),
    /// Reading or writing a file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A weights or optimizer file that burn could not decode or apply.
    #[error("{path}: model record: {message}")]
    Record {
        /// The file.
        path: PathBuf,
        /// burn's message.
        message: String,
    },
    /// Reading tensor data back from the backend, or case data that cannot be used.
    #[error("data: {0}")]
    Data(String),
    /// An image or label file that medfed-volume could not read.
    #[error(transparent)]
    Volume(#[from] medfed_volume::VolumeError),
}

/// Result with [`MlError`].
pub type Result<T> = std::result::Result<T, MlError>;
