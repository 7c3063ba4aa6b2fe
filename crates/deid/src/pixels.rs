//! Pixel data: the burned-in annotation gate and Clean Pixel Data by signature table.
//!
//! Pixel data is never transcoded. Without clean-pixel-data, objects that carry (or are known
//! to carry) burned-in text are refused. With it, rectangles from the site's signature table
//! are blanked in uncompressed data; compressed data is refused rather than passed through,
//! because blanking it would need a decode and re-encode that medfed does not do silently.

use dicom_core::value::{PrimitiveValue, Value};
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use serde::Deserialize;

/// A rectangle of a frame, in pixels: columns from `x`, rows from `y`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Rect {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

/// Where a device burns text into its images: matched by modality, manufacturer, optional
/// model, and frame size.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PixelSignature {
    pub modality: String,
    pub manufacturer: String,
    #[serde(default)]
    pub model: Option<String>,
    pub rows: u32,
    pub columns: u32,
    pub rectangles: Vec<Rect>,
}

impl PixelSignature {
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.rectangles.is_empty() {
            return Err(format!(
                "signature {}/{} has no rectangles",
                self.modality, self.manufacturer
            ));
        }
        for r in &self.rectangles {
            if r.width == 0
                || r.height == 0
                || r.x + r.width > self.columns
                || r.y + r.height > self.rows
            {
                return Err(format!(
                    "rectangle {r:?} lies outside the {}x{} frame of signature {}/{}",
                    self.columns, self.rows, self.modality, self.manufacturer
                ));
            }
        }
        Ok(())
    }

    fn matches(&self, obj: &InMemDicomObject) -> bool {
        let eq =
            |tag, want: &str| text(obj, tag).is_some_and(|v| v.eq_ignore_ascii_case(want.trim()));
        eq(tags::MODALITY, &self.modality)
            && eq(tags::MANUFACTURER, &self.manufacturer)
            && self
                .model
                .as_deref()
                .is_none_or(|m| eq(tags::MANUFACTURER_MODEL_NAME, m))
            && uint(obj, tags::ROWS) == Some(self.rows)
            && uint(obj, tags::COLUMNS) == Some(self.columns)
    }
}

/// Modalities whose images routinely carry burned-in text (ultrasound, endoscopy, photographs,
/// scanned documents, "other"): refused unless they say Burned In Annotation = NO.
const BURNED_IN_MODALITIES: [&str; 6] = ["US", "ES", "XC", "GM", "OT", "DOC"];
/// Secondary Capture SOP classes (PS3.4 B.5): screenshots, so text is to be expected.
const SECONDARY_CAPTURE_PREFIX: &str = "1.2.840.10008.5.1.4.1.1.7";

fn text(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    let v = obj.get(tag)?.to_str().ok()?;
    Some(v.trim_matches([' ', '\0']).to_string())
}

fn uint(obj: &InMemDicomObject, tag: Tag) -> Option<u32> {
    obj.get(tag)?.to_int::<u32>().ok()
}

/// Why an object must be taken to hold burned-in identifying text, or `None`.
pub fn burned_in_reason(obj: &InMemDicomObject) -> Option<String> {
    obj.get(tags::PIXEL_DATA)?;
    let declared = text(obj, tags::BURNED_IN_ANNOTATION)
        .unwrap_or_default()
        .to_ascii_uppercase();
    match declared.as_str() {
        "YES" => return Some("declares Burned In Annotation = YES".into()),
        "NO" => return None,
        _ => {}
    }
    let modality = text(obj, tags::MODALITY)
        .unwrap_or_default()
        .to_ascii_uppercase();
    if BURNED_IN_MODALITIES.contains(&modality.as_str()) {
        return Some(format!(
            "modality {modality} is known to carry burned-in text and Burned In Annotation is not NO"
        ));
    }
    let sop_class = text(obj, tags::SOP_CLASS_UID).unwrap_or_default();
    if sop_class.starts_with(SECONDARY_CAPTURE_PREFIX) {
        return Some(
            "Secondary Capture images carry burned-in text unless Burned In Annotation is NO"
                .into(),
        );
    }
    None
}

