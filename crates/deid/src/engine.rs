//! The de-identifier proper: one DICOM object in, one de-identified object (or a refusal) out.
//!
//! Every element at every sequence depth passes through [`Deidentifier::clean_dataset`], which
//! asks the action table what to do and applies it for the element's VR, so that replacements
//! stay valid. Elements the table does not list are kept, except those that could still
//! identify: person names, instance UIDs, private data and attributes that the data
//! dictionary does not know (and so cannot vouch for).

use std::collections::HashMap;

use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
use dicom_core::header::Header;
use dicom_core::value::{DataSetSequence, PrimitiveValue, Value};
use dicom_core::{DataElement, Length, Tag, VR};
use dicom_dictionary_std::{StandardDataDictionary, tags, uids};
use dicom_object::mem::InMemElement;
use dicom_object::meta::FileMetaTableBuilder;
use dicom_object::{FileDicomObject, InMemDicomObject};

use crate::dates::shift_date_prefix;
use crate::freetext::{DatePolicy, OwnValues, REMOVED, TextCleaner};
use crate::pixels::{burned_in_reason, clean_burned_in_text, matching_signature};
use crate::profile::{BASIC_PROFILE_CODE, DeidOption, DeidProfile};
use crate::pseudonym::Pseudonymizer;
use crate::reid::OriginalIdentity;
use crate::table::{Action, ActionCode, ActionTable, TABLE_EDITION};

/// medfed's Implementation Class UID (a UUID-derived OID, PS3.5 B.2).
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.152197018227359716390853779395402212934";
/// medfed's Implementation Version Name (SH, at most 16 characters).
pub const IMPLEMENTATION_VERSION_NAME: &str = concat!("MEDFED_", env!("CARGO_PKG_VERSION"));

/// Retired, but such files still exist and must keep their byte order.
const EXPLICIT_VR_BIG_ENDIAN: &str = "1.2.840.10008.1.2.2";

const DUMMY_TEXT: &str = "ANONYMIZED";
const DUMMY_DATE: &str = "19000101";
const DUMMY_DATETIME: &str = "19000101000000";
const DUMMY_TIME: &str = "000000";
/// Nesting deeper than this is not a real object but an attack on the parser or on us.
pub const MAX_DEPTH: usize = 64;

/// Attributes of VR UI that name a class or a coding resource, not an instance: never remapped
/// (the hub's admission check keeps them as registered values too).
pub const CLASS_UID_TAGS: [Tag; 10] = [
    tags::SOP_CLASS_UID,
    tags::REFERENCED_SOP_CLASS_UID,
    tags::MEDIA_STORAGE_SOP_CLASS_UID,
    tags::AFFECTED_SOP_CLASS_UID,
    tags::REQUESTED_SOP_CLASS_UID,
    tags::REFERENCED_SOP_CLASS_UID_IN_FILE,
    tags::REFERENCED_TRANSFER_SYNTAX_UID_IN_FILE,
    tags::TRANSFER_SYNTAX_UID,
    tags::CODING_SCHEME_UID,
    tags::MAPPING_RESOURCE_UID,
];

/// Why one object was not de-identified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// Deliberately not processed (policy): burned-in text, DICOMDIR, a pixel layout that
    /// cannot be cleaned, and so on.
    Refused(String),
    /// The object could not be read or written.
    Error(String),
}

impl Rejection {
    pub fn reason(&self) -> &str {
        match self {
            Self::Refused(r) | Self::Error(r) => r,
        }
    }
}

/// A de-identified object and what the site must remember about it.
#[derive(Debug)]
pub struct Deidentified {
    pub object: FileDicomObject<InMemDicomObject>,
    /// The patient pseudonym and the identity it stands for (for the re-identification table).
    pub patient: Option<(String, OriginalIdentity)>,
}

/// Per-object facts gathered before any element changes.
struct ObjectContext {
    date_shift_days: i64,
    /// Finds this object's identifying values, and the patterns of identifying text, in free
    /// text: what "clean" removes.
    text: TextCleaner,
    patient_pseudonym: String,
}

/// Applies the action table and a [`DeidProfile`] with keys from a [`Pseudonymizer`].
pub struct Deidentifier<'a> {
    table: &'static ActionTable,
    profile: &'a DeidProfile,
    pseudonymizer: &'a Pseudonymizer,
}

impl<'a> Deidentifier<'a> {
    pub fn new(profile: &'a DeidProfile, pseudonymizer: &'a Pseudonymizer) -> Self {
        Self {
            table: ActionTable::embedded(),
            profile,
            pseudonymizer,
        }
    }

