//! Shared fixtures for the de-identification tests.

use std::path::{Path, PathBuf};

use dicom_core::value::{DataSetSequence, PrimitiveValue};
use dicom_core::{DataElement, Length, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::meta::FileMetaTableBuilder;
use dicom_object::{FileDicomObject, InMemDicomObject};
use medfed_deid::{BatchReport, BatchRun, DeidOption, DeidProfile, Pseudonymizer, SiteKey};

/// `../shared/datasets/dicom_samples` of the checkout (or under `MEDFED_SHARED_DIR`), if
/// present; a missing folder is reported as a skip (a failure under CI).
pub fn dicom_samples() -> Option<PathBuf> {
    medfed_testkit::shared("datasets/dicom_samples")
}

/// The real files that PyPI's pydicom and pydicom-data ship (many vendors, every transfer
/// syntax, deliberately odd files among them), read in place from the test venv: the two
/// folders, each reported as a skip (a failure under CI) when missing.
pub fn pydicom_corpus() -> Vec<PathBuf> {
    ["pydicom/data/test_files", "data_store/data"]
        .into_iter()
        .filter_map(medfed_testkit::pyenv_package_dir)
        .collect()
}

/// Every file under `dir`, sorted.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = walkdir::WalkDir::new(dir)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .map(|e| e.into_path())
        .collect();
    files.sort();
    files
}

pub fn key() -> SiteKey {
    SiteKey::from_bytes(*b"medfed test site key, 32 bytes!!")
}

/// Runs a batch with a key stored in `keydir` (so the re-identification table lands there).
pub fn run_batch(
    input: &Path,
    output: &Path,
    keydir: &Path,
    options: &[DeidOption],
) -> BatchReport {
    let profile = DeidProfile::with_options(options.iter().copied()).unwrap();
    run_batch_with(input, output, keydir, &profile)
}

pub fn run_batch_with(
    input: &Path,
    output: &Path,
    keydir: &Path,
    profile: &DeidProfile,
) -> BatchReport {
    let key_path = keydir.join("site.key");
    if !key_path.exists() {
        std::fs::create_dir_all(keydir).unwrap();
        let hex: String = b"medfed test site key, 32 bytes!!"
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        std::fs::write(&key_path, hex).unwrap();
    }
    let pseudonymizer = Pseudonymizer::new(SiteKey::load(&key_path).unwrap());
    let run = BatchRun {
        profile,
        pseudonymizer: &pseudonymizer,
        jobs: 2,
    };
    run.run(input, output, &|_, _| {}).unwrap()
}

pub fn el(tag: Tag, vr: VR, value: impl Into<PrimitiveValue>) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, vr, value.into())
}

pub fn seq(tag: Tag, items: Vec<InMemDicomObject>) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::SQ, DataSetSequence::new(items, Length::UNDEFINED))
}

/// A small valid secondary-capture-free image object carrying `name` and `id`.
pub fn small_image(name: &str, id: &str, sop_uid: &str) -> InMemDicomObject {
    InMemDicomObject::from_element_iter([
        el(tags::SOP_CLASS_UID, VR::UI, uids::MR_IMAGE_STORAGE),
        el(tags::SOP_INSTANCE_UID, VR::UI, sop_uid),
        el(tags::STUDY_DATE, VR::DA, "20240105"),
        el(tags::MODALITY, VR::CS, "MR"),
        el(tags::PATIENT_NAME, VR::PN, name),
        el(tags::PATIENT_ID, VR::LO, id),
        el(tags::PATIENT_BIRTH_DATE, VR::DA, "19700101"),
        el(tags::STUDY_INSTANCE_UID, VR::UI, format!("{sop_uid}.1")),
        el(tags::SERIES_INSTANCE_UID, VR::UI, format!("{sop_uid}.2")),
        el(tags::ROWS, VR::US, 4u16),
        el(tags::COLUMNS, VR::US, 4u16),
        el(tags::BITS_ALLOCATED, VR::US, 16u16),
        el(tags::BITS_STORED, VR::US, 12u16),
        el(tags::HIGH_BIT, VR::US, 11u16),
        el(tags::PIXEL_REPRESENTATION, VR::US, 0u16),
        el(tags::SAMPLES_PER_PIXEL, VR::US, 1u16),
        el(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2"),
        el(
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::U16((0..16u16).map(|v| v * 100).collect()),
        ),
    ])
}

pub fn with_meta(ds: InMemDicomObject, ts: &str) -> FileDicomObject<InMemDicomObject> {
    let class = ds
        .get(tags::SOP_CLASS_UID)
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let inst = ds
        .get(tags::SOP_INSTANCE_UID)
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(class)
        .media_storage_sop_instance_uid(inst)
        .transfer_syntax(ts)
        .build()
        .unwrap();
    ds.with_exact_meta(meta)
}

pub fn write(obj: &FileDicomObject<InMemDicomObject>, path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    obj.write_to_file(path).unwrap();
}

/// Every file under `dir` whose bytes contain `needle`.
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .filter(|e| {
            let bytes = std::fs::read(e.path()).unwrap();
            memchr::memmem::find(&bytes, needle).is_some()
        })
        .map(|e| e.path().to_path_buf())
        .collect()
}

pub fn open(path: &Path) -> FileDicomObject<InMemDicomObject> {
    medfed_deid::read_object(&std::fs::read(path).unwrap()).unwrap()
}

pub fn text(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    Some(
        obj.get(tag)?
            .to_str()
            .ok()?
            .trim_end_matches(['\0', ' '])
            .to_string(),
    )
}
