//! Finding text in pixel images with Tesseract: word boxes with their confidences and text,
//! from an 8-bit grey image, for blanking burned-in annotations.
//!
//! The engine is the system's libtesseract 5 (Debian `libtesseract5`) through
//! `tesseract-plumbing`; the English model comes from `tessdata` at run time
//! (`TESSDATA_PREFIX`, else Debian's `/usr/share/tesseract-ocr/5/tessdata`). A missing engine
//! model is an [`OcrError`], never a panic. One [`Ocr`] per thread: Tesseract's API object is
//! not shareable, and creating one loads the model (tens of milliseconds), so
//! [`with_thread_ocr`] keeps one per thread.

use std::cell::RefCell;
use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};

use tesseract_plumbing::TessBaseApi;
use tesseract_plumbing::tesseract_sys::{
    TessOcrEngineMode_OEM_LSTM_ONLY, TessPageSegMode_PSM_SPARSE_TEXT,
};

/// The model file name for a language in `tessdata`.
const LANGUAGE: &str = "eng";
/// Debian's location of the models (tesseract-ocr-eng, Tesseract 5).
const DEBIAN_TESSDATA: &str = "/usr/share/tesseract-ocr/5/tessdata";
/// Images beyond this side are not OCR input but a mistake or an attack (Tesseract's own
/// limit is 32767; our callers render single frames).
pub const MAX_SIDE: u32 = 16_384;

/// What went wrong finding text; each variant says what to install or fix.
#[derive(Debug, thiserror::Error)]
pub enum OcrError {
    #[error(
        "no Tesseract model {LANGUAGE}.traineddata in {searched:?} (install tesseract-ocr-eng or set TESSDATA_PREFIX)"
    )]
    NoModel { searched: Vec<PathBuf> },
    #[error("Tesseract could not start with the {language} model in {tessdata}")]
    Init { tessdata: PathBuf, language: String },
    #[error("image of {width}x{height} with {len} bytes is not a grey image Tesseract accepts")]
    BadImage { width: u32, height: u32, len: usize },
    #[error("Tesseract failed to recognise the image")]
    Recognize,
    #[error("Tesseract's word table could not be read: {0}")]
    Output(String),
}

/// A word Tesseract found, in the pixel coordinates of the image it was given.
#[derive(Debug, Clone, PartialEq)]
pub struct Word {
    pub left: u32,
    pub top: u32,
    pub width: u32,
    pub height: u32,
    /// Tesseract's confidence, 0 to 100.
    pub confidence: f32,
    pub text: String,
}

/// An 8-bit grey image, one byte a pixel, rows packed.
#[derive(Debug, Clone, Copy)]
pub struct GrayImage<'a> {
    pub pixels: &'a [u8],
    pub width: u32,
    pub height: u32,
}

impl<'a> GrayImage<'a> {
    /// Checks that `pixels` holds `width * height` bytes and the sides are usable.
    pub fn new(pixels: &'a [u8], width: u32, height: u32) -> Result<Self, OcrError> {
        let ok = width > 0
            && height > 0
            && width <= MAX_SIDE
            && height <= MAX_SIDE
            && pixels.len() == width as usize * height as usize;
        if ok {
            Ok(Self {
                pixels,
                width,
                height,
            })
        } else {
            Err(OcrError::BadImage {
                width,
                height,
                len: pixels.len(),
            })
        }
    }
}

/// The `tessdata` folder holding the English model: `TESSDATA_PREFIX` (the folder itself or
/// its parent, as Tesseract accepts both), else Debian's.
pub fn tessdata_dir() -> Result<PathBuf, OcrError> {
    let mut searched = Vec::new();
    if let Some(prefix) = std::env::var_os("TESSDATA_PREFIX").filter(|p| !p.is_empty()) {
        let prefix = PathBuf::from(prefix);
        searched.push(prefix.join("tessdata"));
        searched.push(prefix);
    }
    searched.push(PathBuf::from(DEBIAN_TESSDATA));
    searched
        .iter()
        .find(|d| d.join(format!("{LANGUAGE}.traineddata")).is_file())
        .cloned()
        .ok_or(OcrError::NoModel { searched })
}

/// The linked Tesseract's version, e.g. "5.3.0".
pub fn version() -> String {
    tesseract_plumbing::version().to_string_lossy().into_owned()
}

/// One Tesseract engine with the English model loaded.
pub struct Ocr {
    api: TessBaseApi,
}

impl Ocr {
    /// Starts Tesseract with the model from [`tessdata_dir`].
    pub fn new() -> Result<Self, OcrError> {
        Self::with_tessdata(&tessdata_dir()?)
    }

