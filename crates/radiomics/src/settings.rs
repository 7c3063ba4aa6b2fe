//! Extraction settings: one TOML file, every field with a documented default.
//!
//! The defaults are written out by [`RadiomicsSettings::default`] and in `docs/radiomics.md`; the
//! complete settings in force travel with every feature table (see [`crate::table`]), so a result
//! can be reproduced and a changed default can never go unnoticed.

use serde::{Deserialize, Serialize};

use crate::RadiomicsError;

/// Everything that decides a feature value, apart from the image and the mask.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RadiomicsSettings {
    /// Resampling to a new voxel grid (IBSI 2.4); absent: the image's own grid.
    pub interpolation: Option<Interpolation>,
    /// Re-segmentation of the intensity mask (IBSI 2.5).
    pub resegmentation: Resegmentation,
    /// Discretisation for the texture families (GLCM ... NGLDM).
    pub texture_discretisation: Discretisation,
    /// Discretisation for the intensity histogram family; absent: as for texture.
    pub histogram_discretisation: Option<Discretisation>,
    /// Discretisation for the intensity-volume histogram.
    pub ivh_discretisation: Discretisation,
    /// Texture matrix parameters.
    pub texture: TextureSettings,
    /// Feature families to compute.
    pub families: Vec<Family>,
}

impl Default for RadiomicsSettings {
    fn default() -> Self {
        RadiomicsSettings {
            interpolation: None,
            resegmentation: Resegmentation::default(),
            texture_discretisation: Discretisation::FixedBinNumber { bins: 32 },
            histogram_discretisation: None,
            ivh_discretisation: Discretisation::FixedBinNumber { bins: 1000 },
            texture: TextureSettings::default(),
            families: Family::ALL.to_vec(),
        }
    }
}

impl RadiomicsSettings {
    /// Read settings from TOML text; unknown keys are an error, missing keys take their default.
    pub fn from_toml(text: &str) -> Result<Self, RadiomicsError> {
        let s: RadiomicsSettings =
            toml::from_str(text).map_err(|e| RadiomicsError::Settings(e.to_string()))?;
        s.validate()?;
        Ok(s)
    }

    /// The settings as TOML, every field spelled out.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }

    pub fn histogram_discretisation(&self) -> Discretisation {
        self.histogram_discretisation
            .unwrap_or(self.texture_discretisation)
    }

    pub fn wants(&self, f: Family) -> bool {
        self.families.contains(&f)
    }

    pub fn validate(&self) -> Result<(), RadiomicsError> {
        let bad = |m: String| Err(RadiomicsError::Settings(m));
        if let Some(i) = &self.interpolation {
            if i.spacing.iter().any(|&s| !(s >= 0.0 && s.is_finite()))
                || i.spacing[0] == 0.0 && i.spacing[1] == 0.0 && i.spacing[2] == 0.0
            {
                return bad(format!(
                    "interpolation.spacing must be positive (0 = keep the image's spacing on that axis, not on all three), got {:?}",
                    i.spacing
                ));
            }
            if !(0.0..=1.0).contains(&i.mask_threshold) {
                return bad(format!(
                    "interpolation.mask_threshold {} is not in 0..1",
                    i.mask_threshold
                ));
            }
        }
        if let Some([lo, hi]) = self.resegmentation.range
            && lo > hi
        {
            return bad(format!("resegmentation.range [{lo}, {hi}] is empty"));
        }
        if let Some(s) = self.resegmentation.outlier_sigma
            && (s.is_nan() || s <= 0.0)
        {
            return bad(format!(
                "resegmentation.outlier_sigma must be positive, got {s}"
            ));
        }
        for d in [
            self.texture_discretisation,
            self.histogram_discretisation(),
            self.ivh_discretisation,
        ] {
            match d {
                Discretisation::FixedBinNumber { bins } if bins == 0 || bins > 65_535 => {
                    return bad(format!("fixed bin number {bins} is not in 1..65535"));
                }
                Discretisation::FixedBinSize { width, .. }
                    if !(width > 0.0 && width.is_finite()) =>
                {
                    return bad(format!("fixed bin size {width} must be positive"));
                }
                _ => {}
            }
        }
        if self.texture.distance == 0 {
            return bad("texture.distance must be at least 1".into());
        }
        Ok(())
    }
}

