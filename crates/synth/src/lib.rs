//! Synthetic DICOM studies for the demo, the tests and the benchmarks: several patients, each
//! with CT studies whose headers carry identifying values in every place real objects do
//! (standard tags, free text, nested sequences, private blocks, names in non-Latin character
//! sets), and whose pixels hold a body phantom with a lesion.
//!
//! Every identifying value planted is returned, encoded as it appears in the file, so a test
//! can scan output bytes for it.

pub mod burned_in;
pub mod chest;

use std::path::{Path, PathBuf};

use dicom_core::value::{DataSetSequence, PrimitiveValue};
use dicom_core::{DataElement, Length, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_encoding::text::{SpecificCharacterSet, TextCodec};
use dicom_object::meta::FileMetaTableBuilder;
use dicom_object::{FileDicomObject, InMemDicomObject};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Errors while generating a synthetic set.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot encode {path}: {message}")]
    Encode { path: PathBuf, message: String },
}

/// The private creator of the synthetic private block.
pub const PRIVATE_CREATOR: &str = "MEDFED SYNTH 1.0";
/// The UID root of synthetic objects (a UUID-derived arc reserved for them).
const UID_ROOT: &str = "2.25.3300190725301962887240";

/// How large a set to make.
#[derive(Debug, Clone)]
pub struct SynthConfig {
    pub patients: usize,
    pub studies_per_patient: usize,
    pub series_per_study: usize,
    pub slices_per_series: usize,
    pub rows: u16,
    pub columns: u16,
    pub seed: u64,
}

impl Default for SynthConfig {
    /// The demo's set: 5 patients (one per character set), 2 studies each, 2 series of 12
    /// slices of 64 x 64: 240 files.
    fn default() -> Self {
        Self {
            patients: 5,
            studies_per_patient: 2,
            series_per_study: 2,
            slices_per_series: 12,
            rows: 64,
            columns: 64,
            seed: 20261126,
        }
    }
}

/// One synthetic patient's identity and the character set it is written in.
#[derive(Debug, Clone)]
pub struct SyntheticPatient {
    pub charset: &'static str,
    pub name: String,
    pub patient_id: String,
    pub birth_date: String,
    /// Every identifying value planted for this patient, as the bytes written to the file.
    pub planted: Vec<Vec<u8>>,
}

/// Where a lesion sits in a series, in voxel indices (for radiomics tests and the demo).
#[derive(Debug, Clone, Copy)]
pub struct Lesion {
    pub center: [f64; 3],
    pub radius: f64,
    pub hu: i32,
}

/// The result of [`generate`].
#[derive(Debug, Clone)]
pub struct SynthSet {
    pub files: Vec<PathBuf>,
    pub bytes: u64,
    pub patients: Vec<SyntheticPatient>,
    /// Every original study, series, frame-of-reference and instance UID.
    pub original_uids: Vec<String>,
}

/// Identifying values of the site and its staff, the same in every synthetic object.
pub const SITE_PLANTED: [&str; 12] = [
    INSTITUTION,
    "Hauptstrasse 12",
    "Oberarzt",
    "Friedhelm",
    "Radiographer",
    "Kunigunde",
    STATION,
    "SN-CTNORD-000731",
    "Lindenweg 7",
    "+49301234567",
    "CTNORD7",
    "SPS-4711",
];

impl SynthSet {
    /// Every planted identifying value: each patient's, the site's and every original UID.
    pub fn planted(&self) -> Vec<Vec<u8>> {
        let mut all: Vec<Vec<u8>> = self
            .patients
            .iter()
            .flat_map(|p| p.planted.iter().cloned())
            .collect();
        all.extend(SITE_PLANTED.iter().map(|s| s.as_bytes().to_vec()));
        all.extend(self.original_uids.iter().map(|u| u.as_bytes().to_vec()));
        all
    }
}

