//! Property: for random data sets carrying random identifying strings anywhere (standard
//! tags, free text, nested sequences, private blocks), no output byte contains any of them.

use dicom_core::{Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::InMemDicomObject;
use medfed_deid::{DeidProfile, Deidentifier, Pseudonymizer};
use proptest::prelude::*;

use crate::support::*;

/// Identifying-looking strings: long enough that a chance match in structure bytes is
/// impossible, from an alphabet the pseudonyms (base-32 capitals) and dummies never use.
fn secret() -> impl Strategy<Value = String> {
    "[a-z]{10,20}"
}

/// Where to plant: (tag, VR) pairs the Basic Profile must clear; nested in a sequence when
/// the flag says so.
const PLACES: [(Tag, VR); 10] = [
    (tags::PATIENT_NAME, VR::PN),
    (tags::PATIENT_ID, VR::LO),
    (tags::OTHER_PATIENT_NAMES, VR::PN),
    (tags::PATIENT_ADDRESS, VR::LO),
    (tags::IMAGE_COMMENTS, VR::LT),
    (tags::STUDY_DESCRIPTION, VR::LO),
    (tags::REFERRING_PHYSICIAN_NAME, VR::PN),
    (tags::INSTITUTION_NAME, VR::LO),
    (tags::ACCESSION_NUMBER, VR::SH),
    (Tag(0x0029, 0x1010), VR::LO),
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn no_planted_string_survives(plants in proptest::collection::vec((secret(), 0..PLACES.len(), 0usize..3), 1..8)) {
        let mut ds = small_image("Base^Name", "BASE-ID", "1.2.826.0.1.3680043.66.1");
        ds.put(el(Tag(0x0029, 0x0010), VR::LO, "RANDOM VENDOR"));
        let mut nested: Vec<Vec<(Tag, VR, String)>> = vec![Vec::new(); 3];
        for (value, place, depth) in &plants {
            let (tag, vr) = PLACES[*place];
            if *depth == 0 {
                ds.put(el(tag, vr, value.as_str()));
            } else {
                nested[*depth].push((tag, vr, value.clone()));
            }
        }
        // Depth 2 inside depth 1 inside a kept reference sequence and a removed one.
        let deep = InMemDicomObject::from_element_iter(nested[2].iter().map(|(t, v, s)| el(*t, *v, s.as_str())));
        let mut mid = InMemDicomObject::from_element_iter(nested[1].iter().map(|(t, v, s)| el(*t, *v, s.as_str())));
        mid.put(el(tags::REFERENCED_SOP_CLASS_UID, VR::UI, uids::MR_IMAGE_STORAGE));
        mid.put(el(tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, "1.2.826.0.1.3680043.66.9"));
        mid.put(seq(tags::SOURCE_IMAGE_SEQUENCE, vec![deep.clone()]));
        ds.put(seq(tags::REFERENCED_IMAGE_SEQUENCE, vec![mid.clone()]));
        ds.put(seq(tags::REQUEST_ATTRIBUTES_SEQUENCE, vec![mid]));
        ds.put(seq(Tag(0x0029, 0x1011), vec![deep]));

        let profile = DeidProfile::default();
        let pseudonymizer = Pseudonymizer::new(key());
        let out = Deidentifier::new(&profile, &pseudonymizer)
            .deidentify(with_meta(ds, uids::EXPLICIT_VR_LITTLE_ENDIAN))
            .unwrap();
        let mut bytes = Vec::new();
        out.object.write_all(&mut bytes).unwrap();
        for (value, _, _) in &plants {
            prop_assert!(memchr::memmem::find(&bytes, value.as_bytes()).is_none(), "{value} survived");
        }
        prop_assert!(memchr::memmem::find(&bytes, b"1.2.826.0.1.3680043.66.").is_none(), "original UID survived");
    }
}
