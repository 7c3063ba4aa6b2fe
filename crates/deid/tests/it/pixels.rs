//! The burned-in annotation gate and clean-pixel-data: OCR finds generated text (names, IDs,
//! dates in corners and over the anatomy) in US/OT/SC/CT, monochrome and RGB, one or many
//! frames, plain and compressed, and the cleaned output reads clean under OCR while pixels
//! away from the text are unchanged.

use std::path::Path;
use std::process::Command;

use dicom_core::value::PrimitiveValue;
use dicom_core::{DataElement, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{FileDicomObject, InMemDicomObject};
use medfed_deid::pixels::{PixelSignature, Rect};
use medfed_deid::{DeidOption, DeidProfile, Outcome};
use medfed_synth::burned_in::{
    BurnedIn, BurnedInSpec, ImageKind, Layout, PlantedText, TextFont, burned_in_object,
};

use crate::support::*;

fn ultrasound(burned_in: Option<&str>) -> dicom_object::InMemDicomObject {
    let mut ds = small_image("Burned^Inn", "US-1", "1.2.826.0.1.3680043.55.1");
    ds.put(el(
        tags::SOP_CLASS_UID,
        VR::UI,
        uids::ULTRASOUND_IMAGE_STORAGE,
    ));
    ds.put(el(tags::MODALITY, VR::CS, "US"));
    ds.put(el(tags::MANUFACTURER, VR::LO, "ACME"));
    ds.put(el(tags::BITS_ALLOCATED, VR::US, 8u16));
    ds.put(el(tags::BITS_STORED, VR::US, 8u16));
    ds.put(el(tags::HIGH_BIT, VR::US, 7u16));
    ds.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        PrimitiveValue::U8((1..=16u8).collect()),
    ));
    if let Some(b) = burned_in {
        ds.put(el(tags::BURNED_IN_ANNOTATION, VR::CS, b));
    }
    ds
}

fn signature() -> PixelSignature {
    PixelSignature {
        modality: "US".into(),
        manufacturer: "ACME".into(),
        model: None,
        rows: 4,
        columns: 4,
        rectangles: vec![Rect {
            x: 0,
            y: 0,
            width: 4,
            height: 1,
        }],
    }
}

fn clean_profile() -> DeidProfile {
    DeidProfile::with_options([DeidOption::CleanPixelData]).unwrap()
}

/// Runs one file object through a batch; the report entry and the output object.
fn run_file(
    obj: &FileDicomObject<InMemDicomObject>,
    profile: &DeidProfile,
) -> (
    medfed_deid::FileReport,
    Option<FileDicomObject<InMemDicomObject>>,
) {
    let tmp = tempfile::tempdir().unwrap();
    write(obj, &tmp.path().join("in/x.dcm"));
    run_path(&tmp.path().join("in/x.dcm"), tmp.path(), profile)
}

fn run_path(
    file: &Path,
    tmp: &Path,
    profile: &DeidProfile,
) -> (
    medfed_deid::FileReport,
    Option<FileDicomObject<InMemDicomObject>>,
) {
    let input = file.parent().unwrap();
    let report = run_batch_with(input, &tmp.join("out"), &tmp.join("key"), profile);
    let f = report.files[0].clone();
    let out =
        (f.outcome == Outcome::Ok).then(|| open(&tmp.join("out").join(file.file_name().unwrap())));
    (f, out)
}

fn run_one(
    ds: dicom_object::InMemDicomObject,
    profile: &DeidProfile,
) -> (medfed_deid::FileReport, Option<Vec<u8>>) {
    let (f, out) = run_file(&with_meta(ds, uids::EXPLICIT_VR_LITTLE_ENDIAN), profile);
    let pixels = out.map(|o| {
        o.get(tags::PIXEL_DATA)
            .unwrap()
            .to_bytes()
            .unwrap()
            .to_vec()
    });
    (f, pixels)
}