/// Names in the character sets that de-identifiers mishandle, with the escape-sequence
/// (ISO 2022) case written byte for byte as PS3.5 Annex H shows it.
fn patient_identity(index: usize, rng: &mut StdRng) -> (&'static str, String, Vec<String>) {
    match index % 5 {
        0 => ("ISO_IR 100", "Müller-Lüdenscheidt^Jürgen".into(), vec!["Müller-Lüdenscheidt".into(), "Jürgen".into()]),
        1 => ("ISO_IR 126", "Παπαδόπουλος^Νικόλαος".into(), vec!["Παπαδόπουλος".into(), "Νικόλαος".into()]),
        // Yamada^Tarou=山田^太郎=やまだ^たろう in ISO 2022 IR 87. The default repertoire is the
        // first value, so the name is written as raw bytes (Latin-1 maps them one to one).
        2 => (
            "\\ISO 2022 IR 87",
            "Yamadaya^Tarouemon=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B=\x1b$B$d$^$@\x1b(B^\x1b$B$?$m$&\x1b(B".into(),
            vec!["Yamadaya".into(), "Tarouemon".into(), "\x1b$B;3ED".into(), "\x1b$BB@O:".into()],
        ),
        3 => ("ISO_IR 192", "王^小明=王^小明".into(), vec!["王^小明".into()]),
        _ => {
            let n = rng.random_range(100..999);
            ("ISO_IR 144", format!("Иванов{n}^Иван"), vec![format!("Иванов{n}")])
        }
    }
}

fn encode(charset: &str, text: &str) -> Vec<u8> {
    if charset.starts_with('\\') {
        // Default repertoire first: raw bytes through Latin-1.
        return text.chars().map(|c| c as u32 as u8).collect();
    }
    SpecificCharacterSet::from_code(charset)
        .and_then(|cs| cs.encode(text).ok())
        .unwrap_or_else(|| text.as_bytes().to_vec())
}

/// Generates a set under `out` (created if needed): `Pnnn/STnn/SEnn/IMnnnn.dcm`. Folder and
/// file names carry no identifying value.
pub fn generate(out: &Path, cfg: &SynthConfig) -> Result<SynthSet, SynthError> {
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let mut set = SynthSet {
        files: Vec::new(),
        bytes: 0,
        patients: Vec::new(),
        original_uids: Vec::new(),
    };
    for p in 0..cfg.patients {
        let mut patient = make_patient(p, &mut rng);
        for st in 0..cfg.studies_per_patient {
            let study = StudyIds::new(&mut rng, p, st);
            patient.planted.push(study.accession.clone().into_bytes());
            set.original_uids.push(study.study_uid.clone());
            for se in 0..cfg.series_per_study {
                let series_uid = fresh_uid(&mut rng);
                let frame_uid = fresh_uid(&mut rng);
                let sop_uids: Vec<String> = (0..cfg.slices_per_series)
                    .map(|_| fresh_uid(&mut rng))
                    .collect();
                set.original_uids
                    .extend([series_uid.clone(), frame_uid.clone()]);
                set.original_uids.extend(sop_uids.iter().cloned());
                for (k, sop_uid) in sop_uids.iter().enumerate() {
                    let slice = SliceSpec {
                        study: &study,
                        series_uid: &series_uid,
                        series_number: se as i32 + 1,
                        frame_uid: &frame_uid,
                        sop_uid,
                        previous_sop_uid: k.checked_sub(1).map(|j| sop_uids[j].as_str()),
                        index: k,
                        rows: cfg.rows,
                        columns: cfg.columns,
                        lesion: lesion_for(cfg, st),
                    };
                    let obj = ct_slice(&patient, &slice, &mut rng);
                    let dir = out.join(format!("P{p:03}/ST{st:02}/SE{se:02}"));
                    let path = dir.join(format!("IM{:04}.dcm", k + 1));
                    std::fs::create_dir_all(&dir).map_err(|source| SynthError::Io {
                        path: dir.clone(),
                        source,
                    })?;
                    obj.write_to_file(&path).map_err(|e| SynthError::Encode {
                        path: path.clone(),
                        message: e.to_string(),
                    })?;
                    set.bytes += std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                    set.files.push(path);
                }
            }
        }
        set.patients.push(patient);
    }
    Ok(set)
}

/// The lesion of a study's series, in voxel coordinates (column, row, slice).
pub fn lesion_for(cfg: &SynthConfig, study: usize) -> Lesion {
    let (c, r, s) = (
        f64::from(cfg.columns),
        f64::from(cfg.rows),
        cfg.slices_per_series as f64,
    );
    Lesion {
        center: [c * 0.55, r * 0.45, (s - 1.0) / 2.0],
        radius: (c.min(r) * (0.10 + 0.03 * study as f64))
            .min(s * 0.45)
            .max(1.5),
        hu: 40 + 20 * study as i32,
    }
}

