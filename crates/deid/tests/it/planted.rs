//! The planted corpus: real DICOM objects from pydicom's packages (pydicom's test files and
//! pydicom-data), with identifying values written into them the way hospitals' files carry
//! them: the patient's name, ID, birth date and study date inside descriptions, comments, the
//! patient history, requested procedures, private text, SR text items and nested sequences, in
//! upper case with non-ASCII letters, in other orders and with separators; plus a phone number,
//! an e-mail address and a physician after "Dr.". Each profile must let none of them through,
//! anywhere in the output, while the clinical words stay.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use dicom_core::header::Header;
use dicom_core::value::Value;
use dicom_core::{Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::{FileDicomObject, InMemDicomObject};
use medfed_deid::{DeidOption, Outcome, verify_output};
use unicode_normalization::UnicodeNormalization;

use crate::support::*;

/// (family, given, patient ID, birth date): 35 patients, many written in capitals with
/// letters outside ASCII, in several scripts.
const PATIENTS: [(&str, &str, &str, &str); 35] = [
    ("Müller-Lüdenscheidt", "Jürgen", "48322190", "19610203"),
    ("Øvergård", "Åse", "77120934", "19700512"),
    ("Łukasiewicz", "Małgorzata", "PL5532817", "19841130"),
    ("García Márquez", "José", "ES9081726", "19550621"),
    ("Dubois-Lefèvre", "Hélène", "FR1122334", "19920317"),
    ("Çelik", "Öznur", "TR6655443", "19780909"),
    ("Sørensen", "Bjørn", "DK2233445", "19660101"),
    ("Jovanović", "Dragan", "RS9988776", "19881225"),
    ("O'Brien", "Seán", "IE4455667", "19490704"),
    ("Nguyễn", "Thị Minh", "VN3344556", "19950228"),
    ("Παπαδόπουλος", "Γιώργος", "GR7788990", "19710815"),
    ("Иванова", "Светлана", "RU1231231", "19830419"),
    ("Schröder", "Björn", "DE5566778", "19600606"),
    ("Kowalczyk", "Zbigniew", "PL1029384", "19570130"),
    ("Hernández", "María José", "MX5647382", "19990911"),
    ("Quimby", "Aldridge", "UK8877665", "19450222"),
    ("Haverkamp", "Gesine", "NL3322110", "19690703"),
    ("Fairweather", "Oona", "UK1212121", "19871010"),
    ("Tanaka", "Hiroshi", "JP5544332", "19640505"),
    ("Okonkwo", "Chiamaka", "NG7766554", "19930808"),
    ("Ferreira", "João", "PT3344221", "19770214"),
    ("Lindqvist", "Märta", "SE6677889", "19510919"),
    ("Novák", "Jiří", "CZ9900112", "19891111"),
    ("Horváth", "Zsófia", "HU2211009", "19740402"),
    ("Rossi", "Giuseppina", "IT4433221", "19800120"),
    ("Brandstätter", "Günther", "AT1100998", "19580827"),
    ("Abernathy", "Thaddeus", "US6655001", "19420316"),
    ("Wójcik", "Jolanta", "PL8899001", "19860602"),
    ("Dąbrowski", "Paweł", "PL2200113", "19910125"),
    ("Vázquez", "Iñigo", "ES7700221", "19670713"),
    ("Kristjánsdóttir", "Guðrún", "IS5511993", "19820430"),
    ("Achterberg", "Wilhelmina", "NL7711882", "19530803"),
    ("Pettersen", "Ståle", "NO3300774", "19940618"),
    ("Mbeki", "Thandiwe", "ZA4411885", "19760921"),
    ("Szczepański", "Grzegorz", "PL6600119", "19631207"),
];

/// Physicians named in free text: no attribute of the object announces them.
const DOCTORS: [&str; 5] = [
    "Dr. Pemberton-Smythe",
    "Dr. Ingeborg Vandersloot",
    "Dr. Fitzwilliam",
    "Dr. Arbuthnot Crewe",
    "Dr. Oyelaran",
];

/// Clinical wording that must come through clean-descriptors unchanged.
const CLINICAL: [(Tag, &str); 4] = [
    (tags::STUDY_DESCRIPTION, "CT THORAX W/O CONTRAST"),
    (tags::SERIES_DESCRIPTION, "AX T2 FLAIR"),
    (tags::REQUESTED_PROCEDURE_DESCRIPTION, "CHEST PA/LAT"),
    (tags::SCHEDULED_PROCEDURE_STEP_DESCRIPTION, "Lung 1.0 B70f"),
];

fn plain(s: &str) -> String {
    s.nfkd()
        .filter(|c| !unicode_normalization::char::is_combining_mark(*c))
        .flat_map(char::to_lowercase)
        .collect()
}

fn title(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| {
            f.to_uppercase()
                .chain(c.flat_map(char::to_lowercase))
                .collect()
        })
        .unwrap_or_default()
}

