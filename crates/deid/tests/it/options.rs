//! The options of PS3.15 E.3 change exactly what they say.

use dicom_core::{Tag, VR};
use dicom_dictionary_std::{tags, uids};
use medfed_deid::{DeidOption, DeidProfile, SafePrivateAttribute};

use crate::support::*;

fn rich_image() -> dicom_object::InMemDicomObject {
    let mut ds = small_image(
        "Quintessa^Amaryllis",
        "PIDQ-555",
        "1.2.826.0.1.3680043.77.1",
    );
    for e in [
        el(tags::STATION_NAME, VR::SH, "CT-NORTH-9"),
        el(tags::DEVICE_SERIAL_NUMBER, VR::LO, "SERIAL-7781"),
        el(tags::INSTITUTION_NAME, VR::LO, "Hospital Quintessa"),
        el(tags::PATIENT_SEX, VR::CS, "F"),
        el(tags::PATIENT_AGE, VR::AS, "044Y"),
        el(tags::PATIENT_WEIGHT, VR::DS, "71.5"),
        el(
            tags::STUDY_DESCRIPTION,
            VR::LO,
            "MR HEAD PIDQ-555 QUINTESSA",
        ),
        el(tags::IMAGE_COMMENTS, VR::LT, "follow-up for Amaryllis"),
        el(tags::RETRIEVE_AE_TITLE, VR::AE, "PACS_MAIN"),
        el(Tag(0x0019, 0x0010), VR::LO, "ACME 1.0"),
        el(Tag(0x0019, 0x1005), VR::DS, "3.25"),
        el(Tag(0x0019, 0x1006), VR::LO, "Quintessa private"),
    ] {
        ds.put(e);
    }
    ds
}

fn run(
    options: &[DeidOption],
    profile: Option<DeidProfile>,
) -> dicom_object::FileDicomObject<dicom_object::InMemDicomObject> {
    let tmp = tempfile::tempdir().unwrap();
    write(
        &with_meta(rich_image(), uids::EXPLICIT_VR_LITTLE_ENDIAN),
        &tmp.path().join("in/x.dcm"),
    );
    let mut profile = profile.unwrap_or_default();
    for o in options {
        profile.add_option(*o).unwrap();
    }
    let report = run_batch_with(
        &tmp.path().join("in"),
        &tmp.path().join("out"),
        &tmp.path().join("key"),
        &profile,
    );
    assert_eq!(report.files_ok, 1, "{:?}", report.files);
    open(&tmp.path().join("out/x.dcm"))
}

#[test]
fn basic_profile_removes_or_replaces_everything_listed() {
    let out = run(&[], None);
    assert_ne!(
        text(&out, tags::SOP_INSTANCE_UID).unwrap(),
        "1.2.826.0.1.3680043.77.1"
    );
    assert!(
        text(&out, tags::SOP_INSTANCE_UID)
            .unwrap()
            .starts_with("2.25.")
    );
    assert_eq!(
        text(&out, tags::SOP_CLASS_UID).as_deref(),
        Some(uids::MR_IMAGE_STORAGE),
        "Type 1 class kept"
    );
    // Study Description is X but Type 2 where any module has it: emptied, not removed.
    assert!(out.get(tags::STUDY_DESCRIPTION).is_some_and(|e| {
        e.value()
            .primitive()
            .is_none_or(|v| v.to_str().trim().is_empty())
    }));
    assert!(out.get(tags::IMAGE_COMMENTS).is_none());
    assert!(out.get(tags::PATIENT_AGE).is_none() && out.get(tags::PATIENT_WEIGHT).is_none());
    assert_eq!(text(&out, tags::PATIENT_SEX).as_deref(), Some(""));
    assert_eq!(text(&out, tags::STUDY_DATE).as_deref(), Some(""));
    assert!(out.get(Tag(0x0019, 0x1005)).is_none() && out.get(Tag(0x0019, 0x0010)).is_none());
    assert!(out.get(tags::RETRIEVE_AE_TITLE).is_none());
}