#[test]
fn burned_in_objects_are_refused_without_clean_pixel_data() {
    for declared in [Some("YES"), None] {
        let (f, _) = run_one(ultrasound(declared), &DeidProfile::default());
        assert_eq!(f.outcome, Outcome::Refused, "{declared:?}");
        assert!(f.reason.unwrap().contains("clean-pixel-data"));
    }
    // Declared free of burned-in text: passes, pixels untouched.
    let (f, px) = run_one(ultrasound(Some("NO")), &DeidProfile::default());
    assert_eq!(f.outcome, Outcome::Ok);
    assert_eq!(px.unwrap(), (1..=16u8).collect::<Vec<_>>());
}

#[test]
fn signature_rectangles_are_blanked_besides_ocr() {
    // No text in a 4x4 image: OCR finds none, the pixels stay.
    let mut profile = clean_profile();
    let (f, px) = run_one(ultrasound(Some("YES")), &profile);
    assert_eq!(f.outcome, Outcome::Ok, "{:?}", f.reason);
    assert_eq!(px.unwrap(), (1..=16u8).collect::<Vec<_>>());

    profile.pixel_signatures.push(signature());
    let (f, px) = run_one(ultrasound(Some("YES")), &profile);
    assert_eq!(f.outcome, Outcome::Ok, "{:?}", f.reason);
    let mut want: Vec<u8> = (1..=16u8).collect();
    // Blanked with the frame's darkest value.
    want[..4].fill(1);
    assert_eq!(px.unwrap(), want);
}

#[test]
fn undecodable_pixel_data_is_refused_naming_the_transfer_syntax() {
    use dicom_core::value::PixelFragmentSequence;
    let mut ds = ultrasound(Some("YES"));
    ds.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        PixelFragmentSequence::new(Vec::<u32>::new(), vec![vec![0xFFu8, 0xD8, 0xFF, 0xD9]]),
    ));
    // JPEG-LS: medfed's build has no decoder for it.
    let (f, _) = run_file(
        &with_meta(ds.clone(), uids::JPEGLS_LOSSLESS),
        &clean_profile(),
    );
    assert_eq!(f.outcome, Outcome::Refused);
    let reason = f.reason.unwrap();
    assert!(reason.contains(uids::JPEGLS_LOSSLESS), "{reason}");
    // A broken JPEG stream: named too.
    let (f, _) = run_file(&with_meta(ds, uids::JPEG_BASELINE8_BIT), &clean_profile());
    assert_eq!(f.outcome, Outcome::Refused);
    assert!(f.reason.unwrap().contains(uids::JPEG_BASELINE8_BIT));
}

