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
    let bytes = read_maybe_gz(path)?;
    parse(&bytes).map_err(|reason| VolumeError::Nifti {
        path: path.to_path_buf(),
        reason,
    })
}

/// Read a NIfTI label map (values rounded to whole labels; negative or fractional labels refused).
pub fn read_labels(path: &Path) -> Result<Volume<u16>, VolumeError> {
    let img = read_image(path)?;
    if let Some(bad) = img
        .data
        .iter()
        .find(|&&v| !(0.0..=65535.0).contains(&v) || (v - v.round()).abs() > 1e-3)
    {
        return Err(VolumeError::Nifti {
            path: path.to_path_buf(),
            reason: format!(
                "a mask must hold whole labels 0..65535; found the value {bad} (a probability map? threshold it first)"
            ),
        });
    }
    Ok(img.map(|v| v.round() as u16))
}

fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, VolumeError> {
    let io = |source| VolumeError::Io {
        path: path.to_path_buf(),
        source,
    };
    let raw = std::fs::read(path).map_err(io)?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::with_capacity(raw.len() * 4);
        MultiGzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(io)?;
        Ok(out)
    } else {
        Ok(raw)
    }
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

fn parse(bytes: &[u8]) -> Result<Volume<f32>, String> {
    if bytes.len() < 348 {
        return Err(format!("{} bytes is shorter than a NIfTI header", bytes.len()));
    }
    let le = |n: i32| n == 348 || n == 540;
    let first = i32::from_le_bytes(bytes[0..4].try_into().unwrap_or_default());
    let little = if le(first) {
        true
    } else if le(first.swap_bytes()) {
        false
    } else {
        return Err(format!("sizeof_hdr is {first}, neither 348 nor 540"));
    };
    let r = Reader { bytes, little };
    let header = if r.i32(0) == 348 { header_v1(&r)? } else { header_v2(&r)? };
    let n = header.dims[0] * header.dims[1] * header.dims[2];
    let (width, decode): (usize, fn(&[u8], bool) -> f64) = match header.datatype {
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
        other => return Err(format!("data type {other} is not supported (only scalar types)")),
    };
    let need = header.vox_offset + n * width;
    if bytes.len() < need {
        return Err(format!(
            "truncated: the header announces {n} voxels ending at byte {need}, the file has {}",
            bytes.len()
        ));
    }
    let scale = header.slope != 0.0 && header.slope.is_finite() && !(header.slope == 1.0 && header.inter == 0.0);
    let data = bytes[header.vox_offset..need]
        .chunks_exact(width)
        .map(|b| {
            let v = decode(b, little);
            (if scale { v * header.slope + header.inter } else { v }) as f32
        })
        .collect();
    Ok(Volume {
        geometry: geometry_from_affine(header.dims, &header.affine),
        data,
    })
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
            [a * a + b * b - c * c - d * d, 2.0 * (b * c - a * d), 2.0 * (b * d + a * c)],
            [2.0 * (b * c + a * d), a * a + c * c - b * b - d * d, 2.0 * (c * d - a * b)],
            [2.0 * (b * d - a * c), 2.0 * (c * d + a * b), a * a + d * d - c * c - b * b],
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
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
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
    let put_i16 = |h: &mut Vec<u8>, at: usize, v: i16| h[at..at + 2].copy_from_slice(&v.to_le_bytes());
    let put_f32 = |h: &mut Vec<u8>, at: usize, v: f64| h[at..at + 4].copy_from_slice(&(v as f32).to_le_bytes());
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
        (0.25 / s, (r[2][1] - r[1][2]) * s, (r[0][2] - r[2][0]) * s, (r[1][0] - r[0][1]) * s)
    } else if r[0][0] > r[1][1] && r[0][0] > r[2][2] {
        let s = 2.0 * (1.0 + r[0][0] - r[1][1] - r[2][2]).sqrt();
        ((r[2][1] - r[1][2]) / s, 0.25 * s, (r[0][1] + r[1][0]) / s, (r[0][2] + r[2][0]) / s)
    } else if r[1][1] > r[2][2] {
        let s = 2.0 * (1.0 + r[1][1] - r[0][0] - r[2][2]).sqrt();
        ((r[0][2] - r[2][0]) / s, (r[0][1] + r[1][0]) / s, 0.25 * s, (r[1][2] + r[2][1]) / s)
    } else {
        let s = 2.0 * (1.0 + r[2][2] - r[0][0] - r[1][1]).sqrt();
        ((r[1][0] - r[0][1]) / s, (r[0][2] + r[2][0]) / s, (r[1][2] + r[2][1]) / s, 0.25 * s)
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
        assert!(read_image(&p).unwrap_err().to_string().contains("sizeof_hdr"));
    }

    #[test]
    fn fractional_masks_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.nii");
        let vol = Volume::filled(Geometry::new([2, 2, 2], [1.0; 3]), 0.5f32);
        write(&p, &vol).unwrap();
        assert!(read_labels(&p).unwrap_err().to_string().contains("whole labels"));
    }
}
