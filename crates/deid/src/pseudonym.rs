//! Keyed pseudonyms: the site key and everything derived from it by HMAC-SHA-256.
//!
//! Same key and same input give the same output on every run and machine, which is what keeps
//! references between objects (and between batches) consistent. Without the key nothing can
//! be reversed or recomputed; the key never leaves the site.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::error::DeidError;

type HmacSha256 = Hmac<Sha256>;

/// The per-site secret from which every pseudonym is derived. 32 random bytes, stored as
/// hex in a file readable by its owner only.
pub struct SiteKey {
    bytes: Zeroizing<[u8; 32]>,
    path: PathBuf,
}

impl std::fmt::Debug for SiteKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SiteKey")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SiteKey {
    /// Loads the key at `path`, generating it on first use. Creation is atomic (written under
    /// a temporary name, then linked into place without replacing), so two processes starting
    /// at once end up with the same key.
    pub fn load_or_create(path: &Path) -> Result<Self, DeidError> {
        match Self::load(path) {
            Err(DeidError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
            other => return other,
        }
        let err = |message: String| DeidError::SiteKey {
            path: path.to_path_buf(),
            message,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| DeidError::io(dir, e))?;
        }
        let mut bytes = Zeroizing::new([0u8; 32]);
        rand::rng().fill_bytes(bytes.as_mut());
        let hex = Zeroizing::new(hex_encode(bytes.as_ref()));
        let tmp = tmp_path(path);
        {
            let mut opts = OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let mut f = opts.open(&tmp).map_err(|e| DeidError::io(&tmp, e))?;
            f.write_all(hex.as_bytes())
                .and_then(|_| f.write_all(b"\n"))
                .and_then(|_| f.sync_all())
                .map_err(|e| DeidError::io(&tmp, e))?;
        }
        let linked = std::fs::hard_link(&tmp, path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                tracing::info!(path = %path.display(), "generated a new site key");
                Ok(Self {
                    bytes,
                    path: path.to_path_buf(),
                })
            }
            // Someone else created it first: use theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Self::load(path),
            Err(e) => Err(err(format!("cannot create: {e}"))),
        }
    }

    /// Loads an existing key; fails if it is missing or malformed.
    pub fn load(path: &Path) -> Result<Self, DeidError> {
        let text =
            Zeroizing::new(std::fs::read_to_string(path).map_err(|e| DeidError::io(path, e))?);
        let bytes = hex_decode_32(text.trim()).ok_or_else(|| DeidError::SiteKey {
            path: path.to_path_buf(),
            message: "not a 64-digit hex key".into(),
        })?;
        Ok(Self {
            bytes,
            path: path.to_path_buf(),
        })
    }

    /// A key from raw bytes (tests, and derived keys).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self {
            bytes: Zeroizing::new(bytes),
            path: PathBuf::new(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// HMAC-SHA-256 of `input` under this key, with a domain label so that the same input
    /// used for two purposes (a patient ID, a UID) gives unrelated outputs.
    pub fn mac(&self, domain: &str, input: &[u8]) -> [u8; 32] {
        let mut mac =
            HmacSha256::new_from_slice(self.bytes.as_ref()).expect("HMAC takes any key length");
        mac.update(domain.as_bytes());
        mac.update(&[0]);
        mac.update(input);
        mac.finalize().into_bytes().into()
    }
}

/// Derives every replacement value from the site key.
#[derive(Debug)]
pub struct Pseudonymizer {
    key: SiteKey,
}

/// Dates move back by at least this many days and less than this plus [`DATE_SHIFT_SPAN`].
const DATE_SHIFT_MIN: u64 = 365;
const DATE_SHIFT_SPAN: u64 = 3650;

impl Pseudonymizer {
    pub fn new(key: SiteKey) -> Self {
        Self { key }
    }

    pub fn key(&self) -> &SiteKey {
        &self.key
    }

