//! Pixel data: the burned-in annotation gate and Clean Pixel Data (PS3.15 E.3.1).
//!
//! Without clean-pixel-data, objects that carry (or are known to carry) burned-in text are
//! refused. With it, the text is found by OCR (Tesseract, through `medfed-ocr`) on a
//! contrast-stretched 8-bit rendition of the frames, and its boxes, padded, are blanked in
//! every frame, together with the rectangles of the site's signature table for the device.
//! Compressed pixel data is decoded (dicom-pixeldata) and written back uncompressed, which the
//! object then says (transfer syntax, 0012,0063); what cannot be decoded is refused naming the
//! transfer syntax, and so is an object in which text is still found after blanking.

use dicom_core::value::{PrimitiveValue, Value};
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::{FileDicomObject, InMemDicomObject};
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

/// What clean-pixel-data did to one object, for the markers and the transfer syntax.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PixelCleaning {
    /// Values for Deidentification Method (0012,0063), each at most 64 characters (LO).
    pub description: Vec<String>,
    /// The transfer syntax the object must now be written in, when it changed.
    pub transfer_syntax: Option<String>,
    /// Rectangles blanked (OCR boxes and signature rectangles), per frame.
    pub regions: usize,
}

/// How a frame's samples encode colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Colour {
    Monochrome1,
    Monochrome2,
    Rgb,
    YbrFull,
    /// Two pixels share one Cb and Cr: Y1 Y2 Cb Cr (PS3.3 C.7.6.3.1.2).
    YbrFull422,
    Palette,
}

/// The decoded pixel data of all frames, samples little-endian.
struct Frames {
    data: Vec<u8>,
    rows: usize,
    cols: usize,
    spp: usize,
    /// Bytes per sample: 1, 2 or 4.
    bytes: usize,
    planar: bool,
    colour: Colour,
    signed: bool,
    bits_stored: u32,
    /// Palette luminance per index (max of the three LUTs, 0..=255), if a palette.
    palette: Option<Vec<u8>>,
}

/// Frames larger than this are not OCR'd whole: Tesseract's limit and a bound on memory.
const MAX_SIDE: usize = 8192;
/// At most this many frames of a cine are OCR'd, evenly spaced (first and last included);
/// the static-overlay composite covers text that every frame shares.
const MAX_OCR_FRAMES: usize = 3;
/// Words Tesseract is less sure of than this are taken for speckle or edges. Low on purpose:
/// a real planted ID read at 20-40 % is still an ID, and blanking a false word costs a few
/// pixels of background.
const MIN_CONFIDENCE: f32 = 10.0;
/// A word this sure (and of 3+ letters or digits) that survives every pass means text that
/// blanking did not remove: the object is refused.
const SURE_CONFIDENCE: f32 = 60.0;

impl Frames {
    fn frame_len(&self) -> usize {
        if self.colour == Colour::YbrFull422 {
            self.rows * self.cols * 2 * self.bytes
        } else {
            self.rows * self.cols * self.spp * self.bytes
        }
    }

    fn read(&self, at: usize) -> u32 {
        match self.bytes {
            1 => self.data[at] as u32,
            2 => u16::from_le_bytes([self.data[at], self.data[at + 1]]) as u32,
            _ => u32::from_le_bytes([
                self.data[at],
                self.data[at + 1],
                self.data[at + 2],
                self.data[at + 3],
            ]),
        }
    }

    fn write(&mut self, at: usize, v: u32) {
        match self.bytes {
            1 => self.data[at] = v as u8,
            2 => self.data[at..at + 2].copy_from_slice(&(v as u16).to_le_bytes()),
            _ => self.data[at..at + 4].copy_from_slice(&v.to_le_bytes()),
        }
    }

    /// Byte offset of sample `s` of pixel (x, y) in frame `f` (not for 4:2:2).
    fn at(&self, f: usize, y: usize, x: usize, s: usize) -> usize {
        let base = f * self.frame_len();
        let i = if self.planar {
            s * self.rows * self.cols + y * self.cols + x
        } else {
            (y * self.cols + x) * self.spp + s
        };
        base + i * self.bytes
    }