/// IBSI 2.4 interpolation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interpolation {
    /// New voxel spacing in mm (x, y, z); 0 keeps the image's own spacing on that axis, so
    /// `[1.0, 1.0, 0.0]` is the IBSI's 2D (in-plane) interpolation.
    pub spacing: [f64; 3],
    /// Image interpolation: nearest, linear or cubic (cubic B-spline).
    #[serde(default = "default_method")]
    pub method: InterpolationMethod,
    /// Round interpolated intensities to the nearest integer (IBSI: for CT, HU are integers).
    #[serde(default)]
    pub round_intensities: bool,
    /// A voxel is in the interpolated mask when the linearly interpolated mask is >= this.
    #[serde(default = "default_threshold")]
    pub mask_threshold: f64,
}

impl Interpolation {
    /// The spacing the new grid gets on an image with `image_spacing`.
    pub fn target_spacing(&self, image_spacing: [f64; 3]) -> [f64; 3] {
        std::array::from_fn(|k| {
            if self.spacing[k] > 0.0 {
                self.spacing[k]
            } else {
                image_spacing[k]
            }
        })
    }
}

fn default_method() -> InterpolationMethod {
    InterpolationMethod::Linear
}

fn default_threshold() -> f64 {
    0.5
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InterpolationMethod {
    Nearest,
    Linear,
    Cubic,
}

/// IBSI 2.5 re-segmentation: range first, then outliers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Resegmentation {
    /// Keep intensities within [lower, upper]; use -1e300 / 1e300 for an open side.
    pub range: Option<[f64; 2]>,
    /// Remove intensities beyond mean +- this many standard deviations.
    pub outlier_sigma: Option<f64>,
}

/// IBSI 2.7 discretisation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case", deny_unknown_fields)]
pub enum Discretisation {
    /// Ng equal bins between the ROI's minimum and maximum.
    FixedBinNumber { bins: u32 },
    /// Bins of `width` starting at `lower` (default: the re-segmentation lower bound, else the ROI minimum).
    FixedBinSize { width: f64, lower: Option<f64> },
    /// Intensities are already grey levels (whole numbers >= 1).
    None,
}

/// Texture matrix parameters (IBSI 3.6 - 3.11).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TextureSettings {
    /// Chebyshev distance for GLCM, NGTDM and NGLDM neighbourhoods.
    pub distance: u32,
    /// NGLDM coarseness parameter alpha (grey levels).
    pub ngldm_alpha: u32,
}

impl Default for TextureSettings {
    fn default() -> Self {
        TextureSettings {
            distance: 1,
            ngldm_alpha: 0,
        }
    }
}

/// The eleven IBSI 1 feature families.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    Morphology,
    LocalIntensity,
    Statistics,
    IntensityHistogram,
    IntensityVolumeHistogram,
    Glcm,
    Glrlm,
    Glszm,
    Gldzm,
    Ngtdm,
    Ngldm,
}

impl Family {
    pub const ALL: [Family; 11] = [
        Family::Morphology,
        Family::LocalIntensity,
        Family::Statistics,
        Family::IntensityHistogram,
        Family::IntensityVolumeHistogram,
        Family::Glcm,
        Family::Glrlm,
        Family::Glszm,
        Family::Gldzm,
        Family::Ngtdm,
        Family::Ngldm,
    ];

    /// The families computed from texture matrices of discretised grey levels.
    pub fn is_texture(self) -> bool {
        matches!(
            self,
            Family::Glcm
                | Family::Glrlm
                | Family::Glszm
                | Family::Gldzm
                | Family::Ngtdm
                | Family::Ngldm
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_round_trip_through_toml() {
        let s = RadiomicsSettings::default();
        let back = RadiomicsSettings::from_toml(&s.to_toml()).unwrap();
        assert_eq!(s, back);
    }

    #[test]
    fn partial_files_keep_other_defaults_and_typos_are_refused() {
        let s = RadiomicsSettings::from_toml(
            "[texture_discretisation]\nmethod = \"fixed_bin_size\"\nwidth = 25.0\n",
        )
        .unwrap();
        assert_eq!(
            s.texture_discretisation,
            Discretisation::FixedBinSize {
                width: 25.0,
                lower: None
            }
        );
        assert_eq!(s.families.len(), 11);
        let e = RadiomicsSettings::from_toml("[texture]\ndistanse = 2\n").unwrap_err();
        assert!(e.to_string().contains("distanse"), "{e}");
        let e = RadiomicsSettings::from_toml("[resegmentation]\nrange = [400.0, -1000.0]\n")
            .unwrap_err();
        assert!(e.to_string().contains("empty"), "{e}");
    }
}