    /// The patient pseudonym, used for both Patient ID and Patient's Name: `MF` and 16
    /// base-32 characters (80 bits of the HMAC), valid as LO and PN.
    pub fn patient_pseudonym(&self, patient_key: &str) -> String {
        let mac = self.key.mac("patient", patient_key.as_bytes());
        format!("MF{}", base32(&mac[..10]))
    }

    /// The replacement for a UID: `2.25.` and the decimal value of 128 bits of the HMAC
    /// (PS3.5 B.2), at most 44 characters.
    pub fn remap_uid(&self, uid: &str) -> String {
        let uid = uid.trim_end_matches(['\0', ' ']);
        let mac = self.key.mac("uid", uid.as_bytes());
        let n = u128::from_be_bytes(mac[..16].try_into().expect("16 bytes"));
        format!("2.25.{n}")
    }

    /// The per-patient date shift in days (always negative, between one and eleven years).
    pub fn date_shift_days(&self, patient_key: &str) -> i64 {
        let mac = self.key.mac("date-shift", patient_key.as_bytes());
        let n = u64::from_be_bytes(mac[..8].try_into().expect("8 bytes"));
        -((DATE_SHIFT_MIN + n % DATE_SHIFT_SPAN) as i64)
    }

    /// A consistent stand-in for an AE title (retain-device-identity's C for AE titles).
    pub fn ae_pseudonym(&self, ae: &str) -> String {
        let mac = self.key.mac("ae", ae.trim().as_bytes());
        format!("AE{}", &base32(&mac[..10])[..14])
    }
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(
        ".tmp-{}-{}",
        std::process::id(),
        rand::rng().next_u32()
    ));
    path.with_file_name(name)
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode_32(text: &str) -> Option<Zeroizing<[u8; 32]>> {
    if text.len() != 64 {
        return None;
    }
    let mut out = Zeroizing::new([0u8; 32]);
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// RFC 4648 base-32 without padding (A-Z, 2-7): uppercase and digits only, so it is valid in
/// every string VR including CS and AE.
fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::with_capacity(bytes.len() * 8 / 5 + 1);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((acc >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((acc << (5 - bits)) & 31) as usize] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudonyms_are_deterministic_keyed_and_valid() {
        let a = Pseudonymizer::new(SiteKey::from_bytes([7; 32]));
        let b = Pseudonymizer::new(SiteKey::from_bytes([8; 32]));
        assert_eq!(a.patient_pseudonym("12345"), a.patient_pseudonym("12345"));
        assert_ne!(a.patient_pseudonym("12345"), b.patient_pseudonym("12345"));
        assert_eq!(a.patient_pseudonym("x").len(), 18);
        let uid = a.remap_uid("1.2.3.4");
        assert!(uid.starts_with("2.25.") && uid.len() <= 64);
        assert!(uid[5..].bytes().all(|c| c.is_ascii_digit()));
        assert!(!uid[5..].starts_with('0') || uid.len() == 6);
        // Trailing padding is not part of the UID.
        assert_eq!(a.remap_uid("1.2.3.4\0"), uid);
        let shift = a.date_shift_days("p");
        assert!((-4015..=-365).contains(&shift));
        assert!(a.ae_pseudonym("CT_SCANNER_3").len() <= 16);
    }

    #[test]
    fn base32_matches_rfc4648_vectors() {
        assert_eq!(base32(b"f"), "MY");
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
    }

    #[test]
    fn site_key_is_created_once_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/site.key");
        let k1 = SiteKey::load_or_create(&path).unwrap();
        let k2 = SiteKey::load_or_create(&path).unwrap();
        assert_eq!(k1.mac("t", b"x"), k2.mac("t", b"x"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "key readable by others");
        }
        std::fs::write(&path, "garbage").unwrap();
        assert!(matches!(
            SiteKey::load(&path),
            Err(DeidError::SiteKey { .. })
        ));
        assert_eq!(
            std::fs::read_dir(dir.path().join("keys")).unwrap().count(),
            1,
            "no temp files left"
        );
    }
}
