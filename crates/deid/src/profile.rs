//! De-identification options (PS3.15 E.3) and the site's profile file.

use std::path::Path;

use serde::Deserialize;

use crate::error::DeidError;
use crate::pixels::PixelSignature;

/// One option of the Basic Application Level Confidentiality Profile (PS3.15 E.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeidOption {
    RetainSafePrivate,
    RetainUids,
    RetainDeviceIdentity,
    RetainInstitutionIdentity,
    RetainPatientCharacteristics,
    RetainLongFullDates,
    RetainLongModifiedDates,
    CleanDescriptors,
    CleanStructuredContent,
    CleanGraphics,
    CleanPixelData,
}

impl DeidOption {
    /// Every option, in CLI order.
    pub const ALL: [DeidOption; 11] = [
        Self::RetainSafePrivate,
        Self::RetainUids,
        Self::RetainDeviceIdentity,
        Self::RetainInstitutionIdentity,
        Self::RetainPatientCharacteristics,
        Self::RetainLongFullDates,
        Self::RetainLongModifiedDates,
        Self::CleanDescriptors,
        Self::CleanStructuredContent,
        Self::CleanGraphics,
        Self::CleanPixelData,
    ];

    /// The option's name on the command line and in profile files.
    pub fn name(self) -> &'static str {
        match self {
            Self::RetainSafePrivate => "retain-safe-private",
            Self::RetainUids => "retain-uids",
            Self::RetainDeviceIdentity => "retain-device-identity",
            Self::RetainInstitutionIdentity => "retain-institution-identity",
            Self::RetainPatientCharacteristics => "retain-patient-characteristics",
            Self::RetainLongFullDates => "retain-long-full-dates",
            Self::RetainLongModifiedDates => "retain-long-modified-dates",
            Self::CleanDescriptors => "clean-descriptors",
            Self::CleanStructuredContent => "clean-structured-content",
            Self::CleanGraphics => "clean-graphics",
            Self::CleanPixelData => "clean-pixel-data",
        }
    }

    /// Parses a CLI / profile option name.
    pub fn from_name(name: &str) -> Result<Self, DeidError> {
        Self::ALL
            .into_iter()
            .find(|o| o.name() == name)
            .ok_or_else(|| DeidError::UnknownOption(name.to_string()))
    }

    /// The option's code in CID 7050 (De-identification Method), scheme DCM.
    pub fn cid7050(self) -> (&'static str, &'static str) {
        match self {
            Self::CleanPixelData => ("113101", "Clean Pixel Data Option"),
            Self::CleanGraphics => ("113103", "Clean Graphics Option"),
            Self::CleanStructuredContent => ("113104", "Clean Structured Content Option"),
            Self::CleanDescriptors => ("113105", "Clean Descriptors Option"),
            Self::RetainLongFullDates => (
                "113106",
                "Retain Longitudinal Temporal Information Full Dates Option",
            ),
            Self::RetainLongModifiedDates => (
                "113107",
                "Retain Longitudinal Temporal Information Modified Dates Option",
            ),
            Self::RetainPatientCharacteristics => {
                ("113108", "Retain Patient Characteristics Option")
            }
            Self::RetainDeviceIdentity => ("113109", "Retain Device Identity Option"),
            Self::RetainUids => ("113110", "Retain UIDs Option"),
            Self::RetainSafePrivate => ("113111", "Retain Safe Private Option"),
            Self::RetainInstitutionIdentity => ("113112", "Retain Institution Identity Option"),
        }
    }
}

/// The CID 7050 code of the Basic Application Confidentiality Profile itself.
pub const BASIC_PROFILE_CODE: (&str, &str) =
    ("113100", "Basic Application Confidentiality Profile");

/// A private attribute the site has certified as safe to keep under retain-safe-private
/// (PS3.15 E.3.10: the private creator and the element's low byte within its block).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SafePrivateAttribute {
    pub creator: String,
    pub group: u16,
    pub element: u8,
}

