//! NIfTI-1 and NIfTI-2 single-file images (`.nii`, `.nii.gz`), read and write.
//!
//! Geometry follows nibabel's precedence: the sform when its code is set, else the qform, else
//! the voxel sizes alone. NIfTI world coordinates are RAS; they are turned into DICOM's LPS here so
//! that every reader of this crate speaks the same frame. Scaling (`scl_slope`, `scl_inter`) is
//! applied on read.

use std::io::{Read, Write};
use std::path::Path;

use flate2::Compression;
use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;

use crate::{Geometry, Volume, VolumeError};

/// Read a NIfTI image as 32-bit float intensities.
pub fn read_image(path: &Path) -> Result<Volume<f32>, VolumeError> {
    read_image_box(path, None)
}

/// Read only the voxels in `[lo, hi)` of a NIfTI image (the whole image when `None`), streaming
/// through the file so that memory holds the box, not the image.
pub fn read_image_box(
    path: &Path,
    bbox: Option<([usize; 3], [usize; 3])>,
) -> Result<Volume<f32>, VolumeError> {
    read_voxels(path, bbox, |v| Ok(v as f32))
}

/// The grid of a NIfTI file, from its header alone.
pub fn read_geometry(path: &Path) -> Result<Geometry, VolumeError> {
    let (header, _, _) = open(path)?;
    Ok(geometry_from_affine(header.dims, &header.affine))
}

/// Read a NIfTI label map (values must be whole labels 0..65535; a probability map is refused).
pub fn read_labels(path: &Path) -> Result<Volume<u16>, VolumeError> {
    read_voxels(path, None, label_value)
}

/// Read the labels in `[lo, hi)` of a NIfTI label map (the whole map when `None`).
pub fn read_labels_box(
    path: &Path,
    bbox: Option<([usize; 3], [usize; 3])>,
) -> Result<Volume<u16>, VolumeError> {
    read_voxels(path, bbox, label_value)
}

fn label_value(v: f64) -> Result<u16, String> {
    let l = v as u16;
    if l as f64 == v {
        return Ok(l);
    }
    if !(0.0..=65535.0).contains(&v) || (v - v.round()).abs() > 1e-3 {
        Err(format!(
            "a mask must hold whole labels 0..65535; found the value {v} (a probability map? threshold it first)"
        ))
    } else {
        Ok(v.round() as u16)
    }
}

type Source = Box<dyn Read>;

