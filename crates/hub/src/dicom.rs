//! What the hub reads from a DICOM instance: whether bytes are DICOM at all (by content, never
//! by the media type a client declares), the check that an instance was de-identified, and the
//! pseudonymised attributes it indexes.
//!
//! The de-identification check reads the object, not the sender's word: Patient Identity
//! Removed (0012,0062) = YES is necessary but not enough. The options the site used are read
//! from De-identification Method Code Sequence (0012,0064) (CID 7050, as medfed-deid writes
//! them), and then every attribute at every depth must look like what PS3.15 Table E.1-1 (the
//! same table medfed-deid applies) leaves under those options: nothing that is removed or
//! emptied carries a value, instance UIDs are the site's `2.25.` remapping unless the site
//! declared Retain UIDs, Patient ID and Patient's Name are a medfed pseudonym or empty, person
//! names are empty, and no private or unknown attribute is left without Retain Safe Private.
//! Refusal reasons name tags and attribute names only, never a value.

use dicom_core::dictionary::DataDictionary;
use dicom_core::header::{HasLength, Header};
use dicom_core::value::Value;
use dicom_core::{Tag, VR};
use dicom_dictionary_std::{StandardDataDictionary, tags};
use dicom_object::mem::InMemElement;
use dicom_object::{DefaultDicomObject, InMemDicomObject};
use medfed_catalogue::InstanceEntry;
use medfed_deid::DeidOption;
use medfed_deid::profile::BASIC_PROFILE_CODE;
use medfed_deid::table::{ActionCode, ActionTable};

/// Why an instance is not stored. No variant carries an attribute's value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InstanceRefused {
    #[error("not a readable DICOM instance: {0}")]
    Unreadable(String),
    #[error("not de-identified: {0}; the hub stores de-identified data only")]
    NotDeidentified(String),
    #[error("{0} missing or not a valid UID")]
    MissingUid(&'static str),
}

/// How many leading bytes [`looks_like_dicom`] needs to decide.
pub const SNIFF_LEN: usize = 132;

/// Whether bytes are DICOM by their content: a Part 10 file (the 128-byte preamble and `DICM`,
/// or `DICM` at the start), or a bare data set (Implicit or Explicit VR Little Endian) whose
/// first element is of group 0x0008, where every composite instance starts (SOP Class UID is
/// Type 1 there), or of the meta group 0x0002. `head` is the first [`SNIFF_LEN`] bytes (fewer
/// if the object is shorter).
pub fn looks_like_dicom(head: &[u8]) -> bool {
    if head.get(128..132) == Some(b"DICM") || head.get(0..4) == Some(b"DICM") {
        return true;
    }
    let Some(h) = head.get(0..8) else {
        return false;
    };
    let group = u16::from_le_bytes([h[0], h[1]]);
    if group != 0x0008 && group != 0x0002 {
        return false;
    }
    // Explicit VR: two upper-case letters after the tag. Implicit VR: a 32-bit length, which
    // for the first, short elements of group 0x0008 (or an undefined-length sequence) is small.
    let explicit = h[4].is_ascii_uppercase() && h[5].is_ascii_uppercase();
    let length = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    explicit || length < (1 << 16) || length == u32::MAX
}

/// Parses an instance (Part 10, with or without preamble, or a bare data set in Implicit or
/// Explicit VR Little Endian).
fn parse(bytes: &[u8]) -> Result<DefaultDicomObject, InstanceRefused> {
    match medfed_deid::read_object(bytes) {
        Ok(o) => Ok(o),
        Err(first) => read_bare_explicit(bytes)
            .ok_or_else(|| InstanceRefused::Unreadable(first.reason().to_string())),
    }
}