/// The site's signature for this object's device and frame size, if it has one.
pub fn matching_signature<'s>(
    obj: &InMemDicomObject,
    signatures: &'s [PixelSignature],
) -> Option<&'s PixelSignature> {
    obj.get(tags::PIXEL_DATA)?;
    signatures.iter().find(|s| s.matches(obj))
}

/// Why no signature applies to this object (the refusal reason for a burned-in object).
pub fn no_signature_reason(obj: &InMemDicomObject) -> String {
    format!(
        "clean-pixel-data: no pixel signature matches modality {:?}, manufacturer {:?}, model {:?}, {}x{}",
        text(obj, tags::MODALITY).unwrap_or_default(),
        text(obj, tags::MANUFACTURER).unwrap_or_default(),
        text(obj, tags::MANUFACTURER_MODEL_NAME).unwrap_or_default(),
        uint(obj, tags::COLUMNS).unwrap_or(0),
        uint(obj, tags::ROWS).unwrap_or(0),
    )
}

/// Blanks the signature's rectangles in every frame. Errors are refusal reasons.
pub fn clean_pixel_data(obj: &mut InMemDicomObject, sig: &PixelSignature) -> Result<(), String> {
    let need =
        |tag, what: &str| uint(obj, tag).ok_or_else(|| format!("clean-pixel-data: {what} missing"));
    let rows = need(tags::ROWS, "Rows")? as usize;
    let cols = need(tags::COLUMNS, "Columns")? as usize;
    let spp = uint(obj, tags::SAMPLES_PER_PIXEL).unwrap_or(1) as usize;
    let bits = need(tags::BITS_ALLOCATED, "Bits Allocated")?;
    let planar = uint(obj, tags::PLANAR_CONFIGURATION).unwrap_or(0) == 1;
    let frames = text(obj, tags::NUMBER_OF_FRAMES)
        .and_then(|f| f.parse::<usize>().ok())
        .unwrap_or(1)
        .max(1);
    let elem = obj.get(tags::PIXEL_DATA).expect("checked above");
    let vr = elem.vr();
    let index = |frame: usize, y: usize, x: usize, s: usize| {
        let frame_len = rows * cols * spp;
        if planar {
            frame * frame_len + s * rows * cols + y * cols + x
        } else {
            frame * frame_len + (y * cols + x) * spp + s
        }
    };
    let new_value = match (elem.value(), bits) {
        (Value::Primitive(PrimitiveValue::U8(bytes)), 8) => {
            let mut data = bytes.to_vec();
            blank(&mut data, sig, frames, spp, index)?;
            PrimitiveValue::U8(data.into())
        }
        (Value::Primitive(PrimitiveValue::U16(words)), 16) => {
            let mut data = words.to_vec();
            blank(&mut data, sig, frames, spp, index)?;
            PrimitiveValue::U16(data.into())
        }
        (Value::PixelSequence(_), _) => {
            return Err("clean-pixel-data: compressed (encapsulated) pixel data cannot be blanked without re-encoding; decompress it first".into());
        }
        _ => {
            return Err(format!(
                "clean-pixel-data: unsupported pixel layout ({bits} bits allocated, VR {vr:?})"
            ));
        }
    };
    obj.put(DataElement::new(tags::PIXEL_DATA, vr, new_value));
    obj.put(DataElement::new(
        tags::BURNED_IN_ANNOTATION,
        VR::CS,
        PrimitiveValue::from("NO"),
    ));
    Ok(())
}

fn blank<T: Default + Copy>(
    data: &mut [T],
    sig: &PixelSignature,
    frames: usize,
    spp: usize,
    index: impl Fn(usize, usize, usize, usize) -> usize,
) -> Result<(), String> {
    let needed = index(
        frames - 1,
        sig.rows as usize - 1,
        sig.columns as usize - 1,
        spp - 1,
    ) + 1;
    if data.len() < needed {
        return Err(format!(
            "clean-pixel-data: pixel data holds {} samples, the header describes {needed}",
            data.len()
        ));
    }
    for frame in 0..frames {
        for r in &sig.rectangles {
            for y in r.y as usize..(r.y + r.height) as usize {
                for x in r.x as usize..(r.x + r.width) as usize {
                    for s in 0..spp {
                        data[index(frame, y, x, s)] = T::default();
                    }
                }
            }
        }
    }
    Ok(())
}
