//! Encryption at rest for the hub's object store: envelope encryption with AES-256-GCM.
//!
//! - Each dataset has its own random [`DataKey`]. The database keeps it only wrapped
//!   ([`WrappedKey`]) by the hub's [`MasterKey`], which comes from a key file or the environment
//!   and never enters the database. The wrap is bound to the dataset id, so a wrapped key moved
//!   to another dataset does not unwrap.
//! - Rotating the master key re-wraps data keys ([`rewrap`]); blobs are not rewritten.
//! - Deleting a dataset's wrapped key destroys every blob of it (crypto-shredding).
//! - Objects are encrypted in segments (the STREAM construction): each segment's nonce carries a
//!   counter and a last-segment flag, and every segment is authenticated with the dataset and
//!   object id as associated data. A flipped byte, a blob swapped with another object's, segments
//!   reordered or a blob cut short are all integrity errors, detected before any byte of the
//!   damaged segment is released.

use std::io::{Read, Write};
use std::path::Path;

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use zeroize::{Zeroize, Zeroizing};

/// Plaintext bytes per segment: large enough that tags and nonces cost nothing, small enough to
/// stream.
pub const SEGMENT: usize = 1 << 20;
const TAG: usize = 16;
const MAGIC: &[u8; 4] = b"MFE1";
/// Header: magic, 7-byte random nonce prefix.
const HEADER: usize = 4 + 7;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("{0}")]
    Key(String),
    #[error("integrity error: {0}")]
    Integrity(String),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// The hub's key-encryption key. Held in memory only; wiped on drop.
pub struct MasterKey {
    pub version: u32,
    key: Zeroizing<[u8; 32]>,
}

impl MasterKey {
    pub fn from_bytes(version: u32, bytes: [u8; 32]) -> Self {
        MasterKey {
            version,
            key: Zeroizing::new(bytes),
        }
    }

    /// Parse 64 hex digits (surrounding whitespace allowed).
    pub fn from_hex(version: u32, text: &str) -> Result<Self, CryptoError> {
        let mut bytes = hex::decode(text.trim())
            .map_err(|_| CryptoError::Key("a master key is 64 hex digits".into()))?;
        let arr: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
            CryptoError::Key(format!("a master key is 32 bytes, got {}", bytes.len()))
        })?;
        bytes.zeroize();
        Ok(Self::from_bytes(version, arr))
    }

    /// Read a key file (64 hex digits). A file others can read is refused.
    pub fn from_file(version: u32, path: &Path) -> Result<Self, CryptoError> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path)?.permissions().mode();
            if mode & 0o077 != 0 {
                return Err(CryptoError::Key(format!(
                    "{}: mode {:o} lets others read the master key; chmod 600 it",
                    path.display(),
                    mode & 0o777
                )));
            }
        }
        let text = Zeroizing::new(std::fs::read_to_string(path)?);
        Self::from_hex(version, &text)
    }

    /// A fresh random key, written to `path` with mode 0600 (never overwrites a file).
    pub fn generate_to(version: u32, path: &Path) -> Result<Self, CryptoError> {
        let mut bytes = [0u8; 32];
        rand::fill(&mut bytes);
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(path)?;
        f.write_all(Zeroizing::new(hex::encode(bytes)).as_bytes())?;
        f.sync_all()?;
        Ok(Self::from_bytes(version, bytes))
    }

    /// Wrap a data key for `dataset_id`.
    pub fn wrap(&self, key: &DataKey, dataset_id: &str) -> WrappedKey {
        let cipher = Aes256Gcm::new((&*self.key).into());
        let mut nonce = [0u8; 12];
        rand::fill(&mut nonce);
        let mut buf = key.0.to_vec();
        // Encryption with a fresh nonce cannot fail for a 32-byte message.
        let tag = cipher
            .encrypt_in_place_detached(
                Nonce::from_slice(&nonce),
                &wrap_aad(dataset_id, self.version),
                &mut buf,
            )
            .unwrap_or_default();
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&buf);
        blob.extend_from_slice(&tag);
        buf.zeroize();
        WrappedKey {
            master_version: self.version,
            blob,
        }
    }

    /// Unwrap the data key of `dataset_id`.
    pub fn unwrap(&self, wrapped: &WrappedKey, dataset_id: &str) -> Result<DataKey, CryptoError> {
        if wrapped.master_version != self.version {
            return Err(CryptoError::Key(format!(
                "the data key is wrapped by master key version {}, this is version {}",
                wrapped.master_version, self.version
            )));
        }
        if wrapped.blob.len() != 12 + 32 + TAG {
            return Err(CryptoError::Integrity(
                "a wrapped data key has the wrong length".into(),
            ));
        }
        let cipher = Aes256Gcm::new((&*self.key).into());
        let (nonce, rest) = wrapped.blob.split_at(12);
        let (ct, tag) = rest.split_at(32);
        let mut buf = Zeroizing::new(ct.to_vec());
        cipher
            .decrypt_in_place_detached(
                Nonce::from_slice(nonce),
                &wrap_aad(dataset_id, self.version),
                &mut buf,
                Tag::from_slice(tag),
            )
            .map_err(|_| {
                CryptoError::Integrity(format!(
                    "the data key does not unwrap for dataset {dataset_id} (wrong master key, or a key of another dataset)"
                ))
            })?;
        let mut k = [0u8; 32];
        k.copy_from_slice(&buf);
        Ok(DataKey(Zeroizing::new(k)))
    }
}

fn wrap_aad(dataset_id: &str, version: u32) -> Vec<u8> {
    format!("medfed-dek-v1\n{version}\n{dataset_id}").into_bytes()
}