/// A bare Explicit VR Little Endian data set (medfed-deid reads bare Implicit VR ones), given a
/// file meta group so that it can be handled like any other instance.
fn read_bare_explicit(bytes: &[u8]) -> Option<DefaultDicomObject> {
    use dicom_object::meta::FileMetaTableBuilder;
    let ds = InMemDicomObject::read_dataset_with_ts(
        bytes,
        &dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN.erased(),
    )
    .ok()?;
    let class = first_text(&ds, tags::SOP_CLASS_UID);
    let instance = first_text(&ds, tags::SOP_INSTANCE_UID);
    if !is_uid(&class) || !is_uid(&instance) {
        return None;
    }
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(class)
        .media_storage_sop_instance_uid(instance)
        .transfer_syntax("1.2.840.10008.1.2.1")
        .build()
        .ok()?;
    Some(ds.with_exact_meta(meta))
}

fn first_text(obj: &InMemDicomObject, tag: Tag) -> String {
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

/// Parse an instance, check that it is de-identified (by content) and return its index row.
pub fn index_entry(
    bytes: &[u8],
    dataset: &str,
    object: &str,
) -> Result<InstanceEntry, InstanceRefused> {
    let obj = parse(bytes)?;
    check_deidentified(&obj)?;
    let text = |tag| first_text(&obj, tag);
    let e = InstanceEntry {
        dataset: dataset.to_string(),
        object: object.to_string(),
        study_uid: text(tags::STUDY_INSTANCE_UID),
        series_uid: text(tags::SERIES_INSTANCE_UID),
        sop_uid: text(tags::SOP_INSTANCE_UID),
        sop_class_uid: text(tags::SOP_CLASS_UID),
        modality: text(tags::MODALITY),
        patient_id: text(tags::PATIENT_ID),
        patient_name: text(tags::PATIENT_NAME),
        study_date: text(tags::STUDY_DATE),
        series_number: text(tags::SERIES_NUMBER),
        instance_number: text(tags::INSTANCE_NUMBER),
    };
    for (what, uid) in [
        ("Study Instance UID", &e.study_uid),
        ("Series Instance UID", &e.series_uid),
        ("SOP Instance UID", &e.sop_uid),
        ("SOP Class UID", &e.sop_class_uid),
    ] {
        if !is_uid(uid) {
            return Err(InstanceRefused::MissingUid(what));
        }
    }
    Ok(e)
}

// Class and coding UIDs keep their registered value, and nesting is bounded, exactly as
// medfed-deid does it.
use medfed_deid::engine::{CLASS_UID_TAGS, MAX_DEPTH};

/// The dummy values medfed-deid writes for action D (Table E.1-1a), by VR.
fn is_dummy(vr: VR, v: &str) -> bool {
    match vr {
        VR::DA => v == "19000101",
        VR::DT => v == "19000101000000",
        VR::TM => v == "000000",
        VR::AS => v == "000Y",
        VR::UR => v == "urn:x-medfed:anonymized",
        _ => v == "ANONYMIZED",
    }
}

/// A patient pseudonym as medfed-deid makes them: `MF` and 16 base-32 characters.
fn is_pseudonym(v: &str) -> bool {
    v.len() == 18
        && v.starts_with("MF")
        && v[2..]
            .bytes()
            .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))
}

fn is_remapped_uid(u: &str) -> bool {
    u.starts_with("2.25.") || u.starts_with("1.2.840.10008.")
}

fn refuse(tag: Tag, what: &str) -> InstanceRefused {
    let name = StandardDataDictionary
        .by_tag(tag)
        .map(|e| e.alias)
        .unwrap_or("attribute");
    InstanceRefused::NotDeidentified(format!(
        "{name} ({:04X},{:04X}) {what}",
        tag.group(),
        tag.element()
    ))
}

/// The values of a primitive element, trimmed; `None` for binary values.
fn values(e: &InMemElement) -> Option<Vec<String>> {
    match e.value() {
        Value::Primitive(p) if matches!(e.vr(), VR::OB | VR::OW | VR::UN) => {
            (!p.is_empty()).then(|| vec!["<binary>".to_string()])
        }
        Value::Primitive(_) => e.value().to_multi_str().ok().map(|v| {
            v.iter()
                .map(|s| s.trim_matches(['\0', ' ']).to_string())
                .filter(|s| !s.is_empty())
                .collect()
        }),
        _ => None,
    }
}