fn open(path: &Path) -> Result<(Header, bool, Source), VolumeError> {
    let io = |source| VolumeError::Io {
        path: path.to_path_buf(),
        source,
    };
    let bad = |reason: String| VolumeError::Nifti {
        path: path.to_path_buf(),
        reason,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut magic = [0u8; 2];
    let got = file.read(&mut magic).map_err(io)?;
    use std::io::Seek;
    file.seek(std::io::SeekFrom::Start(0)).map_err(io)?;
    let reader = std::io::BufReader::with_capacity(1 << 20, file);
    let mut src: Source = if got == 2 && magic == [0x1f, 0x8b] {
        Box::new(std::io::BufReader::with_capacity(
            1 << 20,
            MultiGzDecoder::new(reader),
        ))
    } else {
        Box::new(reader)
    };
    let mut head = vec![0u8; 348];
    let n = read_full(&mut src, &mut head).map_err(io)?;
    if n < 348 {
        return Err(bad(format!("{n} bytes is shorter than a NIfTI header")));
    }
    let le = |n: i32| n == 348 || n == 540;
    let first = i32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    let little = if le(first) {
        true
    } else if le(first.swap_bytes()) {
        false
    } else {
        return Err(bad(format!("sizeof_hdr is {first}, neither 348 nor 540")));
    };
    let v2 = Reader {
        bytes: &head,
        little,
    }
    .i32(0)
        == 540;
    if v2 {
        head.resize(540, 0);
        let m = read_full(&mut src, &mut head[348..]).map_err(io)?;
        if m < 192 {
            return Err(bad("truncated NIfTI-2 header".into()));
        }
    }
    let r = Reader {
        bytes: &head,
        little,
    };
    let header = if v2 { header_v2(&r) } else { header_v1(&r) }.map_err(bad)?;
    // Skip extensions up to the first voxel.
    let skip = header.vox_offset.saturating_sub(head.len()) as u64;
    let skipped = std::io::copy(&mut (&mut src).take(skip), &mut std::io::sink()).map_err(io)?;
    if skipped < skip {
        return Err(bad("truncated before the first voxel".into()));
    }
    Ok((header, little, src))
}

fn read_full(src: &mut Source, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match src.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn read_voxels<T>(
    path: &Path,
    bbox: Option<([usize; 3], [usize; 3])>,
    convert: impl Fn(f64) -> Result<T, String>,
) -> Result<Volume<T>, VolumeError> {
    let n = match bbox {
        Some((lo, hi)) => (0..3).map(|k| hi[k].saturating_sub(lo[k])).product(),
        None => read_geometry(path)?.len(),
    };
    // Reserved up front: growing a large vector copies it and faults fresh pages each time. A
    // header can claim anything, so the reservation is bounded; truncation shows when reading.
    let mut data = Vec::with_capacity(n.min(1 << 28));
    let geometry = read_voxels_with(path, bbox, convert, |v| data.push(v))?;
    Ok(Volume { geometry, data })
}

type Decode = fn(&[u8], bool) -> f64;

/// Bytes per voxel and the decoder of a NIfTI data type.
fn decoder(datatype: i16) -> Result<(usize, Decode), String> {
    Ok(match datatype {
        2 => (1, |b, _| b[0] as f64),
        256 => (1, |b, _| b[0] as i8 as f64),
        4 => (2, |b, l| int::<2>(b, l, |a| i16::from_le_bytes(a) as f64)),
        512 => (2, |b, l| int::<2>(b, l, |a| u16::from_le_bytes(a) as f64)),
        8 => (4, |b, l| int::<4>(b, l, |a| i32::from_le_bytes(a) as f64)),
        768 => (4, |b, l| int::<4>(b, l, |a| u32::from_le_bytes(a) as f64)),
        16 => (4, |b, l| int::<4>(b, l, |a| f32::from_le_bytes(a) as f64)),
        64 => (8, |b, l| int::<8>(b, l, f64::from_le_bytes)),
        1024 => (8, |b, l| int::<8>(b, l, |a| i64::from_le_bytes(a) as f64)),
        1280 => (8, |b, l| int::<8>(b, l, |a| u64::from_le_bytes(a) as f64)),
        other => {
            return Err(format!(
                "data type {other} is not supported (only scalar types)"
            ));
        }
    })
}

/// A label map held as its non-empty rows only, with every label's bounding box: one streaming
/// pass over the file, and memory for the labelled rows, not the whole grid.
pub struct LabelRows {
    pub geometry: Geometry,
    /// Row index (y + ny * z) -> labels of that row.
    rows: std::collections::BTreeMap<usize, Vec<u16>>,
    /// Label -> bounding box `[lo, hi)`.
    pub extents: std::collections::BTreeMap<u16, ([usize; 3], [usize; 3])>,
}

impl LabelRows {
    /// The labels in `[lo, hi)` as a volume.
    pub fn crop(&self, lo: [usize; 3], hi: [usize; 3]) -> Volume<u16> {
        let full = self.geometry;
        let mut geometry = full;
        geometry.dims = [hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2]];
        geometry.origin = full.world([lo[0] as f64, lo[1] as f64, lo[2] as f64]);
        let mut data = vec![0u16; geometry.len()];
        let ny = full.dims[1];
        for (&r, row) in self
            .rows
            .range(lo[1] + ny * lo[2]..hi[1].saturating_sub(1) + ny * hi[2].saturating_sub(1) + 1)
        {
            let (y, z) = (r % ny, r / ny);
            if y < lo[1] || y >= hi[1] || z < lo[2] || z >= hi[2] {
                continue;
            }
            let at = geometry.index(0, y - lo[1], z - lo[2]);
            data[at..at + geometry.dims[0]].copy_from_slice(&row[lo[0]..hi[0]]);
        }
        Volume { geometry, data }
    }
}

/// Read a label map as [`LabelRows`].
pub fn read_label_rows(path: &Path) -> Result<LabelRows, VolumeError> {
    let bad = |reason: String| VolumeError::Nifti {
        path: path.to_path_buf(),
        reason,
    };
    let (header, little, mut src) = open(path)?;
    let dims = header.dims;
    let (width, decode) = decoder(header.datatype).map_err(bad)?;
    let scale = header.slope != 0.0
        && header.slope.is_finite()
        && !(header.slope == 1.0 && header.inter == 0.0);
    // All-zero bytes decode to label 0 unless an intercept shifts them.
    let zero_is_background = !scale || header.inter == 0.0;
    let mut rows = std::collections::BTreeMap::new();
    let mut extents: std::collections::BTreeMap<u16, ([usize; 3], [usize; 3])> = Default::default();
    let mut raw = vec![0u8; dims[0] * width];
    let total = dims[1] * dims[2];
    for r in 0..total {
        let got = read_full(&mut src, &mut raw).map_err(|source| VolumeError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if got < raw.len() {
            return Err(bad(format!(
                "truncated: the header announces {} voxels, the data ends in row {r} of {total}",
                dims[0] * dims[1] * dims[2]
            )));
        }
        if zero_is_background && raw.iter().all(|&b| b == 0) {
            continue;
        }
        let mut row = Vec::with_capacity(dims[0]);
        for b in raw.chunks_exact(width) {
            let v = decode(b, little);
            row.push(
                label_value(if scale {
                    v * header.slope + header.inter
                } else {
                    v
                })
                .map_err(bad)?,
            );
        }
        if row.iter().all(|&l| l == 0) {
            continue;
        }
        let (y, z) = (r % dims[1], r / dims[1]);
        for (x, &l) in row.iter().enumerate() {
            if l != 0 {
                let c = [x, y, z];
                let e = extents.entry(l).or_insert((c, [x + 1, y + 1, z + 1]));
                for k in 0..3 {
                    e.0[k] = e.0[k].min(c[k]);
                    e.1[k] = e.1[k].max(c[k] + 1);
                }
            }
        }
        rows.insert(r, row);
    }
    Ok(LabelRows {
        geometry: geometry_from_affine(dims, &header.affine),
        rows,
        extents,
    })
}

/// Stream the voxels in `bbox` to `sink`, returning the box's geometry.
fn read_voxels_with<T>(
    path: &Path,
    bbox: Option<([usize; 3], [usize; 3])>,
    convert: impl Fn(f64) -> Result<T, String>,
    mut sink: impl FnMut(T),
) -> Result<Geometry, VolumeError> {
    let bad = |reason: String| VolumeError::Nifti {
        path: path.to_path_buf(),
        reason,
    };
    let (header, little, mut src) = open(path)?;
    let dims = header.dims;
    let (lo, hi) = bbox.unwrap_or(([0; 3], dims));
    if (0..3).any(|k| lo[k] >= hi[k] || hi[k] > dims[k]) {
        return Err(bad(format!(
            "box {lo:?}..{hi:?} is not inside the image {dims:?}"
        )));
    }
    let (width, decode) = decoder(header.datatype).map_err(bad)?;
    let scale = header.slope != 0.0
        && header.slope.is_finite()
        && !(header.slope == 1.0 && header.inter == 0.0);
    let out_dims = [hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2]];
    let row_bytes = dims[0] * width;
    let mut row = vec![0u8; row_bytes];
    let total_rows = dims[1] * dims[2];
    for r in 0..total_rows {
        let (y, z) = (r % dims[1], r / dims[1]);
        if z >= hi[2] {
            break;
        }
        let got = read_full(&mut src, &mut row).map_err(|source| VolumeError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if got < row_bytes {
            return Err(bad(format!(
                "truncated: the header announces {} voxels, the data ends in row {r} of {total_rows}",
                dims[0] * dims[1] * dims[2]
            )));
        }
        if z < lo[2] || y < lo[1] || y >= hi[1] {
            continue;
        }
        for b in row[lo[0] * width..hi[0] * width].chunks_exact(width) {
            let v = decode(b, little);
            sink(
                convert(if scale {
                    v * header.slope + header.inter
                } else {
                    v
                })
                .map_err(bad)?,
            );
        }
    }
    let full = geometry_from_affine(dims, &header.affine);
    let mut geometry = full;
    geometry.dims = out_dims;
    geometry.origin = full.world([lo[0] as f64, lo[1] as f64, lo[2] as f64]);
    Ok(geometry)
}

struct Header {
    dims: [usize; 3],
    datatype: i16,
    vox_offset: usize,
    slope: f64,
    inter: f64,
    /// Voxel index -> RAS world, rows of a 3x4 matrix, in mm.
    affine: [[f64; 4]; 3],
}

fn int<const N: usize>(b: &[u8], little: bool, f: impl Fn([u8; N]) -> f64) -> f64 {
    let mut a: [u8; N] = b[..N].try_into().unwrap_or([0; N]);
    if !little {
        a.reverse();
    }
    f(a)
}

struct Reader<'a> {
    bytes: &'a [u8],
    little: bool,
}

impl Reader<'_> {
    fn arr<const N: usize>(&self, at: usize) -> [u8; N] {
        let mut a: [u8; N] = self.bytes[at..at + N].try_into().unwrap_or([0; N]);
        if !self.little {
            a.reverse();
        }
        a
    }
    fn i16(&self, at: usize) -> i16 {
        i16::from_le_bytes(self.arr(at))
    }
    fn i32(&self, at: usize) -> i32 {
        i32::from_le_bytes(self.arr(at))
    }
    fn i64(&self, at: usize) -> i64 {
        i64::from_le_bytes(self.arr(at))
    }
    fn f32(&self, at: usize) -> f64 {
        f32::from_le_bytes(self.arr(at)) as f64
    }
    fn f64(&self, at: usize) -> f64 {
        f64::from_le_bytes(self.arr(at))
    }
}