    /// The stored value as a signed number (Bits Stored, Pixel Representation).
    fn value(&self, raw: u32) -> i64 {
        let bits = self.bits_stored.clamp(1, 32);
        let masked = if bits == 32 {
            raw as u64
        } else {
            (raw as u64) & ((1u64 << bits) - 1)
        };
        if self.signed && masked >> (bits - 1) & 1 == 1 {
            masked as i64 - (1i64 << bits)
        } else {
            masked as i64
        }
    }

    /// A brightness per pixel of frame `f` (higher is brighter on screen), before stretching.
    fn brightness(&self, f: usize) -> Vec<i64> {
        let mut out = Vec::with_capacity(self.rows * self.cols);
        for y in 0..self.rows {
            for x in 0..self.cols {
                let v = match self.colour {
                    Colour::Monochrome1 => -self.value(self.read(self.at(f, y, x, 0))),
                    Colour::Monochrome2 => self.value(self.read(self.at(f, y, x, 0))),
                    Colour::Palette => {
                        let i = self.read(self.at(f, y, x, 0)) as usize;
                        match &self.palette {
                            Some(lut) => *lut.get(i).or(lut.last()).unwrap_or(&0) as i64,
                            None => i as i64,
                        }
                    }
                    // Coloured overlay text (yellow, green) is brightest in some channel.
                    Colour::Rgb => (0..3)
                        .map(|s| self.read(self.at(f, y, x, s)) as i64)
                        .max()
                        .unwrap_or(0),
                    Colour::YbrFull => self.read(self.at(f, y, x, 0)) as i64,
                    Colour::YbrFull422 => {
                        let pair =
                            f * self.frame_len() + (y * self.cols + x / 2 * 2) * 2 * self.bytes;
                        self.read(pair + (x % 2) * self.bytes) as i64
                    }
                };
                out.push(v);
            }
        }
        out
    }

    /// The blank fill of frame `f`: the darkest pixel's samples (black on screen for every
    /// photometric interpretation, the background of US and screenshots).
    fn darkest(&self, brightness: &[i64]) -> (usize, usize) {
        let i = brightness
            .iter()
            .enumerate()
            .min_by_key(|(_, v)| **v)
            .map(|(i, _)| i)
            .unwrap_or(0);
        (i % self.cols, i / self.cols)
    }

    fn blank(&mut self, f: usize, rect: &Rect, fill_from: (usize, usize)) {
        let (x0, y0) = (rect.x as usize, rect.y as usize);
        let x1 = (x0 + rect.width as usize).min(self.cols);
        let y1 = (y0 + rect.height as usize).min(self.rows);
        if self.colour == Colour::YbrFull422 {
            let (fx, fy) = fill_from;
            let src = f * self.frame_len() + (fy * self.cols + fx / 2 * 2) * 2 * self.bytes;
            let y_fill = self.read(src + (fx % 2) * self.bytes);
            let (cb, cr) = (
                self.read(src + 2 * self.bytes),
                self.read(src + 3 * self.bytes),
            );
            for y in y0..y1 {
                for px in (x0 / 2 * 2..x1).step_by(2) {
                    let pair = f * self.frame_len() + (y * self.cols + px) * 2 * self.bytes;
                    for (k, v) in [y_fill, y_fill, cb, cr].into_iter().enumerate() {
                        self.write(pair + k * self.bytes, v);
                    }
                }
            }
            return;
        }
        let fill: Vec<u32> = (0..self.spp)
            .map(|s| self.read(self.at(f, fill_from.1, fill_from.0, s)))
            .collect();
        for y in y0..y1 {
            for x in x0..x1 {
                for (s, &v) in fill.iter().enumerate() {
                    let at = self.at(f, y, x, s);
                    self.write(at, v);
                }
            }
        }
    }
}

/// A contrast-stretched 8-bit rendition, text dark on light (Tesseract's LSTM models are
/// trained on print), upscaled 2x when small (it reads glyphs best at 20-40 px).
struct Rendition {
    pixels: Vec<u8>,
    width: usize,
    height: usize,
    scale: usize,
}

