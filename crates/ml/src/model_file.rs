//! Model files: a segmentation network's weights as safetensors, and in the file's own header
//! metadata a [`ModelCard`] saying what made it: the network's configuration, the preprocessing
//! that prediction must repeat, the training spec, a summary of the data (counts, no
//! identifiers), the medfed version and the metrics per epoch. Written through a temporary
//! name (medfed-durable), so a kill never leaves half a model under the real name.

use std::collections::BTreeMap;
use std::path::Path;

use burn::store::{ModuleSnapshot, SafetensorsStore};
use serde::{Deserialize, Serialize};

use crate::dataset::{Preprocess, Split};
use crate::train::TrainConfig;
use crate::unet::{UNet3d, UNetConfig};
use crate::{Device, MlError, Result};

/// The format tag in every model file; a file with another is refused.
pub const FORMAT: &str = "medfed-model/1";
/// The metadata key under which the card is stored (as JSON).
const CARD_KEY: &str = "medfed.card";

/// Counts that describe a model's data without naming a case.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct DataSummary {
    /// Cases per split.
    pub cases: BTreeMap<Split, usize>,
    /// Training voxels per class (after preprocessing).
    pub voxels_per_class: Vec<u64>,
}

/// What one epoch did, as stored with the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    pub epoch: usize,
    /// Mean training loss (soft Dice + cross-entropy).
    pub loss: f64,
    /// Mean foreground Dice over the validation cases, when there are any.
    pub validation_dice: Option<f64>,
}

/// A fine-tuning step in a model's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinetuneRecord {
    /// Encoder levels whose weights were frozen.
    pub frozen_levels: usize,
    /// The data the model was tuned on.
    pub data: DataSummary,
    /// Epochs of tuning.
    pub history: Vec<EpochMetrics>,
}

/// Everything a model file says about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    /// [`FORMAT`].
    pub format: String,
    /// medfed's version that wrote the file.
    pub medfed_version: String,
    pub network: UNetConfig,
    pub preprocess: Preprocess,
    /// Patch size `[z, y, x]` of sliding-window prediction (the training patch).
    pub patch: [usize; 3],
    pub train: TrainConfig,
    pub data: DataSummary,
    pub history: Vec<EpochMetrics>,
    /// Fine-tuning steps applied after training, oldest first.
    #[serde(default)]
    pub finetuned: Vec<FinetuneRecord>,
}

impl ModelCard {
    /// A card for a model about to be trained.
    pub fn new(
        network: UNetConfig,
        preprocess: Preprocess,
        train: TrainConfig,
        data: DataSummary,
    ) -> Self {
        Self {
            format: FORMAT.into(),
            medfed_version: env!("CARGO_PKG_VERSION").into(),
            network,
            preprocess,
            patch: train.patch,
            train,
            data,
            history: Vec::new(),
            finetuned: Vec::new(),
        }
    }
}

fn record(path: &Path, e: impl std::fmt::Display) -> MlError {
    MlError::Record {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Writes `model` and its `card` to `path` (whole or not at all).
pub fn save(model: &UNet3d, card: &ModelCard, path: &Path) -> Result<()> {
    let card_json = serde_json::to_string(card).map_err(|e| record(path, e))?;
    let mut store = SafetensorsStore::from_bytes(None).metadata(CARD_KEY, card_json);
    model.save_into(&mut store).map_err(|e| record(path, e))?;
    let bytes = store.get_bytes().map_err(|e| record(path, e))?;
    medfed_durable::write_atomically(path, &bytes, medfed_durable::Publish::REPLACE).map_err(
        |source| MlError::Io {
            path: path.to_path_buf(),
            source,
        },
    )
}

/// The card of the model file at `path`, without building the network.
pub fn read_card(path: &Path) -> Result<ModelCard> {
    let bytes = std::fs::read(path).map_err(|source| MlError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    card_of(path, &bytes)
}

fn card_of(path: &Path, bytes: &[u8]) -> Result<ModelCard> {
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| record(path, format!("not a safetensors file: {e}")))?;
    let json = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get(CARD_KEY))
        .ok_or_else(|| record(path, "a safetensors file, but not a medfed model (no card)"))?;
    let card: ModelCard =
        serde_json::from_str(json).map_err(|e| record(path, format!("model card: {e}")))?;
    if card.format != FORMAT {
        return Err(record(
            path,
            format!(
                "model format {:?}, this medfed reads {FORMAT:?}",
                card.format
            ),
        ));
    }
    Ok(card)
}

/// The model at `path` on `device`, with its card. Every weight of the network must be in the
/// file with its shape.
pub fn load(path: &Path, device: &Device) -> Result<(UNet3d, ModelCard)> {
    let bytes = std::fs::read(path).map_err(|source| MlError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let card = card_of(path, &bytes)?;
    let mut model = UNet3d::new(&card.network, device)?;
    let mut store = SafetensorsStore::from_bytes(Some(bytes));
    let applied = model.load_from(&mut store).map_err(|e| record(path, e))?;
    if !applied.is_success() || !applied.missing.is_empty() {
        return Err(record(
            path,
            format!(
                "weights do not fit the network its card describes: missing {:?}, errors {:?}",
                applied.missing, applied.errors
            ),
        ));
    }
    Ok((model, card))
}
