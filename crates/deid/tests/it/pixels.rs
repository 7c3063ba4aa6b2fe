//! The burned-in annotation gate and clean-pixel-data.

use dicom_core::value::PrimitiveValue;
use dicom_core::{DataElement, VR};
use dicom_dictionary_std::{tags, uids};
use medfed_deid::pixels::{PixelSignature, Rect};
use medfed_deid::{DeidOption, DeidProfile, Outcome};

use crate::support::*;

fn ultrasound(burned_in: Option<&str>) -> dicom_object::InMemDicomObject {
    let mut ds = small_image("Burned^Inn", "US-1", "1.2.826.0.1.3680043.55.1");
    ds.put(el(
        tags::SOP_CLASS_UID,
        VR::UI,
        uids::ULTRASOUND_IMAGE_STORAGE,
    ));
    ds.put(el(tags::MODALITY, VR::CS, "US"));
    ds.put(el(tags::MANUFACTURER, VR::LO, "ACME"));
    ds.put(el(tags::BITS_ALLOCATED, VR::US, 8u16));
    ds.put(el(tags::BITS_STORED, VR::US, 8u16));
    ds.put(el(tags::HIGH_BIT, VR::US, 7u16));
    ds.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        PrimitiveValue::U8((1..=16u8).collect()),
    ));
    if let Some(b) = burned_in {
        ds.put(el(tags::BURNED_IN_ANNOTATION, VR::CS, b));
    }
    ds
}

fn signature() -> PixelSignature {
    PixelSignature {
        modality: "US".into(),
        manufacturer: "ACME".into(),
        model: None,
        rows: 4,
        columns: 4,
        rectangles: vec![Rect {
            x: 0,
            y: 0,
            width: 4,
            height: 1,
        }],
    }
}

fn run_one(
    ds: dicom_object::InMemDicomObject,
    profile: &DeidProfile,
) -> (medfed_deid::FileReport, Option<Vec<u8>>) {
    let tmp = tempfile::tempdir().unwrap();
    write(
        &with_meta(ds, uids::EXPLICIT_VR_LITTLE_ENDIAN),
        &tmp.path().join("in/x.dcm"),
    );
    let report = run_batch_with(
        &tmp.path().join("in"),
        &tmp.path().join("out"),
        &tmp.path().join("key"),
        profile,
    );
    let f = report.files[0].clone();
    let pixels = (f.outcome == Outcome::Ok).then(|| {
        open(&tmp.path().join("out/x.dcm"))
            .get(tags::PIXEL_DATA)
            .unwrap()
            .to_bytes()
            .unwrap()
            .to_vec()
    });
    (f, pixels)
}

#[test]
fn burned_in_objects_are_refused_without_clean_pixel_data() {
    for declared in [Some("YES"), None] {
        let (f, _) = run_one(ultrasound(declared), &DeidProfile::default());
        assert_eq!(f.outcome, Outcome::Refused, "{declared:?}");
        assert!(f.reason.unwrap().contains("clean-pixel-data"));
    }
    // Declared free of burned-in text: passes, pixels untouched.
    let (f, px) = run_one(ultrasound(Some("NO")), &DeidProfile::default());
    assert_eq!(f.outcome, Outcome::Ok);
    assert_eq!(px.unwrap(), (1..=16u8).collect::<Vec<_>>());
}

#[test]
fn clean_pixel_data_blanks_the_signature_rectangles_only() {
    let mut profile = DeidProfile::with_options([DeidOption::CleanPixelData]).unwrap();
    let (f, _) = run_one(ultrasound(Some("YES")), &profile);
    assert_eq!(
        f.outcome,
        Outcome::Refused,
        "no signature: refused, not passed through"
    );
    assert!(f.reason.unwrap().contains("no pixel signature"));

    profile.pixel_signatures.push(signature());
    let (f, px) = run_one(ultrasound(Some("YES")), &profile);
    assert_eq!(f.outcome, Outcome::Ok, "{:?}", f.reason);
    let mut want: Vec<u8> = (1..=16u8).collect();
    want[..4].fill(0);
    assert_eq!(px.unwrap(), want);
}

#[test]
fn compressed_burned_in_pixel_data_is_refused() {
    use dicom_core::value::PixelFragmentSequence;
    let mut ds = ultrasound(Some("YES"));
    ds.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        PixelFragmentSequence::new(Vec::<u32>::new(), vec![vec![0xFFu8, 0xD8, 0xFF, 0xD9]]),
    ));
    let tmp = tempfile::tempdir().unwrap();
    write(
        &with_meta(ds, uids::JPEG_BASELINE8_BIT),
        &tmp.path().join("in/x.dcm"),
    );
    let mut profile = DeidProfile::with_options([DeidOption::CleanPixelData]).unwrap();
    profile.pixel_signatures.push(signature());
    let report = run_batch_with(
        &tmp.path().join("in"),
        &tmp.path().join("out"),
        &tmp.path().join("key"),
        &profile,
    );
    assert_eq!(report.files[0].outcome, Outcome::Refused);
    assert!(
        report.files[0]
            .reason
            .as_deref()
            .unwrap()
            .contains("compressed")
    );
}
