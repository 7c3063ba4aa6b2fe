//! Reading DICOM input that nobody vouches for: Part 10 files with or without preamble, file
//! meta groups that dicom-rs would refuse (no group length, no transfer syntax), and bare data
//! sets in Implicit or Explicit VR, told apart by their content.
//!
//! The structure is walked here and only the values are decoded by dicom-rs's stateful
//! decoder, for two reasons. Every declared length is checked against the bytes that remain
//! before anything is allocated for it: dicom-rs reserves and zero-fills a value's declared
//! length before reading it, so one flipped bit in a length cost 3.7 GB and seconds per file.
//! And an undefined-length UN element in Explicit VR is read as the Implicit VR Little Endian
//! sequence that PS3.5 6.2.2 says it is, where dicom-rs reads on in Explicit VR and misparses.
//!
//! A batch can also leave the top-level Pixel Data in the file ([`read_file`]): its extent is
//! checked, its bytes are copied to the output unread, so memory holds the header only.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Cursor, Read, Seek, SeekFrom};
use std::ops::Range;
use std::rc::Rc;

use dicom_core::header::DataElementHeader;
use dicom_core::value::{C, DataSetSequence, PixelFragmentSequence, Value};
use dicom_core::{DataElement, Length, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_encoding::text::SpecificCharacterSet;
use dicom_encoding::transfer_syntax::{Codec, TransferSyntaxIndex};
use dicom_object::mem::InMemElement;
use dicom_object::meta::FileMetaTableBuilder;
use dicom_object::{DefaultDicomObject, InMemDicomObject};
use dicom_parser::stateful::decode::{DynStatefulDecoder, StatefulDecode, StatefulDecoder};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use dicom_transfer_syntax_registry::entries::{
    EXPLICIT_VR_BIG_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN,
};

use crate::engine::{IMPLEMENTATION_CLASS_UID, MAX_DEPTH, Rejection};

/// A deflated data set may inflate to at most this many times its file's size (plus
/// [`INFLATE_SLACK`]): the bound that stands in for "no more than the file holds" when the
/// data set is compressed. Real deflated images compress far less than 64:1.
const INFLATE_RATIO: u64 = 64;
const INFLATE_SLACK: u64 = 16 << 20;
/// Values of the file meta group that medfed reads are UIDs (at most 64 bytes); anything
/// longer is not a UID and is not read.
const MAX_META_VALUE: u32 = 1024;

/// A parsed input file.
pub(crate) struct ParsedFile {
    /// The object; its top-level Pixel Data an empty placeholder when that was left in the
    /// file.
    pub object: DefaultDicomObject,
    /// Where the top-level Pixel Data element (header and value) lies in the file, when it
    /// was left there to be copied unread.
    pub pixel_data: Option<Range<u64>>,
}

/// Parses a DICOM object from memory: Part 10 with or without preamble, or a bare data set.
/// No allocation exceeds what `bytes` holds (or, deflated, a bounded multiple of it).
pub fn read_object(bytes: &[u8]) -> Result<DefaultDicomObject, Rejection> {
    let mut src = Cursor::new(bytes);
    read_source(&mut src, bytes.len() as u64, false).map(|p| p.object)
}

/// Reads a bare data set (no file meta group), in Implicit VR Little Endian, Explicit VR
/// Little Endian or Explicit VR Big Endian as its first element shows. Succeeds only if it
/// holds SOP Class and SOP Instance UIDs, from which a proper meta group is built.
pub fn read_bare_dataset(bytes: &[u8]) -> Option<DefaultDicomObject> {
    let mut src = Cursor::new(bytes);
    let layout = Layout::detect(&mut src, 0, bytes.len() as u64).ok()??;
    let parsed = parse_dataset(&mut src, 0, bytes.len() as u64, layout, false).ok()?;
    with_meta_from_dataset(parsed.object, None, None, layout.uid()).ok()
}

/// Parses the file at `file`'s start (`size` bytes). With `leave_pixel_data`, a top-level
/// Pixel Data element is not read but located, for [`ParsedFile::pixel_data`]. The file is
/// handed back for copying those bytes.
pub(crate) fn read_file(
    file: File,
    size: u64,
    leave_pixel_data: bool,
) -> Result<(ParsedFile, File), Rejection> {
    // Headers are small and many; 64 KiB keeps the reads few without holding much.
    let mut src = TrackedReader {
        inner: BufReader::with_capacity(64 * 1024, file),
        pos: 0,
    };
    let parsed = read_source(&mut src, size, leave_pixel_data)?;
    Ok((parsed, src.inner.into_inner()))
}

/// A buffered file reader that knows its position, so that the parser's seeks (to a known
/// offset, or asking where it is) move within the buffer instead of discarding it: a plain
/// `BufReader` drops its buffer on every seek and asks the kernel for the position, which cost
/// about ten `lseek` and `read` calls per small file.
struct TrackedReader {
    inner: BufReader<File>,
    /// Offset in the file of the next byte `read` returns.
    pos: u64,
}

impl Read for TrackedReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl BufRead for TrackedReader {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        self.inner.fill_buf()
    }
    fn consume(&mut self, amt: usize) {
        self.inner.consume(amt);
        self.pos += amt as u64;
    }
}

