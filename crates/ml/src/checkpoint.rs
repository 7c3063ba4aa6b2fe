//! Model and optimizer files: burn's burnpack records (they keep parameter ids, which the
//! optimizer state is keyed by, so a resumed run continues exactly), written through a
//! temporary name and renamed by medfed-durable, so a kill never leaves half a file.

use std::path::Path;

use burn::module::Module;
use burn::optim::ModuleOptimizer;
use burn::store::ModuleRecord;
use burn::tensor::Bytes;

use crate::{MlError, Result};

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> MlError + '_ {
    move |source| MlError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn record(path: &Path) -> impl FnOnce(burn::store::RecordError) -> MlError + '_ {
    move |e| MlError::Record {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Writes `model`'s parameters to `path` (whole or not at all).
pub fn save_model<M: Module>(model: &M, path: &Path) -> Result<()> {
    let bytes = model
        .clone()
        .into_record()
        .into_bytes()
        .map_err(record(path))?;
    medfed_durable::write_atomically(path, &bytes, medfed_durable::Publish::REPLACE)
        .map_err(io(path))
}

/// `model` with the parameters of `path`; every parameter must be in the file with its shape.
pub fn load_model<M: Module>(model: M, path: &Path) -> Result<M> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    let rec = ModuleRecord::from_bytes(Bytes::from_bytes_vec(bytes)).map_err(record(path))?;
    model.try_load_record(rec).map_err(record(path))
}

/// Writes the optimizer's state (moments, step counts) to `path`.
pub fn save_optimizer(optim: &ModuleOptimizer, path: &Path) -> Result<()> {
    let bytes = optim.into_bytes().map_err(record(path))?;
    medfed_durable::write_atomically(path, &bytes, medfed_durable::Publish::REPLACE)
        .map_err(io(path))
}

/// `optim` with the state of `path`.
pub fn load_optimizer(optim: ModuleOptimizer, path: &Path) -> Result<ModuleOptimizer> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    optim
        .from_bytes(Bytes::from_bytes_vec(bytes))
        .map_err(record(path))
}