/// Raw header fields both versions share, before the geometry is chosen.
struct Fields {
    dim: [i64; 8],
    pixdim: [f64; 8],
    datatype: i16,
    vox_offset: f64,
    slope: f64,
    inter: f64,
    units: i32,
    qform_code: i32,
    sform_code: i32,
    quatern: [f64; 6],
    srow: [[f64; 4]; 3],
}

fn header_v1(r: &Reader) -> Result<Header, String> {
    let magic = &r.bytes[344..347];
    if magic != b"n+1" && magic != b"ni1" {
        return Err("magic is not n+1 (a .hdr/.img pair? convert it to a single .nii)".into());
    }
    if magic == b"ni1" {
        return Err("a .hdr/.img pair is not supported; convert it to a single .nii".into());
    }
    let f = Fields {
        dim: std::array::from_fn(|i| r.i16(40 + 2 * i) as i64),
        pixdim: std::array::from_fn(|i| r.f32(76 + 4 * i)),
        datatype: r.i16(70),
        vox_offset: r.f32(108),
        slope: r.f32(112),
        inter: r.f32(116),
        units: r.bytes[123] as i32,
        qform_code: r.i16(252) as i32,
        sform_code: r.i16(254) as i32,
        quatern: std::array::from_fn(|i| r.f32(256 + 4 * i)),
        srow: std::array::from_fn(|row| std::array::from_fn(|c| r.f32(280 + 16 * row + 4 * c))),
    };
    finish(f)
}

