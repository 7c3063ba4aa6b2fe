//! A batch never aborts: every odd file is de-identified correctly or refused with a reason,
//! and nothing is overwritten.

use dicom_core::value::PrimitiveValue;
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN;
use medfed_deid::Outcome;

use crate::support::*;
use dicom_encoding::transfer_syntax::TransferSyntaxIndex;

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

/// An element of `tag` whose VR is UN and whose value is `bytes`, as a writer that did not know
/// the attribute sends it.
fn un(tag: Tag, bytes: &[u8]) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::UN, PrimitiveValue::U8(bytes.to_vec().into()))
}

#[test]
fn one_patient_gets_one_pseudonym_however_the_id_or_name_is_encoded() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    // The same patient: Patient ID as LO, as UN padded with a space, as UN padded with a NUL
    // (RLE RT dose objects carry it so), and with padding on both sides.
    let ids: [(&str, Option<&[u8]>); 4] = [
        ("lo", None),
        ("un-space", Some(b"PIDX-90817263 ")),
        ("un-nul", Some(b"PIDX-90817263\0")),
        ("lo-padded", None),
    ];
    for (i, (name, raw)) in ids.iter().enumerate() {
        let mut ds = small_image(NAME, PID, &format!("1.2.826.0.1.3680043.99.3{i}"));
        match (name, raw) {
            (_, Some(bytes)) => ds.put(un(tags::PATIENT_ID, bytes)),
            (&"lo-padded", None) => ds.put(el(tags::PATIENT_ID, VR::LO, format!(" {PID} "))),
            _ => None,
        };
        write(
            &with_meta(ds, uids::EXPLICIT_VR_LITTLE_ENDIAN),
            &input.join(format!("id/{name}.dcm")),
        );
    }
    // Without an ID the name is the key: its empty trailing components are not part of it.
    for (i, name) in ["Zebulonowski^Philippa", "Zebulonowski^Philippa^^^"]
        .iter()
        .enumerate()
    {
        let mut ds = small_image(name, "", &format!("1.2.826.0.1.3680043.99.4{i}"));
        ds.remove_element(tags::PATIENT_ID);
        write(
            &with_meta(ds, uids::EXPLICIT_VR_LITTLE_ENDIAN),
            &input.join(format!("name/{i}.dcm")),
        );
    }
    let out = tmp.path().join("out");
    let report = run_batch(
        &input,
        &out,
        &tmp.path().join("key"),
        &[medfed_deid::DeidOption::RetainLongModifiedDates],
    );
    assert!(report.all_ok(), "{:#?}", report.files);
    for group in ["id", "name"] {
        let outputs: Vec<_> = files_under(&out.join(group))
            .iter()
            .map(|p| open(p))
            .collect();
        let pseudonyms: std::collections::BTreeSet<_> = outputs
            .iter()
            .map(|o| text(o, tags::PATIENT_NAME).unwrap())
            .collect();
        let shifted: std::collections::BTreeSet<_> = outputs
            .iter()
            .map(|o| text(o, tags::STUDY_DATE).unwrap())
            .collect();
        assert_eq!(pseudonyms.len(), 1, "{group}: {pseudonyms:?}");
        assert_eq!(shifted.len(), 1, "{group}: one date shift: {shifted:?}");
    }
    // The re-identification table holds the identifier as the patient has it, unpadded.
    let site_key = key();
    let table = medfed_deid::ReidTable::new(
        medfed_deid::reid_table_path(&tmp.path().join("key/site.key")),
        &site_key,
    );
    let ids: std::collections::BTreeSet<String> = table
        .read_all()
        .unwrap()
        .into_values()
        .map(|who| who.patient_id)
        .collect();
    assert!(ids.contains(PID) && ids.len() == 2, "{ids:?}");
}

