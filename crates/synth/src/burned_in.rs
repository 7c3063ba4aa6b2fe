//! Images with burned-in text: names, IDs and dates rendered into the pixels of US, OT, SC
//! and CT objects (monochrome 8/16-bit, MONOCHROME1/2, RGB; one or many frames), in corners
//! and over the anatomy, with the box of every string returned, so that a test can OCR the
//! de-identified output and check the pixels outside the boxes.
//!
//! Glyphs come from a TrueType font read at run time (DejaVu Sans, Debian's
//! `fonts-dejavu-core`, or `MEDFED_FONT`), rasterised with `ab_glyph`: Tesseract reads it
//! as it reads the proportional sans fonts of ultrasound and screenshot overlays.

use std::path::PathBuf;

use ab_glyph::{Font, FontVec, PxScale, ScaleFont, point};
use dicom_core::value::PrimitiveValue;
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::meta::FileMetaTableBuilder;
use dicom_object::{FileDicomObject, InMemDicomObject};

use crate::SynthError;

/// Where the font is found unless `MEDFED_FONT` names one (Debian `fonts-dejavu-core`).
pub const DEFAULT_FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// The font glyphs are rendered with.
pub struct TextFont(FontVec);

impl TextFont {
    /// `MEDFED_FONT`, else [`DEFAULT_FONT`].
    pub fn load() -> Result<Self, SynthError> {
        let path = std::env::var_os("MEDFED_FONT")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_FONT));
        let bytes = std::fs::read(&path).map_err(|source| SynthError::Io {
            path: path.clone(),
            source,
        })?;
        FontVec::try_from_vec(bytes)
            .map(Self)
            .map_err(|e| SynthError::Encode {
                path,
                message: format!("not a TrueType/OpenType font: {e}"),
            })
    }

    /// Coverage (0..=255) of `text` at `px` pixels, as (width, height, coverage), with a
    /// one-pixel margin on each side.
    pub fn rasterise(&self, text: &str, px: f32) -> (u32, u32, Vec<u8>) {
        let font = self.0.as_scaled(PxScale::from(px));
        let ascent = font.ascent();
        let height = (font.ascent() - font.descent()).ceil() as u32 + 2;
        let mut x = 1.0f32;
        let mut glyphs = Vec::new();
        let mut previous = None;
        for ch in text.chars() {
            let id = font.glyph_id(ch);
            if let Some(p) = previous {
                x += font.kern(p, id);
            }
            glyphs.push(id.with_scale_and_position(px, point(x, 1.0 + ascent)));
            x += font.h_advance(id);
            previous = Some(id);
        }
        let width = x.ceil() as u32 + 2;
        let mut cov = vec![0u8; (width * height) as usize];
        for g in glyphs {
            if let Some(outline) = self.0.outline_glyph(g) {
                let b = outline.px_bounds();
                outline.draw(|gx, gy, c| {
                    let (px, py) = (b.min.x as i64 + gx as i64, b.min.y as i64 + gy as i64);
                    if px >= 0 && py >= 0 && (px as u32) < width && (py as u32) < height {
                        let i = (py as u32 * width + px as u32) as usize;
                        cov[i] = cov[i].max((c.clamp(0.0, 1.0) * 255.0) as u8);
                    }
                });
            }
        }
        (width, height, cov)
    }
}

/// The kind of object, its SOP class and modality.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageKind {
    /// Ultrasound (multi-frame when `frames > 1`).
    Us,
    /// "Other" modality as Secondary Capture.
    Ot,
    /// A screenshot or scanned document: Secondary Capture with modality DOC.
    Sc,
    /// CT: text is rare but happens (scout annotations, burned-in by a workstation).
    Ct,
}

/// The pixel layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    Mono8,
    Mono16,
    /// MONOCHROME1 (white is the lowest value), 16-bit.
    Mono1x16,
    Rgb8,
}

/// A string planted in the pixels and the rectangle (x, y, width, height) that holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlantedText {
    pub text: String,
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
    /// The frames it is drawn in (all frames of a cine for overlay text).
    pub frames: Vec<u32>,
}

/// What to make.
#[derive(Debug, Clone)]
pub struct BurnedInSpec {
    pub kind: ImageKind,
    pub layout: Layout,
    pub rows: u32,
    pub columns: u32,
    pub frames: u32,
    pub patient_name: String,
    pub patient_id: String,
    /// DICOM form (YYYYMMDD); rendered as DD.MM.YYYY too.
    pub birth_date: String,
    pub seed: u64,
}

impl BurnedInSpec {
    /// A spec with the usual identifying strings.
    pub fn new(kind: ImageKind, layout: Layout, rows: u32, columns: u32, frames: u32) -> Self {
        Self {
            kind,
            layout,
            rows,
            columns,
            frames,
            patient_name: "MUSTERMANN^ERIKA".into(),
            patient_id: "PID-4711-0815".into(),
            birth_date: "19640812".into(),
            seed: 7,
        }
    }
}