/// The settings of one de-identification run: options, safe private attributes and the
/// pixel signature table. Built from CLI flags and an optional TOML profile file.
#[derive(Debug, Clone, Default)]
pub struct DeidProfile {
    options: Vec<DeidOption>,
    pub safe_private: Vec<SafePrivateAttribute>,
    pub pixel_signatures: Vec<PixelSignature>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileFile {
    #[serde(default)]
    options: Vec<String>,
    #[serde(default)]
    safe_private: Vec<SafePrivateAttribute>,
    #[serde(default)]
    pixel_signature: Vec<PixelSignature>,
}

impl DeidProfile {
    /// A profile with the given options; checks that they can be combined.
    pub fn with_options(options: impl IntoIterator<Item = DeidOption>) -> Result<Self, DeidError> {
        let mut profile = Self::default();
        for o in options {
            profile.add_option(o)?;
        }
        Ok(profile)
    }

    /// Reads a profile TOML file (see `docs/deid-profile.md`).
    pub fn from_toml_file(path: &Path) -> Result<Self, DeidError> {
        let text = std::fs::read_to_string(path).map_err(|e| DeidError::io(path, e))?;
        Self::from_toml_str(&text).map_err(|e| match e {
            DeidError::Profile { message, .. } => DeidError::Profile {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })
    }

    /// Parses a profile from TOML text.
    pub fn from_toml_str(text: &str) -> Result<Self, DeidError> {
        let file: ProfileFile = toml::from_str(text).map_err(|e| DeidError::Profile {
            path: "<profile>".into(),
            message: e.to_string(),
        })?;
        let mut profile = Self {
            safe_private: file.safe_private,
            pixel_signatures: file.pixel_signature,
            ..Self::default()
        };
        for name in &file.options {
            profile.add_option(DeidOption::from_name(name)?)?;
        }
        for sig in &profile.pixel_signatures {
            sig.validate().map_err(|message| DeidError::Profile {
                path: "<profile>".into(),
                message,
            })?;
        }
        Ok(profile)
    }

    /// Enables one more option.
    pub fn add_option(&mut self, option: DeidOption) -> Result<(), DeidError> {
        use DeidOption::*;
        let conflict = match option {
            RetainLongFullDates => Some(RetainLongModifiedDates),
            RetainLongModifiedDates => Some(RetainLongFullDates),
            _ => None,
        };
        if let Some(other) = conflict
            && self.options.contains(&other)
        {
            return Err(DeidError::ConflictingOptions(option.name(), other.name()));
        }
        if !self.options.contains(&option) {
            self.options.push(option);
            self.options.sort();
        }
        Ok(())
    }

    /// The enabled options, sorted.
    pub fn options(&self) -> &[DeidOption] {
        &self.options
    }

    pub fn has(&self, option: DeidOption) -> bool {
        self.options.contains(&option)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_names_round_trip_and_conflicts_are_refused() {
        for o in DeidOption::ALL {
            assert_eq!(DeidOption::from_name(o.name()).unwrap(), o);
        }
        assert!(DeidOption::from_name("retain-everything").is_err());
        let err = DeidProfile::with_options([
            DeidOption::RetainLongFullDates,
            DeidOption::RetainLongModifiedDates,
        ]);
        assert!(matches!(err, Err(DeidError::ConflictingOptions(..))));
    }

    #[test]
    fn profile_toml_parses_options_safe_private_and_signatures() {
        let p = DeidProfile::from_toml_str(
            r#"
options = ["clean-descriptors", "retain-safe-private"]
[[safe_private]]
creator = "ACME 1.0"
group = 0x0009
element = 0x10
[[pixel_signature]]
modality = "US"
manufacturer = "ACME"
rows = 480
columns = 640
rectangles = [[0, 0, 640, 40]]
"#,
        )
        .unwrap();
        assert!(p.has(DeidOption::CleanDescriptors));
        assert_eq!(p.safe_private[0].group, 9);
        assert_eq!(p.pixel_signatures[0].rectangles[0].width, 640);
        let bad = DeidProfile::from_toml_str("options = [\"nope\"]");
        assert!(bad.is_err());
        let outside = DeidProfile::from_toml_str(
            "[[pixel_signature]]\nmodality=\"US\"\nmanufacturer=\"A\"\nrows=10\ncolumns=10\nrectangles=[[5,5,10,1]]",
        );
        assert!(
            outside.is_err(),
            "a rectangle outside the frame is a profile error"
        );
    }
}