fn render(brightness: &[i64], cols: usize, rows: usize) -> Rendition {
    let (lo, hi) = brightness
        .iter()
        .fold((i64::MAX, i64::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let span = (hi - lo).max(1) as f64;
    let mut grey: Vec<u8> = brightness
        .iter()
        .map(|&v| (((v - lo) as f64 / span) * 255.0).round() as u8)
        .collect();
    let mean = grey.iter().map(|&g| g as u64).sum::<u64>() / grey.len().max(1) as u64;
    if mean < 128 {
        grey.iter_mut().for_each(|g| *g = 255 - *g);
    }
    let scale = if rows.max(cols) <= 1024 { 2 } else { 1 };
    if scale == 1 {
        return Rendition {
            pixels: grey,
            width: cols,
            height: rows,
            scale,
        };
    }
    let (w, h) = (cols * scale, rows * scale);
    let mut up = vec![0u8; w * h];
    for y in 0..h {
        for x in 0..w {
            up[y * w + x] = grey[(y / scale) * cols + x / scale];
        }
    }
    Rendition {
        pixels: up,
        width: w,
        height: h,
        scale,
    }
}

/// A word OCR found: its padded box in frame coordinates, and whether it is surely text.
struct Found {
    rect: Rect,
    sure: bool,
}

/// Text boxes (frame coordinates, padded) that OCR finds in a rendition.
fn ocr_boxes(r: &Rendition, cols: usize, rows: usize) -> Result<Vec<Found>, String> {
    let image = medfed_ocr::GrayImage::new(&r.pixels, r.width as u32, r.height as u32)
        .map_err(|e| format!("clean-pixel-data: {e}"))?;
    let words = medfed_ocr::with_thread_ocr(|ocr| ocr.words(image))
        .and_then(|w| w)
        .map_err(|e| format!("clean-pixel-data: OCR unavailable: {e}"))?;
    let mut boxes = Vec::new();
    for w in words {
        let alnum = w.text.chars().filter(|c| c.is_alphanumeric()).count();
        if w.confidence < MIN_CONFIDENCE || alnum == 0 {
            continue;
        }
        let s = r.scale as u32;
        let (x, y) = (w.left / s, w.top / s);
        let (bw, bh) = (w.width.div_ceil(s), w.height.div_ceil(s));
        // Tesseract's boxes hug the ink; anti-aliased edges and descenders lie just outside.
        let pad = 2 + bh / 4;
        let x0 = x.saturating_sub(pad);
        let y0 = y.saturating_sub(pad);
        let x1 = (x + bw + pad).min(cols as u32);
        let y1 = (y + bh + pad).min(rows as u32);
        if x1 > x0 && y1 > y0 {
            boxes.push(Found {
                rect: Rect {
                    x: x0,
                    y: y0,
                    width: x1 - x0,
                    height: y1 - y0,
                },
                sure: w.confidence >= SURE_CONFIDENCE && alnum >= 3,
            });
        }
    }
    Ok(boxes)
}

fn ts_name(uid: &str) -> String {
    use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
    dicom_transfer_syntax_registry::TransferSyntaxRegistry
        .get(uid)
        .map(|ts| format!("{} ({uid})", ts.name()))
        .unwrap_or_else(|| format!("unknown transfer syntax {uid}"))
}

/// Transfer syntaxes whose pixel data lost information at encoding (PS3.5 Table A-1 lossy).
const LOSSY_SYNTAXES: [&str; 8] = [
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.81",
    "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.4.201",
    "1.2.840.10008.1.2.4.203",
    "1.2.840.10008.1.2.4.100",
    "1.2.840.10008.1.2.4.102",
];

fn palette_luminance(obj: &InMemDicomObject) -> Option<Vec<u8>> {
    let desc = obj
        .get(tags::RED_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR)?
        .to_multi_int::<i64>()
        .ok()?;
    let entries = match desc.first()? {
        0 => 65536usize,
        &n if n > 0 => n as usize,
        _ => return None,
    };
    let first = *desc.get(1)? as usize;
    let bits = *desc.get(2)?;
    let lut = |tag| -> Option<Vec<u32>> {
        let bytes = obj.get(tag)?.to_bytes().ok()?;
        Some(if bits <= 8 && bytes.len() < entries * 2 {
            bytes.iter().map(|&b| b as u32).collect()
        } else {
            bytes
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]) as u32)
                .collect()
        })
    };
    let (r, g, b) = (
        lut(tags::RED_PALETTE_COLOR_LOOKUP_TABLE_DATA)?,
        lut(tags::GREEN_PALETTE_COLOR_LOOKUP_TABLE_DATA)?,
        lut(tags::BLUE_PALETTE_COLOR_LOOKUP_TABLE_DATA)?,
    );
    let shift = if bits > 8 { bits - 8 } else { 0 };
    let n = r.len().min(g.len()).min(b.len());
    // Index values below the first mapped one use the first entry (PS3.3 C.7.6.3.1.5).
    let out = (0..first + n)
        .map(|i| {
            let k = i.saturating_sub(first).min(n.saturating_sub(1));
            let v = r.get(k).max(g.get(k)).max(b.get(k)).copied().unwrap_or(0);
            (v >> shift).min(255) as u8
        })
        .collect();
    Some(out)
}