/// One object with burned-in text, and what was planted where.
pub struct BurnedIn {
    pub object: FileDicomObject<InMemDicomObject>,
    pub planted: Vec<PlantedText>,
    /// The same pixels without the text (what a perfect cleaner leaves outside the boxes).
    pub without_text: Vec<u8>,
}

/// The strings rendered: name (as a person writes it), ID, birth date and an institution
/// line; the first three go in the corners, the ID once more over the anatomy.
fn lines(spec: &BurnedInSpec) -> Vec<String> {
    let name = spec.patient_name.replace('^', " ");
    let d = &spec.birth_date;
    let human = if d.len() == 8 {
        format!("{}.{}.{}", &d[6..8], &d[4..6], &d[0..4])
    } else {
        d.clone()
    };
    vec![
        name,
        format!("ID {}", spec.patient_id),
        format!("DOB {human}"),
        "KLINIKUM NORD".into(),
    ]
}

/// Samples of one pixel: grey value 0..=max for monochrome (display sense, white = max).
fn background(spec: &BurnedInSpec, x: u32, y: u32, frame: u32, rng: &mut u64) -> f32 {
    // A sector of speckle (ultrasound) or a disc (others) that moves a little per frame.
    let (cx, cy) = (spec.columns as f32 / 2.0, spec.rows as f32 * 0.55);
    let r = ((x as f32 - cx).powi(2) + (y as f32 - cy).powi(2)).sqrt();
    let radius = spec.rows.min(spec.columns) as f32 * 0.38;
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    let noise = (*rng % 1000) as f32 / 1000.0;
    if r > radius {
        return 0.0;
    }
    let wave = ((x as f32 * 0.05 + frame as f32 * 0.3).sin() * 0.5 + 0.5) * 0.3;
    match spec.kind {
        ImageKind::Us => 0.15 + 0.35 * noise * (1.0 - r / radius) + wave * 0.5,
        _ => 0.25 + 0.25 * (1.0 - r / radius) + 0.05 * noise + wave * 0.2,
    }
}

/// Makes the object: anatomy-like background, then the strings in the corners (every frame)
/// and the ID over the anatomy (every frame), white on dark (US/OT/SC) or as the device draws.
pub fn burned_in_object(spec: &BurnedInSpec, font: &TextFont) -> BurnedIn {
    let (rows, cols, frames) = (spec.rows, spec.columns, spec.frames.max(1));
    let spp: usize = if spec.layout == Layout::Rgb8 { 3 } else { 1 };
    let max: f32 = match spec.layout {
        Layout::Mono8 | Layout::Rgb8 => 255.0,
        Layout::Mono16 | Layout::Mono1x16 => 4095.0,
    };
    let px = (rows.min(cols) as f32 / 22.0).clamp(13.0, 28.0);
    let mut grey = vec![0f32; (rows * cols * frames) as usize];
    let mut rng = spec.seed | 1;
    for f in 0..frames {
        for y in 0..rows {
            for x in 0..cols {
                grey[((f * rows + y) * cols + x) as usize] = background(spec, x, y, f, &mut rng);
            }
        }
    }
    let without = grey.clone();
    let all: Vec<u32> = (0..frames).collect();
    let mut planted = Vec::new();
    let texts = lines(spec);
    let margin = 4u32;
    let mut place = |text: &str, x: u32, y: u32, planted: &mut Vec<PlantedText>| {
        let (full_w, full_h, cov) = font.rasterise(text, px);
        let w = full_w.min(cols.saturating_sub(x));
        let h = full_h.min(rows.saturating_sub(y));
        for f in 0..frames {
            for ty in 0..h {
                for tx in 0..w {
                    let c = cov[(ty * full_w + tx) as usize] as f32 / 255.0;
                    let i = ((f * rows + y + ty) * cols + x + tx) as usize;
                    grey[i] = grey[i] * (1.0 - c) + 0.95 * c;
                }
            }
        }
        planted.push(PlantedText {
            text: text.to_string(),
            x,
            y,
            width: w,
            height: h,
            frames: all.clone(),
        });
    };
    let line_h = px as u32 + 6;
    place(&texts[0], margin, margin, &mut planted);
    place(&texts[1], margin, margin + line_h, &mut planted);
    let (dw, _, _) = font.rasterise(&texts[2], px);
    place(
        &texts[2],
        cols.saturating_sub(dw + margin),
        margin,
        &mut planted,
    );
    place(
        &texts[3],
        margin,
        rows.saturating_sub(line_h + margin),
        &mut planted,
    );
    // Over the anatomy: the ID again, mid-image.
    place(&texts[1], cols / 4, rows / 2, &mut planted);

    let to_samples = |g: &[f32]| -> Vec<u8> {
        let mut out = Vec::with_capacity(g.len() * spp * 2);
        for &v in g {
            let v = v.clamp(0.0, 1.0);
            match spec.layout {
                Layout::Mono8 => out.push((v * max).round() as u8),
                Layout::Rgb8 => {
                    let s = (v * max).round() as u8;
                    // A colour tint so the three channels differ, as colour Doppler does.
                    out.extend_from_slice(&[s, s.saturating_sub(10), s / 2 + s / 3]);
                }
                Layout::Mono16 => out.extend_from_slice(&((v * max).round() as u16).to_le_bytes()),
                Layout::Mono1x16 => {
                    out.extend_from_slice(&((max - v * max).round() as u16).to_le_bytes())
                }
            }
        }
        out
    };
    let pixels = to_samples(&grey);
    let without_text = to_samples(&without);
    let object = make_object(spec, pixels);
    BurnedIn {
        object,
        planted,
        without_text,
    }
}

