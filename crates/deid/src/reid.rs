//! The site's re-identification table: pseudonym -> original patient identity.
//!
//! Encrypted at rest with AES-256-GCM under a key derived from the site key, so the file
//! alone reveals nothing. It lives beside the site key, never in an output folder, and only
//! `medfed deid reidentify` (run by whoever may read the site key) reads it back.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::DeidError;
use crate::pseudonym::SiteKey;

const MAGIC: &[u8; 8] = b"MFREID1\n";
const AAD: &[u8] = b"medfed re-identification table v1";

/// The original identity behind one patient pseudonym.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OriginalIdentity {
    pub patient_id: String,
    pub patient_name: String,
}

/// Where the re-identification table of a site key lives: next to the key.
pub fn reid_table_path(key_path: &Path) -> PathBuf {
    let mut name = key_path.file_name().unwrap_or_default().to_os_string();
    name.push(".reid");
    key_path.with_file_name(name)
}

/// Reads and updates the encrypted table.
pub struct ReidTable<'k> {
    path: PathBuf,
    key: &'k SiteKey,
}

impl<'k> ReidTable<'k> {
    pub fn new(path: PathBuf, key: &'k SiteKey) -> Self {
        Self { path, key }
    }

    fn cipher(&self) -> Aes256Gcm {
        let k = Zeroizing::new(self.key.mac("reid-table-encryption", b""));
        Aes256Gcm::new_from_slice(k.as_ref()).expect("32-byte key")
    }

    fn err(&self, message: impl Into<String>) -> DeidError {
        DeidError::ReidTable {
            path: self.path.clone(),
            message: message.into(),
        }
    }

    /// Every entry; an absent file is an empty table.
    pub fn read_all(&self) -> Result<BTreeMap<String, OriginalIdentity>, DeidError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(e) => return Err(DeidError::io(&self.path, e)),
        };
        if bytes.len() < MAGIC.len() + 12 || &bytes[..MAGIC.len()] != MAGIC {
            return Err(self.err("not a medfed re-identification table"));
        }
        let (nonce, ct) = bytes[MAGIC.len()..].split_at(12);
        let plain = Zeroizing::new(
            self.cipher()
                .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad: AAD })
                .map_err(|_| self.err("cannot decrypt: wrong site key or the file was altered"))?,
        );
        serde_json::from_slice(&plain).map_err(|e| self.err(format!("corrupt content: {e}")))
    }

    /// Adds entries, merging with what is stored. Serialised between processes by an
    /// exclusive lock; written to a temporary name and renamed, so a crash leaves the old
    /// table intact.
    pub fn merge(&self, entries: &BTreeMap<String, OriginalIdentity>) -> Result<(), DeidError> {
        if entries.is_empty() {
            return Ok(());
        }
        let lock_path = self.path.with_extension("lock");
        let lock = File::create(&lock_path).map_err(|e| DeidError::io(&lock_path, e))?;
        lock.lock().map_err(|e| DeidError::io(&lock_path, e))?;
        let mut all = self.read_all()?;
        let before = all.len();
        all.extend(entries.iter().map(|(k, v)| (k.clone(), v.clone())));
        if all.len() == before && entries.iter().all(|(k, v)| all.get(k) == Some(v)) {
            return Ok(());
        }
        let plain = Zeroizing::new(serde_json::to_vec(&all).map_err(|e| self.err(e.to_string()))?);
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let ct = self
            .cipher()
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &plain,
                    aad: AAD,
                },
            )
            .map_err(|_| self.err("encryption failed"))?;
        let tmp = self.path.with_extension("tmp");
        {
            let mut opts = OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let mut f = opts.open(&tmp).map_err(|e| DeidError::io(&tmp, e))?;
            f.write_all(MAGIC)
                .and_then(|_| f.write_all(&nonce))
                .and_then(|_| f.write_all(&ct))
                .and_then(|_| f.sync_all())
                .map_err(|e| DeidError::io(&tmp, e))?;
        }
        std::fs::rename(&tmp, &self.path).map_err(|e| DeidError::io(&self.path, e))?;
        Ok(())
    }

    /// The original identity behind a pseudonym.
    pub fn lookup(&self, pseudonym: &str) -> Result<OriginalIdentity, DeidError> {
        self.read_all()?
            .remove(pseudonym.trim())
            .ok_or_else(|| DeidError::UnknownPseudonym(pseudonym.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_a_wrong_key_or_tampering() {
        let dir = tempfile::tempdir().unwrap();
        let key = SiteKey::from_bytes([1; 32]);
        let path = dir.path().join("site.key.reid");
        let table = ReidTable::new(path.clone(), &key);
        let who = OriginalIdentity {
            patient_id: "PID-4711".into(),
            patient_name: "Doe^Jane".into(),
        };
        table
            .merge(&BTreeMap::from([("MFABC".to_string(), who.clone())]))
            .unwrap();
        table
            .merge(&BTreeMap::from([("MFDEF".to_string(), who.clone())]))
            .unwrap();
        assert_eq!(table.lookup("MFABC").unwrap(), who);
        assert_eq!(table.read_all().unwrap().len(), 2);
        assert!(matches!(
            table.lookup("MFZZZ"),
            Err(DeidError::UnknownPseudonym(_))
        ));

        let raw = std::fs::read(&path).unwrap();
        assert!(
            !raw.windows(8).any(|w| w == b"PID-4711"),
            "plaintext at rest"
        );

        let other = SiteKey::from_bytes([2; 32]);
        assert!(ReidTable::new(path.clone(), &other).read_all().is_err());
        let mut flipped = raw.clone();
        *flipped.last_mut().unwrap() ^= 1;
        std::fs::write(&path, flipped).unwrap();
        assert!(table.read_all().is_err());
    }
}