    /// De-identifies one file object: data set, file meta group and the markers of PS3.15
    /// E.1.1. Pixel data is carried through byte for byte unless clean-pixel-data blanks it.
    pub fn deidentify(
        &self,
        file: FileDicomObject<InMemDicomObject>,
    ) -> Result<Deidentified, Rejection> {
        let meta = file.meta().clone();
        let sop_class = meta
            .media_storage_sop_class_uid()
            .trim_end_matches('\0')
            .to_string();
        if sop_class == uids::MEDIA_STORAGE_DIRECTORY_STORAGE {
            return Err(Rejection::Refused(
                "DICOMDIR (media directory): it indexes the original files by their identifiers; build a new one for the output set".into(),
            ));
        }
        let mut ts = meta.transfer_syntax().trim_end_matches('\0').to_string();
        let mut file = file;

        // The pixel gate. A matching signature is the site's statement that this device burns
        // text in, so with clean-pixel-data it is applied (with OCR) whether or not the object
        // admits to burned-in text; objects that may carry text are searched by OCR.
        let cleaning = self.profile.has(DeidOption::CleanPixelData);
        let signature = if cleaning {
            matching_signature(&file, &self.profile.pixel_signatures).cloned()
        } else {
            None
        };
        let mut pixel_method = Vec::new();
        match (burned_in_reason(&file), signature) {
            (None, None) => {}
            (Some(reason), _) if !cleaning => {
                return Err(Rejection::Refused(format!(
                    "{reason}; refusing without the clean-pixel-data option"
                )));
            }
            (_, sig) => {
                let done =
                    clean_burned_in_text(&mut file, sig.as_ref()).map_err(Rejection::Refused)?;
                if let Some(new_ts) = done.transfer_syntax {
                    ts = new_ts;
                }
                pixel_method = done.description;
            }
        }
        let dataset = file.into_inner();

        let patient_key = patient_key(&dataset);
        let patient_pseudonym = self.pseudonymizer.patient_pseudonym(&patient_key);
        let original = OriginalIdentity {
            patient_id: identifier(&dataset, tags::PATIENT_ID).unwrap_or_default(),
            patient_name: identifier(&dataset, tags::PATIENT_NAME).unwrap_or_default(),
        };
        let date_shift_days = self.pseudonymizer.date_shift_days(&patient_key);
        let ctx = ObjectContext {
            date_shift_days,
            text: TextCleaner::new(
                &collect_identifiers(&dataset, self.profile),
                self.free_text_dates(date_shift_days),
            ),
            patient_pseudonym: patient_pseudonym.clone(),
        };

        let mut cleaned = self.clean_dataset(dataset, &ctx, 0)?;
        self.put_markers(&mut cleaned);
        if !pixel_method.is_empty() {
            append_method(&mut cleaned, pixel_method);
        }
        if ts != EXPLICIT_VR_BIG_ENDIAN {
            pixel_words_as_bytes(&mut cleaned);
        }

        let new_sop_instance = string_of(&cleaned, tags::SOP_INSTANCE_UID).unwrap_or_else(|| {
            let original = meta.media_storage_sop_instance_uid().trim_end_matches('\0');
            if self.profile.has(DeidOption::RetainUids) {
                original.to_string()
            } else {
                self.pseudonymizer.remap_uid(original)
            }
        });
        let new_meta = FileMetaTableBuilder::new()
            .media_storage_sop_class_uid(sop_class)
            .media_storage_sop_instance_uid(new_sop_instance)
            .transfer_syntax(ts)
            .implementation_class_uid(IMPLEMENTATION_CLASS_UID)
            .implementation_version_name(IMPLEMENTATION_VERSION_NAME)
            .build()
            .map_err(|e| Rejection::Error(format!("cannot build the file meta group: {e}")))?;
        Ok(Deidentified {
            object: cleaned.with_exact_meta(new_meta),
            patient: Some((patient_pseudonym, original)),
        })
    }

    /// Whether [`Self::deidentify`] looks at Pixel Data. When it does not, a batch leaves the
    /// Pixel Data in the input file and copies its bytes unread (it would pass through byte
    /// for byte anyway), so memory holds only the header. Keep this true for every path of
    /// the pixel gate that reads pixels.
    pub fn reads_pixel_data(&self) -> bool {
        self.profile.has(DeidOption::CleanPixelData)
    }

    fn has(&self, option: DeidOption) -> bool {
        self.profile.has(option)
    }

    /// Dates inside free text follow the date attributes: kept, shifted by the patient's
    /// shift, or removed.
    fn free_text_dates(&self, shift_days: i64) -> DatePolicy {
        if self.has(DeidOption::RetainLongFullDates) {
            DatePolicy::Keep
        } else if self.has(DeidOption::RetainLongModifiedDates) {
            DatePolicy::Shift(shift_days)
        } else {
            DatePolicy::Remove
        }
    }

    /// Text Value (SR TEXT items, acquisition context) and Unformatted Text Value (graphic
    /// annotations): no row of Table E.1-1 lists them, yet they hold whatever was typed. They
    /// follow the row of the sequence that holds them: D (a dummy; Type 1 in a TEXT item, so
    /// never empty) unless the option that cleans that content is on.
    fn clean_typed_text(
        &self,
        elem: InMemElement,
        ctx: &ObjectContext,
        clean: DeidOption,
    ) -> InMemElement {
        let (tag, vr) = (elem.tag(), elem.vr());
        let values = match elem.value().to_multi_str() {
            Ok(v) if self.has(clean) => v.to_vec(),
            _ => return DataElement::new(tag, vr, PrimitiveValue::from(DUMMY_TEXT)),
        };
        let cleaned = values
            .iter()
            .map(|v| fit_to_vr(vr, ctx.text.clean(v)))
            .collect();
        strs_element(tag, vr, cleaned)
    }