fn el(tag: Tag, vr: VR, value: impl Into<PrimitiveValue>) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, vr, value.into())
}

fn make_object(spec: &BurnedInSpec, pixels: Vec<u8>) -> FileDicomObject<InMemDicomObject> {
    let (sop_class, modality) = match spec.kind {
        ImageKind::Us if spec.frames > 1 => (uids::ULTRASOUND_MULTI_FRAME_IMAGE_STORAGE, "US"),
        ImageKind::Us => (uids::ULTRASOUND_IMAGE_STORAGE, "US"),
        ImageKind::Ot => (uids::SECONDARY_CAPTURE_IMAGE_STORAGE, "OT"),
        ImageKind::Sc => (uids::SECONDARY_CAPTURE_IMAGE_STORAGE, "DOC"),
        ImageKind::Ct => (uids::CT_IMAGE_STORAGE, "CT"),
    };
    let sop_uid = format!("2.25.3300190725301962887241.{}", spec.seed);
    let (photometric, spp, bits, stored): (&str, u16, u16, u16) = match spec.layout {
        Layout::Mono8 => ("MONOCHROME2", 1, 8, 8),
        Layout::Mono16 => ("MONOCHROME2", 1, 16, 12),
        Layout::Mono1x16 => ("MONOCHROME1", 1, 16, 12),
        Layout::Rgb8 => ("RGB", 3, 8, 8),
    };
    let mut obj = InMemDicomObject::from_element_iter([
        el(tags::SOP_CLASS_UID, VR::UI, sop_class),
        el(tags::SOP_INSTANCE_UID, VR::UI, sop_uid.as_str()),
        el(tags::STUDY_DATE, VR::DA, "20240105"),
        el(tags::MODALITY, VR::CS, modality),
        el(tags::MANUFACTURER, VR::LO, "MEDFED SYNTH"),
        el(tags::PATIENT_NAME, VR::PN, spec.patient_name.as_str()),
        el(tags::PATIENT_ID, VR::LO, spec.patient_id.as_str()),
        el(tags::PATIENT_BIRTH_DATE, VR::DA, spec.birth_date.as_str()),
        el(
            tags::STUDY_INSTANCE_UID,
            VR::UI,
            format!("{sop_uid}.1").as_str(),
        ),
        el(
            tags::SERIES_INSTANCE_UID,
            VR::UI,
            format!("{sop_uid}.2").as_str(),
        ),
        el(tags::SAMPLES_PER_PIXEL, VR::US, spp),
        el(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, photometric),
        el(tags::ROWS, VR::US, spec.rows as u16),
        el(tags::COLUMNS, VR::US, spec.columns as u16),
        el(tags::BITS_ALLOCATED, VR::US, bits),
        el(tags::BITS_STORED, VR::US, stored),
        el(tags::HIGH_BIT, VR::US, stored - 1),
        el(tags::PIXEL_REPRESENTATION, VR::US, 0u16),
        el(tags::BURNED_IN_ANNOTATION, VR::CS, "YES"),
    ]);
    if spp == 3 {
        obj.put(el(tags::PLANAR_CONFIGURATION, VR::US, 0u16));
    }
    if spec.frames > 1 {
        obj.put(el(
            tags::NUMBER_OF_FRAMES,
            VR::IS,
            spec.frames.to_string().as_str(),
        ));
        obj.put(DataElement::new(
            tags::FRAME_INCREMENT_POINTER,
            VR::AT,
            PrimitiveValue::Tags([tags::FRAME_TIME].into_iter().collect()),
        ));
        obj.put(el(tags::FRAME_TIME, VR::DS, "33.3"));
    }
    if spec.kind == ImageKind::Ct {
        obj.put(el(tags::RESCALE_INTERCEPT, VR::DS, "-1024"));
        obj.put(el(tags::RESCALE_SLOPE, VR::DS, "1"));
    }
    let vr = if bits > 8 { VR::OW } else { VR::OB };
    obj.put(DataElement::new(
        tags::PIXEL_DATA,
        vr,
        PrimitiveValue::U8(pixels.into()),
    ));
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(sop_class)
        .media_storage_sop_instance_uid(sop_uid.as_str())
        .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
        .build()
        .expect("every required meta element is set");
    obj.with_exact_meta(meta)
}