impl Seek for TrackedReader {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let target = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(_) => {
                self.pos = self.inner.seek(to)?;
                return Ok(self.pos);
            }
        };
        let target = target.ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "seek before the start of the file",
            )
        })?;
        let delta = i64::try_from(i128::from(target) - i128::from(self.pos))
            .map_err(|_| std::io::Error::other("seek too far"))?;
        // Within the buffer this only moves the cursor; beyond it, one relative lseek.
        self.inner.seek_relative(delta)?;
        self.pos = target;
        Ok(target)
    }
    fn stream_position(&mut self) -> std::io::Result<u64> {
        Ok(self.pos)
    }
}

/// Reads an element that arrived as UN although the dictionary says SQ: its value is an
/// Implicit VR Little Endian sequence (PS3.5 6.2.2), parsed here within its own bytes.
pub(crate) fn sequence_from_un(tag: Tag, bytes: &[u8]) -> Option<InMemElement> {
    let len = u32::try_from(bytes.len()).ok()?;
    let src = Rc::new(RefCell::new(Cursor::new(bytes)));
    let mut p = Parser::new(&src, 0, bytes.len() as u64, Layout::ImplicitLe).ok()?;
    let items = p.sequence(Length(len), 1).ok()?;
    Some(DataElement::new(
        tag,
        VR::SQ,
        DataSetSequence::new(items, Length::UNDEFINED),
    ))
}

/// What stands for Pixel Data left in the file: an element of the same VR and kind with no
/// content, so that whatever asks whether the object has pixels (the burned-in gate) still
/// gets the true answer. The batch writes the file's bytes in its place.
fn placeholder(vr: VR, encapsulated: bool) -> InMemElement {
    if encapsulated {
        DataElement::new(
            tags::PIXEL_DATA,
            vr,
            Value::PixelSequence(PixelFragmentSequence::new(C::new(), C::<Vec<u8>>::new())),
        )
    } else {
        DataElement::empty(tags::PIXEL_DATA, vr)
    }
}

/// Whether `elem` is (still) what [`placeholder`] made.
pub(crate) fn is_placeholder(elem: &InMemElement) -> bool {
    match elem.value() {
        Value::PixelSequence(seq) => seq.fragments().is_empty() && seq.offset_table().is_empty(),
        Value::Primitive(v) => v.calculate_byte_len() == 0,
        Value::Sequence(_) => false,
    }
}

/// How a data set is encoded (the part of a transfer syntax that parsing needs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    ImplicitLe,
    ExplicitLe,
    ExplicitBe,
}

impl Layout {
    fn uid(self) -> &'static str {
        match self {
            Layout::ImplicitLe => IMPLICIT_VR_LITTLE_ENDIAN.uid(),
            Layout::ExplicitLe => EXPLICIT_VR_LITTLE_ENDIAN.uid(),
            Layout::ExplicitBe => EXPLICIT_VR_BIG_ENDIAN.uid(),
        }
    }

    fn ts(self) -> dicom_encoding::TransferSyntax {
        match self {
            Layout::ImplicitLe => IMPLICIT_VR_LITTLE_ENDIAN.erased(),
            Layout::ExplicitLe => EXPLICIT_VR_LITTLE_ENDIAN.erased(),
            Layout::ExplicitBe => EXPLICIT_VR_BIG_ENDIAN.erased(),
        }
    }

    fn big_endian(self) -> bool {
        self == Layout::ExplicitBe
    }

    /// The layout of the data set at `at`, from its first element: two letters of a VR
    /// after the tag mean Explicit VR, and the tag's byte order tells the endianness
    /// (groups at the start of a data set are small). `None` when the first tag is not one
    /// a data set starts with.
    fn detect<R: Read + Seek>(src: &mut R, at: u64, size: u64) -> std::io::Result<Option<Self>> {
        if size.saturating_sub(at) < 8 {
            return Ok(None);
        }
        let mut head = [0u8; 6];
        src.seek(SeekFrom::Start(at))?;
        src.read_exact(&mut head)?;
        let le = u16::from_le_bytes([head[0], head[1]]);
        let be = u16::from_be_bytes([head[0], head[1]]);
        let vr_ok = head[4].is_ascii_uppercase()
            && head[5].is_ascii_uppercase()
            && VR::from_binary([head[4], head[5]]).is_some();
        let plausible = |g: u16| g % 2 == 0 && g <= 0x0008;
        Ok(match (vr_ok, plausible(le), plausible(be)) {
            (true, true, _) => Some(Layout::ExplicitLe),
            (true, false, true) => Some(Layout::ExplicitBe),
            (false, true, _) => Some(Layout::ImplicitLe),
            _ => None,
        })
    }
}