    /// The safety net for free text that Table E.1-1 does not list (and so keeps): the object's
    /// own identifying values are removed from it all the same. Values an option keeps (K) stay
    /// as they are: keeping them is what the option is for.
    fn clean_kept_text(&self, elem: InMemElement, ctx: &ObjectContext) -> InMemElement {
        let vr = elem.vr();
        if !matches!(vr, VR::SH | VR::LO | VR::ST | VR::LT | VR::UT | VR::UC) {
            return elem;
        }
        let Ok(values) = elem.value().to_multi_str() else {
            return elem;
        };
        let cleaned: Vec<String> = values.iter().map(|v| ctx.text.clean_own(v)).collect();
        if cleaned.iter().zip(values.iter()).all(|(a, b)| a == b) {
            return elem;
        }
        let cleaned = cleaned.into_iter().map(|v| fit_to_vr(vr, v)).collect();
        strs_element(elem.tag(), vr, cleaned)
    }

    /// Cleans one data set (the top level or a sequence item).
    fn clean_dataset(
        &self,
        dataset: InMemDicomObject,
        ctx: &ObjectContext,
        depth: usize,
    ) -> Result<InMemDicomObject, Rejection> {
        if depth > MAX_DEPTH {
            return Err(Rejection::Refused(format!(
                "sequences nested deeper than {MAX_DEPTH} levels"
            )));
        }
        let creators = private_creators(&dataset);
        let mut kept_private_blocks: Vec<(u16, u8)> = Vec::new();
        let mut out: Vec<InMemElement> = Vec::with_capacity(64);
        let mut creator_elements: Vec<InMemElement> = Vec::new();
        for elem in dataset {
            let tag = elem.tag();
            // Command elements and group lengths do not belong in a stored object, and the
            // meta group is rebuilt from scratch.
            if tag.group() == 0x0000 || tag.element() == 0x0000 || tag.group() == 0x0002 {
                continue;
            }
            if tag.group() % 2 == 1 {
                if (0x0010..=0x00FF).contains(&tag.element()) {
                    creator_elements.push(elem);
                    continue;
                }
                let block = (tag.element() >> 8) as u8;
                if self.is_safe_private(&creators, tag) {
                    kept_private_blocks.push((tag.group(), block));
                    if let Some(e) = self.clean_kept(elem, ctx, depth)? {
                        out.push(e);
                    }
                }
                continue;
            }
            // Overlays and curves: the table removes their data; medfed cannot inspect a
            // bitmap for text, so the whole repeating group goes, keeping the object valid.
            if matches!(tag.group() & 0xFF00, 0x5000 | 0x6000) {
                continue;
            }
            let elem = reinterpret_un(elem);
            if let Some(e) = self.clean_element(elem, ctx, depth)? {
                out.push(e);
            }
        }
        for creator in creator_elements {
            let block = (creator.tag().group(), creator.tag().element() as u8);
            if kept_private_blocks.contains(&block) {
                out.push(creator);
            }
        }
        Ok(InMemDicomObject::from_element_iter(out))
    }

    fn is_safe_private(&self, creators: &HashMap<(u16, u8), String>, tag: Tag) -> bool {
        if !self.has(DeidOption::RetainSafePrivate) || self.profile.safe_private.is_empty() {
            return false;
        }
        let Some(creator) = creators.get(&(tag.group(), (tag.element() >> 8) as u8)) else {
            return false;
        };
        self.profile.safe_private.iter().any(|s| {
            s.group == tag.group()
                && s.element == (tag.element() & 0xFF) as u8
                && s.creator.trim() == creator
        })
    }

    fn clean_element(
        &self,
        elem: InMemElement,
        ctx: &ObjectContext,
        depth: usize,
    ) -> Result<Option<InMemElement>, Rejection> {
        let tag = elem.tag();
        if tag == tags::PATIENT_ID || tag == tags::PATIENT_NAME {
            let vr = if tag == tags::PATIENT_ID {
                VR::LO
            } else {
                VR::PN
            };
            return Ok(Some(DataElement::new(
                tag,
                vr,
                PrimitiveValue::from(ctx.patient_pseudonym.as_str()),
            )));
        }
        if tag == tags::TEXT_VALUE && elem.vr() != VR::SQ {
            return Ok(Some(self.clean_typed_text(
                elem,
                ctx,
                DeidOption::CleanStructuredContent,
            )));
        }
        if tag == tags::UNFORMATTED_TEXT_VALUE && elem.vr() != VR::SQ {
            return Ok(Some(self.clean_typed_text(
                elem,
                ctx,
                DeidOption::CleanGraphics,
            )));
        }
        let code = match self.table.row(tag) {
            Some(row) => row.code_for(self.profile.options()),
            None => return self.clean_unlisted(elem, ctx, depth),
        };
        if let Some(kept_empty) = type2_instead_of_removal(code, &elem) {
            return Ok(kept_empty);
        }
        let action = code.resolve();
        match action {
            Action::Remove => Ok(None),
            Action::Empty => Ok(Some(empty_like(&elem))),
            Action::Keep => self.clean_kept(elem, ctx, depth),
            Action::Dummy => self.dummy(elem, ctx, depth).map(Some),
            Action::RemapUid => match elem.vr() {
                VR::UI => Ok(Some(self.remap_uids(elem))),
                VR::SQ => self.recurse(elem, ctx, depth).map(Some),
                _ => Ok(Some(empty_like(&elem))),
            },
            Action::Clean => self.clean_value(elem, ctx, depth),
        }
    }