/// A synthetic patient with fresh identifying values.
pub fn make_patient(index: usize, rng: &mut StdRng) -> SyntheticPatient {
    let (charset, name, name_parts) = patient_identity(index, rng);
    let patient_id = format!("PID{:08}", rng.random_range(10_000_000..99_999_999u32));
    let birth_date = format!(
        "19{:02}{:02}{:02}",
        rng.random_range(30..99),
        rng.random_range(1..=12),
        rng.random_range(1..=28)
    );
    let mut planted: Vec<Vec<u8>> = name_parts.iter().map(|n| encode(charset, n)).collect();
    planted.push(patient_id.clone().into_bytes());
    planted.push(birth_date.clone().into_bytes());
    SyntheticPatient {
        charset,
        name,
        patient_id,
        birth_date,
        planted,
    }
}

/// UIDs and values shared by every object of one study.
pub struct StudyIds {
    pub study_uid: String,
    pub accession: String,
    pub date: String,
}

impl StudyIds {
    pub fn new(rng: &mut StdRng, patient: usize, study: usize) -> Self {
        Self {
            study_uid: fresh_uid(rng),
            accession: format!(
                "ACC{patient:02}{study:02}{:06}",
                rng.random_range(0..999_999u32)
            ),
            date: format!(
                "20{:02}{:02}{:02}",
                18 + study,
                rng.random_range(1..=12),
                rng.random_range(1..=28)
            ),
        }
    }
}

/// Where one slice sits in its series.
pub struct SliceSpec<'a> {
    pub study: &'a StudyIds,
    pub series_uid: &'a str,
    pub series_number: i32,
    pub frame_uid: &'a str,
    pub sop_uid: &'a str,
    pub previous_sop_uid: Option<&'a str>,
    pub index: usize,
    pub rows: u16,
    pub columns: u16,
    pub lesion: Lesion,
}

pub fn fresh_uid(rng: &mut StdRng) -> String {
    format!("{UID_ROOT}.{}", rng.random_range(1..u64::MAX))
}

fn el(tag: Tag, vr: VR, value: impl Into<PrimitiveValue>) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, vr, value.into())
}

fn strs(values: &[&str]) -> PrimitiveValue {
    PrimitiveValue::Strs(values.iter().map(|v| v.to_string()).collect())
}

fn seq(tag: Tag, items: Vec<InMemDicomObject>) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::SQ, DataSetSequence::new(items, Length::UNDEFINED))
}

/// The staff and site values, the same for every object.
pub const INSTITUTION: &str = "Sankt Elsewhere Klinikum Nord";
pub const REFERRING_PHYSICIAN: &str = "Oberarzt^Friedhelm^^Dr.";
pub const OPERATOR: &str = "Radiographer^Kunigunde";
pub const STATION: &str = "CTNORD-SCANNER-7";