#[test]
fn links_special_files_and_unreadable_folders_each_get_a_line_and_the_batch_goes_on() {
    use rustix::fs::{FileType, Mode, OFlags};
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    let good = with_meta(
        small_image(NAME, PID, "1.2.826.0.1.3680043.99.50"),
        uids::EXPLICIT_VR_LITTLE_ENDIAN,
    );
    write(&good, &input.join("a/good.dcm"));
    write(&good, &tmp.path().join("outside.dcm"));
    std::os::unix::fs::symlink("a/good.dcm", input.join("link-inside.dcm")).unwrap();
    std::os::unix::fs::symlink(
        tmp.path().join("outside.dcm"),
        input.join("link-outside.dcm"),
    )
    .unwrap();
    std::os::unix::fs::symlink("a", input.join("link-folder")).unwrap();
    std::os::unix::fs::symlink("nowhere", input.join("link-dangling")).unwrap();
    let dir = rustix::fs::open(&input, OFlags::DIRECTORY | OFlags::RDONLY, Mode::empty()).unwrap();
    // Opening a FIFO would block the batch for ever.
    rustix::fs::mknodat(&dir, "pipe", FileType::Fifo, Mode::from_raw_mode(0o644), 0).unwrap();
    // A folder that cannot be read, even by root: its path is longer than PATH_MAX, so it is
    // made one level at a time, relative to the one above.
    let mut fd = dir;
    let level = "d".repeat(250);
    for _ in 0..17 {
        rustix::fs::mkdirat(&fd, level.as_str(), Mode::from_raw_mode(0o755)).unwrap();
        fd = rustix::fs::openat(
            &fd,
            level.as_str(),
            OFlags::DIRECTORY | OFlags::RDONLY,
            Mode::empty(),
        )
        .unwrap();
    }
    // Siblings after it in the walk are still processed.
    write(&good, &input.join("z/after.dcm"));

    let out = tmp.path().join("out");
    let report = run_batch(&input, &out, &tmp.path().join("key"), &[]);
    let by_outcome = |o| report.files.iter().filter(|f| f.outcome == o).count();
    assert_eq!(by_outcome(Outcome::Ok), 2, "{:#?}", report.files);
    assert_eq!(report.files_skipped, 5, "{:#?}", report.files);
    for link in [
        "link-inside.dcm",
        "link-outside.dcm",
        "link-folder",
        "link-dangling",
    ] {
        let f = outcome_of(&report, link);
        assert_eq!(f.outcome, Outcome::Skipped, "{link}");
        assert!(
            f.reason
                .as_deref()
                .unwrap()
                .contains("symbolic link, not followed")
        );
        assert!(!out.join(link).exists(), "{link}: nothing written");
    }
    assert!(
        outcome_of(&report, "pipe")
            .reason
            .as_deref()
            .unwrap()
            .contains("not a regular file")
    );
    let unreadable: Vec<_> = report
        .files
        .iter()
        .filter(|f| f.outcome == Outcome::Error)
        .collect();
    assert_eq!(unreadable.len(), 1, "{:#?}", report.files);
    assert!(unreadable[0].input.starts_with(&level));
    assert!(
        unreadable[0]
            .reason
            .as_deref()
            .unwrap()
            .contains("cannot read this folder")
    );
    assert_eq!(report.files_total, report.files.len());
    assert!(!report.all_ok());
}

#[test]
fn bare_explicit_vr_data_sets_are_read_like_implicit_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    for (i, (name, ts)) in [
        ("implicit", uids::IMPLICIT_VR_LITTLE_ENDIAN),
        ("explicit-le", uids::EXPLICIT_VR_LITTLE_ENDIAN),
        ("explicit-be", EXPLICIT_VR_BIG_ENDIAN),
    ]
    .into_iter()
    .enumerate()
    {
        let ts_entry = dicom_transfer_syntax_registry::TransferSyntaxRegistry
            .get(ts)
            .unwrap();
        let mut bare = Vec::new();
        small_image(NAME, PID, &format!("1.2.826.0.1.3680043.99.6{i}"))
            .write_dataset_with_ts(&mut bare, ts_entry)
            .unwrap();
        std::fs::write(input.join(format!("{name}.dcm")), &bare).unwrap();
    }
    let out = tmp.path().join("out");
    let report = run_batch(&input, &out, &tmp.path().join("key"), &[]);
    assert!(report.all_ok(), "{:#?}", report.files);
    for (name, ts) in [
        ("implicit", uids::IMPLICIT_VR_LITTLE_ENDIAN),
        ("explicit-le", uids::EXPLICIT_VR_LITTLE_ENDIAN),
        ("explicit-be", EXPLICIT_VR_BIG_ENDIAN),
    ] {
        let obj = open(&out.join(format!("{name}.dcm")));
        assert_eq!(
            obj.meta().transfer_syntax().trim_end_matches('\0'),
            ts,
            "{name}"
        );
        // Pixel data came through in the right byte order.
        let px = obj
            .get(tags::PIXEL_DATA)
            .unwrap()
            .to_multi_int::<u16>()
            .unwrap();
        assert_eq!(
            px,
            (0..16u16).map(|v| v * 100).collect::<Vec<_>>(),
            "{name}"
        );
    }
    assert!(files_containing(&out, PID.as_bytes()).is_empty());
}