fn header_v2(r: &Reader) -> Result<Header, String> {
    if r.bytes.len() < 540 || &r.bytes[4..7] != b"n+2" {
        return Err("NIfTI-2 magic is not n+2".into());
    }
    let f = Fields {
        dim: std::array::from_fn(|i| r.i64(16 + 8 * i)),
        pixdim: std::array::from_fn(|i| r.f64(104 + 8 * i)),
        datatype: r.i16(12),
        vox_offset: r.i64(168) as f64,
        slope: r.f64(176),
        inter: r.f64(184),
        units: r.i32(500),
        qform_code: r.i32(344),
        sform_code: r.i32(348),
        quatern: std::array::from_fn(|i| r.f64(352 + 8 * i)),
        srow: std::array::from_fn(|row| std::array::from_fn(|c| r.f64(400 + 32 * row + 8 * c))),
    };
    finish(f)
}

fn finish(f: Fields) -> Result<Header, String> {
    let ndim = f.dim[0];
    if !(1..=7).contains(&ndim) {
        return Err(format!("dim[0] = {ndim} is not 1..7"));
    }
    let extent = |i: usize| if (i as i64) <= ndim { f.dim[i] } else { 1 };
    if (4..=7).any(|i| extent(i) > 1) {
        return Err(format!(
            "a {}-D image (dim = {:?}); only single 3-D volumes are supported, split it first",
            ndim,
            &f.dim[1..=ndim as usize]
        ));
    }
    let mut dims = [0usize; 3];
    let voxels: i64 = (1..=3).map(extent).product();
    if !(1..=1i64 << 34).contains(&voxels) {
        return Err(format!(
            "the header announces {voxels} voxels: not a plausible image"
        ));
    }
    for (k, d) in dims.iter_mut().enumerate() {
        let e = extent(k + 1);
        if !(1..=1 << 20).contains(&e) {
            return Err(format!("dim[{}] = {e} is not a usable extent", k + 1));
        }
        *d = e as usize;
    }
    if !(f.vox_offset >= 348.0 && f.vox_offset.is_finite()) {
        return Err(format!("vox_offset {} is inside the header", f.vox_offset));
    }
    let to_mm = match f.units & 7 {
        1 => 1000.0,
        3 => 0.001,
        _ => 1.0,
    };
    let pix = |k: usize| {
        let p = f.pixdim[k].abs();
        if p > 0.0 && p.is_finite() { p } else { 1.0 }
    };
    let mut affine = [[0.0; 4]; 3];
    if f.sform_code > 0 {
        affine = f.srow;
    } else if f.qform_code > 0 {
        let [b, c, d, qx, qy, qz] = f.quatern;
        let a = (1.0 - (b * b + c * c + d * d)).max(0.0).sqrt();
        let rot = [
            [
                a * a + b * b - c * c - d * d,
                2.0 * (b * c - a * d),
                2.0 * (b * d + a * c),
            ],
            [
                2.0 * (b * c + a * d),
                a * a + c * c - b * b - d * d,
                2.0 * (c * d - a * b),
            ],
            [
                2.0 * (b * d - a * c),
                2.0 * (c * d + a * b),
                a * a + d * d - c * c - b * b,
            ],
        ];
        let qfac = if f.pixdim[0] < 0.0 { -1.0 } else { 1.0 };
        let scale = [pix(1), pix(2), pix(3) * qfac];
        for row in 0..3 {
            for col in 0..3 {
                affine[row][col] = rot[row][col] * scale[col];
            }
        }
        affine[0][3] = qx;
        affine[1][3] = qy;
        affine[2][3] = qz;
    } else {
        for k in 0..3 {
            affine[k][k] = pix(k + 1);
        }
    }
    for row in affine.iter_mut() {
        for v in row.iter_mut() {
            *v *= to_mm;
        }
    }
    Ok(Header {
        dims,
        datatype: f.datatype,
        vox_offset: f.vox_offset as usize,
        slope: f.slope,
        inter: f.inter,
        affine,
    })
}

