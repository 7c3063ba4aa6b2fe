//! The site's inbox: every received or imported instance is written here, complete and synced,
//! before the sender is told it was stored. Files are named by SOP Instance UID, so a
//! retransmission or a restart never duplicates an instance; a quota pauses intake instead of
//! filling the disk.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use dicom_object::meta::FileMetaTableBuilder;

#[derive(Debug, thiserror::Error)]
pub enum InboxError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the inbox is full ({used} of {quota} bytes); intake paused until space is freed")]
    QuotaExceeded { used: u64, quota: u64 },
    #[error(
        "the disk holding the inbox has {free} bytes free, below the reserve of {reserve}; intake paused until space is freed"
    )]
    DiskFull { free: u64, reserve: u64 },
    #[error("refused: {0}")]
    Invalid(String),
}

/// What [`Inbox::store`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    New(PathBuf),
    /// The instance was there already (same SOP Instance UID); nothing was written.
    Duplicate(PathBuf),
}

pub struct Inbox {
    dir: PathBuf,
    quota: u64,
    /// Bytes the filesystem must keep free after a write (the rest of the hospital's server
    /// needs its disk too).
    reserve: u64,
    used: Mutex<u64>,
    /// The last refusal for lack of room, until room is made again.
    refusal: Mutex<Option<InboxError>>,
}