    /// Attributes that Table E.1-1 does not list.
    fn clean_unlisted(
        &self,
        elem: InMemElement,
        ctx: &ObjectContext,
        depth: usize,
    ) -> Result<Option<InMemElement>, Rejection> {
        let tag = elem.tag();
        match elem.vr() {
            VR::SQ => self.recurse(elem, ctx, depth).map(Some),
            VR::UI if !self.has(DeidOption::RetainUids) && !CLASS_UID_TAGS.contains(&tag) => {
                Ok(Some(self.remap_uids(elem)))
            }
            // A person's name anywhere is identifying, listed or not.
            VR::PN => Ok(Some(empty_like(&elem))),
            // An attribute the dictionary does not know (newer than it, or made up) cannot be
            // vouched for.
            VR::UN => Ok(None),
            _ if StandardDataDictionary.by_tag(tag).is_none() => Ok(None),
            _ => Ok(Some(self.clean_kept_text(elem, ctx))),
        }
    }

    /// Keep: the value stays; a sequence keeps its items, each cleaned (Table E.1-1a, K).
    fn clean_kept(
        &self,
        elem: InMemElement,
        ctx: &ObjectContext,
        depth: usize,
    ) -> Result<Option<InMemElement>, Rejection> {
        match elem.value() {
            Value::Sequence(_) => self.recurse(elem, ctx, depth).map(Some),
            _ => Ok(Some(elem)),
        }
    }

    fn recurse(
        &self,
        elem: InMemElement,
        ctx: &ObjectContext,
        depth: usize,
    ) -> Result<InMemElement, Rejection> {
        let tag = elem.tag();
        let (header, value) = elem.into_parts();
        match value {
            Value::Sequence(seq) => {
                let items = seq
                    .into_items()
                    .into_iter()
                    .map(|item| self.clean_dataset(item, ctx, depth + 1))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(DataElement::new(
                    tag,
                    VR::SQ,
                    DataSetSequence::new(items, Length::UNDEFINED),
                ))
            }
            other => Ok(DataElement::new(tag, header.vr(), other)),
        }
    }

    fn remap_uids(&self, elem: InMemElement) -> InMemElement {
        let tag = elem.tag();
        let values: Vec<String> = match elem.value().to_multi_str() {
            Ok(v) => v
                .iter()
                .map(|u| u.trim_end_matches(['\0', ' ']).to_string())
                .collect(),
            Err(_) => return DataElement::empty(tag, VR::UI),
        };
        let mapped: Vec<String> = values
            .iter()
            .filter(|u| !u.is_empty())
            .map(|u| {
                // Well-known UIDs of the standard itself (classes, syntaxes, frames of
                // reference such as the Talairach space) identify nothing.
                if u.starts_with("1.2.840.10008.") {
                    u.clone()
                } else {
                    self.pseudonymizer.remap_uid(u)
                }
            })
            .collect();
        strs_element(tag, VR::UI, mapped)
    }

    fn dummy(
        &self,
        elem: InMemElement,
        ctx: &ObjectContext,
        depth: usize,
    ) -> Result<InMemElement, Rejection> {
        let tag = elem.tag();
        let vr = elem.vr();
        let text = |s: &str| DataElement::new(tag, vr, PrimitiveValue::from(s));
        Ok(match vr {
            // A dummy sequence keeps its structure with every item cleaned: an empty one
            // would drop what a Type 1 sequence must hold.
            VR::SQ => return self.recurse(elem, ctx, depth),
            VR::UI => self.remap_uids(elem),
            VR::DA => text(DUMMY_DATE),
            VR::DT => text(DUMMY_DATETIME),
            VR::TM => text(DUMMY_TIME),
            VR::AS => text("000Y"),
            VR::IS | VR::DS => text("0"),
            VR::AE | VR::CS | VR::SH | VR::LO | VR::ST | VR::LT | VR::UT | VR::UC | VR::PN => {
                text(DUMMY_TEXT)
            }
            VR::UR => text("urn:x-medfed:anonymized"),
            VR::US => DataElement::new(tag, vr, PrimitiveValue::from(0u16)),
            VR::SS => DataElement::new(tag, vr, PrimitiveValue::from(0i16)),
            VR::UL => DataElement::new(tag, vr, PrimitiveValue::from(0u32)),
            VR::SL => DataElement::new(tag, vr, PrimitiveValue::from(0i32)),
            VR::UV => DataElement::new(
                tag,
                vr,
                PrimitiveValue::U64(std::iter::once(0u64).collect()),
            ),
            VR::SV => DataElement::new(
                tag,
                vr,
                PrimitiveValue::I64(std::iter::once(0i64).collect()),
            ),
            VR::FL => DataElement::new(tag, vr, PrimitiveValue::from(0f32)),
            VR::FD => DataElement::new(tag, vr, PrimitiveValue::from(0f64)),
            VR::AT => elem,
            _ => DataElement::new(tag, vr, PrimitiveValue::U8([0u8, 0u8].into())),
        })
    }