/// Days since 1970-01-01 (H. Hinnant's algorithm), for checking shifts independently.
fn days(date: &str) -> Option<i64> {
    let n = |r: std::ops::Range<usize>| date.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (n(0..4)?, n(4..6)?, n(6..8)?);
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    Some(era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468)
}

fn civil(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// What was planted into one object, to look for in its output.
struct Planted {
    patient: usize,
    study_date: String,
    /// Names and words that must not survive (matched accent- and case-insensitively).
    words: Vec<String>,
    /// IDs and numbers that must not survive with any separators.
    numbers: Vec<String>,
    /// Dates as written into the text (must not survive under any profile).
    dates: Vec<String>,
    /// Where the study date was written as DD.MM.YYYY: under modified dates its shifted form
    /// must be there instead.
    dotted_study_date: bool,
    has_text_item: bool,
}

impl Planted {
    fn tokens(&self) -> usize {
        self.words.len() + self.numbers.len() + self.dates.len()
    }
}

fn dotted(d: &str) -> String {
    format!("{}.{}.{}", &d[6..8], &d[4..6], &d[0..4])
}

fn human(d: &str) -> String {
    const MON: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let m: usize = d[4..6].parse().unwrap();
    format!(
        "{} {} {}",
        d[6..8].trim_start_matches('0'),
        MON[m - 1],
        &d[0..4]
    )
}

fn separated(id: &str, i: usize) -> String {
    let sep = ["-", " ", "/", "."][i % 4];
    let chars: Vec<char> = id.chars().collect();
    chars
        .chunks(3)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join(sep)
}

/// Every TEXT content item's Text Value at any depth gets the patient written into it.
fn plant_sr_text(ds: &mut InMemDicomObject, line: &str, depth: usize) -> bool {
    let mut found = false;
    if depth > 32 {
        return false;
    }
    if let Some(elem) = ds.get(tags::TEXT_VALUE)
        && let Ok(old) = elem.to_str()
    {
        let new = format!("{} {line}", old.trim_end());
        ds.put(el(tags::TEXT_VALUE, VR::UT, new));
        found = true;
    }
    if let Some(elem) = ds.get(tags::CONTENT_SEQUENCE)
        && let Value::Sequence(s) = elem.value()
    {
        let mut items = s.items().to_vec();
        for item in &mut items {
            found |= plant_sr_text(item, line, depth + 1);
        }
        ds.put(seq(tags::CONTENT_SEQUENCE, items));
    }
    found
}

fn plant(ds: &mut InMemDicomObject, index: usize) -> Planted {
    let patient = index % PATIENTS.len();
    let (family, given, id, birth) = PATIENTS[patient];
    let doctor = DOCTORS[index % DOCTORS.len()];
    // A study date per object, so that shifts can be checked against what was planted.
    let study_date = civil(days("20240101").unwrap() + (index as i64 * 37) % 900);
    let study_date = format!("{:04}{:02}{:02}", study_date.0, study_date.1, study_date.2);
    let upper = family.to_uppercase();
    let phone = format!("+49 30 {}", 2_000_000 + index * 7919 % 7_000_000);
    let email_local = plain(&format!("{given}.{family}")).replace([' ', '\''], "");
    let email = format!("{email_local}@klinik-example.de");
    let id_a = separated(id, index);
    let id_b = separated(id, index + 1);

    // ISO_IR 192 can hold every script planted here; the object's own text is re-encoded.
    ds.put(el(tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192"));
    ds.put(el(tags::PATIENT_NAME, VR::PN, format!("{upper}^{given}")));
    ds.put(el(tags::PATIENT_ID, VR::LO, id));
    ds.put(el(tags::PATIENT_BIRTH_DATE, VR::DA, birth));
    ds.put(el(tags::STUDY_DATE, VR::DA, study_date.as_str()));
    let name_spellings = [
        upper.clone(),
        format!("{} {}", title(given), upper),
        format!("{}, {}", title(family), title(given)),
        format!("{}^{}", upper, given.to_uppercase()),
        format!("{}. {}", given.chars().next().unwrap(), family),
        plain(&format!("{given} {family}")),
    ];
    let spelling = |k: usize| name_spellings[(index + k) % name_spellings.len()].clone();
    let text = [
        (
            tags::STUDY_DESCRIPTION,
            VR::LO,
            format!("CT THORAX W/O CONTRAST {}", spelling(0)),
        ),
        (
            tags::SERIES_DESCRIPTION,
            VR::LO,
            format!("AX T2 FLAIR {id_a}"),
        ),
        (
            tags::IMAGE_COMMENTS,
            VR::LT,
            format!(
                "Patient {} {}, born {}, MRN {id_b}, seen {}. Call {phone} or mail {email}",
                title(given),
                upper,
                dotted(birth),
                dotted(&study_date)
            ),
        ),
        (
            tags::ADDITIONAL_PATIENT_HISTORY,
            VR::LT,
            format!(
                "Prior study {} reviewed by {doctor}; {} known since {}",
                human(&study_date),
                spelling(1),
                &birth[0..4]
            ),
        ),
        (
            tags::REQUESTED_PROCEDURE_DESCRIPTION,
            VR::LO,
            format!("CHEST PA/LAT {}", spelling(2)),
        ),
    ];
    for (tag, vr, v) in &text {
        ds.put(el(*tag, *vr, v.as_str()));
    }
    // Private text, as vendors' worklist bridges write it.
    ds.put(el(Tag(0x0019, 0x0010), VR::LO, "ACME WORKLIST 1.0"));
    ds.put(el(Tag(0x0019, 0x1010), VR::LO, format!("{upper} {id}")));
    // Nested: the request attributes of the worklist, and an acquisition context TEXT item.
    ds.put(seq(
        tags::REQUEST_ATTRIBUTES_SEQUENCE,
        vec![InMemDicomObject::from_element_iter([
            el(
                tags::REQUESTED_PROCEDURE_DESCRIPTION,
                VR::LO,
                format!("CHEST PA/LAT {}", spelling(3)),
            ),
            el(
                tags::SCHEDULED_PROCEDURE_STEP_DESCRIPTION,
                VR::LO,
                format!("Lung 1.0 B70f {} {birth}", spelling(4)),
            ),
            el(tags::REQUESTED_PROCEDURE_ID, VR::SH, id),
        ])],
    ));
    ds.put(seq(
        tags::ACQUISITION_CONTEXT_SEQUENCE,
        vec![InMemDicomObject::from_element_iter([
            el(tags::VALUE_TYPE, VR::CS, "TEXT"),
            seq(
                tags::CONCEPT_NAME_CODE_SEQUENCE,
                vec![InMemDicomObject::from_element_iter([
                    el(tags::CODE_VALUE, VR::SH, "121106"),
                    el(tags::CODING_SCHEME_DESIGNATOR, VR::SH, "DCM"),
                    el(tags::CODE_MEANING, VR::LO, "Comment"),
                ])],
            ),
            el(
                tags::TEXT_VALUE,
                VR::UT,
                format!("positioned by staff; {} {id_a}", spelling(5)),
            ),
        ])],
    ));
    let has_text_item = plant_sr_text(
        ds,
        &format!(
            "Report for {} {upper}, MRN {id_b}, of {}.",
            title(given),
            dotted(&study_date)
        ),
        0,
    );

    let mut words: BTreeSet<String> = BTreeSet::new();
    for part in family.split([' ', '-', '\'']).chain(given.split(' ')) {
        if part.chars().count() >= 3 {
            words.insert(part.to_string());
        }
    }
    words.insert(email.clone());
    for w in doctor.trim_start_matches("Dr. ").split([' ', '-']) {
        words.insert(w.to_string());
    }
    Planted {
        patient,
        study_date: study_date.clone(),
        words: words.into_iter().collect(),
        numbers: vec![id.to_string(), phone.replace(' ', "")],
        dates: vec![
            dotted(birth),
            dotted(&study_date),
            human(&study_date),
            birth.to_string(),
        ],
        dotted_study_date: true,
        has_text_item,
    }
}

fn corpus_roots() -> Option<Vec<PathBuf>> {
    let a = medfed_testkit::pyenv_package_dir("pydicom/data/test_files")?;
    // pydicom-data installs its files as the top-level package data_store.
    let b = medfed_testkit::pyenv_package_dir("data_store/data")?;
    Some(vec![a, b])
}

/// Writes the planted corpus under `dir`; returns what was planted, by output-relative path.
fn build_corpus(roots: &[PathBuf], dir: &Path) -> BTreeMap<PathBuf, Planted> {
    let mut planted = BTreeMap::new();
    let mut index = 0;
    for root in roots {
        for entry in walkdir::WalkDir::new(root)
            .sort_by_file_name()
            .into_iter()
            .flatten()
        {
            if !entry.file_type().is_file() {
                continue;
            }
            let Ok(bytes) = std::fs::read(entry.path()) else {
                continue;
            };
            // Not every file of the packages is a DICOM object (some are deliberately broken).
            let Ok(obj) = medfed_deid::read_object(&bytes) else {
                continue;
            };
            let meta = obj.meta().clone();
            let mut ds = obj.into_inner();
            let p = plant(&mut ds, index);
            let rel = PathBuf::from(format!("{index:04}.dcm"));
            let out: FileDicomObject<InMemDicomObject> = ds.with_exact_meta(meta);
            if out.write_to_file(dir.join(&rel)).is_err() {
                continue;
            }
            planted.insert(rel, p);
            index += 1;
        }
    }
    planted
}

/// Every string value of the object at every depth (UIDs aside: random digits).
fn strings(ds: &InMemDicomObject, out: &mut Vec<(Tag, String)>, depth: usize) {
    for e in ds.iter() {
        match e.value() {
            Value::Sequence(s) if depth < 64 => {
                s.items().iter().for_each(|i| strings(i, out, depth + 1))
            }
            Value::Primitive(_) if !matches!(e.vr(), VR::UI | VR::OB | VR::OW | VR::UN) => {
                if let Ok(v) = e.value().to_str() {
                    out.push((e.tag(), v.to_string()));
                }
            }
            _ => {}
        }
    }
}

fn compact(s: &str) -> String {
    plain(s).chars().filter(|c| c.is_alphanumeric()).collect()
}

/// Planted tokens found in one output: in its decoded text (the object's charset, accents and
/// case folded, IDs without separators) and in its raw bytes.
fn leaks(path: &Path, p: &Planted) -> Vec<String> {
    let bytes = std::fs::read(path).unwrap();
    let obj = medfed_deid::read_object(&bytes).unwrap();
    let mut all = Vec::new();
    strings(&obj, &mut all, 0);
    let mut found = Vec::new();
    for (tag, v) in &all {
        let pv = plain(v);
        let cv = compact(v);
        for w in &p.words {
            let pw = plain(w);
            let at_word = pv.match_indices(&pw).any(|(i, _)| {
                let before = pv[..i].chars().next_back();
                let after = pv[i + pw.len()..].chars().next();
                !before.is_some_and(char::is_alphanumeric)
                    && !after.is_some_and(char::is_alphanumeric)
            });
            if at_word {
                found.push(format!("{w} in {tag}: {v:?}"));
            }
        }
        for n in &p.numbers {
            if cv.contains(&compact(n)) {
                found.push(format!("{n} in {tag}: {v:?}"));
            }
        }
        for d in &p.dates {
            if v.contains(d.as_str()) {
                found.push(format!("{d} in {tag}: {v:?}"));
            }
        }
    }
    for w in p.words.iter().chain(&p.numbers) {
        for variant in [w.clone(), w.to_uppercase(), w.to_lowercase()] {
            if memchr::memmem::find(&bytes, variant.as_bytes()).is_some() {
                found.push(format!("{variant} in the raw bytes"));
            }
        }
    }
    found
}

struct ProfileRun {
    outputs: usize,
    refused: usize,
    leaked: Vec<String>,
}

fn run_profile(
    input: &Path,
    tmp: &Path,
    name: &str,
    options: &[DeidOption],
    planted: &BTreeMap<PathBuf, Planted>,
) -> (ProfileRun, PathBuf) {
    let out = tmp.join(format!("out-{name}"));
    let report = run_batch(input, &out, &tmp.join("key"), options);
    let mut run = ProfileRun {
        outputs: 0,
        refused: 0,
        leaked: Vec::new(),
    };
    for f in &report.files {
        match f.outcome {
            Outcome::Ok => {}
            _ => run.refused += 1,
        }
    }
    for (rel, p) in planted {
        let path = out.join(rel);
        if !path.exists() {
            continue;
        }
        run.outputs += 1;
        for l in leaks(&path, p) {
            run.leaked.push(format!("{}: {l}", rel.display()));
        }
    }
    // The crate's own checker, with every planted word and number as raw bytes.
    let needles: Vec<Vec<u8>> = planted
        .values()
        .flat_map(|p| p.words.iter().chain(&p.numbers))
        .map(|s| s.as_bytes().to_vec())
        .collect();
    let v = verify_output(&out, &needles).unwrap();
    assert!(
        v.unmarked.is_empty() && v.unreadable.is_empty(),
        "{name}: {v:?}"
    );
    for (path, i) in &v.leaks {
        run.leaked.push(format!(
            "{}: raw bytes hold {:?}",
            path.display(),
            String::from_utf8_lossy(&needles[*i])
        ));
    }
    eprintln!(
        "planted corpus, {name}: {} outputs, {} refused, {} planted tokens survive",
        run.outputs,
        run.refused,
        run.leaked.len()
    );
    (run, out)
}

#[test]
fn planted_identifiers_survive_no_profile() {
    let Some(roots) = corpus_roots() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    let planted = build_corpus(&roots, &input);
    let tokens: usize = planted.values().map(Planted::tokens).sum();
    let names: BTreeSet<usize> = planted.values().map(|p| p.patient).collect();
    let sr = planted.values().filter(|p| p.has_text_item).count();
    eprintln!(
        "planted corpus: {} objects, {tokens} tokens planted, {} patients' names, {sr} with SR text items",
        planted.len(),
        names.len()
    );
    assert!(planted.len() >= 150, "only {} objects read", planted.len());
    assert!(sr >= 3, "pydicom's three SR objects carry TEXT items");

    use DeidOption::*;
    let profiles: [(&str, &[DeidOption]); 5] = [
        ("basic", &[]),
        ("basic+modified-dates", &[RetainLongModifiedDates]),
        (
            "clean-descriptors+modified-dates",
            &[CleanDescriptors, RetainLongModifiedDates],
        ),
        ("clean-structured-content", &[CleanStructuredContent]),
        (
            "all-clean+modified-dates",
            &[
                CleanDescriptors,
                CleanStructuredContent,
                CleanGraphics,
                RetainLongModifiedDates,
            ],
        ),
    ];
    let mut failures = Vec::new();
    for (name, options) in profiles {
        let (run, out) = run_profile(&input, tmp.path(), name, options, &planted);
        assert!(run.outputs >= 100, "{name}: only {} outputs", run.outputs);
        failures.extend(run.leaked.iter().take(20).map(|l| format!("{name}: {l}")));
        check_patients(name, options, &out, &planted, &mut failures);
        if options.contains(&CleanDescriptors) {
            check_clinical_words(name, &out, &planted, &mut failures);
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// One pseudonym per patient (and none shared), one constant date shift per patient, and
/// dates in free text shifted by it in their own format.
fn check_patients(
    name: &str,
    options: &[DeidOption],
    out: &Path,
    planted: &BTreeMap<PathBuf, Planted>,
    failures: &mut Vec<String>,
) {
    let modified = options.contains(&DeidOption::RetainLongModifiedDates);
    let mut pseudonyms: BTreeMap<usize, BTreeSet<String>> = BTreeMap::new();
    let mut shifts: BTreeMap<usize, BTreeSet<i64>> = BTreeMap::new();
    for (rel, p) in planted {
        let path = out.join(rel);
        if !path.exists() {
            continue;
        }
        let obj = open(&path);
        pseudonyms
            .entry(p.patient)
            .or_default()
            .insert(text(&obj, tags::PATIENT_ID).unwrap_or_default());
        if !modified {
            continue;
        }
        let Some(shifted) = text(&obj, tags::STUDY_DATE) else {
            failures.push(format!("{name}: {}: no Study Date", rel.display()));
            continue;
        };
        let (Some(a), Some(b)) = (days(&p.study_date), days(&shifted)) else {
            failures.push(format!("{name}: {}: Study Date {shifted:?}", rel.display()));
            continue;
        };
        shifts.entry(p.patient).or_default().insert(b - a);
        if p.dotted_study_date && options.contains(&DeidOption::CleanDescriptors) {
            let comments = text(&obj, tags::IMAGE_COMMENTS).unwrap_or_default();
            let want = format!("seen {}.", dotted(&shifted));
            if !comments.contains(&want) {
                failures.push(format!(
                    "{name}: {}: {comments:?} lacks {want:?}",
                    rel.display()
                ));
            }
        }
    }
    let mut all = BTreeSet::new();
    for (patient, ids) in &pseudonyms {
        if ids.len() != 1 {
            failures.push(format!("{name}: patient {patient} got pseudonyms {ids:?}"));
        }
        for id in ids {
            if !all.insert(id.clone()) {
                failures.push(format!("{name}: pseudonym {id} shared by two patients"));
            }
        }
    }
    for (patient, s) in &shifts {
        if s.len() != 1 {
            failures.push(format!("{name}: patient {patient} got date shifts {s:?}"));
        }
    }
}

fn check_clinical_words(
    name: &str,
    out: &Path,
    planted: &BTreeMap<PathBuf, Planted>,
    failures: &mut Vec<String>,
) {
    for rel in planted.keys() {
        let path = out.join(rel);
        if !path.exists() {
            continue;
        }
        let obj = open(&path);
        let mut all = Vec::new();
        strings(&obj, &mut all, 0);
        for (tag, words) in CLINICAL {
            if !all.iter().any(|(t, v)| *t == tag && v.starts_with(words)) {
                failures.push(format!("{name}: {}: {tag} lost {words:?}", rel.display()));
            }
        }
    }
}