/// Whether an element carries anything: a value, an item, a fragment.
fn has_content(e: &InMemElement) -> bool {
    match e.value() {
        Value::Sequence(s) => !s.items().is_empty(),
        Value::PixelSequence(_) => true,
        Value::Primitive(p) => !p.is_empty() && values(e).is_none_or(|v| !v.is_empty()),
    }
}

/// The options a site declared in (0012,0064); the Basic Profile code itself is required.
fn declared_options(obj: &InMemDicomObject) -> Result<Vec<DeidOption>, InstanceRefused> {
    let codes: Vec<String> = obj
        .element_opt(tags::DEIDENTIFICATION_METHOD_CODE_SEQUENCE)
        .ok()
        .flatten()
        .and_then(|e| e.items())
        .map(|items| {
            items
                .iter()
                .filter(|i| first_text(i, tags::CODING_SCHEME_DESIGNATOR) == "DCM")
                .map(|i| first_text(i, tags::CODE_VALUE))
                .collect()
        })
        .unwrap_or_default();
    if !codes.iter().any(|c| c == BASIC_PROFILE_CODE.0) {
        return Err(InstanceRefused::NotDeidentified(format!(
            "De-identification Method Code Sequence (0012,0064) does not name the Basic Application Confidentiality Profile ({})",
            BASIC_PROFILE_CODE.0
        )));
    }
    Ok(DeidOption::ALL
        .into_iter()
        .filter(|o| codes.iter().any(|c| c == o.cid7050().0))
        .collect())
}

/// The check, by content, that an object was de-identified under PS3.15 Annex E
/// (see the module documentation).
pub fn check_deidentified(obj: &DefaultDicomObject) -> Result<(), InstanceRefused> {
    if !first_text(obj, tags::PATIENT_IDENTITY_REMOVED).eq_ignore_ascii_case("YES") {
        return Err(InstanceRefused::NotDeidentified(
            "Patient Identity Removed (0012,0062) is not YES".into(),
        ));
    }
    let options = declared_options(obj)?;
    let retain_uids = options.contains(&DeidOption::RetainUids);
    let meta_uid = obj.meta().media_storage_sop_instance_uid();
    if !retain_uids && !is_remapped_uid(meta_uid.trim_end_matches(['\0', ' '])) {
        return Err(refuse(
            tags::MEDIA_STORAGE_SOP_INSTANCE_UID,
            "is not a remapped (2.25) UID and Retain UIDs is not declared",
        ));
    }
    let check = Check {
        table: ActionTable::embedded(),
        options: &options,
    };
    check.dataset(obj, 0)
}

struct Check<'a> {
    table: &'static ActionTable,
    options: &'a [DeidOption],
}