    /// Starts Tesseract with the model in `tessdata`.
    pub fn with_tessdata(tessdata: &Path) -> Result<Self, OcrError> {
        let init_error = || OcrError::Init {
            tessdata: tessdata.to_path_buf(),
            language: LANGUAGE.into(),
        };
        let dir =
            CString::new(tessdata.as_os_str().as_encoded_bytes()).map_err(|_| init_error())?;
        let lang = CString::new(LANGUAGE).expect("a constant without NUL");
        let mut api = TessBaseApi::create();
        // LSTM only: Debian's eng model has both engines, and the legacy one adds time and
        // false words on ultrasound speckle without finding more overlay text.
        api.init_4(Some(&dir), Some(&lang), TessOcrEngineMode_OEM_LSTM_ONLY)
            .map_err(|_| init_error())?;
        // Sparse text: overlays are scattered labels, not a page of paragraphs.
        api.set_page_seg_mode(TessPageSegMode_PSM_SPARSE_TEXT);
        // Tesseract's diagnostics go to a file, not our stderr; failing to set it only
        // loses that.
        let _ = api.set_variable(c"debug_file", c"/dev/null");
        Ok(Self { api })
    }

    /// Every word Tesseract reads in `image`, with its box and confidence.
    pub fn words(&mut self, image: GrayImage<'_>) -> Result<Vec<Word>, OcrError> {
        let bad = || OcrError::BadImage {
            width: image.width,
            height: image.height,
            len: image.pixels.len(),
        };
        let (w, h) = (
            i32::try_from(image.width).map_err(|_| bad())?,
            i32::try_from(image.height).map_err(|_| bad())?,
        );
        self.api
            .set_image(image.pixels, w, h, 1, w)
            .map_err(|_| bad())?;
        // Without a resolution Tesseract assumes 70 dpi and says so on stderr; screen
        // images have none, and 96 keeps its size heuristics for small fonts.
        self.api.set_source_resolution(96);
        self.api.recognize().map_err(|_| OcrError::Recognize)?;
        let tsv = self
            .api
            .get_tsv_text(0)
            .map_err(|_| OcrError::Output("no TSV output".into()))?;
        let text: &CStr = tsv.as_ref();
        parse_tsv(&text.to_string_lossy())
    }
}

thread_local! {
    static THREAD_OCR: RefCell<Option<Ocr>> = const { RefCell::new(None) };
}

/// Runs `f` with this thread's engine, starting it on first use.
pub fn with_thread_ocr<R>(f: impl FnOnce(&mut Ocr) -> R) -> Result<R, OcrError> {
    THREAD_OCR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(Ocr::new()?);
        }
        Ok(f(slot.as_mut().expect("just set")))
    })
}

/// Words (level 5) of Tesseract's TSV: level page block par line word left top width height
/// conf text.
fn parse_tsv(tsv: &str) -> Result<Vec<Word>, OcrError> {
    let mut words = Vec::new();
    for line in tsv.lines() {
        let cols: Vec<&str> = line.splitn(12, '\t').collect();
        if cols.len() < 12 || cols[0] != "5" {
            continue;
        }
        let num = |i: usize| {
            cols[i]
                .trim()
                .parse::<i64>()
                .map_err(|_| OcrError::Output(format!("column {i} is not a number")))
        };
        let conf: f32 = cols[10]
            .trim()
            .parse()
            .map_err(|_| OcrError::Output("confidence is not a number".into()))?;
        let text = cols[11].trim();
        if text.is_empty() {
            continue;
        }
        let clamp = |v: i64| v.clamp(0, u32::MAX as i64) as u32;
        words.push(Word {
            left: clamp(num(6)?),
            top: clamp(num(7)?),
            width: clamp(num(8)?),
            height: clamp(num(9)?),
            confidence: conf,
            text: text.to_string(),
        });
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsv_words_are_parsed_and_other_levels_skipped() {
        let tsv = "1\t1\t0\t0\t0\t0\t0\t0\t100\t50\t-1\t\n\
                   5\t1\t1\t1\t1\t1\t10\t20\t30\t12\t91.5\tDOE\n\
                   5\t1\t1\t1\t1\t2\t45\t20\t8\t12\t40\t \n";
        let words = parse_tsv(tsv).unwrap();
        assert_eq!(
            words,
            vec![Word {
                left: 10,
                top: 20,
                width: 30,
                height: 12,
                confidence: 91.5,
                text: "DOE".into()
            }]
        );
    }

    #[test]
    fn bad_images_are_errors() {
        assert!(GrayImage::new(&[0; 10], 4, 4).is_err());
        assert!(GrayImage::new(&[], 0, 0).is_err());
        assert!(GrayImage::new(&[0; 16], 4, 4).is_ok());
    }

    #[test]
    fn a_missing_model_folder_is_an_error_not_a_panic() {
        let dir = std::env::temp_dir().join("medfed-ocr-no-model");
        assert!(matches!(
            Ocr::with_tessdata(&dir),
            Err(OcrError::Init { .. })
        ));
    }
}