    /// Clean (C): replace with values of similar meaning that do not identify.
    fn clean_value(
        &self,
        elem: InMemElement,
        ctx: &ObjectContext,
        depth: usize,
    ) -> Result<Option<InMemElement>, Rejection> {
        let tag = elem.tag();
        let vr = elem.vr();
        let values: Vec<String> = match (vr, elem.value().to_multi_str()) {
            (VR::SQ, _) => return self.recurse(elem, ctx, depth).map(Some),
            (VR::UI, _) => return Ok(Some(self.remap_uids(elem))),
            (_, Ok(v)) => v.to_vec(),
            // Binary content (a maker note, say) cannot be inspected, so it cannot be cleaned.
            (_, Err(_)) => return Ok(None),
        };
        let cleaned: Vec<String> = match vr {
            VR::DA | VR::DT => values
                .iter()
                .map(|v| {
                    if v.trim().is_empty() {
                        String::new()
                    } else {
                        shift_date_prefix(v, ctx.date_shift_days).unwrap_or_else(|| {
                            if vr == VR::DA {
                                DUMMY_DATE
                            } else {
                                DUMMY_DATETIME
                            }
                            .to_string()
                        })
                    }
                })
                .collect(),
            VR::TM => values,
            VR::AE => values
                .iter()
                .map(|v| self.pseudonymizer.ae_pseudonym(v))
                .collect(),
            VR::LO | VR::SH | VR::ST | VR::LT | VR::UT | VR::UC | VR::PN => values
                .iter()
                .map(|v| fit_to_vr(vr, ctx.text.clean(v)))
                .collect(),
            // Codes: patterns would break them, but the object's own values still go (and CS
            // allows neither brackets nor lower case).
            VR::CS => values
                .iter()
                .map(|v| fit_to_vr(vr, ctx.text.clean_own(v).replace(REMOVED, "REMOVED")))
                .collect(),
            VR::OB | VR::OW | VR::UN => return Ok(None),
            _ => values,
        };
        Ok(Some(strs_element(tag, vr, cleaned)))
    }

    /// The markers of PS3.15 E.1.1: identity removed, the method and its CID 7050 codes, and
    /// what happened to dates.
    fn put_markers(&self, ds: &mut InMemDicomObject) {
        ds.put(DataElement::new(
            tags::PATIENT_IDENTITY_REMOVED,
            VR::CS,
            PrimitiveValue::from("YES"),
        ));
        let mut method = vec![
            format!("medfed {}", env!("CARGO_PKG_VERSION")),
            TABLE_EDITION.to_string(),
            "Basic Profile".to_string(),
        ];
        method.extend(self.profile.options().iter().map(|o| o.name().to_string()));
        ds.put(strs_element(tags::DEIDENTIFICATION_METHOD, VR::LO, method));

        let code = |(value, meaning): (&str, &str)| {
            InMemDicomObject::from_element_iter([
                DataElement::new(tags::CODE_VALUE, VR::SH, PrimitiveValue::from(value)),
                DataElement::new(
                    tags::CODING_SCHEME_DESIGNATOR,
                    VR::SH,
                    PrimitiveValue::from("DCM"),
                ),
                DataElement::new(tags::CODE_MEANING, VR::LO, PrimitiveValue::from(meaning)),
            ])
        };
        let mut codes = vec![code(BASIC_PROFILE_CODE)];
        codes.extend(self.profile.options().iter().map(|o| code(o.cid7050())));
        ds.put(DataElement::new(
            tags::DEIDENTIFICATION_METHOD_CODE_SEQUENCE,
            VR::SQ,
            DataSetSequence::new(codes, Length::UNDEFINED),
        ));
        let temporal = if self.has(DeidOption::RetainLongFullDates) {
            "UNMODIFIED"
        } else if self.has(DeidOption::RetainLongModifiedDates) {
            "MODIFIED"
        } else {
            "REMOVED"
        };
        ds.put(DataElement::new(
            tags::LONGITUDINAL_TEMPORAL_INFORMATION_MODIFIED,
            VR::CS,
            PrimitiveValue::from(temporal),
        ));
    }
}

/// Adds what clean-pixel-data did to Deidentification Method (0012,0063).
fn append_method(ds: &mut InMemDicomObject, more: Vec<String>) {
    let mut values: Vec<String> = ds
        .get(tags::DEIDENTIFICATION_METHOD)
        .and_then(|e| e.value().to_multi_str().ok())
        .map(|v| v.to_vec())
        .unwrap_or_default();
    values.extend(more);
    ds.put(strs_element(tags::DEIDENTIFICATION_METHOD, VR::LO, values));
}

