//! A batch never aborts: every odd file is de-identified correctly or refused with a reason,
//! and nothing is overwritten.

use dicom_core::value::PrimitiveValue;
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN;
use medfed_deid::Outcome;

use crate::support::*;

/// Retired, yet still met in archives.
const EXPLICIT_VR_BIG_ENDIAN: &str = "1.2.840.10008.1.2.2";
const NAME: &str = "Zebulonowski^Philippa";
const PID: &str = "PIDX-90817263";

fn outcome_of<'a>(report: &'a medfed_deid::BatchReport, rel: &str) -> &'a medfed_deid::FileReport {
    report
        .files
        .iter()
        .find(|f| f.input == rel)
        .unwrap_or_else(|| panic!("{rel} not in report"))
}

#[test]
fn odd_files_are_handled_one_by_one_and_the_batch_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    let good = with_meta(
        small_image(NAME, PID, "1.2.826.0.1.3680043.99.1"),
        uids::EXPLICIT_VR_LITTLE_ENDIAN,
    );
    write(&good, &input.join("a/good.dcm"));

    // Truncated in the middle of the pixel data.
    let bytes = std::fs::read(input.join("a/good.dcm")).unwrap();
    std::fs::write(input.join("a/truncated.dcm"), &bytes[..bytes.len() - 10]).unwrap();
    // Cut inside the header.
    std::fs::write(input.join("a/header-cut.dcm"), &bytes[..200]).unwrap();
    // Not DICOM at all.
    std::fs::write(input.join("notes.txt"), format!("call {NAME}")).unwrap();
    // Empty file.
    std::fs::write(input.join("empty.dcm"), b"").unwrap();

    // Big endian and deflated transfer syntaxes.
    for (name, ts) in [
        ("be.dcm", EXPLICIT_VR_BIG_ENDIAN),
        ("deflated.dcm", uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN),
    ] {
        let obj = with_meta(
            small_image(NAME, PID, &format!("1.2.826.0.1.3680043.99.{}", name.len())),
            ts,
        );
        write(&obj, &input.join(name));
    }

    // No file meta group: a bare Implicit VR Little Endian data set.
    let mut bare = Vec::new();
    small_image(NAME, PID, "1.2.826.0.1.3680043.99.7")
        .write_dataset_with_ts(&mut bare, &IMPLICIT_VR_LITTLE_ENDIAN.erased())
        .unwrap();
    std::fs::write(input.join("bare.dcm"), &bare).unwrap();

    // A DICOMDIR.
    let dicomdir = InMemDicomObject::from_element_iter([
        el(tags::FILE_SET_ID, VR::CS, "SET1"),
        el(
            tags::SOP_CLASS_UID,
            VR::UI,
            uids::MEDIA_STORAGE_DIRECTORY_STORAGE,
        ),
        el(tags::SOP_INSTANCE_UID, VR::UI, "1.2.826.0.1.3680043.99.8"),
        el(tags::PATIENT_NAME, VR::PN, NAME),
    ]);
    write(
        &with_meta(dicomdir, uids::EXPLICIT_VR_LITTLE_ENDIAN),
        &input.join("DICOMDIR"),
    );

    // A sequence sent as UN (its writer did not know it), with a name inside.
    let mut item = Vec::new();
    InMemDicomObject::from_element_iter([
        el(tags::PATIENT_ID, VR::LO, PID),
        el(tags::PATIENT_NAME, VR::PN, NAME),
    ])
    .write_dataset_with_ts(&mut item, &IMPLICIT_VR_LITTLE_ENDIAN.erased())
    .unwrap();
    let mut un = vec![0xFE, 0xFF, 0x00, 0xE0];
    un.extend_from_slice(&(item.len() as u32).to_le_bytes());
    un.extend_from_slice(&item);
    let mut with_un = small_image("Anon^Other", "OTHER-1", "1.2.826.0.1.3680043.99.9");
    with_un.put(DataElement::new(
        tags::REQUEST_ATTRIBUTES_SEQUENCE,
        VR::UN,
        PrimitiveValue::U8(un.into()),
    ));
    // And a name in an attribute the dictionary does not know, also as UN.
    with_un.put(DataElement::new(
        Tag(0x0018, 0xEEEE),
        VR::UN,
        PrimitiveValue::U8(NAME.as_bytes().to_vec().into()),
    ));
    write(
        &with_meta(with_un, uids::EXPLICIT_VR_LITTLE_ENDIAN),
        &input.join("un-seq.dcm"),
    );

    // A bad VR: the two VR bytes of Patient's Name replaced by garbage.
    let mut bad_vr = bytes.clone();
    let pos = memchr::memmem::find(&bad_vr, b"\x10\x00\x10\x00PN").unwrap();
    bad_vr[pos + 4..pos + 6].copy_from_slice(b"Q!");
    std::fs::write(input.join("bad-vr.dcm"), &bad_vr).unwrap();

    // Broken meta: the transfer syntax UID garbled.
    let mut broken_meta = bytes.clone();
    let pos =
        memchr::memmem::find(&broken_meta, uids::EXPLICIT_VR_LITTLE_ENDIAN.as_bytes()).unwrap();
    broken_meta[pos..pos + 5].copy_from_slice(b"9.9.9");
    std::fs::write(input.join("broken-meta.dcm"), &broken_meta).unwrap();

    let out = tmp.path().join("out");
    let report = run_batch(&input, &out, &tmp.path().join("key"), &[]);
    assert_eq!(report.files_total, 12, "{:#?}", report.files);

    for ok in [
        "a/good.dcm",
        "be.dcm",
        "deflated.dcm",
        "bare.dcm",
        "un-seq.dcm",
    ] {
        let f = outcome_of(&report, ok);
        assert_eq!(f.outcome, Outcome::Ok, "{ok}: {:?}", f.reason);
    }
    assert_eq!(outcome_of(&report, "DICOMDIR").outcome, Outcome::Refused);
    assert!(
        outcome_of(&report, "DICOMDIR")
            .reason
            .as_deref()
            .unwrap()
            .contains("DICOMDIR")
    );
    assert_eq!(outcome_of(&report, "notes.txt").outcome, Outcome::Refused);
    for failed in ["a/truncated.dcm", "a/header-cut.dcm", "empty.dcm"] {
        let f = outcome_of(&report, failed);
        assert_ne!(f.outcome, Outcome::Ok, "{failed} must not pass as complete");
        assert!(
            f.output.is_none() && !out.join(failed).exists(),
            "{failed}: no partial output"
        );
    }
    // Whatever happens to the bad-VR and broken-meta files, it is reported with a reason or
    // de-identified properly.
    for odd in ["bad-vr.dcm", "broken-meta.dcm"] {
        let f = outcome_of(&report, odd);
        assert!(
            f.outcome == Outcome::Ok || f.reason.as_deref().is_some_and(|r| !r.is_empty()),
            "{odd}"
        );
    }
    for f in &report.files {
        if f.outcome != Outcome::Ok {
            let reason = f.reason.as_deref().unwrap();
            assert!(!reason.contains('\n'), "one-line reasons: {reason}");
        }
    }
    // Nothing identifying in any output, whatever the syntax; transfer syntax unchanged.
    for needle in [NAME.as_bytes(), PID.as_bytes(), b"Zebulonowski"] {
        assert!(
            files_containing(&out, needle).is_empty(),
            "{:?} leaked",
            String::from_utf8_lossy(needle)
        );
    }
    assert_eq!(
        open(&out.join("be.dcm"))
            .meta()
            .transfer_syntax()
            .trim_end_matches('\0'),
        EXPLICIT_VR_BIG_ENDIAN
    );
    let un_out = open(&out.join("un-seq.dcm"));
    assert!(
        un_out.get(Tag(0x0018, 0xEEEE)).is_none(),
        "unknown UN attribute removed"
    );
    // No temporary files left behind.
    let leftovers: Vec<_> = walkdir::WalkDir::new(&out)
        .into_iter()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("medfed-partial"))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn existing_outputs_are_never_overwritten() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    write(
        &with_meta(
            small_image(NAME, PID, "1.2.826.0.1.3680043.99.20"),
            uids::EXPLICIT_VR_LITTLE_ENDIAN,
        ),
        &input.join("x.dcm"),
    );
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("x.dcm"), b"precious").unwrap();
    let report = run_batch(&input, &out, &tmp.path().join("key"), &[]);
    assert_eq!(report.files[0].outcome, Outcome::Refused);
    assert_eq!(std::fs::read(out.join("x.dcm")).unwrap(), b"precious");
}

#[test]
fn output_inside_input_is_refused_up_front() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    let key = medfed_deid::Pseudonymizer::new(key());
    let profile = medfed_deid::DeidProfile::default();
    let run = medfed_deid::BatchRun {
        profile: &profile,
        pseudonymizer: &key,
        jobs: 1,
    };
    let err = run.run(&input, &input.join("out"), &|_, _| {}).unwrap_err();
    assert!(matches!(
        err,
        medfed_deid::DeidError::OutputInsideInput { .. }
    ));
}
