//! Free text through the whole engine: descriptors, SR content items and graphic text under
//! the basic profile and each clean option, and a property that planted identifiers in random
//! spellings never survive clean-descriptors.

use dicom_core::header::Header;
use dicom_core::value::Value;
use dicom_core::{Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::InMemDicomObject;
use medfed_deid::{DeidOption, DeidProfile, Deidentifier, Pseudonymizer};
use proptest::prelude::*;
use unicode_normalization::UnicodeNormalization;

use crate::support::*;

fn deidentify(ds: InMemDicomObject, options: &[DeidOption]) -> InMemDicomObject {
    let profile = DeidProfile::with_options(options.iter().copied()).unwrap();
    let pseudonymizer = Pseudonymizer::new(key());
    Deidentifier::new(&profile, &pseudonymizer)
        .deidentify(with_meta(ds, uids::EXPLICIT_VR_LITTLE_ENDIAN))
        .unwrap()
        .object
        .into_inner()
}

/// Lower case without accents, by the standard's decomposition: written here, not taken from
/// the code under test.
fn plain(s: &str) -> String {
    s.nfkd()
        .filter(|c| !unicode_normalization::char::is_combining_mark(*c))
        .flat_map(char::to_lowercase)
        .collect()
}

fn code(value: &str, meaning: &str) -> InMemDicomObject {
    InMemDicomObject::from_element_iter([
        el(tags::CODE_VALUE, VR::SH, value),
        el(tags::CODING_SCHEME_DESIGNATOR, VR::SH, "DCM"),
        el(tags::CODE_MEANING, VR::LO, meaning),
    ])
}

fn content_item(value_type: &str, meaning: &str, value: (Tag, VR, &str)) -> InMemDicomObject {
    InMemDicomObject::from_element_iter([
        el(tags::RELATIONSHIP_TYPE, VR::CS, "CONTAINS"),
        el(tags::VALUE_TYPE, VR::CS, value_type),
        seq(
            tags::CONCEPT_NAME_CODE_SEQUENCE,
            vec![code("121071", meaning)],
        ),
        el(value.0, value.1, value.2),
    ])
}

/// A Basic Text SR that names its patient the way reports do: in TEXT items at two depths,
/// a PNAME item, a DATE item.
fn report() -> InMemDicomObject {
    let mut ds = small_image(
        "MÜLLER-LÜDENSCHEIDT^Jürgen",
        "4711-0815",
        "1.2.826.0.1.3680043.88.1",
    );
    for tag in [
        tags::ROWS,
        tags::COLUMNS,
        tags::PIXEL_DATA,
        tags::BITS_ALLOCATED,
    ] {
        ds.remove_element(tag);
    }
    ds.put(el(tags::SOP_CLASS_UID, VR::UI, uids::BASIC_TEXT_SR_STORAGE));
    ds.put(el(tags::MODALITY, VR::CS, "SR"));
    ds.put(el(tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192"));
    ds.put(el(tags::STUDY_DATE, VR::DA, "20261203"));
    let nested = InMemDicomObject::from_element_iter([
        el(tags::RELATIONSHIP_TYPE, VR::CS, "CONTAINS"),
        el(tags::VALUE_TYPE, VR::CS, "CONTAINER"),
        el(tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE"),
        seq(
            tags::CONCEPT_NAME_CODE_SEQUENCE,
            vec![code("121070", "Findings")],
        ),
        seq(
            tags::CONTENT_SEQUENCE,
            vec![content_item(
                "TEXT",
                "Finding",
                (
                    tags::TEXT_VALUE,
                    VR::UT,
                    "Nodule 4 mm; compared with study of 2026-12-03 for Herr Müller (4711 0815).",
                ),
            )],
        ),
    ]);
    ds.put(el(tags::VALUE_TYPE, VR::CS, "CONTAINER"));
    ds.put(el(tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE"));
    ds.put(seq(
        tags::CONTENT_SEQUENCE,
        vec![
            content_item(
                "TEXT",
                "Finding",
                (
                    tags::TEXT_VALUE,
                    VR::UT,
                    "CT THORAX W/O CONTRAST of Jürgen MÜLLER-LÜDENSCHEIDT, seen 03.12.2026; call +49 30 1234567",
                ),
            ),
            content_item("PNAME", "Recording Observer", (tags::PERSON_NAME, VR::PN, "Quimby^Aldridge")),
            content_item("DATE", "Study date", (tags::DATE, VR::DA, "20261203")),
            nested,
        ],
    ));
    ds
}

/// Every string value at every depth, with its tag.
fn strings(ds: &InMemDicomObject, out: &mut Vec<(Tag, String)>) {
    for e in ds.iter() {
        match e.value() {
            Value::Sequence(s) => s.items().iter().for_each(|i| strings(i, out)),
            Value::Primitive(_) if e.vr() != VR::UI => {
                if let Ok(v) = e.value().to_str() {
                    out.push((e.tag(), v.to_string()));
                }
            }
            _ => {}
        }
    }
}

fn text_values(ds: &InMemDicomObject) -> Vec<String> {
    let mut all = Vec::new();
    strings(ds, &mut all);
    all.into_iter()
        .filter(|(t, _)| *t == tags::TEXT_VALUE)
        .map(|(_, v)| v)
        .collect()
}

fn assert_no_name(ds: &InMemDicomObject) {
    let mut all = Vec::new();
    strings(ds, &mut all);
    for (tag, v) in all {
        let p = plain(&v);
        for needle in [
            "muller",
            "mueller",
            "ludenscheidt",
            "jurgen",
            "quimby",
            "aldridge",
            "47110815",
            "4711 0815",
            "1234567",
        ] {
            assert!(!p.contains(needle), "{needle} survived in {tag}: {v:?}");
        }
    }
}

#[test]
fn sr_text_under_the_basic_profile_becomes_a_dummy_and_the_tree_stays() {
    let out = deidentify(report(), &[]);
    assert_eq!(text_values(&out), ["ANONYMIZED", "ANONYMIZED"]);
    assert_no_name(&out);
    // The document's structure and codes stay: Content Sequence is D (a dummy tree), not X.
    let items = out.get(tags::CONTENT_SEQUENCE).unwrap().items().unwrap();
    assert_eq!(items.len(), 4);
    assert_eq!(
        text(&items[1], tags::PERSON_NAME).as_deref(),
        Some("ANONYMIZED")
    );
    assert_eq!(text(&items[2], tags::DATE).as_deref(), Some("19000101"));
}

#[test]
fn clean_structured_content_keeps_the_findings_without_the_identity() {
    let out = deidentify(report(), &[DeidOption::CleanStructuredContent]);
    assert_eq!(
        text_values(&out),
        [
            "CT THORAX W/O CONTRAST of [removed], seen [removed]; call [removed]",
            "Nodule 4 mm; compared with study of [removed] for Herr [removed] ([removed]).",
        ]
    );
    assert_no_name(&out);
}

#[test]
fn dates_in_sr_text_move_with_the_patients_shift() {
    let out = deidentify(
        report(),
        &[
            DeidOption::CleanStructuredContent,
            DeidOption::RetainLongModifiedDates,
        ],
    );
    let study = text(&out, tags::STUDY_DATE).unwrap();
    assert_ne!(study, "20261203");
    let (y, m, d) = (&study[0..4], &study[4..6], &study[6..8]);
    let texts = text_values(&out);
    assert!(
        texts[0].contains(&format!("seen {d}.{m}.{y};")),
        "{texts:?}"
    );
    assert!(
        texts[1].contains(&format!("study of {y}-{m}-{d} ")),
        "{texts:?}"
    );
    // The DATE item follows the same shift.
    let items = out.get(tags::CONTENT_SEQUENCE).unwrap().items().unwrap();
    assert_eq!(text(&items[2], tags::DATE).as_deref(), Some(study.as_str()));
    assert_no_name(&out);
}

#[test]
fn graphic_text_is_cleaned_under_clean_graphics_and_a_dummy_otherwise() {
    let with_graphics = || {
        let mut ds = small_image("Doe^Jane", "PID-123456", "1.2.826.0.1.3680043.88.2");
        let text_object = InMemDicomObject::from_element_iter([
            el(
                tags::UNFORMATTED_TEXT_VALUE,
                VR::ST,
                "L lung, Jane Doe PID-123456",
            ),
            el(tags::ANCHOR_POINT_VISIBILITY, VR::CS, "N"),
        ]);
        let annotation = InMemDicomObject::from_element_iter([
            el(tags::GRAPHIC_LAYER, VR::CS, "LAYER1"),
            seq(tags::TEXT_OBJECT_SEQUENCE, vec![text_object]),
        ]);
        ds.put(seq(tags::GRAPHIC_ANNOTATION_SEQUENCE, vec![annotation]));
        ds
    };
    let unformatted = |ds: &InMemDicomObject| {
        let mut all = Vec::new();
        strings(ds, &mut all);
        all.into_iter()
            .find(|(t, _)| *t == tags::UNFORMATTED_TEXT_VALUE)
            .map(|(_, v)| v)
    };
    let basic = deidentify(with_graphics(), &[]);
    assert_eq!(unformatted(&basic).as_deref(), Some("ANONYMIZED"));
    let cleaned = deidentify(with_graphics(), &[DeidOption::CleanGraphics]);
    assert_eq!(unformatted(&cleaned).as_deref(), Some("L lung, [removed]"));
}

#[test]
fn clean_descriptors_cleans_every_depth_and_keeps_clinical_words() {
    let mut ds = small_image("Ølberg^Åse", "A-77-1234", "1.2.826.0.1.3680043.88.3");
    ds.put(el(tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192"));
    ds.put(el(
        tags::STUDY_DESCRIPTION,
        VR::LO,
        "CT THORAX W/O CONTRAST ØLBERG",
    ));
    ds.put(el(tags::SERIES_DESCRIPTION, VR::LO, "Lung 1.0 B70f"));
    ds.put(el(tags::PROTOCOL_NAME, VR::LO, "AX T2 FLAIR a771234"));
    ds.put(seq(
        tags::REQUEST_ATTRIBUTES_SEQUENCE,
        vec![InMemDicomObject::from_element_iter([el(
            tags::REQUESTED_PROCEDURE_DESCRIPTION,
            VR::LO,
            "CHEST PA/LAT for Aase Oelberg",
        )])],
    ));
    let out = deidentify(ds, &[DeidOption::CleanDescriptors]);
    assert_eq!(
        text(&out, tags::STUDY_DESCRIPTION).as_deref(),
        Some("CT THORAX W/O CONTRAST [removed]")
    );
    assert_eq!(
        text(&out, tags::SERIES_DESCRIPTION).as_deref(),
        Some("Lung 1.0 B70f")
    );
    assert_eq!(
        text(&out, tags::PROTOCOL_NAME).as_deref(),
        Some("AX T2 FLAIR [removed]")
    );
    let item = &out
        .get(tags::REQUEST_ATTRIBUTES_SEQUENCE)
        .unwrap()
        .items()
        .unwrap()[0];
    assert_eq!(
        text(item, tags::REQUESTED_PROCEDURE_DESCRIPTION).as_deref(),
        Some("CHEST PA/LAT for [removed]")
    );
}

#[test]
fn unlisted_text_loses_the_patients_own_values_under_every_profile() {
    // Code Meaning is in no row of Table E.1-1, so it is kept; a site's local code that
    // names the patient must not carry the name out.
    let mut ds = small_image("Doe^Johanna", "PID-998877", "1.2.826.0.1.3680043.88.4");
    ds.put(seq(
        tags::PROCEDURE_CODE_SEQUENCE,
        vec![code("LOCAL1", "CT chest for Johanna Doe")],
    ));
    ds.put(seq(
        tags::ANATOMIC_REGION_SEQUENCE,
        vec![code("T-D3000", "Chest")],
    ));
    for options in [&[][..], &[DeidOption::CleanDescriptors][..]] {
        let out = deidentify(ds.clone(), options);
        let mut all = Vec::new();
        strings(&out, &mut all);
        assert!(
            all.iter().all(|(_, v)| !plain(v).contains("johanna")),
            "{all:?}"
        );
        assert!(all.iter().any(|(_, v)| v == "Chest"));
    }
}

/// One spelling of a planted name, as people write them.
fn spelled(family: &str, given: &str, style: u8) -> String {
    let title = |s: &str| -> String {
        let mut c = s.chars();
        c.next()
            .map(|f| {
                f.to_uppercase()
                    .chain(c.flat_map(char::to_lowercase))
                    .collect()
            })
            .unwrap_or_default()
    };
    let initial: String = given.chars().take(1).collect();
    match style % 8 {
        0 => format!("{}^{}", family.to_uppercase(), title(given)),
        1 => format!("{} {}", title(given), family.to_uppercase()),
        2 => format!("{}, {}", title(family), title(given)),
        3 => format!("{} {}", given.to_lowercase(), family.to_lowercase()),
        4 => format!("{}. {}", initial.to_uppercase(), title(family)),
        5 => plain(&format!("{} {}", family, given)).to_uppercase(),
        6 => format!("{} {}", family.to_uppercase(), given.to_uppercase()),
        _ => format!("{} {}", title(family), initial.to_uppercase()),
    }
}

fn with_separators(id: &str, style: u8) -> String {
    let sep = ["", "-", " ", "/", "."][usize::from(style % 5)];
    let chars: Vec<char> = id.chars().collect();
    chars
        .chunks(3)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join(sep)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]
    #[test]
    fn planted_identifiers_in_random_spellings_never_survive(
        family in "[a-zäöüéèøåłńś]{4,10}",
        given in "[a-zäöüéçñ]{4,9}",
        id in "[A-Z]{0,2}[0-9]{6,9}",
        name_style in 0u8..8,
        id_style in 0u8..5,
        place in 0usize..3,
    ) {
        let name = spelled(&family, &given, name_style);
        let written_id = with_separators(&id, id_style);
        let mut ds = small_image(&format!("{family}^{given}"), &id, "1.2.826.0.1.3680043.88.5");
        ds.put(el(tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192"));
        let (tag, vr, clinical) = [
            (tags::STUDY_DESCRIPTION, VR::LO, "CT THORAX W/O CONTRAST"),
            (tags::IMAGE_COMMENTS, VR::LT, "AX T2 FLAIR"),
            (tags::ADDITIONAL_PATIENT_HISTORY, VR::LT, "CHEST PA/LAT"),
        ][place];
        ds.put(el(tag, vr, format!("{clinical} {name} {written_id}")));
        let out = deidentify(ds, &[DeidOption::CleanDescriptors]);
        let value = text(&out, tag).unwrap_or_default();
        let p = plain(&value);
        let compact: String = p.chars().filter(|c| c.is_alphanumeric()).collect();
        prop_assert!(value.starts_with(clinical), "{value:?}");
        prop_assert!(!p.contains(&plain(&family)), "family survived: {name:?} -> {value:?}");
        prop_assert!(!p.contains(&plain(&given)) || name_style % 8 == 4 || name_style % 8 == 7,
            "given survived: {name:?} -> {value:?}");
        prop_assert!(!compact.contains(&id.to_lowercase()), "id survived: {written_id:?} -> {value:?}");
    }
}