/// Finds burned-in text by OCR (and the signature's rectangles, if any) and blanks it in every
/// frame; decodes compressed pixel data first. Errors are refusal reasons.
pub fn clean_burned_in_text(
    file: &mut FileDicomObject<InMemDicomObject>,
    signature: Option<&PixelSignature>,
) -> Result<PixelCleaning, String> {
    let ts = file
        .meta()
        .transfer_syntax()
        .trim_end_matches('\0')
        .to_string();
    let obj: &InMemDicomObject = file;
    let need = |tag, what: &str| {
        uint(obj, tag).ok_or_else(|| format!("clean-pixel-data: {what} missing or not a number"))
    };
    let rows = need(tags::ROWS, "Rows")? as usize;
    let cols = need(tags::COLUMNS, "Columns")? as usize;
    let bits = need(tags::BITS_ALLOCATED, "Bits Allocated")?;
    let spp = uint(obj, tags::SAMPLES_PER_PIXEL).unwrap_or(1) as usize;
    let bits_stored = uint(obj, tags::BITS_STORED).unwrap_or(bits);
    let signed = uint(obj, tags::PIXEL_REPRESENTATION) == Some(1);
    let count = text(obj, tags::NUMBER_OF_FRAMES)
        .and_then(|f| f.parse::<usize>().ok())
        .unwrap_or(1)
        .max(1);
    if rows == 0 || cols == 0 || rows > MAX_SIDE || cols > MAX_SIDE {
        return Err(format!(
            "clean-pixel-data: a {cols}x{rows} frame cannot be searched for text"
        ));
    }
    if !matches!(bits, 8 | 16 | 32) || !matches!(spp, 1 | 3) {
        return Err(format!(
            "clean-pixel-data: {bits} bits allocated with {spp} samples per pixel cannot be cleaned"
        ));
    }
    let encapsulated = matches!(
        obj.get(tags::PIXEL_DATA).map(|e| e.value()),
        Some(Value::PixelSequence(_))
    );
    let mut photometric = text(obj, tags::PHOTOMETRIC_INTERPRETATION)
        .unwrap_or_default()
        .to_ascii_uppercase();
    let mut planar = uint(obj, tags::PLANAR_CONFIGURATION).unwrap_or(0) == 1;
    let data: Vec<u8> = if encapsulated {
        use dicom_pixeldata::PixelDecoder;
        match file.decode_pixel_data() {
            Ok(decoded) => {
                // dicom-pixeldata's codecs hand back RGB, interleaved, for colour.
                if spp == 3 {
                    photometric = "RGB".into();
                    planar = false;
                }
                decoded.into_data()
            }
            // dicom-pixeldata's RLE decoder takes 8 and 16 bits only; PS3.5 Annex G is
            // simple enough to do here for every sample size.
            Err(_) if ts == RLE_LOSSLESS => {
                let Some(Value::PixelSequence(seq)) = obj.get(tags::PIXEL_DATA).map(|e| e.value())
                else {
                    return Err("clean-pixel-data: pixel data is not a value".into());
                };
                planar = false;
                decode_rle(seq.fragments(), rows * cols, spp, bits as usize / 8, count).map_err(
                    |e| {
                        format!(
                            "clean-pixel-data: cannot decode pixel data in {}: {e}",
                            ts_name(&ts)
                        )
                    },
                )?
            }
            Err(e) => {
                return Err(format!(
                    "clean-pixel-data: cannot decode pixel data in {}: {e}",
                    ts_name(&ts)
                ));
            }
        }
    } else {
        match obj.get(tags::PIXEL_DATA).map(|e| e.value()) {
            Some(Value::Primitive(p)) => p.to_bytes().into_owned(),
            _ => return Err("clean-pixel-data: pixel data is not a value".into()),
        }
    };
    let colour = match (photometric.as_str(), spp) {
        ("MONOCHROME1", 1) => Colour::Monochrome1,
        ("MONOCHROME2", 1) => Colour::Monochrome2,
        ("PALETTE COLOR", 1) => Colour::Palette,
        ("RGB", 3) => Colour::Rgb,
        ("YBR_FULL", 3) => Colour::YbrFull,
        ("YBR_FULL_422", 3) if !planar => Colour::YbrFull422,
        (pi, n) => {
            return Err(format!(
                "clean-pixel-data: photometric interpretation {pi:?} with {n} samples per pixel cannot be cleaned"
            ));
        }
    };
    let palette = (colour == Colour::Palette)
        .then(|| palette_luminance(file))
        .flatten();
    let mut frames = Frames {
        data,
        rows,
        cols,
        spp,
        bytes: bits as usize / 8,
        planar,
        colour,
        signed,
        bits_stored,
        palette,
    };
    let needed = frames.frame_len() * count;
    if frames.data.len() < needed {
        return Err(format!(
            "clean-pixel-data: pixel data holds {} bytes, the header describes {needed}",
            frames.data.len()
        ));
    }
    let brightness: Vec<Vec<i64>> = (0..count).map(|f| frames.brightness(f)).collect();
    let fills: Vec<(usize, usize)> = (0..count).map(|f| frames.darkest(&brightness[f])).collect();

    let mut regions: Vec<Rect> = signature.map(|s| s.rectangles.clone()).unwrap_or_default();
    let sampled = sampled_frames(count);
    let mut ocr_inputs: Vec<Vec<i64>> = sampled.iter().map(|&f| brightness[f].clone()).collect();
    if count > 1 {
        ocr_inputs.push(static_overlay(&brightness));
    }
    // Find, blank, look again: a box too tight or a word missed beside a found one shows
    // up in the second look. Text still found after the last pass is not removed: refuse.
    const PASSES: usize = 3;
    for pass in 0..PASSES {
        let renditions: Vec<Rendition> = ocr_inputs
            .iter()
            .map(|b| render(&blanked(b, &regions, cols, darkest_value(b)), cols, rows))
            .collect();
        let found: Vec<Vec<Found>> = {
            use rayon::prelude::*;
            renditions
                .par_iter()
                .map(|r| ocr_boxes(r, cols, rows))
                .collect::<Result<_, _>>()?
        };
        // A word inside what is already blanked is the blank's edge read as a letter.
        let new: Vec<Found> = found
            .into_iter()
            .flatten()
            .filter(|f| !regions.iter().any(|r| covers(r, &f.rect)))
            .collect();
        if new.is_empty() {
            break;
        }
        let sure = new.iter().filter(|f| f.sure).count();
        if pass + 1 == PASSES && sure > 0 {
            return Err(format!(
                "clean-pixel-data: text is still found in {sure} places after {PASSES} passes of blanking; refusing"
            ));
        }
        regions.extend(new.into_iter().map(|f| f.rect));
    }
    for (f, &fill) in fills.iter().enumerate() {
        for r in &regions {
            frames.blank(f, r, fill);
        }
    }

    let ocr_count = regions.len() - signature.map_or(0, |s| s.rectangles.len());
    let mut description = vec![format!(
        "clean-pixel-data: Tesseract {} OCR",
        medfed_ocr::version()
    )];
    description.push(clip(format!(
        "{} text regions blanked in all {count} frames",
        ocr_count
    )));
    if count > 1 {
        description.push(clip(format!(
            "OCR on {} of {count} frames + static overlay",
            sampled.len()
        )));
    }
    if let Some(s) = signature {
        description.push(clip(format!(
            "{} signature rectangles ({})",
            s.rectangles.len(),
            s.manufacturer
        )));
    }
    let big_endian = ts == "1.2.840.10008.1.2.2";
    let transfer_syntax = if encapsulated || big_endian {
        // The UID, not the name: the name alone can take the 64 characters LO allows.
        description.push(clip(format!("decoded from {ts}, written uncompressed")));
        Some(dicom_dictionary_std::uids::EXPLICIT_VR_LITTLE_ENDIAN.to_string())
    } else {
        None
    };

    let vr = if bits > 8 { VR::OW } else { VR::OB };
    file.put(DataElement::new(
        tags::PIXEL_DATA,
        vr,
        PrimitiveValue::U8(frames.data.into()),
    ));
    if encapsulated {
        if spp == 3 {
            file.put(DataElement::new(
                tags::PHOTOMETRIC_INTERPRETATION,
                VR::CS,
                PrimitiveValue::from("RGB"),
            ));
            file.put(DataElement::new(
                tags::PLANAR_CONFIGURATION,
                VR::US,
                PrimitiveValue::from(0u16),
            ));
        }
        // Decompressing does not undo a lossy compression (PS3.3 C.7.6.1.1.5).
        if LOSSY_SYNTAXES.contains(&ts.as_str())
            && file.get(tags::LOSSY_IMAGE_COMPRESSION).is_none()
        {
            file.put(DataElement::new(
                tags::LOSSY_IMAGE_COMPRESSION,
                VR::CS,
                PrimitiveValue::from("01"),
            ));
        }
    }
    file.put(DataElement::new(
        tags::BURNED_IN_ANNOTATION,
        VR::CS,
        PrimitiveValue::from("NO"),
    ));
    tracing::debug!(
        frames = count,
        regions = regions.len(),
        "pixel data cleaned"
    );
    Ok(PixelCleaning {
        description,
        transfer_syntax,
        regions: regions.len(),
    })
}