/// Holds native OW pixel data as little-endian bytes: the same bytes on the wire, but the
/// encoder writes them in one piece instead of word by word (a third of the run time on CT).
fn pixel_words_as_bytes(ds: &mut InMemDicomObject) {
    let Some(elem) = ds.get(tags::PIXEL_DATA) else {
        return;
    };
    let Value::Primitive(PrimitiveValue::U16(words)) = elem.value() else {
        return;
    };
    #[cfg(target_endian = "little")]
    let bytes: Vec<u8> = bytemuck::cast_slice::<u16, u8>(words).to_vec();
    #[cfg(not(target_endian = "little"))]
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    let vr = elem.vr();
    ds.put(DataElement::new(
        tags::PIXEL_DATA,
        vr,
        PrimitiveValue::U8(bytes.into()),
    ));
}

fn string_of(ds: &InMemDicomObject, tag: Tag) -> Option<String> {
    let v = ds.get(tag)?.to_str().ok()?;
    let v = v.trim_matches([' ', '\0']);
    (!v.is_empty()).then(|| v.to_string())
}

/// An identifying value in one canonical spelling, whatever its encoding: UN read by its
/// dictionary VR (a writer that did not know the attribute sends its raw bytes, padding
/// included), padding (spaces, NULs) stripped from both ends as PS3.5 6.2 makes it
/// insignificant for LO, SH and PN, and for PN the empty trailing components
/// (`DOE^JOHN^^^` is `DOE^JOHN`). So one patient gets one pseudonym and one date shift from
/// every object, however each was written.
fn identifier(ds: &InMemDicomObject, tag: Tag) -> Option<String> {
    let elem = reinterpret_un(ds.get(tag)?.clone());
    let text = elem.value().to_str().ok()?;
    let mut v = text.trim_matches([' ', '\0']);
    if elem.vr() == VR::PN {
        v = v.trim_end_matches(['^', '=', ' ']);
    }
    (!v.is_empty()).then(|| v.to_string())
}

/// What identifies the patient for pseudonyms and the date shift: Patient ID, else the name,
/// else the study (so unrelated anonymous objects do not share one pseudonym).
fn patient_key(ds: &InMemDicomObject) -> String {
    if let Some(id) = identifier(ds, tags::PATIENT_ID) {
        return format!("id:{id}");
    }
    if let Some(name) = identifier(ds, tags::PATIENT_NAME) {
        return format!("name:{name}");
    }
    format!(
        "study:{}",
        string_of(ds, tags::STUDY_INSTANCE_UID).unwrap_or_default()
    )
}

/// Attributes whose values identify someone and are matched with or without separators.
#[allow(deprecated)] // retired attributes, but old objects still carry them
const ID_TAGS: [Tag; 11] = [
    tags::PATIENT_ID,
    tags::OTHER_PATIENT_I_DS,
    tags::ACCESSION_NUMBER,
    tags::MEDICAL_RECORD_LOCATOR,
    tags::PATIENT_TELEPHONE_NUMBERS,
    tags::ADMISSION_ID,
    tags::STUDY_ID,
    tags::REQUESTED_PROCEDURE_ID,
    tags::PERFORMED_PROCEDURE_STEP_ID,
    tags::SCHEDULED_PROCEDURE_STEP_ID,
    tags::FILLER_ORDER_NUMBER_IMAGING_SERVICE_REQUEST,
];
/// Device identifiers: identifying unless retain-device-identity keeps them.
const DEVICE_TAGS: [Tag; 2] = [tags::STATION_NAME, tags::DEVICE_SERIAL_NUMBER];
/// Attributes matched as a whole phrase.
const PHRASE_TAGS: [Tag; 4] = [
    tags::PATIENT_ADDRESS,
    tags::ISSUER_OF_PATIENT_ID,
    tags::REQUESTING_SERVICE,
    tags::REFERRING_PHYSICIAN_ADDRESS,
];
/// Institution phrases: identifying unless retain-institution-identity keeps them.
const INSTITUTION_TAGS: [Tag; 3] = [
    tags::INSTITUTION_NAME,
    tags::INSTITUTION_ADDRESS,
    tags::INSTITUTIONAL_DEPARTMENT_NAME,
];

/// The object's identifying values, at every depth, before anything changes: every person
/// name, the identifiers, the addresses and institution, the birth date. What an option keeps
/// in its own attribute is not searched for in text either.
fn collect_identifiers(ds: &InMemDicomObject, profile: &DeidProfile) -> OwnValues {
    let mut found = OwnValues::default();
    collect_identifiers_into(ds, profile, &mut found, 0);
    if let Some(dob) = string_of(ds, tags::PATIENT_BIRTH_DATE) {
        found.dates.push(dob);
    }
    found
}