#[test]
fn retain_options_keep_their_attributes() {
    let out = run(
        &[
            DeidOption::RetainUids,
            DeidOption::RetainDeviceIdentity,
            DeidOption::RetainInstitutionIdentity,
            DeidOption::RetainPatientCharacteristics,
            DeidOption::RetainLongFullDates,
        ],
        None,
    );
    assert_eq!(
        text(&out, tags::SOP_INSTANCE_UID).as_deref(),
        Some("1.2.826.0.1.3680043.77.1")
    );
    assert_eq!(
        text(&out, tags::STATION_NAME).as_deref(),
        Some("CT-NORTH-9")
    );
    assert_eq!(
        text(&out, tags::DEVICE_SERIAL_NUMBER).as_deref(),
        Some("SERIAL-7781")
    );
    assert_eq!(
        text(&out, tags::INSTITUTION_NAME).as_deref(),
        Some("Hospital Quintessa")
    );
    assert_eq!(text(&out, tags::PATIENT_AGE).as_deref(), Some("044Y"));
    assert_eq!(text(&out, tags::PATIENT_SEX).as_deref(), Some("F"));
    assert_eq!(text(&out, tags::STUDY_DATE).as_deref(), Some("20240105"));
    assert_eq!(
        text(&out, tags::LONGITUDINAL_TEMPORAL_INFORMATION_MODIFIED).as_deref(),
        Some("UNMODIFIED")
    );
    // Device identity's C for AE titles: a consistent stand-in, not the original.
    let ae = text(&out, tags::RETRIEVE_AE_TITLE).unwrap();
    assert!(ae.starts_with("AE") && ae != "PACS_MAIN");
    // The patient is still pseudonymised.
    assert!(text(&out, tags::PATIENT_NAME).unwrap().starts_with("MF"));
}

#[test]
fn clean_descriptors_keep_text_without_the_identifiers() {
    let out = run(&[DeidOption::CleanDescriptors], None);
    assert_eq!(
        text(&out, tags::STUDY_DESCRIPTION).as_deref(),
        Some("MR HEAD [removed]")
    );
    assert_eq!(
        text(&out, tags::IMAGE_COMMENTS).as_deref(),
        Some("follow-up for [removed]")
    );
}

#[test]
fn retain_safe_private_keeps_only_listed_attributes() {
    let safe = || SafePrivateAttribute {
        creator: "ACME 1.0".into(),
        group: 0x0019,
        element: 0x05,
    };
    let mut profile = DeidProfile::default();
    profile.safe_private.push(safe());
    let out = run(&[DeidOption::RetainSafePrivate], Some(profile));
    assert_eq!(text(&out, Tag(0x0019, 0x1005)).as_deref(), Some("3.25"));
    assert_eq!(
        text(&out, Tag(0x0019, 0x0010)).as_deref(),
        Some("ACME 1.0"),
        "creator kept with its block"
    );
    assert!(
        out.get(Tag(0x0019, 0x1006)).is_none(),
        "unlisted private attribute removed"
    );
    // Without the option the listed one goes too.
    let mut profile = DeidProfile::default();
    profile.safe_private.push(safe());
    assert!(run(&[], Some(profile)).get(Tag(0x0019, 0x1005)).is_none());
}

#[test]
fn overlay_and_curve_groups_go_whole_under_every_option() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ds = rich_image();
    for e in [
        el(Tag(0x6000, 0x0010), VR::US, 4u16),
        el(Tag(0x6000, 0x0011), VR::US, 4u16),
        el(Tag(0x6000, 0x0040), VR::CS, "G"),
        el(Tag(0x6000, 0x0100), VR::US, 1u16),
        el(Tag(0x6000, 0x4000), VR::LT, "overlay by Amaryllis"),
        el(
            Tag(0x6002, 0x3000),
            VR::OB,
            dicom_core::value::PrimitiveValue::U8(vec![0xAA, 0x55].into()),
        ),
        el(Tag(0x5000, 0x0005), VR::US, 2u16),
        el(Tag(0x5000, 0x2500), VR::LO, "curve of Amaryllis"),
    ] {
        ds.put(e);
    }
    write(
        &with_meta(ds, uids::EXPLICIT_VR_LITTLE_ENDIAN),
        &tmp.path().join("in/x.dcm"),
    );
    let profile = DeidProfile::with_options([DeidOption::CleanGraphics]).unwrap();
    run_batch_with(
        &tmp.path().join("in"),
        &tmp.path().join("out"),
        &tmp.path().join("key"),
        &profile,
    );
    let out = open(&tmp.path().join("out/x.dcm"));
    let left: Vec<Tag> = out
        .iter()
        .map(dicom_core::header::Header::tag)
        .filter(|t| matches!(t.group() & 0xFF00, 0x5000 | 0x6000))
        .collect();
    assert!(left.is_empty(), "repeating-group elements left: {left:?}");
}
