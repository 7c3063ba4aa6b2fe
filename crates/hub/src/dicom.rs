//! What the hub reads from a DICOM instance: the pseudonymised attributes it indexes, and the
//! check that the instance was de-identified at the site (the hub accepts nothing else).

use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, OpenFileOptions};
use medfed_catalogue::InstanceEntry;

fn text(obj: &DefaultDicomObject, tag: dicom_core::Tag) -> String {
    obj.element_opt(tag)
        .ok()
        .flatten()
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_end_matches(['\0', ' ']).to_string())
        .unwrap_or_default()
}

fn is_uid(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

/// Parse an instance and return its index row; refuses instances that are not DICOM, lack
/// their UIDs, or do not declare Patient Identity Removed = YES.
pub fn index_entry(bytes: &[u8], dataset: &str, object: &str) -> Result<InstanceEntry, String> {
    let obj = OpenFileOptions::new()
        .from_reader(bytes)
        .map_err(|e| format!("not a readable DICOM instance: {e}"))?;
    if !text(&obj, tags::PATIENT_IDENTITY_REMOVED).eq_ignore_ascii_case("YES") {
        return Err(
            "not de-identified: Patient Identity Removed (0012,0062) is not YES; the hub stores de-identified data only"
                .into(),
        );
    }
    let e = InstanceEntry {
        dataset: dataset.to_string(),
        object: object.to_string(),
        study_uid: text(&obj, tags::STUDY_INSTANCE_UID),
        series_uid: text(&obj, tags::SERIES_INSTANCE_UID),
        sop_uid: text(&obj, tags::SOP_INSTANCE_UID),
        sop_class_uid: text(&obj, tags::SOP_CLASS_UID),
        modality: text(&obj, tags::MODALITY),
        patient_id: text(&obj, tags::PATIENT_ID),
        patient_name: text(&obj, tags::PATIENT_NAME),
        study_date: text(&obj, tags::STUDY_DATE),
        series_number: text(&obj, tags::SERIES_NUMBER),
        instance_number: text(&obj, tags::INSTANCE_NUMBER),
    };
    for (what, uid) in [
        ("Study Instance UID", &e.study_uid),
        ("Series Instance UID", &e.series_uid),
        ("SOP Instance UID", &e.sop_uid),
        ("SOP Class UID", &e.sop_class_uid),
    ] {
        if !is_uid(uid) {
            return Err(format!("{what} missing or not a valid UID"));
        }
    }
    Ok(e)
}