/// Upper-case letters and digits only: how a planted string is compared with OCR output.
fn squash(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// The grey rendition of frame `f` of a native object (8/16-bit mono, 8-bit RGB), for OCR.
fn frame_grey(obj: &InMemDicomObject, f: usize) -> (Vec<u8>, u32, u32) {
    let rows = obj.get(tags::ROWS).unwrap().to_int::<u32>().unwrap();
    let cols = obj.get(tags::COLUMNS).unwrap().to_int::<u32>().unwrap();
    let spp = obj
        .get(tags::SAMPLES_PER_PIXEL)
        .map_or(1, |e| e.to_int::<usize>().unwrap());
    let bits = obj
        .get(tags::BITS_ALLOCATED)
        .unwrap()
        .to_int::<usize>()
        .unwrap();
    let data = obj.get(tags::PIXEL_DATA).unwrap().to_bytes().unwrap();
    let signed = obj
        .get(tags::PIXEL_REPRESENTATION)
        .is_some_and(|e| e.to_int::<u16>().ok() == Some(1));
    let n = (rows * cols) as usize;
    let bytes = bits / 8;
    let base = f * n * spp * bytes;
    let v: Vec<i64> = (0..n)
        .map(|i| {
            (0..spp)
                .map(|s| {
                    let at = base + (i * spp + s) * bytes;
                    if bytes == 1 {
                        data[at] as i64
                    } else if signed {
                        i16::from_le_bytes([data[at], data[at + 1]]) as i64
                    } else {
                        u16::from_le_bytes([data[at], data[at + 1]]) as i64
                    }
                })
                .max()
                .unwrap()
        })
        .collect();
    let (lo, hi) = (*v.iter().min().unwrap(), *v.iter().max().unwrap());
    let mut g: Vec<u8> = v
        .iter()
        .map(|&x| ((x - lo) * 255 / (hi - lo).max(1)) as u8)
        .collect();
    if g.iter().map(|&x| x as u64).sum::<u64>() / (n as u64) < 128 {
        g.iter_mut().for_each(|x| *x = 255 - *x);
    }
    // 2x, as the cleaner reads it.
    let (w, h) = (cols * 2, rows * 2);
    let up: Vec<u8> = (0..h * w)
        .map(|i| g[((i / w / 2) * cols + (i % w) / 2) as usize])
        .collect();
    (up, w, h)
}

/// Every word OCR reads in frame `f`, squashed.
fn ocr_text(obj: &InMemDicomObject, f: usize) -> Vec<String> {
    let (g, w, h) = frame_grey(obj, f);
    let image = medfed_ocr::GrayImage::new(&g, w, h).unwrap();
    medfed_ocr::with_thread_ocr(|o| o.words(image))
        .unwrap()
        .unwrap()
        .into_iter()
        .map(|w| squash(&w.text))
        .filter(|w| !w.is_empty())
        .collect()
}

/// The planted strings (and their words of 4+ characters) that OCR still reads.
fn leaks(words: &[String], planted: &[PlantedText]) -> Vec<String> {
    let all = words.concat();
    let mut out = Vec::new();
    for p in planted {
        let whole = squash(&p.text);
        if all.contains(&whole) {
            out.push(p.text.clone());
        }
        for token in p.text.split([' ', '.', '-']) {
            let t = squash(token);
            if t.len() >= 4 && words.iter().any(|w| w.contains(&t)) {
                out.push(token.to_string());
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

fn sample_bytes(obj: &InMemDicomObject) -> usize {
    let spp = obj
        .get(tags::SAMPLES_PER_PIXEL)
        .map_or(1, |e| e.to_int::<usize>().unwrap());
    spp * obj
        .get(tags::BITS_ALLOCATED)
        .unwrap()
        .to_int::<usize>()
        .unwrap()
        / 8
}

/// Bytes of pixels farther than `margin` from every planted box that differ from the input.
fn changed_outside(
    before: &[u8],
    after: &[u8],
    planted: &[PlantedText],
    rows: u32,
    cols: u32,
    px_bytes: usize,
    margin: u32,
) -> usize {
    let n = (rows * cols) as usize;
    let frames = before.len() / (n * px_bytes);
    let mut changed = 0;
    for f in 0..frames {
        for y in 0..rows {
            for x in 0..cols {
                let near = planted.iter().any(|p| {
                    x + margin >= p.x
                        && x < p.x + p.width + margin
                        && y + margin >= p.y
                        && y < p.y + p.height + margin
                });
                let i = (f * n + (y * cols + x) as usize) * px_bytes;
                if !near && before[i..i + px_bytes] != after[i..i + px_bytes] {
                    changed += 1;
                }
            }
        }
    }
    changed
}

fn font() -> TextFont {
    TextFont::load().expect("the DejaVu font (Debian fonts-dejavu-core) or MEDFED_FONT")
}

fn check_cleaned(case: &str, made: &BurnedIn, out: &FileDicomObject<InMemDicomObject>) {
    let input: &InMemDicomObject = &made.object;
    assert_eq!(
        text(input, tags::BURNED_IN_ANNOTATION).as_deref(),
        Some("YES")
    );
    assert_eq!(
        text(out, tags::BURNED_IN_ANNOTATION).as_deref(),
        Some("NO"),
        "{case}"
    );
    let method = out
        .get(tags::DEIDENTIFICATION_METHOD)
        .unwrap()
        .to_multi_str()
        .unwrap()
        .join("\\");
    assert!(
        method.contains("clean-pixel-data: Tesseract"),
        "{case}: {method}"
    );
    let frames = text(out, tags::NUMBER_OF_FRAMES)
        .and_then(|f| f.parse().ok())
        .unwrap_or(1usize);
    // The input reads as planted (the test sees text), the output reads clean.
    let before = ocr_text(input, 0);
    assert!(
        !leaks(&before, &made.planted).is_empty(),
        "{case}: OCR does not read the planted text in the input: {before:?}"
    );
    for f in [0, frames - 1] {
        let words = ocr_text(out, f);
        let leaked = leaks(&words, &made.planted);
        assert!(
            leaked.is_empty(),
            "{case}: frame {f} still reads {leaked:?} ({words:?})"
        );
    }
    let rows = input.get(tags::ROWS).unwrap().to_int::<u32>().unwrap();
    let cols = input.get(tags::COLUMNS).unwrap().to_int::<u32>().unwrap();
    let before = input.get(tags::PIXEL_DATA).unwrap().to_bytes().unwrap();
    let after = out.get(tags::PIXEL_DATA).unwrap().to_bytes().unwrap();
    assert_eq!(before.len(), after.len(), "{case}");
    let changed = changed_outside(
        &before,
        &after,
        &made.planted,
        rows,
        cols,
        sample_bytes(input),
        10,
    );
    assert_eq!(
        changed, 0,
        "{case}: {changed} pixels changed away from the text"
    );
}

#[test]
fn ocr_finds_and_blanks_generated_text_in_every_kind_and_layout() {
    let font = font();
    let cases = [
        ("US RGB 1 frame", ImageKind::Us, Layout::Rgb8, 240, 320, 1),
        ("US mono8 cine", ImageKind::Us, Layout::Mono8, 240, 320, 12),
        ("OT mono16", ImageKind::Ot, Layout::Mono16, 256, 256, 1),
        ("SC RGB", ImageKind::Sc, Layout::Rgb8, 300, 400, 1),
        (
            "CT MONOCHROME1",
            ImageKind::Ct,
            Layout::Mono1x16,
            256,
            256,
            1,
        ),
    ];
    for (case, kind, layout, rows, cols, frames) in cases {
        let made = burned_in_object(&BurnedInSpec::new(kind, layout, rows, cols, frames), &font);
        let (f, out) = run_file(&made.object, &clean_profile());
        assert_eq!(f.outcome, Outcome::Ok, "{case}: {:?}", f.reason);
        check_cleaned(case, &made, &out.unwrap());
    }
}

fn dcmtk(tool: &str, args: &[&str], from: &Path, to: &Path) -> bool {
    match Command::new(tool).args(args).arg(from).arg(to).status() {
        Ok(s) if s.success() => true,
        Ok(s) => panic!("{tool} failed: {s}"),
        Err(_) => {
            medfed_testkit::skip(
                Some("MEDFED_REQUIRE_DCMTK"),
                &format!("{tool} (dcmtk) is not installed"),
            );
            false
        }
    }
}

#[test]
fn compressed_text_images_are_decoded_cleaned_and_written_uncompressed() {
    let font = font();
    let made = burned_in_object(
        &BurnedInSpec::new(ImageKind::Us, Layout::Rgb8, 240, 320, 3),
        &font,
    );
    for (tool, args, ts) in [
        ("dcmcrle", &[][..], uids::RLE_LOSSLESS),
        ("dcmcjpeg", &["+e1"][..], uids::JPEG_LOSSLESS_SV1),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let plain = tmp.path().join("plain.dcm");
        write(&made.object, &plain);
        let packed = tmp.path().join("in/x.dcm");
        std::fs::create_dir_all(packed.parent().unwrap()).unwrap();
        if !dcmtk(tool, args, &plain, &packed) {
            return;
        }
        assert_eq!(
            open(&packed)
                .meta()
                .transfer_syntax()
                .trim_end_matches('\0'),
            ts
        );
        let (f, out) = run_path(&packed, tmp.path(), &clean_profile());
        assert_eq!(f.outcome, Outcome::Ok, "{tool}: {:?}", f.reason);
        let out = out.unwrap();
        assert_eq!(
            out.meta().transfer_syntax().trim_end_matches('\0'),
            uids::EXPLICIT_VR_LITTLE_ENDIAN,
            "{tool}"
        );
        let method = out
            .get(tags::DEIDENTIFICATION_METHOD)
            .unwrap()
            .to_multi_str()
            .unwrap()
            .join("\\");
        assert!(method.contains("written uncompressed"), "{method}");
        // Lossless: the decoded input is the generated image, so the same checks apply.
        check_cleaned(tool, &made, &out);
    }
}

/// The folders of real DICOM files that pydicom and pydicom-data ship (read in place; the
/// test copies live in a temporary folder, never in the repository).
fn real_folders() -> Option<Vec<std::path::PathBuf>> {
    // pydicom-data installs its files as the top-level package `data_store`.
    let a = medfed_testkit::pyenv_package_dir("pydicom/data/test_files")?;
    let b = medfed_testkit::pyenv_package_dir("data_store/data")?;
    Some(vec![a, b])
}

/// Renders `words` into a decoded native copy of `obj` (8/16-bit monochrome or 8-bit RGB),
/// as bright text near the top left; the planted boxes, or `None` when the layout or size
/// does not allow text that a reader could read.
fn plant_into(
    obj: &mut FileDicomObject<InMemDicomObject>,
    words: &[&str],
    font: &TextFont,
) -> Option<Vec<PlantedText>> {
    use dicom_pixeldata::PixelDecoder;
    let decoded = obj.decode_pixel_data().ok()?;
    let (rows, cols) = (decoded.rows(), decoded.columns());
    let spp = decoded.samples_per_pixel() as usize;
    let bits = decoded.bits_allocated() as usize;
    let pi = decoded.photometric_interpretation().as_str().to_string();
    let planar = decoded.planar_configuration() as u8 == 1;
    let frames = decoded.number_of_frames() as usize;
    let ok = match (spp, bits, pi.as_str()) {
        (1, 8 | 16, "MONOCHROME2" | "MONOCHROME1") => true,
        (3, 8, "RGB") => !planar,
        _ => false,
    };
    if !ok || cols < 96 || rows < 48 {
        return None;
    }
    let mut data = decoded.data().to_vec();
    let stored = decoded.bits_stored() as u32;
    let signed = decoded.pixel_representation() as u8 == 1;
    let top = if signed {
        (1u32 << (stored - 1)) - 1
    } else {
        (1u32 << stored) - 1
    };
    let white: u32 = if pi == "MONOCHROME1" {
        if signed { 1u32 << (stored - 1) } else { 0 }
    } else {
        top
    };
    let mut planted = Vec::new();
    let mut y = 3u32;
    for w in words {
        let mut px = 28.0f32;
        let (tw, th, cov) = loop {
            let r = font.rasterise(w, px);
            if r.0 + 6 <= cols || px <= 12.0 {
                break r;
            }
            px -= 1.0;
        };
        if tw + 6 > cols || y + th > rows {
            return None;
        }
        let x = 3u32;
        for f in 0..frames {
            for ty in 0..th {
                for tx in 0..tw {
                    let c = cov[(ty * tw + tx) as usize] as u32;
                    if c < 128 {
                        continue;
                    }
                    let p = (f * (rows * cols) as usize) + ((y + ty) * cols + x + tx) as usize;
                    for s in 0..spp {
                        let at = (p * spp + s) * bits / 8;
                        if bits == 8 {
                            data[at] = if spp == 3 { 255 } else { white as u8 };
                        } else {
                            data[at..at + 2].copy_from_slice(&(white as u16).to_le_bytes());
                        }
                    }
                }
            }
        }
        planted.push(PlantedText {
            text: w.to_string(),
            x,
            y,
            width: tw,
            height: th,
            frames: (0..frames as u32).collect(),
        });
        y += th + 4;
    }
    let vr = if bits > 8 { VR::OW } else { VR::OB };
    obj.put(DataElement::new(
        tags::PIXEL_DATA,
        vr,
        PrimitiveValue::U8(data.into()),
    ));
    obj.put(el(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, pi.as_str()));
    if spp == 3 {
        obj.put(el(tags::PLANAR_CONFIGURATION, VR::US, 0u16));
    }
    obj.meta_mut()
        .set_transfer_syntax(&dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN);
    Some(planted)
}

#[test]
fn real_objects_refused_for_burned_in_text_are_cleaned() {
    let Some(folders) = real_folders() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut refused_today = Vec::new();
    for (i, folder) in folders.iter().enumerate() {
        let report = run_batch(
            folder,
            &tmp.path().join(format!("basic{i}")),
            &tmp.path().join("key"),
            &[],
        );
        for f in report.files {
            let reason = f.reason.as_deref().unwrap_or_default();
            if f.outcome == Outcome::Refused && reason.contains("without the clean-pixel-data") {
                refused_today.push(folder.join(&f.input));
            }
        }
    }
    assert!(refused_today.len() >= 40, "{} refused", refused_today.len());

    // Each alone, as a user would run them, in a folder of its own.
    let mut cleaned = 0;
    let mut still_refused = Vec::new();
    let font = font();
    let (mut planted_checked, mut not_plantable) = (0, 0);
    for (i, path) in refused_today.iter().enumerate() {
        let dir = tmp.path().join(format!("one{i}"));
        std::fs::create_dir_all(dir.join("in")).unwrap();
        let copy = dir.join("in/x.dcm");
        std::fs::copy(path, &copy).unwrap();
        let (f, out) = run_path(&copy, &dir, &clean_profile());
        match out {
            Some(out) => {
                cleaned += 1;
                assert_eq!(
                    text(&out, tags::BURNED_IN_ANNOTATION).as_deref(),
                    Some("NO")
                );
            }
            None => {
                let reason = f.reason.unwrap_or_default();
                assert!(
                    reason.starts_with("clean-pixel-data: "),
                    "{}: {reason}",
                    path.display()
                );
                still_refused.push(format!(
                    "{}: {reason}",
                    path.file_name().unwrap().to_string_lossy()
                ));
                continue;
            }
        }
        // A test copy with names rendered into its pixels: OCR of the output reads none.
        let mut obj = open(path);
        let planted = plant_into(&mut obj, &["MUSTERMANN", "4711-0815"], &font)
            .or_else(|| plant_into(&mut obj, &["ERIKA", "4711"], &font));
        let Some(planted) = planted else {
            not_plantable += 1;
            continue;
        };
        let pdir = tmp.path().join(format!("planted{i}"));
        write(&obj, &pdir.join("in/x.dcm"));
        let before = ocr_text(&obj, 0);
        if leaks(&before, &planted).is_empty() {
            // Too small for OCR to read even before cleaning: nothing to measure.
            not_plantable += 1;
            continue;
        }
        let (f, out) = run_path(&pdir.join("in/x.dcm"), &pdir, &clean_profile());
        let out = out.unwrap_or_else(|| panic!("{}: {:?}", path.display(), f.reason));
        let frames = text(&out, tags::NUMBER_OF_FRAMES)
            .and_then(|f| f.parse().ok())
            .unwrap_or(1usize);
        for fr in [0, frames - 1] {
            let words = ocr_text(&out, fr);
            let leaked = leaks(&words, &planted);
            assert!(
                leaked.is_empty(),
                "{}: frame {fr} reads {leaked:?}",
                path.display()
            );
        }
        planted_checked += 1;
    }
    let fraction = cleaned as f64 / refused_today.len() as f64;
    eprintln!(
        "real OT/SC/US objects refused without clean-pixel-data: {}; cleaned with it: {cleaned} ({:.1} %); \
         planted text checked by OCR in {planted_checked} outputs, 0 leaks ({not_plantable} not plantable); still refused: {still_refused:#?}",
        refused_today.len(),
        fraction * 100.0
    );
    assert!(fraction >= 0.9, "{fraction}: {still_refused:#?}");
    assert!(
        planted_checked >= 10,
        "{planted_checked} planted outputs checked"
    );
}