/// Deterministic mutations of `bytes`: cuts, flipped bits, and lengths set to huge values (the
/// four bytes after a VR are a length in Explicit VR).
fn mutations(bytes: &[u8], n: usize, seed: u64) -> Vec<Vec<u8>> {
    let mut state = seed | 1;
    let mut next = move || {
        // xorshift64*: reproducible without a dependency.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    (0..n)
        .map(|i| {
            let mut m = bytes.to_vec();
            match i % 3 {
                0 => m.truncate(132 + (next() as usize) % (bytes.len() - 132)),
                1 => {
                    for _ in 0..1 + next() % 8 {
                        let at = 132 + (next() as usize) % (bytes.len() - 132);
                        m[at] ^= 1 << (next() % 8);
                    }
                }
                _ => {
                    let at = 132 + (next() as usize) % (bytes.len() - 136);
                    m[at..at + 4].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
                }
            }
            m
        })
        .collect()
}

#[test]
fn mutated_copies_are_each_reported_and_no_declared_length_is_trusted() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    // A base with a sequence, a UN sequence and native pixel data; mutated 60 ways.
    let mut ds = small_image(NAME, PID, "1.2.826.0.1.3680043.99.70");
    ds.put(seq(
        tags::REFERENCED_SERIES_SEQUENCE,
        vec![InMemDicomObject::from_element_iter([el(
            tags::SERIES_INSTANCE_UID,
            VR::UI,
            "1.2.826.0.1.3680043.99.71",
        )])],
    ));
    let mut item = Vec::new();
    InMemDicomObject::from_element_iter([el(tags::PATIENT_NAME, VR::PN, NAME)])
        .write_dataset_with_ts(&mut item, &IMPLICIT_VR_LITTLE_ENDIAN.erased())
        .unwrap();
    let mut value = vec![0xFE, 0xFF, 0x00, 0xE0];
    value.extend_from_slice(&(item.len() as u32).to_le_bytes());
    value.extend_from_slice(&item);
    ds.put(un(tags::REQUEST_ATTRIBUTES_SEQUENCE, &value));
    write(
        &with_meta(ds, uids::EXPLICIT_VR_LITTLE_ENDIAN),
        &input.join("base.dcm"),
    );
    let base = std::fs::read(input.join("base.dcm")).unwrap();
    for (i, m) in mutations(&base, 60, 7).into_iter().enumerate() {
        std::fs::write(input.join(format!("m{i:03}.dcm")), m).unwrap();
    }
    // And one whose Pixel Data declares 4 GiB.
    let mut huge = base.clone();
    let pos = memchr::memmem::find(&huge, b"\xE0\x7F\x10\x00OW").unwrap();
    huge[pos + 8..pos + 12].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
    std::fs::write(input.join("huge-pixel-length.dcm"), huge).unwrap();

    let out = tmp.path().join("out");
    let report = run_batch(&input, &out, &tmp.path().join("key"), &[]);
    assert_eq!(report.files_total, 62);
    for f in &report.files {
        match f.outcome {
            // Whatever passes is a whole, readable, de-identified object.
            Outcome::Ok => {
                let obj = open(&out.join(&f.input));
                assert!(
                    obj.get(tags::PATIENT_IDENTITY_REMOVED).is_some(),
                    "{}",
                    f.input
                );
            }
            _ => assert!(
                f.reason.as_deref().is_some_and(|r| !r.is_empty()),
                "{}",
                f.input
            ),
        }
    }
    let huge = outcome_of(&report, "huge-pixel-length.dcm");
    assert_eq!(huge.outcome, Outcome::Error);
    assert!(
        huge.reason
            .as_deref()
            .unwrap()
            .contains("declares 4294967280 bytes"),
        "{:?}",
        huge.reason
    );
    assert!(files_containing(&out, b"Zebulonowski").is_empty());
}

#[test]
fn type2_attributes_are_emptied_and_un_frame_increment_pointer_is_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ds = small_image(NAME, PID, "1.2.826.0.1.3680043.99.80");
    ds.put(seq(
        tags::ACQUISITION_CONTEXT_SEQUENCE,
        vec![InMemDicomObject::from_element_iter([el(
            tags::CODE_MEANING,
            VR::LO,
            "context",
        )])],
    ));
    ds.put(el(tags::RESPONSIBLE_PERSON, VR::PN, "Owner^Ottilie"));
    ds.put(el(tags::RESPONSIBLE_ORGANIZATION, VR::LO, "Farm Quintessa"));
    // (0018,1063) Frame Time, as a writer that did not know the AT attribute sent it.
    ds.put(un(tags::FRAME_INCREMENT_POINTER, &[0x18, 0x00, 0x63, 0x10]));
    write(
        &with_meta(ds, uids::EXPLICIT_VR_LITTLE_ENDIAN),
        &tmp.path().join("in/x.dcm"),
    );
    let report = run_batch(
        &tmp.path().join("in"),
        &tmp.path().join("out"),
        &tmp.path().join("key"),
        &[],
    );
    assert!(report.all_ok(), "{:#?}", report.files);
    let out = open(&tmp.path().join("out/x.dcm"));
    let acq = out
        .get(tags::ACQUISITION_CONTEXT_SEQUENCE)
        .expect("Type 2: kept");
    assert_eq!(acq.items().map(|i| i.len()), Some(0));
    for tag in [tags::RESPONSIBLE_PERSON, tags::RESPONSIBLE_ORGANIZATION] {
        let e = out.get(tag).expect("Type 2C: kept");
        assert!(e.to_str().unwrap().trim().is_empty(), "{tag}: emptied");
    }
    let fip = out.get(tags::FRAME_INCREMENT_POINTER).expect("kept");
    assert_eq!(fip.vr(), VR::AT);
    assert_eq!(fip.value().to_tag().unwrap(), Tag(0x0018, 0x1063));
    assert!(files_containing(&tmp.path().join("out"), b"Ottilie").is_empty());
}