/// One CT slice with identifying values everywhere a real one may have them.
pub fn ct_slice(
    patient: &SyntheticPatient,
    s: &SliceSpec<'_>,
    rng: &mut StdRng,
) -> FileDicomObject<InMemDicomObject> {
    let p = patient;
    let study = s.study;
    let z = s.index as f64 * 2.5;
    let mut obj = InMemDicomObject::from_element_iter([
        el(tags::SPECIFIC_CHARACTER_SET, VR::CS, p.charset),
        el(
            tags::IMAGE_TYPE,
            VR::CS,
            strs(&["ORIGINAL", "PRIMARY", "AXIAL"]),
        ),
        el(tags::INSTANCE_CREATION_DATE, VR::DA, study.date.as_str()),
        el(tags::SOP_CLASS_UID, VR::UI, uids::CT_IMAGE_STORAGE),
        el(tags::SOP_INSTANCE_UID, VR::UI, s.sop_uid),
        el(tags::STUDY_DATE, VR::DA, study.date.as_str()),
        el(tags::SERIES_DATE, VR::DA, study.date.as_str()),
        el(tags::ACQUISITION_DATE, VR::DA, study.date.as_str()),
        el(tags::CONTENT_DATE, VR::DA, study.date.as_str()),
        el(tags::STUDY_TIME, VR::TM, "101500"),
        el(tags::SERIES_TIME, VR::TM, "102000"),
        el(tags::CONTENT_TIME, VR::TM, "102005"),
        el(tags::ACCESSION_NUMBER, VR::SH, study.accession.as_str()),
        el(tags::MODALITY, VR::CS, "CT"),
        el(tags::MANUFACTURER, VR::LO, "MEDFED SYNTHETIC"),
        el(tags::INSTITUTION_NAME, VR::LO, INSTITUTION),
        el(
            tags::INSTITUTION_ADDRESS,
            VR::ST,
            "Hauptstrasse 12, 12345 Nordstadt",
        ),
        el(tags::REFERRING_PHYSICIAN_NAME, VR::PN, REFERRING_PHYSICIAN),
        el(tags::STATION_NAME, VR::SH, STATION),
        el(
            tags::STUDY_DESCRIPTION,
            VR::LO,
            format!("CT THORAX {} FOLLOW-UP", p.patient_id),
        ),
        el(tags::SERIES_DESCRIPTION, VR::LO, "AXIAL 2.5MM"),
        el(tags::OPERATORS_NAME, VR::PN, OPERATOR),
        el(tags::MANUFACTURER_MODEL_NAME, VR::LO, "SYNTH-CT 64"),
        el(tags::PATIENT_NAME, VR::PN, p.name.as_str()),
        el(tags::PATIENT_ID, VR::LO, p.patient_id.as_str()),
        el(tags::PATIENT_BIRTH_DATE, VR::DA, p.birth_date.as_str()),
        el(
            tags::PATIENT_SEX,
            VR::CS,
            if p.patient_id.ends_with(['0', '2', '4', '6', '8']) {
                "F"
            } else {
                "M"
            },
        ),
        el(tags::PATIENT_AGE, VR::AS, "057Y"),
        el(
            tags::PATIENT_ADDRESS,
            VR::LO,
            "Lindenweg 7, 12345 Nordstadt",
        ),
        el(tags::PATIENT_TELEPHONE_NUMBERS, VR::SH, "+49301234567"),
        el(
            tags::ADDITIONAL_PATIENT_HISTORY,
            VR::LT,
            format!("Pt {} (born {}) referred after fall", p.name, p.birth_date),
        ),
        el(tags::SLICE_THICKNESS, VR::DS, "2.5"),
        el(tags::KVP, VR::DS, "120"),
        el(tags::DEVICE_SERIAL_NUMBER, VR::LO, "SN-CTNORD-000731"),
        el(tags::PATIENT_POSITION, VR::CS, "HFS"),
        el(tags::STUDY_INSTANCE_UID, VR::UI, study.study_uid.as_str()),
        el(tags::SERIES_INSTANCE_UID, VR::UI, s.series_uid),
        el(tags::STUDY_ID, VR::SH, "4711"),
        el(tags::SERIES_NUMBER, VR::IS, s.series_number.to_string()),
        el(tags::INSTANCE_NUMBER, VR::IS, (s.index + 1).to_string()),
        el(
            tags::IMAGE_POSITION_PATIENT,
            VR::DS,
            strs(&["-25.6", "-25.6", &format!("{z:.1}")]),
        ),
        el(
            tags::IMAGE_ORIENTATION_PATIENT,
            VR::DS,
            strs(&["1", "0", "0", "0", "1", "0"]),
        ),
        el(tags::FRAME_OF_REFERENCE_UID, VR::UI, s.frame_uid),
        el(tags::POSITION_REFERENCE_INDICATOR, VR::LO, ""),
        el(tags::SLICE_LOCATION, VR::DS, format!("{z:.1}")),
        el(
            tags::IMAGE_COMMENTS,
            VR::LT,
            format!("{} moved during scan, MRN {}", p.name, p.patient_id),
        ),
        el(tags::SAMPLES_PER_PIXEL, VR::US, 1u16),
        el(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2"),
        el(tags::ROWS, VR::US, s.rows),
        el(tags::COLUMNS, VR::US, s.columns),
        el(tags::PIXEL_SPACING, VR::DS, strs(&["0.8", "0.8"])),
        el(tags::BITS_ALLOCATED, VR::US, 16u16),
        el(tags::BITS_STORED, VR::US, 16u16),
        el(tags::HIGH_BIT, VR::US, 15u16),
        el(tags::PIXEL_REPRESENTATION, VR::US, 1u16),
        el(tags::BURNED_IN_ANNOTATION, VR::CS, "NO"),
        el(tags::WINDOW_CENTER, VR::DS, "40"),
        el(tags::WINDOW_WIDTH, VR::DS, "400"),
        el(tags::RESCALE_INTERCEPT, VR::DS, "0"),
        el(tags::RESCALE_SLOPE, VR::DS, "1"),
        el(tags::RESCALE_TYPE, VR::LO, "HU"),
    ]);
    // Nested: the patient's other IDs, three levels deep.
    let issuer = InMemDicomObject::from_element_iter([el(
        tags::UNIVERSAL_ENTITY_ID,
        VR::UT,
        format!("urn:oid:1.2.3.{}", p.patient_id),
    )]);
    obj.put(seq(
        tags::OTHER_PATIENT_I_DS_SEQUENCE,
        vec![InMemDicomObject::from_element_iter([
            el(tags::PATIENT_ID, VR::LO, format!("{}-B", p.patient_id)),
            el(tags::TYPE_OF_PATIENT_ID, VR::CS, "TEXT"),
            seq(tags::ISSUER_OF_PATIENT_ID_QUALIFIERS_SEQUENCE, vec![issuer]),
        ])],
    ));
    // Nested: the order, with free text and a reference to the study.
    obj.put(seq(
        tags::REQUEST_ATTRIBUTES_SEQUENCE,
        vec![InMemDicomObject::from_element_iter([
            el(
                tags::REQUESTED_PROCEDURE_ID,
                VR::SH,
                study.accession.as_str(),
            ),
            el(tags::SCHEDULED_PROCEDURE_STEP_ID, VR::SH, "SPS-4711"),
            el(
                tags::REQUESTED_PROCEDURE_DESCRIPTION,
                VR::LO,
                format!("CT for {}", p.name),
            ),
            seq(
                tags::REFERENCED_STUDY_SEQUENCE,
                vec![InMemDicomObject::from_element_iter([
                    el(
                        tags::REFERENCED_SOP_CLASS_UID,
                        VR::UI,
                        "1.2.840.10008.3.1.2.3.1",
                    ),
                    el(
                        tags::REFERENCED_SOP_INSTANCE_UID,
                        VR::UI,
                        study.study_uid.as_str(),
                    ),
                ])],
            ),
        ])],
    ));
    if let Some(prev) = s.previous_sop_uid {
        obj.put(seq(
            tags::REFERENCED_IMAGE_SEQUENCE,
            vec![InMemDicomObject::from_element_iter([
                el(
                    tags::REFERENCED_SOP_CLASS_UID,
                    VR::UI,
                    uids::CT_IMAGE_STORAGE,
                ),
                el(tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, prev),
            ])],
        ));
    }
    // A vendor's private block: identifying text and a private sequence.
    obj.put(el(Tag(0x0009, 0x0010), VR::LO, PRIVATE_CREATOR));
    obj.put(el(
        Tag(0x0009, 0x1001),
        VR::LO,
        format!("{} {}", p.patient_id, p.birth_date),
    ));
    obj.put(seq(
        Tag(0x0009, 0x1002),
        vec![InMemDicomObject::from_element_iter([el(
            tags::PATIENT_NAME,
            VR::PN,
            p.name.as_str(),
        )])],
    ));
    obj.put(el(Tag(0x0009, 0x1003), VR::DS, "1.5"));
    obj.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OW,
        PrimitiveValue::U16(ct_pixels(s, rng).into()),
    ));

    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(uids::CT_IMAGE_STORAGE)
        .media_storage_sop_instance_uid(s.sop_uid)
        .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
        .source_application_entity_title("CTNORD7")
        .build()
        .expect("complete meta group");
    obj.with_exact_meta(meta)
}