/// What the file meta group says, read by hand: dicom-rs refuses a meta group without its
/// group length, and many real files lack it.
#[derive(Default)]
struct Meta {
    sop_class: Option<String>,
    sop_instance: Option<String>,
    transfer_syntax: Option<String>,
}

fn read_source<R: BufRead + Seek>(
    src: &mut R,
    size: u64,
    leave_pixel_data: bool,
) -> Result<ParsedFile, Rejection> {
    let io = |e: std::io::Error| Rejection::Error(format!("cannot read: {e}"));
    let mut head = [0u8; 132];
    let got = read_up_to(src, &mut head).map_err(io)?;
    let head = &head[..got];
    let meta_start = if head.get(128..132) == Some(b"DICM") {
        Some(132)
    } else if head.get(0..4) == Some(b"DICM") {
        Some(4)
    } else if head.len() >= 8 && head[0..2] == [0x02, 0x00] {
        // A meta group without its magic code, as some writers leave it.
        Some(0)
    } else {
        None
    };

    let Some(meta_start) = meta_start else {
        // A bare data set, or not DICOM at all.
        let not_dicom = || {
            Rejection::Refused(
                "not a DICOM file (no DICM magic, and not a bare DICOM data set)".into(),
            )
        };
        let layout = Layout::detect(src, 0, size)
            .map_err(io)?
            .ok_or_else(not_dicom)?;
        let parsed =
            parse_dataset(src, 0, size, layout, leave_pixel_data).map_err(|_| not_dicom())?;
        let object = with_meta_from_dataset(parsed.object, None, None, layout.uid())
            .map_err(|_| not_dicom())?;
        return Ok(ParsedFile {
            object,
            pixel_data: parsed.pixel_data,
        });
    };

    let (meta, dataset_start) = read_meta(src, meta_start, size)?;
    let declared = meta
        .transfer_syntax
        .as_deref()
        .map(|uid| uid.trim_end_matches(['\0', ' ']).to_string());
    let detected = Layout::detect(src, dataset_start, size).map_err(io)?;
    // Pixel Data is copied as written only where the output keeps the layout it was written
    // in; otherwise it is decoded and re-encoded with the rest.
    let (ts_uid, layout, layout_kept) = match declared.as_deref() {
        // No transfer syntax: the content says which of the uncompressed ones it is.
        None | Some("") => {
            let layout = detected.ok_or_else(|| {
                Rejection::Error(
                    "the file meta group names no transfer syntax and the data set is in none that medfed can tell".into(),
                )
            })?;
            (layout.uid().to_string(), layout, true)
        }
        Some(uid) => {
            let ts = TransferSyntaxRegistry
                .get(uid)
                .ok_or_else(|| Rejection::Refused(format!("unknown transfer syntax {uid:?}")))?;
            if let Codec::Dataset(Some(adapter)) = ts.codec() {
                return read_deflated(src, dataset_start, size, uid, &meta, adapter.as_ref());
            }
            if matches!(ts.codec(), Codec::Dataset(None)) {
                return Err(Rejection::Refused(format!(
                    "transfer syntax {uid} ({}) cannot be decoded",
                    ts.name()
                )));
            }
            let declared_layout = if ts.endianness() == dicom_encoding::Endianness::Big {
                Layout::ExplicitBe
            } else if ts.uid() == IMPLICIT_VR_LITTLE_ENDIAN.uid() {
                Layout::ImplicitLe
            } else {
                Layout::ExplicitLe
            };
            // Some writers declare Explicit VR and write Implicit (or the reverse): the data
            // set is read as written and re-encoded as declared.
            let layout = match (declared_layout, detected) {
                (
                    Layout::ImplicitLe | Layout::ExplicitLe,
                    Some(d @ (Layout::ImplicitLe | Layout::ExplicitLe)),
                ) => d,
                _ => declared_layout,
            };
            (uid.to_string(), layout, layout == declared_layout)
        }
    };
    let leave = leave_pixel_data && layout_kept;
    let parsed = parse_dataset(src, dataset_start, size, layout, leave)
        .map_err(ParseError::into_rejection)?;
    let object = with_meta_from_dataset(parsed.object, meta.sop_class, meta.sop_instance, &ts_uid)?;
    Ok(ParsedFile {
        object,
        pixel_data: parsed.pixel_data,
    })
}

