//! The synthetic multi-patient set: no planted value survives, references stay consistent
//! across files and runs, and re-identification round-trips.

use dicom_dictionary_std::tags;
use medfed_deid::{DeidOption, ReidTable, SiteKey, reid_table_path, verify_output};
use medfed_synth::{SynthConfig, generate};

use crate::support::*;

fn small_cfg() -> SynthConfig {
    SynthConfig {
        patients: 5,
        studies_per_patient: 2,
        series_per_study: 1,
        slices_per_series: 4,
        rows: 16,
        columns: 16,
        seed: 7,
    }
}

#[test]
fn basic_profile_leaves_no_planted_value_and_keeps_references() {
    let tmp = tempfile::tempdir().unwrap();
    let set = generate(&tmp.path().join("in"), &small_cfg()).unwrap();
    let report = run_batch(
        &tmp.path().join("in"),
        &tmp.path().join("out"),
        &tmp.path().join("key"),
        &[],
    );
    assert_eq!(
        report.files_ok,
        set.files.len(),
        "{:?}",
        report.files.iter().find(|f| f.reason.is_some())
    );
    let v = verify_output(&tmp.path().join("out"), &set.planted()).unwrap();
    assert!(v.leaks.is_empty(), "leaks: {:?}", v.leaks);
    assert!(v.unreadable.is_empty() && v.unmarked.is_empty());
    assert!(v.references > 0);
    assert_eq!(
        v.dangling_references, 0,
        "remapped image references must resolve"
    );
    // The original site key never appears in the output folder, nor the table.
    assert!(!tmp.path().join("out").join("site.key.reid").exists());
}

#[test]
fn same_key_gives_identical_output_across_runs_and_consistent_pseudonyms() {
    let tmp = tempfile::tempdir().unwrap();
    let set = generate(&tmp.path().join("in"), &small_cfg()).unwrap();
    let key = tmp.path().join("key");
    run_batch(
        &tmp.path().join("in"),
        &tmp.path().join("a"),
        &key,
        &[DeidOption::RetainLongModifiedDates],
    );
    run_batch(
        &tmp.path().join("in"),
        &tmp.path().join("b"),
        &key,
        &[DeidOption::RetainLongModifiedDates],
    );
    for f in &set.files {
        let rel = f.strip_prefix(tmp.path().join("in")).unwrap();
        let a = std::fs::read(tmp.path().join("a").join(rel)).unwrap();
        let b = std::fs::read(tmp.path().join("b").join(rel)).unwrap();
        assert!(a == b, "{} differs between runs", rel.display());
    }
    // One pseudonym per patient across both studies; study dates shifted by the same days, so
    // the interval between a patient's studies is preserved.
    let p0 = |st: usize| open(&tmp.path().join(format!("a/P000/ST{st:02}/SE00/IM0001.dcm")));
    let orig = |st: usize| {
        open(
            &tmp.path()
                .join(format!("in/P000/ST{st:02}/SE00/IM0001.dcm")),
        )
    };
    assert_eq!(
        text(&p0(0), tags::PATIENT_ID),
        text(&p0(1), tags::PATIENT_ID)
    );
    assert_ne!(
        text(&p0(0), tags::PATIENT_ID),
        text(
            &open(&tmp.path().join("a/P001/ST00/SE00/IM0001.dcm")),
            tags::PATIENT_ID
        )
    );
    let days = |obj: &dicom_object::FileDicomObject<dicom_object::InMemDicomObject>| {
        let d = text(obj, tags::STUDY_DATE).unwrap();
        let (y, m, dd): (i32, u32, u32) = (
            d[0..4].parse().unwrap(),
            d[4..6].parse().unwrap(),
            d[6..8].parse().unwrap(),
        );
        y as i64 * 372 + m as i64 * 31 + dd as i64 // monotone, enough to compare order and shift
    };
    assert_ne!(
        text(&p0(0), tags::STUDY_DATE),
        text(&orig(0), tags::STUDY_DATE),
        "dates must move"
    );
    assert!(days(&p0(0)) < days(&orig(0)), "dates move back");
    assert_eq!(
        days(&orig(1)) > days(&orig(0)),
        days(&p0(1)) > days(&p0(0)),
        "order of studies preserved"
    );
    assert_eq!(
        text(&p0(0), tags::LONGITUDINAL_TEMPORAL_INFORMATION_MODIFIED).as_deref(),
        Some("MODIFIED")
    );
}