impl Check<'_> {
    fn has(&self, o: DeidOption) -> bool {
        self.options.contains(&o)
    }

    fn dataset(&self, ds: &InMemDicomObject, depth: usize) -> Result<(), InstanceRefused> {
        if depth > MAX_DEPTH {
            return Err(InstanceRefused::NotDeidentified(format!(
                "sequences nested deeper than {MAX_DEPTH} levels"
            )));
        }
        for e in ds {
            self.element(e, depth)?;
        }
        Ok(())
    }

    fn items(&self, e: &InMemElement, depth: usize) -> Result<(), InstanceRefused> {
        if let Some(items) = e.items() {
            for item in items {
                self.dataset(item, depth + 1)?;
            }
        }
        Ok(())
    }

    fn element(&self, e: &InMemElement, depth: usize) -> Result<(), InstanceRefused> {
        let tag = e.tag();
        if tag.element() == 0x0000 || tag.group() == 0x0002 {
            return Ok(());
        }
        if tag.group() == 0x0000 {
            return Err(refuse(tag, "is a command element in a stored object"));
        }
        if tag.group() % 2 == 1 {
            // Private creators may stay with the blocks a site certified as safe.
            if (0x0010..=0x00FF).contains(&tag.element()) || !has_content(e) {
                return Ok(());
            }
            if !self.has(DeidOption::RetainSafePrivate) {
                return Err(refuse(
                    tag,
                    "is private data and Retain Safe Private is not declared",
                ));
            }
            return self.items(e, depth);
        }
        // medfed-deid drops overlay and curve groups whole: nothing can vouch for a bitmap.
        if matches!(tag.group() & 0xFF00, 0x5000 | 0x6000) {
            return Err(refuse(tag, "is overlay or curve data"));
        }
        if tag == tags::PATIENT_ID || tag == tags::PATIENT_NAME {
            return match values(e) {
                Some(v) if v.iter().all(|s| is_pseudonym(s)) => Ok(()),
                _ => Err(refuse(tag, "is neither empty nor a patient pseudonym")),
            };
        }
        let Some(row) = self.table.row(tag) else {
            return self.unlisted(e, depth);
        };
        match row.code_for(self.options) {
            ActionCode::X | ActionCode::Z | ActionCode::XZ => {
                if has_content(e) {
                    return Err(refuse(
                        tag,
                        "has a value that the profile removes or empties",
                    ));
                }
                Ok(())
            }
            ActionCode::D | ActionCode::ZD | ActionCode::XD | ActionCode::XZD => match e.vr() {
                VR::SQ => self.items(e, depth),
                VR::UI => self.uids(e),
                VR::DA
                | VR::DT
                | VR::TM
                | VR::AS
                | VR::UR
                | VR::AE
                | VR::CS
                | VR::SH
                | VR::LO
                | VR::ST
                | VR::LT
                | VR::UT
                | VR::UC
                | VR::PN => match values(e) {
                    Some(v) if v.iter().all(|s| is_dummy(e.vr(), s)) => Ok(()),
                    _ => Err(refuse(tag, "is neither empty nor a dummy value")),
                },
                // Numbers and binary dummies are zeros; they cannot carry a name or a date.
                _ => Ok(()),
            },
            ActionCode::U | ActionCode::XZU => match e.vr() {
                VR::SQ => self.items(e, depth),
                VR::UI => self.uids(e),
                _ if has_content(e) => Err(refuse(tag, "should hold a remapped UID")),
                _ => Ok(()),
            },
            ActionCode::K | ActionCode::C => match e.vr() {
                VR::SQ => self.items(e, depth),
                VR::UI => self.uids(e),
                _ => Ok(()),
            },
        }
    }

    /// Instance UIDs are the site's `2.25.` remapping unless the site declared Retain UIDs.
    fn uids(&self, e: &InMemElement) -> Result<(), InstanceRefused> {
        if self.has(DeidOption::RetainUids) || CLASS_UID_TAGS.contains(&e.tag()) {
            return Ok(());
        }
        match values(e) {
            Some(v) if v.iter().all(|u| is_remapped_uid(u)) => Ok(()),
            _ => Err(refuse(
                e.tag(),
                "is not a remapped (2.25) UID and Retain UIDs is not declared",
            )),
        }
    }

    /// Attributes Table E.1-1 does not list: the rules medfed-deid applies to them.
    fn unlisted(&self, e: &InMemElement, depth: usize) -> Result<(), InstanceRefused> {
        match e.vr() {
            VR::SQ => self.items(e, depth),
            VR::UI => self.uids(e),
            VR::PN if has_content(e) => Err(refuse(e.tag(), "is a person's name")),
            _ if StandardDataDictionary.by_tag(e.tag()).is_none() && has_content(e) => {
                Err(refuse(e.tag(), "is not a standard attribute"))
            }
            _ => Ok(()),
        }
    }
}