/// Key rotation: the same data key, wrapped by the new master key. Blobs stay as they are.
pub fn rewrap(
    old: &MasterKey,
    new: &MasterKey,
    wrapped: &WrappedKey,
    dataset_id: &str,
) -> Result<WrappedKey, CryptoError> {
    Ok(new.wrap(&old.unwrap(wrapped, dataset_id)?, dataset_id))
}

/// A dataset's data key; wiped on drop.
pub struct DataKey(Zeroizing<[u8; 32]>);

impl DataKey {
    pub fn generate() -> Self {
        let mut k = [0u8; 32];
        rand::fill(&mut k);
        DataKey(Zeroizing::new(k))
    }
}

/// A data key as the database stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedKey {
    pub master_version: u32,
    pub blob: Vec<u8>,
}

fn object_aad(dataset_id: &str, object_id: &str) -> Vec<u8> {
    format!(
        "medfed-obj-v1\n{}\n{dataset_id}\n{object_id}",
        dataset_id.len()
    )
    .into_bytes()
}

fn segment_nonce(prefix: &[u8; 7], counter: u32, last: bool) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..7].copy_from_slice(prefix);
    n[7..11].copy_from_slice(&counter.to_be_bytes());
    n[11] = last as u8;
    n
}

fn read_up_to(src: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
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

/// Encrypt `plain` to `out` for object `object_id` of `dataset_id`; returns the bytes written.
pub fn encrypt_object(
    key: &DataKey,
    dataset_id: &str,
    object_id: &str,
    mut plain: impl Read,
    mut out: impl Write,
) -> Result<u64, CryptoError> {
    let cipher = Aes256Gcm::new((&*key.0).into());
    let aad = object_aad(dataset_id, object_id);
    let mut prefix = [0u8; 7];
    rand::fill(&mut prefix);
    out.write_all(MAGIC)?;
    out.write_all(&prefix)?;
    let mut written = HEADER as u64;
    // Read one segment ahead, so that the last segment is known when it is sealed.
    let mut cur = vec![0u8; SEGMENT];
    let mut next = vec![0u8; SEGMENT];
    let mut cur_len = read_up_to(&mut plain, &mut cur)?;
    let mut counter: u32 = 0;
    loop {
        let next_len = if cur_len == SEGMENT {
            read_up_to(&mut plain, &mut next)?
        } else {
            0
        };
        let last = next_len == 0;
        let nonce = segment_nonce(&prefix, counter, last);
        let tag = cipher
            .encrypt_in_place_detached(Nonce::from_slice(&nonce), &aad, &mut cur[..cur_len])
            .map_err(|_| CryptoError::Integrity("encryption failed".into()))?;
        out.write_all(&cur[..cur_len])?;
        out.write_all(&tag)?;
        written += (cur_len + TAG) as u64;
        if last {
            break;
        }
        counter = counter
            .checked_add(1)
            .ok_or_else(|| CryptoError::Integrity("object too large for one stream".into()))?;
        std::mem::swap(&mut cur, &mut next);
        cur_len = next_len;
    }
    cur.zeroize();
    next.zeroize();
    Ok(written)
}

/// Decrypt a blob made by [`encrypt_object`]; returns the plaintext bytes written. Nothing of a
/// segment is written before it has been authenticated; any error means the object is damaged
/// or belongs elsewhere, and what was written so far must be discarded.
pub fn decrypt_object(
    key: &DataKey,
    dataset_id: &str,
    object_id: &str,
    mut blob: impl Read,
    mut out: impl Write,
) -> Result<u64, CryptoError> {
    let cipher = Aes256Gcm::new((&*key.0).into());
    let aad = object_aad(dataset_id, object_id);
    let mut header = [0u8; HEADER];
    if read_up_to(&mut blob, &mut header)? < HEADER || &header[..4] != MAGIC {
        return Err(CryptoError::Integrity(
            "not a medfed encrypted object (bad header)".into(),
        ));
    }
    let prefix: [u8; 7] = header[4..].try_into().unwrap_or([0; 7]);
    let mut cur = vec![0u8; SEGMENT + TAG];
    let mut next = vec![0u8; SEGMENT + TAG];
    let mut cur_len = read_up_to(&mut blob, &mut cur)?;
    let mut counter: u32 = 0;
    let mut written = 0u64;
    loop {
        if cur_len < TAG {
            return Err(CryptoError::Integrity(format!(
                "object ends inside segment {counter}: truncated"
            )));
        }
        let next_len = if cur_len == SEGMENT + TAG {
            read_up_to(&mut blob, &mut next)?
        } else {
            0
        };
        let last = next_len == 0;
        let (body, tag) = cur[..cur_len].split_at_mut(cur_len - TAG);
        let tag = Tag::clone_from_slice(tag);
        cipher
            .decrypt_in_place_detached(
                Nonce::from_slice(&segment_nonce(&prefix, counter, last)),
                &aad,
                body,
                &tag,
            )
            .map_err(|_| {
                CryptoError::Integrity(format!(
                    "segment {counter} does not authenticate: the blob was changed, cut short, reordered or belongs to another object"
                ))
            })?;
        out.write_all(body)?;
        written += body.len() as u64;
        if last {
            break;
        }
        counter = counter
            .checked_add(1)
            .ok_or_else(|| CryptoError::Integrity("too many segments".into()))?;
        std::mem::swap(&mut cur, &mut next);
        cur_len = next_len;
    }
    cur.zeroize();
    next.zeroize();
    Ok(written)
}