fn collect_identifiers_into(
    ds: &InMemDicomObject,
    profile: &DeidProfile,
    found: &mut OwnValues,
    depth: usize,
) {
    if depth > MAX_DEPTH {
        return;
    }
    let device = !profile.has(DeidOption::RetainDeviceIdentity);
    let institution = !profile.has(DeidOption::RetainInstitutionIdentity);
    for elem in ds.iter() {
        if let Value::Sequence(seq) = elem.value() {
            for item in seq.items() {
                collect_identifiers_into(item, profile, found, depth + 1);
            }
            continue;
        }
        let tag = elem.tag();
        let list = if elem.vr() == VR::PN {
            &mut found.names
        } else if ID_TAGS.contains(&tag) || (device && DEVICE_TAGS.contains(&tag)) {
            &mut found.ids
        } else if PHRASE_TAGS.contains(&tag) || (institution && INSTITUTION_TAGS.contains(&tag)) {
            &mut found.phrases
        } else {
            continue;
        };
        // A value sent as UN is read by its dictionary VR, like the attribute itself.
        let elem = reinterpret_un(elem.clone());
        let Ok(values) = elem.value().to_multi_str() else {
            continue;
        };
        list.extend(
            values
                .iter()
                .map(|v| v.trim_matches([' ', '\0']).to_string())
                .filter(|v| !v.is_empty()),
        );
    }
}

/// Truncates a cleaned value to its VR's maximum length (PS3.5 6.2): a marker can be longer
/// than what it replaced.
fn fit_to_vr(vr: VR, value: String) -> String {
    let max = match vr {
        VR::SH | VR::CS => 16,
        VR::LO | VR::PN => 64,
        VR::ST => 1024,
        VR::LT => 10240,
        _ => return value,
    };
    if value.chars().count() <= max {
        return value;
    }
    value
        .chars()
        .take(max)
        .collect::<String>()
        .trim_end()
        .to_string()
}

/// The private creators of a data set, by (group, block).
fn private_creators(ds: &InMemDicomObject) -> HashMap<(u16, u8), String> {
    ds.iter()
        .filter(|e| e.tag().group() % 2 == 1 && (0x0010..=0x00FF).contains(&e.tag().element()))
        .filter_map(|e| {
            let name = e
                .value()
                .to_str()
                .ok()?
                .trim_matches([' ', '\0'])
                .to_string();
            Some(((e.tag().group(), e.tag().element() as u8), name))
        })
        .collect()
}

/// Sequences that the table removes or empties (X/Z) and that PS3.3 makes Type 2 in every
/// module that has them, so they are emptied (zero items), never removed.
const TYPE2_SEQUENCES: [Tag; 1] = [tags::ACQUISITION_CONTEXT_SEQUENCE];

/// Attributes that the table removes (X) although some module of PS3.3 makes them Type 2 or
/// 2C (Responsible Person and Organization: 2C, required for an animal patient), and none
/// makes them Type 1 or 1C (an empty Type 1C value is an error, so Requested Procedure ID,
/// 1C in the Request Attributes Macro, is not here): emptied instead, so that no IOD loses
/// an attribute it requires.
const TYPE2_REMOVED: [Tag; 4] = [
    tags::STUDY_DESCRIPTION,
    tags::RESPONSIBLE_PERSON,
    tags::RESPONSIBLE_ORGANIZATION,
    tags::SOURCE_MANUFACTURER,
];

/// Where removal would cost IOD conformance, the attribute stays with a zero-length value:
/// `Some(Some(empty))`, or `Some(None)` for a sequence that must go; `None` when the table's
/// action applies as it is.
///
/// The rule (PS3.15 E.1-1: X/Z is "X unless Z is required to maintain IOD conformance"),
/// without evaluating the object's IOD: a zero-length value is valid wherever an attribute
/// is Type 2 or 3 and carries nothing, so X/Z empties values (the general path) and so does
/// X on the attributes some module makes Type 2 or 2C ([`TYPE2_REMOVED`], from the module
/// tables of dicom3tools). A sequence with zero items, though, is invalid where it is Type 3
/// (dciodvfy: "Bad Sequence number of Items 0"), so an X/Z sequence is emptied only where PS3.3
/// makes it Type 2 everywhere ([`TYPE2_SEQUENCES`]) and removed otherwise.
fn type2_instead_of_removal(code: ActionCode, elem: &InMemElement) -> Option<Option<InMemElement>> {
    let tag = elem.tag();
    match (code, elem.vr()) {
        (ActionCode::XZ, VR::SQ) => Some(TYPE2_SEQUENCES.contains(&tag).then(|| empty_like(elem))),
        (ActionCode::X, vr) if vr != VR::SQ && TYPE2_REMOVED.contains(&tag) => {
            Some(Some(empty_like(elem)))
        }
        _ => None,
    }
}

fn empty_like(elem: &InMemElement) -> InMemElement {
    if elem.vr() == VR::SQ {
        DataElement::new(
            elem.tag(),
            VR::SQ,
            DataSetSequence::<InMemDicomObject>::new(Vec::new(), Length::UNDEFINED),
        )
    } else {
        DataElement::empty(elem.tag(), elem.vr())
    }
}