#[test]
fn reidentification_round_trips_with_the_site_key_only() {
    let tmp = tempfile::tempdir().unwrap();
    let set = generate(&tmp.path().join("in"), &small_cfg()).unwrap();
    let keydir = tmp.path().join("key");
    run_batch(
        &tmp.path().join("in"),
        &tmp.path().join("out"),
        &keydir,
        &[],
    );
    let key = SiteKey::load(&keydir.join("site.key")).unwrap();
    let table = ReidTable::new(reid_table_path(&keydir.join("site.key")), &key);
    for (p, patient) in set.patients.iter().enumerate() {
        let out = open(&tmp.path().join(format!("out/P{p:03}/ST00/SE00/IM0001.dcm")));
        let pseudonym = text(&out, tags::PATIENT_ID).unwrap();
        assert_eq!(text(&out, tags::PATIENT_NAME).unwrap(), pseudonym);
        let who = table.lookup(&pseudonym).unwrap();
        assert_eq!(who.patient_id, patient.patient_id);
    }
    // The table at rest contains no patient ID in clear.
    let raw = std::fs::read(reid_table_path(&keydir.join("site.key"))).unwrap();
    for patient in &set.patients {
        assert!(memchr::memmem::find(&raw, patient.patient_id.as_bytes()).is_none());
    }
}

#[test]
fn pixel_data_is_byte_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let set = generate(&tmp.path().join("in"), &small_cfg()).unwrap();
    run_batch(
        &tmp.path().join("in"),
        &tmp.path().join("out"),
        &tmp.path().join("key"),
        &[],
    );
    for f in set.files.iter().take(6) {
        let rel = f.strip_prefix(tmp.path().join("in")).unwrap();
        let a = open(f);
        let b = open(&tmp.path().join("out").join(rel));
        let pa = a.get(tags::PIXEL_DATA).unwrap().to_bytes().unwrap();
        let pb = b.get(tags::PIXEL_DATA).unwrap().to_bytes().unwrap();
        assert_eq!(pa, pb);
    }
}

#[test]
fn markers_name_the_profile_options_and_edition() {
    let tmp = tempfile::tempdir().unwrap();
    generate(&tmp.path().join("in"), &small_cfg()).unwrap();
    run_batch(
        &tmp.path().join("in"),
        &tmp.path().join("out"),
        &tmp.path().join("key"),
        &[DeidOption::CleanDescriptors, DeidOption::RetainUids],
    );
    let out = open(&tmp.path().join("out/P000/ST00/SE00/IM0001.dcm"));
    assert_eq!(
        text(&out, tags::PATIENT_IDENTITY_REMOVED).as_deref(),
        Some("YES")
    );
    let method = text(&out, tags::DEIDENTIFICATION_METHOD).unwrap();
    assert!(
        method.contains("PS3.15 2024b") && method.contains("clean-descriptors"),
        "{method}"
    );
    let codes: Vec<String> = out
        .get(tags::DEIDENTIFICATION_METHOD_CODE_SEQUENCE)
        .unwrap()
        .items()
        .unwrap()
        .iter()
        .map(|i| text(i, tags::CODE_VALUE).unwrap())
        .collect();
    assert_eq!(codes, ["113100", "113110", "113105"]);
    assert_eq!(
        text(&out, tags::LONGITUDINAL_TEMPORAL_INFORMATION_MODIFIED).as_deref(),
        Some("REMOVED")
    );
    // The meta group follows the data set.
    assert_eq!(
        out.meta()
            .media_storage_sop_instance_uid()
            .trim_end_matches('\0'),
        text(&out, tags::SOP_INSTANCE_UID).unwrap()
    );
}