/// RAS affine -> LPS geometry.
fn geometry_from_affine(dims: [usize; 3], ras: &[[f64; 4]; 3]) -> Geometry {
    let lps_sign = [-1.0, -1.0, 1.0];
    let mut g = Geometry::new(dims, [1.0; 3]);
    for k in 0..3 {
        let col = [ras[0][k], ras[1][k], ras[2][k]];
        let norm = (col[0] * col[0] + col[1] * col[1] + col[2] * col[2]).sqrt();
        let norm = if norm > 0.0 { norm } else { 1.0 };
        g.spacing[k] = norm;
        for row in 0..3 {
            g.direction[row][k] = lps_sign[row] * col[row] / norm;
        }
    }
    for row in 0..3 {
        g.origin[row] = lps_sign[row] * ras[row][3];
    }
    g
}

/// A voxel type that can be written to NIfTI.
pub trait NiftiScalar: Copy {
    const DATATYPE: i16;
    const BYTES: usize;
    fn put(self, out: &mut Vec<u8>);
}

impl NiftiScalar for f32 {
    const DATATYPE: i16 = 16;
    const BYTES: usize = 4;
    fn put(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}

impl NiftiScalar for u16 {
    const DATATYPE: i16 = 512;
    const BYTES: usize = 2;
    fn put(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}

impl NiftiScalar for i16 {
    const DATATYPE: i16 = 4;
    const BYTES: usize = 2;
    fn put(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}

impl NiftiScalar for u8 {
    const DATATYPE: i16 = 2;
    const BYTES: usize = 1;
    fn put(self, out: &mut Vec<u8>) {
        out.push(self);
    }
}

/// Write a NIfTI-1 file (gzip when the name ends in `.gz`), through a temporary name so that a
/// cut-short write never leaves a half file under the real name. Both qform and sform are set.
pub fn write<T: NiftiScalar>(path: &Path, vol: &Volume<T>) -> Result<(), VolumeError> {
    let io = |source| VolumeError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut buf = Vec::with_capacity(352 + vol.data.len() * T::BYTES);
    header_bytes::<T>(&vol.geometry, &mut buf);
    for &v in &vol.data {
        v.put(&mut buf);
    }
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(parent).map_err(io)?;
    if path.extension().is_some_and(|e| e == "gz") {
        let mut gz = GzEncoder::new(&mut tmp, Compression::fast());
        gz.write_all(&buf).map_err(io)?;
        gz.finish().map_err(io)?;
    } else {
        tmp.write_all(&buf).map_err(io)?;
    }
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

fn header_bytes<T: NiftiScalar>(g: &Geometry, out: &mut Vec<u8>) {
    let mut h = vec![0u8; 352];
    let put_i16 =
        |h: &mut Vec<u8>, at: usize, v: i16| h[at..at + 2].copy_from_slice(&v.to_le_bytes());
    let put_f32 = |h: &mut Vec<u8>, at: usize, v: f64| {
        h[at..at + 4].copy_from_slice(&(v as f32).to_le_bytes())
    };
    h[0..4].copy_from_slice(&348i32.to_le_bytes());
    put_i16(&mut h, 40, 3);
    for k in 0..3 {
        put_i16(&mut h, 42 + 2 * k, g.dims[k] as i16);
    }
    for k in 3..7 {
        put_i16(&mut h, 42 + 2 * k, 1);
    }
    put_i16(&mut h, 70, T::DATATYPE);
    put_i16(&mut h, 72, (T::BYTES * 8) as i16);
    // LPS direction -> RAS affine.
    let sign = [-1.0, -1.0, 1.0];
    let mut rot = [[0.0; 3]; 3];
    for r in 0..3 {
        for c in 0..3 {
            rot[r][c] = sign[r] * g.direction[r][c];
        }
    }
    let det = rot[0][0] * (rot[1][1] * rot[2][2] - rot[1][2] * rot[2][1])
        - rot[0][1] * (rot[1][0] * rot[2][2] - rot[1][2] * rot[2][0])
        + rot[0][2] * (rot[1][0] * rot[2][1] - rot[1][1] * rot[2][0]);
    let qfac = if det < 0.0 { -1.0 } else { 1.0 };
    put_f32(&mut h, 76, qfac);
    for k in 0..3 {
        put_f32(&mut h, 80 + 4 * k, g.spacing[k]);
    }
    put_f32(&mut h, 108, 352.0);
    put_f32(&mut h, 112, 1.0);
    h[123] = 2; // millimetres
    put_i16(&mut h, 252, 1);
    put_i16(&mut h, 254, 1);
    let mut q = rot;
    for row in q.iter_mut() {
        row[2] *= qfac;
    }
    let [b, c, d] = quaternion(&q);
    put_f32(&mut h, 256, b);
    put_f32(&mut h, 260, c);
    put_f32(&mut h, 264, d);
    for r in 0..3 {
        put_f32(&mut h, 268 + 4 * r, sign[r] * g.origin[r]);
        for c in 0..3 {
            put_f32(&mut h, 280 + 16 * r + 4 * c, rot[r][c] * g.spacing[c]);
        }
        put_f32(&mut h, 280 + 16 * r + 12, sign[r] * g.origin[r]);
    }
    h[344..348].copy_from_slice(b"n+1\0");
    out.extend_from_slice(&h);
}

/// Quaternion (b, c, d) of a proper rotation, with a >= 0 as NIfTI requires.
fn quaternion(r: &[[f64; 3]; 3]) -> [f64; 3] {
    let trace = r[0][0] + r[1][1] + r[2][2];
    let (a, b, c, d) = if trace > 0.0 {
        let s = 0.5 / (trace + 1.0).sqrt();
        (
            0.25 / s,
            (r[2][1] - r[1][2]) * s,
            (r[0][2] - r[2][0]) * s,
            (r[1][0] - r[0][1]) * s,
        )
    } else if r[0][0] > r[1][1] && r[0][0] > r[2][2] {
        let s = 2.0 * (1.0 + r[0][0] - r[1][1] - r[2][2]).sqrt();
        (
            (r[2][1] - r[1][2]) / s,
            0.25 * s,
            (r[0][1] + r[1][0]) / s,
            (r[0][2] + r[2][0]) / s,
        )
    } else if r[1][1] > r[2][2] {
        let s = 2.0 * (1.0 + r[1][1] - r[0][0] - r[2][2]).sqrt();
        (
            (r[0][2] - r[2][0]) / s,
            (r[0][1] + r[1][0]) / s,
            0.25 * s,
            (r[1][2] + r[2][1]) / s,
        )
    } else {
        let s = 2.0 * (1.0 + r[2][2] - r[0][0] - r[1][1]).sqrt();
        (
            (r[1][0] - r[0][1]) / s,
            (r[0][2] + r[2][0]) / s,
            (r[1][2] + r[2][1]) / s,
            0.25 * s,
        )
    };
    if a < 0.0 { [-b, -c, -d] } else { [b, c, d] }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_values_and_oblique_geometry() {
        let dir = tempfile::tempdir().unwrap();
        let mut g = Geometry::new([5, 4, 3], [0.8, 0.9, 2.5]);
        g.origin = [-120.5, 33.0, 7.25];
        let (c, s) = (0.2f64.cos(), 0.2f64.sin());
        g.direction = [[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]];
        let vol = Volume {
            geometry: g,
            data: (0..60).map(|i| i as f32 * 1.5 - 20.0).collect(),
        };
        for name in ["a.nii", "a.nii.gz"] {
            let p = dir.path().join(name);
            write(&p, &vol).unwrap();
            let back = read_image(&p).unwrap();
            assert_eq!(back.data, vol.data);
            assert!(back.geometry.same_grid(&g, 1e-4), "{:?}", back.geometry);
        }
    }

    #[test]
    fn truncated_and_foreign_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.nii");
        let vol = Volume::filled(Geometry::new([8, 8, 8], [1.0; 3]), 1.0f32);
        write(&p, &vol).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..1000]).unwrap();
        let e = read_image(&p).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
        std::fs::write(&p, b"hello").unwrap();
        assert!(read_image(&p).unwrap_err().to_string().contains("shorter"));
        std::fs::write(&p, vec![7u8; 400]).unwrap();
        assert!(
            read_image(&p)
                .unwrap_err()
                .to_string()
                .contains("sizeof_hdr")
        );
    }

    #[test]
    fn an_absurd_header_is_an_error_not_an_allocation() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big.nii");
        write(
            &p,
            &Volume::filled(Geometry::new([2, 2, 2], [1.0; 3]), 1.0f32),
        )
        .unwrap();
        let mut bytes = std::fs::read(&p).unwrap();
        for k in 0..3 {
            bytes[42 + 2 * k..44 + 2 * k].copy_from_slice(&30000i16.to_le_bytes());
        }
        std::fs::write(&p, &bytes).unwrap();
        let e = read_image(&p).unwrap_err().to_string();
        assert!(e.contains("not a plausible image"), "{e}");
    }

    #[test]
    fn fractional_masks_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.nii");
        let vol = Volume::filled(Geometry::new([2, 2, 2], [1.0; 3]), 0.5f32);
        write(&p, &vol).unwrap();
        assert!(
            read_labels(&p)
                .unwrap_err()
                .to_string()
                .contains("whole labels")
        );
    }
}