fn read_up_to<R: Read>(src: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match src.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Walks the group 0002 elements from `start` (Explicit VR Little Endian, or Implicit where a
/// writer got that wrong), bounded by the file; returns what medfed needs and where the data
/// set starts.
fn read_meta<R: Read + Seek>(src: &mut R, start: u64, size: u64) -> Result<(Meta, u64), Rejection> {
    let err = |at: u64, what: String| {
        Rejection::Error(format!(
            "cannot parse DICOM: file meta group at byte {at}: {what}"
        ))
    };
    let mut meta = Meta::default();
    let mut pos = start;
    src.seek(SeekFrom::Start(pos))
        .map_err(|e| err(pos, e.to_string()))?;
    loop {
        if size - pos < 8 {
            break;
        }
        let mut h = [0u8; 8];
        src.read_exact(&mut h)
            .map_err(|e| err(pos, e.to_string()))?;
        let group = u16::from_le_bytes([h[0], h[1]]);
        if group != 0x0002 {
            break;
        }
        let element = u16::from_le_bytes([h[2], h[3]]);
        let explicit = VR::from_binary([h[4], h[5]]);
        let (header_len, len) = match explicit {
            Some(vr) if has_long_length(vr) => {
                if size - pos < 12 {
                    return Err(err(pos, "ends inside an element header".into()));
                }
                let mut l = [0u8; 4];
                src.read_exact(&mut l)
                    .map_err(|e| err(pos, e.to_string()))?;
                (12, u32::from_le_bytes(l))
            }
            Some(_) => (8, u32::from(u16::from_le_bytes([h[6], h[7]]))),
            None => (8, u32::from_le_bytes([h[4], h[5], h[6], h[7]])),
        };
        let value_at = pos + header_len;
        if len == u32::MAX || u64::from(len) > size - value_at {
            return Err(err(
                pos,
                format!(
                    "(0002,{element:04X}) declares {len} bytes, {} remain",
                    size - value_at
                ),
            ));
        }
        let slot = match element {
            0x0002 => Some(&mut meta.sop_class),
            0x0003 => Some(&mut meta.sop_instance),
            0x0010 => Some(&mut meta.transfer_syntax),
            _ => None,
        };
        match slot {
            Some(slot) if len <= MAX_META_VALUE => {
                let mut v = vec![0u8; len as usize];
                src.read_exact(&mut v)
                    .map_err(|e| err(pos, e.to_string()))?;
                let text: String = v.iter().map(|&b| b as char).collect();
                *slot = Some(text.trim_end_matches(['\0', ' ']).to_string());
            }
            _ => {
                src.seek(SeekFrom::Start(value_at + u64::from(len)))
                    .map_err(|e| err(pos, e.to_string()))?;
            }
        }
        pos = value_at + u64::from(len);
    }
    Ok((meta, pos))
}

/// VRs whose explicit header has a 4-byte length (PS3.5 7.1.2).
fn has_long_length(vr: VR) -> bool {
    matches!(
        vr,
        VR::OB
            | VR::OD
            | VR::OF
            | VR::OL
            | VR::OV
            | VR::OW
            | VR::SQ
            | VR::SV
            | VR::UC
            | VR::UN
            | VR::UR
            | VR::UT
            | VR::UV
    )
}

/// A deflated data set is inflated into memory first (bounded), then parsed within it.
fn read_deflated<R: Read + Seek>(
    src: &mut R,
    start: u64,
    size: u64,
    uid: &str,
    meta: &Meta,
    adapter: &dyn dicom_encoding::transfer_syntax::DataRWAdapter,
) -> Result<ParsedFile, Rejection> {
    let io = |e: std::io::Error| Rejection::Error(format!("cannot read: {e}"));
    src.seek(SeekFrom::Start(start)).map_err(io)?;
    let cap = size
        .saturating_mul(INFLATE_RATIO)
        .saturating_add(INFLATE_SLACK);
    let mut inflated = Vec::new();
    adapter
        .adapt_reader(Box::new(src.take(size - start)))
        .take(cap + 1)
        .read_to_end(&mut inflated)
        .map_err(|e| Rejection::Error(format!("cannot inflate the deflated data set: {e}")))?;
    if inflated.len() as u64 > cap {
        return Err(Rejection::Refused(format!(
            "the deflated data set inflates to more than {INFLATE_RATIO} times the file's size"
        )));
    }
    let len = inflated.len() as u64;
    let mut cur = Cursor::new(&inflated[..]);
    let parsed = parse_dataset(&mut cur, 0, len, Layout::ExplicitLe, false)
        .map_err(ParseError::into_rejection)?;
    let object = with_meta_from_dataset(
        parsed.object,
        meta.sop_class.clone(),
        meta.sop_instance.clone(),
        uid,
    )?;
    Ok(ParsedFile {
        object,
        pixel_data: None,
    })
}

/// Gives the data set a file meta group: the SOP Class and Instance from the file's meta
/// group, else from the data set (which then must name real UIDs).
fn with_meta_from_dataset(
    ds: InMemDicomObject,
    class: Option<String>,
    instance: Option<String>,
    ts_uid: &str,
) -> Result<DefaultDicomObject, Rejection> {
    let from_ds = |tag| {
        ds.get(tag)
            .and_then(|e| e.to_str().ok())
            .map(|v| v.trim_matches(['\0', ' ']).to_string())
            .filter(|v| is_uid(v))
    };
    let class = class
        .filter(|c| !c.is_empty())
        .or_else(|| from_ds(tags::SOP_CLASS_UID));
    let instance = instance
        .filter(|c| !c.is_empty())
        .or_else(|| from_ds(tags::SOP_INSTANCE_UID));
    let (Some(class), Some(instance)) = (class, instance) else {
        // A data set, but not a stored object: nothing could name its output's instance.
        return Err(Rejection::Refused(
            "no SOP Class UID or SOP Instance UID in the file meta group or the data set: not a stored DICOM object".into(),
        ));
    };
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(class)
        .media_storage_sop_instance_uid(instance)
        .transfer_syntax(ts_uid)
        .implementation_class_uid(IMPLEMENTATION_CLASS_UID)
        .build()
        .map_err(|e| Rejection::Error(format!("cannot build the file meta group: {e}")))?;
    Ok(ds.with_exact_meta(meta))
}

fn is_uid(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

/// A parse failure: where, what, and whether it is a policy refusal rather than damage.
#[derive(Debug)]
struct ParseError {
    at: u64,
    message: String,
    refuse: bool,
}

impl ParseError {
    fn into_rejection(self) -> Rejection {
        if self.refuse {
            Rejection::Refused(self.message)
        } else {
            Rejection::Error(format!(
                "cannot parse DICOM at byte {}: {}",
                self.at, self.message
            ))
        }
    }
}

struct ParsedDataset {
    object: InMemDicomObject,
    pixel_data: Option<Range<u64>>,
}

/// Parses the data set in `start..end` of `src`.
fn parse_dataset<R: BufRead + Seek>(
    src: &mut R,
    start: u64,
    end: u64,
    layout: Layout,
    leave_pixel_data: bool,
) -> Result<ParsedDataset, ParseError> {
    let io = |at, e: std::io::Error| ParseError {
        at,
        message: e.to_string(),
        refuse: false,
    };
    src.seek(SeekFrom::Start(start)).map_err(|e| io(start, e))?;
    // The parser shares the source with the decoders it makes; the source comes back after.
    let shared = Rc::new(RefCell::new(src));
    let mut p = Parser::new(&shared, start, end, layout)?;
    p.leave_pixel_data = leave_pixel_data;
    let object = p.top_level()?;
    let pixel_data = p.pixel_data.take();
    Ok(ParsedDataset { object, pixel_data })
}

/// A reader over the shared source that counts what it consumes: the decoders read exactly
/// what they decode, so the count is the position in the data set.
struct Counted<R> {
    src: Rc<RefCell<R>>,
    pos: Rc<Cell<u64>>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.src.borrow_mut().read(buf)?;
        self.pos.set(self.pos.get() + n as u64);
        Ok(n)
    }
}

type Decoder<R> = DynStatefulDecoder<Counted<R>>;

struct Parser<R> {
    src: Rc<RefCell<R>>,
    pos: Rc<Cell<u64>>,
    end: u64,
    layout: Layout,
    /// The decoder for `layout`.
    main: Decoder<R>,
    /// The character set last declared, for the Implicit VR decoders of UN sequences.
    charset: SpecificCharacterSet,
    leave_pixel_data: bool,
    pixel_data: Option<Range<u64>>,
}

/// Where an item's elements end.
#[derive(Clone, Copy)]
enum Bound {
    /// The top level: the end of the data.
    Top,
    /// An item of defined length: ends at this position.
    At(u64),
    /// An item of undefined length: ends at its Item Delimitation Item.
    Delimited,
}

impl<R: BufRead + Seek> Parser<R> {
    fn new(src: &Rc<RefCell<R>>, start: u64, end: u64, layout: Layout) -> Result<Self, ParseError> {
        let pos = Rc::new(Cell::new(start));
        let main = Self::decoder(src, &pos, layout, SpecificCharacterSet::default(), start)?;
        Ok(Self {
            src: Rc::clone(src),
            pos,
            end,
            layout,
            main,
            charset: SpecificCharacterSet::default(),
            leave_pixel_data: false,
            pixel_data: None,
        })
    }

    fn decoder(
        src: &Rc<RefCell<R>>,
        pos: &Rc<Cell<u64>>,
        layout: Layout,
        charset: SpecificCharacterSet,
        at: u64,
    ) -> Result<Decoder<R>, ParseError> {
        let counted = Counted {
            src: Rc::clone(src),
            pos: Rc::clone(pos),
        };
        StatefulDecoder::new_with(counted, &layout.ts(), charset, at).map_err(|e| ParseError {
            at,
            message: e.to_string(),
            refuse: false,
        })
    }

    fn pos(&self) -> u64 {
        self.pos.get()
    }

    fn fail<T>(&self, at: u64, message: impl Into<String>) -> Result<T, ParseError> {
        Err(ParseError {
            at,
            message: message.into(),
            refuse: false,
        })
    }

    /// A declared length must fit in what remains: checked before dicom-rs allocates it.
    fn check_len(&self, at: u64, tag: Tag, len: u32) -> Result<(), ParseError> {
        let remaining = self.end.saturating_sub(self.pos());
        if u64::from(len) > remaining {
            return self.fail(
                at,
                format!("{tag} declares {len} bytes, only {remaining} remain"),
            );
        }
        Ok(())
    }

    fn top_level(&mut self) -> Result<InMemDicomObject, ParseError> {
        // (Implicit VR in the main decoder only: UN sequences make their own.)
        let mut dec = None;
        self.dataset(&mut dec, Bound::Top, 0)
    }

    /// The elements of one data set (the top level or an item). `sub` is the Implicit VR
    /// decoder inside an undefined-length UN sequence, `None` for the main one.
    fn dataset(
        &mut self,
        sub: &mut Option<Decoder<R>>,
        bound: Bound,
        depth: usize,
    ) -> Result<InMemDicomObject, ParseError> {
        if depth > MAX_DEPTH {
            return Err(ParseError {
                at: self.pos(),
                message: format!("sequences nested deeper than {MAX_DEPTH} levels"),
                refuse: true,
            });
        }
        let mut entries: BTreeMap<Tag, InMemElement> = BTreeMap::new();
        loop {
            let at = self.pos();
            match bound {
                Bound::At(end) if at == end => break,
                Bound::At(end) if at > end => {
                    return self.fail(at, "an element overruns the end of its item");
                }
                Bound::Top if self.end - at == 0 => break,
                // Trailing zeros are padding that some writers add (a zero tag is no
                // stored attribute); anything else is parsed, or reported as damage.
                Bound::Top
                    if (self.end - at < 8 || self.zero_tag_ahead(at)?)
                        && self.all_zero_to_end(at)? =>
                {
                    break;
                }
                _ => {}
            }
            if self.end - at < 8 {
                return self.fail(at, "the data ends inside an element header");
            }
            let header = self.decode_header(sub, at)?;
            let tag = header.tag;
            if tag.group() == 0xFFFE {
                match (tag.element(), bound) {
                    (0xE00D, Bound::Delimited) => break,
                    // A stray delimiter outside any item; dicom-rs skips it too.
                    (0xE00D, Bound::Top) => continue,
                    _ => return self.fail(at, format!("unexpected {tag} among elements")),
                }
            }
            let elem = if header.vr == VR::SQ || header.len.is_undefined() {
                if tag == tags::PIXEL_DATA && header.len.is_undefined() && header.vr != VR::SQ {
                    if matches!(bound, Bound::Top) && self.leave_pixel_data && sub.is_none() {
                        let end = self.skip_fragments(at)?;
                        self.pixel_data = Some(at..end);
                        self.seek(end)?;
                        entries.insert(tag, placeholder(VR::OB, true));
                        continue;
                    }
                    self.encapsulated(sub, at)?
                } else {
                    let un_in_explicit = header.vr == VR::UN
                        && header.len.is_undefined()
                        && sub.is_none()
                        && self.layout != Layout::ImplicitLe;
                    let items = if un_in_explicit {
                        // PS3.5 6.2.2: its content is Implicit VR Little Endian.
                        let here = self.pos();
                        let mut implicit = Some(Self::decoder(
                            &self.src,
                            &self.pos,
                            Layout::ImplicitLe,
                            self.charset.clone(),
                            here,
                        )?);
                        self.sequence_with(&mut implicit, header.len, depth + 1)?
                    } else {
                        self.sequence_with(sub, header.len, depth + 1)?
                    };
                    DataElement::new(tag, VR::SQ, DataSetSequence::new(items, Length::UNDEFINED))
                }
            } else {
                let len = header.len.0;
                self.check_len(at, tag, len)?;
                if tag == tags::PIXEL_DATA
                    && matches!(bound, Bound::Top)
                    && self.leave_pixel_data
                    && sub.is_none()
                {
                    let end = self.pos() + u64::from(len);
                    self.pixel_data = Some(at..end);
                    self.seek(end)?;
                    entries.insert(tag, placeholder(header.vr, false));
                    continue;
                }
                let dec = sub.as_mut().unwrap_or(&mut self.main);
                let value = dec.read_value_preserved(&header).map_err(|e| ParseError {
                    at,
                    message: format!("{tag}: {e}"),
                    refuse: false,
                })?;
                if tag == tags::SPECIFIC_CHARACTER_SET
                    && let Some(cs) = value
                        .to_str()
                        .split('\\')
                        .next()
                        .and_then(|c| SpecificCharacterSet::from_code(c.trim()))
                {
                    self.charset = cs;
                }
                let elem = DataElement::new(tag, header.vr, value);
                // A standard attribute sent as UN is read by its dictionary VR here, so that
                // everything downstream (pseudonym keys, the pixel gate, the table) sees
                // its value; binary UN values are Little Endian, so not in Big Endian files.
                if header.vr == VR::UN && tag.group() % 2 == 0 && !self.layout.big_endian() {
                    crate::engine::reinterpret_un(elem)
                } else {
                    elem
                }
            };
            entries.insert(tag, elem);
        }
        Ok(InMemDicomObject::from_element_iter(entries.into_values()))
    }

    fn decode_header(
        &mut self,
        sub: &mut Option<Decoder<R>>,
        at: u64,
    ) -> Result<DataElementHeader, ParseError> {
        let dec = sub.as_mut().unwrap_or(&mut self.main);
        dec.decode_header().map_err(|e| ParseError {
            at,
            message: e.to_string(),
            refuse: false,
        })
    }

    fn sequence(&mut self, len: Length, depth: usize) -> Result<C<InMemDicomObject>, ParseError> {
        let mut none = None;
        self.sequence_with(&mut none, len, depth)
    }

    /// The items of a sequence whose header has just been read.
    fn sequence_with(
        &mut self,
        sub: &mut Option<Decoder<R>>,
        len: Length,
        depth: usize,
    ) -> Result<C<InMemDicomObject>, ParseError> {
        let start = self.pos();
        let seq_end = match len.get() {
            Some(l) => {
                self.check_len(start, Tag(0xFFFE, 0xE000), l)?;
                Some(start + u64::from(l))
            }
            None => None,
        };
        let mut items = C::new();
        loop {
            let at = self.pos();
            if let Some(end) = seq_end {
                if at == end {
                    break;
                }
                if at > end {
                    return self.fail(at, "an item overruns the end of its sequence");
                }
            }
            if self.end - at < 8 {
                return self.fail(at, "the data ends inside a sequence");
            }
            let header = self.decode_header(sub, at)?;
            match (header.tag, header.len.get()) {
                (Tag(0xFFFE, 0xE000), Some(l)) => {
                    self.check_len(at, header.tag, l)?;
                    let bound = Bound::At(self.pos() + u64::from(l));
                    items.push(self.dataset(sub, bound, depth)?);
                }
                (Tag(0xFFFE, 0xE000), None) => {
                    items.push(self.dataset(sub, Bound::Delimited, depth)?)
                }
                // (A delimiter inside a sequence of defined length ends it too.)
                (Tag(0xFFFE, 0xE0DD), _) => break,
                (tag, _) => return self.fail(at, format!("expected an item, found {tag}")),
            }
        }
        Ok(items)
    }

    /// Encapsulated Pixel Data read whole: the offset table, then one fragment per item.
    fn encapsulated(
        &mut self,
        sub: &mut Option<Decoder<R>>,
        at: u64,
    ) -> Result<InMemElement, ParseError> {
        let mut offset_table: Option<C<u32>> = None;
        let mut fragments: C<Vec<u8>> = C::new();
        loop {
            let here = self.pos();
            // Ending at the end of the file without a delimiter is accepted, as dicom-rs does.
            if self.end == here {
                break;
            }
            if self.end - here < 8 {
                return self.fail(here, "the file ends inside the Pixel Data");
            }
            let header = self.decode_header(sub, here)?;
            match (header.tag, header.len.get()) {
                (Tag(0xFFFE, 0xE000), Some(l)) => {
                    self.check_len(here, tags::PIXEL_DATA, l)?;
                    let dec = sub.as_mut().unwrap_or(&mut self.main);
                    let read_err = |e: dicom_parser::stateful::decode::Error| ParseError {
                        at: here,
                        message: format!("Pixel Data fragment: {e}"),
                        refuse: false,
                    };
                    if offset_table.is_none() {
                        let mut table = Vec::new();
                        dec.read_u32_to_vec(l, &mut table).map_err(read_err)?;
                        offset_table = Some(table.into());
                    } else {
                        let mut v = Vec::new();
                        dec.read_to_vec(l, &mut v).map_err(read_err)?;
                        fragments.push(v);
                    }
                }
                (Tag(0xFFFE, 0xE0DD), _) => break,
                (tag, _) => {
                    return self.fail(
                        here,
                        format!("unexpected {tag} in the Pixel Data (at byte {at})"),
                    );
                }
            }
        }
        Ok(DataElement::new(
            tags::PIXEL_DATA,
            VR::OB,
            Value::PixelSequence(PixelFragmentSequence::new(
                offset_table.unwrap_or_default(),
                fragments,
            )),
        ))
    }

    /// Walks the items of encapsulated Pixel Data without reading them; returns where the
    /// element ends.
    fn skip_fragments(&mut self, at: u64) -> Result<u64, ParseError> {
        let mut p = self.pos();
        loop {
            if p == self.end {
                return Ok(p);
            }
            if self.end - p < 8 {
                return self.fail(p, "the file ends inside the Pixel Data");
            }
            self.seek(p)?;
            let mut h = [0u8; 8];
            self.src
                .borrow_mut()
                .read_exact(&mut h)
                .map_err(|e| ParseError {
                    at: p,
                    message: e.to_string(),
                    refuse: false,
                })?;
            let (group, element, len) = if self.layout.big_endian() {
                (
                    u16::from_be_bytes([h[0], h[1]]),
                    u16::from_be_bytes([h[2], h[3]]),
                    u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
                )
            } else {
                (
                    u16::from_le_bytes([h[0], h[1]]),
                    u16::from_le_bytes([h[2], h[3]]),
                    u32::from_le_bytes([h[4], h[5], h[6], h[7]]),
                )
            };
            match (group, element) {
                (0xFFFE, 0xE000) if len != u32::MAX && u64::from(len) <= self.end - p - 8 => {
                    p += 8 + u64::from(len);
                }
                (0xFFFE, 0xE000) => {
                    return self.fail(
                        p,
                        format!(
                            "a Pixel Data fragment declares {len} bytes, only {} remain",
                            self.end - p - 8
                        ),
                    );
                }
                (0xFFFE, 0xE0DD) => return Ok(p + 8),
                _ => {
                    return self.fail(
                        p,
                        format!(
                            "unexpected ({group:04X},{element:04X}) in the Pixel Data (at byte {at})"
                        ),
                    );
                }
            }
        }
    }

    fn seek(&mut self, to: u64) -> Result<(), ParseError> {
        self.src
            .borrow_mut()
            .seek(SeekFrom::Start(to))
            .map_err(|e| ParseError {
                at: to,
                message: e.to_string(),
                refuse: false,
            })?;
        self.pos.set(to);
        Ok(())
    }

    /// Whether the next four bytes are a zero tag, which no stored data set holds.
    fn zero_tag_ahead(&mut self, at: u64) -> Result<bool, ParseError> {
        let mut src = self.src.borrow_mut();
        let buf = src.fill_buf().map_err(|e| ParseError {
            at,
            message: e.to_string(),
            refuse: false,
        })?;
        Ok(buf.len() >= 4 && buf[..4] == [0, 0, 0, 0])
    }

    /// Whether every byte from `at` to the end is zero (read in pieces); if not, the source
    /// is back at `at`.
    fn all_zero_to_end(&mut self, at: u64) -> Result<bool, ParseError> {
        self.seek(at)?;
        let mut left = self.end - at;
        let mut buf = [0u8; 8192];
        let mut zeros = true;
        while left > 0 && zeros {
            let n = (buf.len() as u64).min(left) as usize;
            self.src
                .borrow_mut()
                .read_exact(&mut buf[..n])
                .map_err(|e| ParseError {
                    at,
                    message: e.to_string(),
                    refuse: false,
                })?;
            zeros = buf[..n].iter().all(|&b| b == 0);
            left -= n as u64;
        }
        if !zeros {
            self.seek(at)?;
        }
        Ok(zeros)
    }
}