/// Whether `outer` holds most (3/4) of `inner`.
fn covers(outer: &Rect, inner: &Rect) -> bool {
    let ix =
        (outer.x + outer.width).min(inner.x + inner.width) as i64 - outer.x.max(inner.x) as i64;
    let iy =
        (outer.y + outer.height).min(inner.y + inner.height) as i64 - outer.y.max(inner.y) as i64;
    ix > 0 && iy > 0 && 4 * ix * iy >= 3 * inner.width as i64 * inner.height as i64
}

const RLE_LOSSLESS: &str = "1.2.840.10008.1.2.5";

/// RLE Lossless (PS3.5 Annex G): one fragment a frame, a 64-byte header of segment offsets,
/// one PackBits segment per byte of each sample, most significant byte first. Returns the
/// frames little-endian, samples interleaved.
fn decode_rle(
    fragments: &[Vec<u8>],
    pixels: usize,
    spp: usize,
    bytes: usize,
    frames: usize,
) -> Result<Vec<u8>, String> {
    if fragments.len() != frames {
        return Err(format!("{} fragments for {frames} frames", fragments.len()));
    }
    let mut out = vec![0u8; pixels * spp * bytes * frames];
    let frame_len = pixels * spp * bytes;
    for (f, frag) in fragments.iter().enumerate() {
        let word = |i: usize| -> Result<usize, String> {
            frag.get(i * 4..i * 4 + 4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
                .ok_or_else(|| "RLE header cut short".to_string())
        };
        let segments = word(0)?;
        if segments != spp * bytes || segments > 15 {
            return Err(format!(
                "{segments} RLE segments for {spp} samples of {bytes} bytes"
            ));
        }
        for seg in 0..segments {
            let start = word(1 + seg)?;
            let end = if seg + 1 < segments {
                word(2 + seg)?
            } else {
                frag.len()
            };
            let src = frag
                .get(start..end.min(frag.len()))
                .ok_or_else(|| "RLE segment offset outside the fragment".to_string())?;
            let (sample, byte) = (seg / bytes, bytes - 1 - seg % bytes);
            let mut p = 0usize;
            let mut put = |v: u8, p: &mut usize| {
                if *p < pixels {
                    out[f * frame_len + (*p * spp + sample) * bytes + byte] = v;
                }
                *p += 1;
            };
            let mut i = 0;
            while i < src.len() && p < pixels {
                let n = src[i] as i8;
                i += 1;
                if n >= 0 {
                    let run = n as usize + 1;
                    let lit = src.get(i..i + run).ok_or("RLE literal run cut short")?;
                    for &v in lit {
                        put(v, &mut p);
                    }
                    i += run;
                } else if n != -128 {
                    let v = *src.get(i).ok_or("RLE repeat run cut short")?;
                    for _ in 0..(1 - n as isize) as usize {
                        put(v, &mut p);
                    }
                    i += 1;
                }
            }
            if p < pixels {
                return Err(format!("RLE segment {seg} holds {p} of {pixels} pixels"));
            }
        }
    }
    Ok(out)
}

fn clip(mut s: String) -> String {
    // LO holds 64 characters; the text is ASCII.
    s.truncate(64);
    s
}

/// The frames OCR reads: first, last and evenly between, at most [`MAX_OCR_FRAMES`].
fn sampled_frames(count: usize) -> Vec<usize> {
    if count <= MAX_OCR_FRAMES {
        return (0..count).collect();
    }
    let mut v: Vec<usize> = (0..MAX_OCR_FRAMES)
        .map(|i| i * (count - 1) / (MAX_OCR_FRAMES - 1))
        .collect();
    v.dedup();
    v
}

/// What every frame shares: pixels equal in all frames keep their value, the rest go dark,
/// so an overlay's text stands alone for OCR, free of the moving anatomy under it.
fn static_overlay(brightness: &[Vec<i64>]) -> Vec<i64> {
    let first = &brightness[0];
    let lo = first.iter().copied().min().unwrap_or(0);
    first
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            if brightness.iter().all(|b| b[i] == v) {
                v
            } else {
                lo
            }
        })
        .collect()
}