fn strs_element(tag: Tag, vr: VR, values: Vec<String>) -> InMemElement {
    match values.len() {
        0 => DataElement::empty(tag, vr),
        1 => DataElement::new(
            tag,
            vr,
            PrimitiveValue::from(values.into_iter().next().expect("one value")),
        ),
        _ => DataElement::new(tag, vr, PrimitiveValue::Strs(values.into())),
    }
}

/// An element that arrived as UN (a writer that did not know it) although the dictionary
/// knows its VR: a text value is decoded as such, a sequence parsed as Implicit VR Little
/// Endian (PS3.5 6.2.2), so the table's action can apply to what is really inside. What cannot
/// be read stays UN, and unlisted UN elements are removed.
pub(crate) fn reinterpret_un(elem: InMemElement) -> InMemElement {
    if elem.vr() != VR::UN {
        return elem;
    }
    let tag = elem.tag();
    let Some(vr) = StandardDataDictionary.by_tag(tag).map(|e| e.vr().relaxed()) else {
        return elem;
    };
    let Ok(bytes) = elem.value().to_bytes() else {
        return elem;
    };
    match vr {
        // Parsed within its own bytes: a corrupt length inside allocates nothing.
        VR::SQ => crate::reader::sequence_from_un(tag, &bytes).unwrap_or(elem),
        VR::AE
        | VR::AS
        | VR::CS
        | VR::DA
        | VR::DS
        | VR::DT
        | VR::IS
        | VR::LO
        | VR::LT
        | VR::PN
        | VR::SH
        | VR::ST
        | VR::TM
        | VR::UC
        | VR::UI
        | VR::UR
        | VR::UT => {
            // UTF-8 where the bytes are UTF-8 (ISO_IR 192, and all ASCII); else Latin-1,
            // which maps every byte, so nothing is lost or invented.
            let text: String = match std::str::from_utf8(&bytes) {
                Ok(t) => t.to_string(),
                Err(_) => bytes.iter().map(|&b| b as char).collect(),
            };
            let values: Vec<String> = text
                .split('\\')
                .map(|v| v.trim_end_matches(['\0', ' ']).to_string())
                .collect();
            strs_element(tag, vr, values)
        }
        // Binary values as Little Endian, the byte order of the Implicit VR encoding that UN
        // stands in for (PS3.5 6.2.2); a length that is no multiple of the value size is no
        // such value and stays UN. Frame Increment Pointer (AT) is the one that matters: an
        // object without it is invalid.
        VR::AT | VR::US | VR::SS | VR::UL | VR::SL | VR::FL | VR::FD | VR::UV | VR::SV => {
            let size = match vr {
                VR::US | VR::SS => 2,
                VR::FD | VR::UV | VR::SV => 8,
                _ => 4,
            };
            if bytes.is_empty() || bytes.len() % size != 0 {
                return elem;
            }
            let words = bytes.chunks_exact(size);
            let u16s = |c: &[u8]| u16::from_le_bytes([c[0], c[1]]);
            let arr = |c: &[u8]| -> [u8; 8] {
                let mut a = [0u8; 8];
                a[..c.len()].copy_from_slice(c);
                a
            };
            let value = match vr {
                VR::AT => {
                    PrimitiveValue::Tags(words.map(|c| Tag(u16s(c), u16s(&c[2..]))).collect())
                }
                VR::US => PrimitiveValue::U16(words.map(u16s).collect()),
                VR::SS => {
                    PrimitiveValue::I16(words.map(|c| i16::from_le_bytes([c[0], c[1]])).collect())
                }
                VR::UL => PrimitiveValue::U32(
                    words
                        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect(),
                ),
                VR::SL => PrimitiveValue::I32(
                    words
                        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect(),
                ),
                VR::FL => PrimitiveValue::F32(
                    words
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect(),
                ),
                VR::FD => PrimitiveValue::F64(words.map(|c| f64::from_le_bytes(arr(c))).collect()),
                VR::UV => PrimitiveValue::U64(words.map(|c| u64::from_le_bytes(arr(c))).collect()),
                _ => PrimitiveValue::I64(words.map(|c| i64::from_le_bytes(arr(c))).collect()),
            };
            DataElement::new(tag, vr, value)
        }
        _ => elem,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_found_in_free_text_in_any_spelling() {
        let ds = InMemDicomObject::from_element_iter([
            DataElement::new(
                tags::PATIENT_NAME,
                VR::PN,
                PrimitiveValue::from("Doe^Johanna"),
            ),
            DataElement::new(
                tags::PATIENT_BIRTH_DATE,
                VR::DA,
                PrimitiveValue::from("19610203"),
            ),
        ]);
        let own = collect_identifiers(&ds, &DeidProfile::default());
        assert_eq!(own.names, ["Doe^Johanna"]);
        assert_eq!(own.dates, ["19610203"]);
        let text = TextCleaner::new(&own, DatePolicy::Remove);
        assert_eq!(
            text.clean("CT for johanna DOE, born 03.02.1961"),
            "CT for [removed], born [removed]"
        );
        assert_eq!(
            fit_to_vr(VR::SH, "0123456789 [removed]".into()),
            "0123456789 [remo"
        );
    }
}