/// A body phantom: air, a water ellipse with noise, and a brighter spherical lesion. Values
/// are HU (slope 1, intercept 0), signed 16-bit.
fn ct_pixels(s: &SliceSpec<'_>, rng: &mut StdRng) -> Vec<u16> {
    let (rows, cols) = (usize::from(s.rows), usize::from(s.columns));
    let mut px = Vec::with_capacity(rows * cols);
    let (cx, cy) = (cols as f64 / 2.0, rows as f64 / 2.0);
    let l = s.lesion;
    for y in 0..rows {
        for x in 0..cols {
            let (dx, dy) = (
                (x as f64 - cx) / (cols as f64 * 0.42),
                (y as f64 - cy) / (rows as f64 * 0.36),
            );
            let inside = dx * dx + dy * dy <= 1.0;
            let d2 = (x as f64 - l.center[0]).powi(2)
                + (y as f64 - l.center[1]).powi(2)
                + (s.index as f64 - l.center[2]).powi(2);
            let hu: i32 = if !inside {
                -1000 + rng.random_range(-5..=5)
            } else if d2 <= l.radius * l.radius {
                l.hu + rng.random_range(-15..=15) + ((x + y) % 7) as i32
            } else {
                rng.random_range(-12..=12)
            };
            px.push(hu as i16 as u16);
        }
    }
    px
}