fn darkest_value(b: &[i64]) -> i64 {
    b.iter().copied().min().unwrap_or(0)
}

/// A brightness image with `regions` set to `fill` (the look after blanking, for OCR).
fn blanked(b: &[i64], regions: &[Rect], cols: usize, fill: i64) -> Vec<i64> {
    let mut out = b.to_vec();
    let rows = b.len() / cols.max(1);
    for r in regions {
        for y in r.y as usize..((r.y + r.height) as usize).min(rows) {
            for x in r.x as usize..((r.x + r.width) as usize).min(cols) {
                out[y * cols + x] = fill;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rle_segments_are_decoded_most_significant_byte_first() {
        // Two 16-bit pixels 0x0107, 0x0307: segment 0 the high bytes as a literal run,
        // segment 1 the low bytes as a repeat run.
        let mut frag = vec![0u8; 64];
        frag[0] = 2;
        frag[4] = 64;
        frag[8] = 67;
        frag.extend_from_slice(&[1, 0x01, 0x03]);
        frag.extend_from_slice(&[0xFF, 0x07]);
        let out = decode_rle(&[frag], 2, 1, 2, 1).unwrap();
        assert_eq!(out, vec![0x07, 0x01, 0x07, 0x03]);
        assert!(decode_rle(&[vec![1, 0, 0]], 2, 1, 2, 1).is_err());
    }

    #[test]
    fn sampled_frames_include_first_and_last() {
        assert_eq!(sampled_frames(1), vec![0]);
        assert_eq!(sampled_frames(2), vec![0, 1]);
        assert_eq!(sampled_frames(300), vec![0, 149, 299]);
    }

    #[test]
    fn static_overlay_keeps_only_what_every_frame_shares() {
        let frames = vec![vec![5, 7, 9], vec![5, 2, 9]];
        assert_eq!(static_overlay(&frames), vec![5, 5, 9]);
    }
}