const PARTIAL: &str = ".partial-";

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn is_uid(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

impl Inbox {
    /// Open (creating) the inbox; leftovers of interrupted writes are removed. No free-disk
    /// reserve; see [`Inbox::with_reserve`].
    pub fn open(dir: &Path, quota: u64) -> Result<Inbox, InboxError> {
        Self::with_reserve(dir, quota, 0)
    }

    /// Open with a quota and a number of bytes that must stay free on the disk.
    pub fn with_reserve(dir: &Path, quota: u64, reserve: u64) -> Result<Inbox, InboxError> {
        let io = |source| InboxError::Io {
            path: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut used = 0;
        for e in std::fs::read_dir(dir).map_err(io)?.filter_map(|e| e.ok()) {
            if e.file_name().to_string_lossy().starts_with(PARTIAL) {
                let _ = std::fs::remove_file(e.path());
            } else {
                used += e.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
        Ok(Inbox {
            dir: dir.to_path_buf(),
            quota,
            reserve,
            used: Mutex::new(used),
            refusal: Mutex::new(None),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn used_bytes(&self) -> u64 {
        *self.used.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn quota_bytes(&self) -> u64 {
        self.quota
    }

    /// Bytes free on the filesystem holding the inbox.
    pub fn disk_free_bytes(&self) -> Result<u64, InboxError> {
        let st = rustix::fs::statvfs(&self.dir).map_err(|e| InboxError::Io {
            path: self.dir.clone(),
            source: e.into(),
        })?;
        Ok(st.f_bavail.saturating_mul(st.f_frsize))
    }

    /// Why intake is paused now, if it is: an instance was refused for lack of room (quota or
    /// disk reserve) and no room has been made since.
    pub fn paused(&self) -> Option<String> {
        lock(&self.refusal).as_ref().map(|e| e.to_string())
    }

    /// Move an instance out of the inbox (after it was handled) and give its bytes back to
    /// the quota.
    pub fn move_out(&self, file: &Path, dest: &Path) -> Result<(), InboxError> {
        let size = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
        std::fs::rename(file, dest).map_err(|source| InboxError::Io {
            path: file.to_path_buf(),
            source,
        })?;
        let mut used = lock(&self.used);
        *used = used.saturating_sub(size);
        *lock(&self.refusal) = None;
        Ok(())
    }

    /// Store a data set as received over the network (its transfer syntax unchanged: no
    /// transcoding), with a file meta group in front.
    pub fn store(
        &self,
        sop_class_uid: &str,
        sop_instance_uid: &str,
        transfer_syntax: &str,
        dataset: &[u8],
    ) -> Result<Stored, InboxError> {
        if !is_uid(sop_instance_uid) || !is_uid(sop_class_uid) {
            return Err(InboxError::Invalid(
                "SOP Class or Instance UID is not a valid UID".into(),
            ));
        }
        let dest = self.dir.join(format!("{sop_instance_uid}.dcm"));
        if dest.exists() {
            return Ok(Stored::Duplicate(dest));
        }
        let meta = FileMetaTableBuilder::new()
            .media_storage_sop_class_uid(sop_class_uid)
            .media_storage_sop_instance_uid(sop_instance_uid)
            .transfer_syntax(transfer_syntax)
            .build()
            .map_err(|e| InboxError::Invalid(format!("file meta group: {e}")))?;
        let mut head = vec![0u8; 128];
        head.extend_from_slice(b"DICM");
        meta.write(&mut head)
            .map_err(|e| InboxError::Invalid(format!("file meta group: {e}")))?;
        self.reserve_and_write(&dest, &head, dataset)
    }

    /// Import a DICOM Part 10 file (from a folder, not the network): stored byte for byte under
    /// its SOP Instance UID, with the same quota and de-duplication as received instances.
    pub fn import(&self, file: &Path) -> Result<Stored, InboxError> {
        let bytes = std::fs::read(file).map_err(|source| InboxError::Io {
            path: file.to_path_buf(),
            source,
        })?;
        let obj = dicom_object::OpenFileOptions::new()
            .read_until(dicom_dictionary_std::tags::PIXEL_DATA)
            .from_reader(&bytes[..])
            .map_err(|e| InboxError::Invalid(format!("{}: not DICOM: {e}", file.display())))?;
        let uid = obj
            .meta()
            .media_storage_sop_instance_uid()
            .trim_end_matches('\0')
            .to_string();
        if !is_uid(&uid) {
            return Err(InboxError::Invalid(format!(
                "{}: no valid SOP Instance UID",
                file.display()
            )));
        }
        let dest = self.dir.join(format!("{uid}.dcm"));
        if dest.exists() {
            return Ok(Stored::Duplicate(dest));
        }
        self.reserve_and_write(&dest, &bytes, &[])
    }

    /// Reserve quota before writing, so concurrent associations cannot overshoot together;
    /// give it back when nothing new was written.
    fn reserve_and_write(
        &self,
        dest: &Path,
        head: &[u8],
        body: &[u8],
    ) -> Result<Stored, InboxError> {
        let size = (head.len() + body.len()) as u64;
        {
            let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
            if *used + size > self.quota {
                let e = InboxError::QuotaExceeded {
                    used: *used,
                    quota: self.quota,
                };
                *lock(&self.refusal) = Some(InboxError::QuotaExceeded {
                    used: *used,
                    quota: self.quota,
                });
                return Err(e);
            }
            *used += size;
        }
        if self.reserve > 0 {
            let free = self.disk_free_bytes()?;
            if free < self.reserve.saturating_add(size) {
                *lock(&self.used) -= size;
                *lock(&self.refusal) = Some(InboxError::DiskFull {
                    free,
                    reserve: self.reserve,
                });
                return Err(InboxError::DiskFull {
                    free,
                    reserve: self.reserve,
                });
            }
        }
        let written = self.write_file(dest, head, body);
        if !matches!(written, Ok(Stored::New(_))) {
            *self.used.lock().unwrap_or_else(|p| p.into_inner()) -= size;
        }
        written
    }

    fn write_file(&self, dest: &Path, head: &[u8], dataset: &[u8]) -> Result<Stored, InboxError> {
        let io = |source| InboxError::Io {
            path: dest.to_path_buf(),
            source,
        };
        let mut tmp = tempfile::Builder::new()
            .prefix(PARTIAL)
            .tempfile_in(&self.dir)
            .map_err(io)?;
        tmp.write_all(head).map_err(io)?;
        tmp.write_all(dataset).map_err(io)?;
        tmp.as_file().sync_all().map_err(io)?;
        match tmp.persist_noclobber(dest) {
            Ok(_) => Ok(Stored::New(dest.to_path_buf())),
            Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => {
                Ok(Stored::Duplicate(dest.to_path_buf()))
            }
            Err(e) => Err(io(e.error)),
        }
    }

    /// Instances in the inbox, in name order.
    pub fn list(&self) -> Result<Vec<PathBuf>, InboxError> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map_err(|source| InboxError::Io {
                path: self.dir.clone(),
                source,
            })?
            .filter_map(|e| e.ok())
            .filter(|e| !e.file_name().to_string_lossy().starts_with(PARTIAL))
            .map(|e| e.path())
            .collect();
        v.sort();
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_are_stored_once_within_the_quota_and_read_back_as_dicom() {
        let dir = tempfile::tempdir().unwrap();
        let inbox = Inbox::open(dir.path(), 2_000).unwrap();
        // A minimal implicit VR little endian data set: (0008,0018) SOP Instance UID.
        let uid = b"1.2.3.4\0";
        let mut ds = vec![0x08, 0x00, 0x18, 0x00, uid.len() as u8, 0, 0, 0];
        ds.extend_from_slice(uid);
        let first = inbox
            .store(
                "1.2.840.10008.5.1.4.1.1.2",
                "1.2.3.4",
                "1.2.840.10008.1.2",
                &ds,
            )
            .unwrap();
        let Stored::New(path) = first else {
            panic!("expected a new file")
        };
        let obj = dicom_object::open_file(&path).unwrap();
        assert_eq!(obj.meta().media_storage_sop_instance_uid(), "1.2.3.4");
        assert_eq!(
            obj.element(dicom_dictionary_std::tags::SOP_INSTANCE_UID)
                .unwrap()
                .to_str()
                .unwrap()
                .trim_end_matches('\0'),
            "1.2.3.4"
        );
        let again = inbox
            .store(
                "1.2.840.10008.5.1.4.1.1.2",
                "1.2.3.4",
                "1.2.840.10008.1.2",
                &ds,
            )
            .unwrap();
        assert!(matches!(again, Stored::Duplicate(_)));
        assert_eq!(inbox.list().unwrap().len(), 1);
        let big = vec![0u8; 3_000];
        assert!(matches!(
            inbox.store(
                "1.2.840.10008.5.1.4.1.1.2",
                "1.2.3.5",
                "1.2.840.10008.1.2",
                &big
            ),
            Err(InboxError::QuotaExceeded { .. })
        ));
        assert!(matches!(
            inbox.store(
                "1.2.840.10008.5.1.4.1.1.2",
                "../etc",
                "1.2.840.10008.1.2",
                &ds
            ),
            Err(InboxError::Invalid(_))
        ));
        assert_eq!(inbox.list().unwrap().len(), 1);
        // Reopening counts what is there.
        let used = inbox.used_bytes();
        assert_eq!(Inbox::open(dir.path(), 2_000).unwrap().used_bytes(), used);
    }
}
