//! IBSI 1 radiomic features computed at the site: the image-processing chain and all eleven
//! feature families, each value tagged with its IBSI feature tag.
//!
//! - [`settings`]: the TOML settings with their documented defaults.
//! - [`region`]: cropping, interpolation, re-segmentation, discretisation (IBSI chapter 2).
//! - [`morphology`], [`intensity`], [`texture`]: the feature families (IBSI chapter 3).
//! - [`table`]: feature tables as CSV or Parquet, with the settings sidecar.
//!
//! [`extract`] runs the whole chain for one region; it does no file IO.
// Voxel code indexes several arrays by the same axis or level; index loops say that plainly.
#![allow(clippy::needless_range_loop, clippy::type_complexity)]

pub mod hull;
pub mod intensity;
pub mod morphology;
pub mod region;
pub mod settings;
pub mod spatial;
pub mod table;
pub mod texture;

use medfed_volume::Volume;

pub use region::Region;
pub use settings::{Discretisation, Family, RadiomicsSettings};
pub use table::{FeatureRow, FeatureTable};

/// A hash map with a multiply-rotate hasher (as in rustc's FxHash): the keys here are small
/// integers from voxel grids, not attacker-chosen, and SipHash cost a tenth of a region's time.
pub(crate) type FastMap<K, V> =
    std::collections::HashMap<K, V, std::hash::BuildHasherDefault<FastHasher>>;

#[derive(Default, Clone, Copy)]
pub(crate) struct FastHasher(u64);

impl std::hash::Hasher for FastHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(b as u64);
        }
    }
    fn write_u64(&mut self, x: u64) {
        self.0 = (self.0.rotate_left(5) ^ x).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_u32(&mut self, x: u32) {
        self.write_u64(x as u64);
    }
    fn write_i64(&mut self, x: i64) {
        self.write_u64(x as u64);
    }
    fn write_usize(&mut self, x: usize) {
        self.write_u64(x as u64);
    }
}

/// Why features could not be computed for a region.
#[derive(Debug, thiserror::Error)]
pub enum RadiomicsError {
    #[error("settings: {0}")]
    Settings(String),
    #[error("label {0} has no voxels in the mask")]
    EmptyRegion(u16),
    #[error("mask and image grids differ: {0}")]
    GridMismatch(String),
    #[error("{0}")]
    Output(String),
}

/// Feature values in the order they were computed, each under its IBSI tag.
#[derive(Debug, Default, Clone)]
pub struct FeatureSink {
    pub values: Vec<(String, f64)>,
}

impl FeatureSink {
    pub fn push(&mut self, tag: &str, value: f64) {
        self.values.push((tag.to_string(), value));
    }

    pub fn get(&self, tag: &str) -> Option<f64> {
        self.values.iter().find(|(t, _)| t == tag).map(|(_, v)| *v)
    }
}

/// Texture matrices are dense in the grey levels (a GLCM is Ng x Ng); beyond this a setting is
/// surely a mistake (a bin width far below the intensity range) and would exhaust memory.
pub const MAX_TEXTURE_LEVELS: u32 = 2048;

/// Compute every feature family the settings ask for, for the voxels of `mask` equal to `label`.
pub fn extract(
    image: &Volume<f32>,
    mask: &Volume<u16>,
    label: u16,
    settings: &RadiomicsSettings,
) -> Result<FeatureSink, RadiomicsError> {
    settings.validate()?;
    let region = Region::extract(image, mask, label, settings)?;
    features_of(&region, settings)
}

/// The feature families on a prepared region; the three groups run in parallel.
pub fn features_of(
    region: &Region,
    settings: &RadiomicsSettings,
) -> Result<FeatureSink, RadiomicsError> {
    let t0 = std::time::Instant::now();
    let texture_levels = region.discretise(settings.texture_discretisation, settings)?;
    if texture_levels.n_levels > MAX_TEXTURE_LEVELS
        && Family::ALL
            .iter()
            .any(|&f| f.is_texture() && settings.wants(f))
    {
        return Err(RadiomicsError::Settings(format!(
            "{} grey levels is too many for texture matrices (at most {MAX_TEXTURE_LEVELS}): use a wider bin or fewer bins",
            texture_levels.n_levels
        )));
    }
    let hist_levels = if settings.histogram_discretisation() == settings.texture_discretisation {
        None
    } else {
        Some(region.discretise(settings.histogram_discretisation(), settings)?)
    };
    tracing::debug!(seconds = t0.elapsed().as_secs_f64(), "discretisation");
    let (morph, (first, tex)) = rayon::join(
        || {
            let mut out = FeatureSink::default();
            if settings.wants(Family::Morphology) {
                let t = std::time::Instant::now();
                morphology::compute(region, &mut out);
                tracing::debug!(seconds = t.elapsed().as_secs_f64(), "morphology");
            }
            out
        },
        || {
            rayon::join(
                || -> Result<FeatureSink, RadiomicsError> {
                    let mut out = FeatureSink::default();
                    let t = std::time::Instant::now();
                    if settings.wants(Family::LocalIntensity) {
                        intensity::local_intensity(region, &mut out);
                    }
                    tracing::debug!(seconds = t.elapsed().as_secs_f64(), "local intensity");
                    if settings.wants(Family::Statistics) {
                        intensity::stats(region, &mut out);
                    }
                    if settings.wants(Family::IntensityHistogram) {
                        intensity::histogram(
                            hist_levels.as_ref().unwrap_or(&texture_levels),
                            &mut out,
                        );
                    }
                    if settings.wants(Family::IntensityVolumeHistogram) {
                        intensity::ivh(region, settings, settings.ivh_discretisation, &mut out)?;
                    }
                    tracing::debug!(seconds = t.elapsed().as_secs_f64(), "first-order families");
                    Ok(out)
                },
                || texture_features(region, &texture_levels, settings),
            )
        },
    );
    let mut all = morph;
    all.values.extend(first?.values);
    all.values.extend(tex.values);
    Ok(all)
}

/// Texture families on the morphological mask's bounding box only.
fn texture_features(
    region: &Region,
    levels: &region::Discretised,
    settings: &RadiomicsSettings,
) -> FeatureSink {
    let mut out = FeatureSink::default();
    let g = &region.geometry;
    let vol = Volume {
        geometry: *g,
        data: region.morph.clone(),
    };
    let Some((lo, hi)) = medfed_volume::bounding_box(&vol, |m| m) else {
        return out;
    };
    let morph = vol.crop(lo, hi);
    let lv = Volume {
        geometry: *g,
        data: levels.levels.clone(),
    }
    .crop(lo, hi);
    let grid = texture::Grid::new(
        lv.dims(),
        &lv.data,
        &morph.data,
        levels.n_levels.max(1),
        settings.texture.distance,
    );
    let t = std::time::Instant::now();
    texture::compute(&grid, settings, &mut out);
    tracing::debug!(seconds = t.elapsed().as_secs_f64(), "texture families");
    out
}
