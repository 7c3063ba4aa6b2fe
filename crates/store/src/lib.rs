//! The hub's object storage, below the catalogue: where encrypted blobs live and how uploads
//! reach them.
//!
//! - Objects are addressed by [`ObjectKey`]: a dataset id and an object id, each a short token of
//!   `[a-z0-9-]`. User-facing names (file names, DICOM UIDs) never become paths; they stay in the
//!   catalogue. So `..`, encoded slashes, NUL, absolute paths or Unicode look-alikes cannot
//!   address anything: they are refused before any file system call.
//! - [`LocalStore`] keeps blobs under one root directory (the embedded default). A blob is written
//!   under a temporary name in its final directory and renamed into place when complete, so a
//!   reader never sees half an object. Other backends (S3-compatible) implement [`BlobStore`].
//! - [`Uploads`] stages chunked, resumable uploads: each chunk is checked against its SHA-256 and
//!   stored atomically; an interrupted upload continues with the chunks still missing; on
//!   completion the whole object's SHA-256 is checked, the object is encrypted with the dataset's
//!   data key and published. Nothing is visible before that.

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

mod s3;

pub use s3::{S3Config, S3Store};

use medfed_crypto::{DataKey, decrypt_object, encrypt_object};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid {what} id {id:?}: ids are 1-64 characters of a-z, 0-9 and '-'")]
    InvalidId { what: &'static str, id: String },
    #[error("not found: {0}")]
    NotFound(String),
    #[error("{0}")]
    Integrity(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Crypto(#[from] medfed_crypto::CryptoError),
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A validated id token: the only thing that ever becomes a path component.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Id(String);

impl Id {
    pub fn parse(what: &'static str, s: &str) -> Result<Id, StoreError> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-');
        if ok {
            Ok(Id(s.to_string()))
        } else {
            Err(StoreError::InvalidId {
                what,
                id: s.to_string(),
            })
        }
    }

    /// A fresh random id (32 hex digits).
    pub fn random() -> Id {
        let mut b = [0u8; 16];
        rand::fill(&mut b);
        Id(hex::encode(b))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Where an object lives: dataset and object id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectKey {
    pub dataset: Id,
    pub object: Id,
}

impl ObjectKey {
    pub fn parse(dataset: &str, object: &str) -> Result<ObjectKey, StoreError> {
        Ok(ObjectKey {
            dataset: Id::parse("dataset", dataset)?,
            object: Id::parse("object", object)?,
        })
    }
}

/// Storage of encrypted blobs.
pub trait BlobStore: Send + Sync {
    /// Publish the blob at `src` (already encrypted) under `key`, atomically; `src` is consumed.
    fn publish(&self, key: &ObjectKey, src: tempfile::NamedTempFile) -> Result<u64, StoreError>;
    /// A scratch file on the same storage as `key`'s final place, so publishing is a rename.
    fn scratch(&self, key: &ObjectKey) -> Result<tempfile::NamedTempFile, StoreError>;
    fn open(&self, key: &ObjectKey) -> Result<Box<dyn Read + Send>, StoreError>;
    fn exists(&self, key: &ObjectKey) -> bool;
    fn delete(&self, key: &ObjectKey) -> Result<(), StoreError>;
    /// Remove every object of a dataset; returns how many there were.
    fn delete_dataset(&self, dataset: &Id) -> Result<usize, StoreError>;
    /// Object ids of a dataset (leftover scratch files excluded).
    fn list(&self, dataset: &Id) -> Result<Vec<Id>, StoreError>;
    /// Remove scratch files left by a crash; returns how many.
    fn clean_scratch(&self) -> Result<usize, StoreError>;
    /// Datasets that have at least one stored object (to find orphans after a crash).
    fn datasets(&self) -> Result<Vec<Id>, StoreError>;
}

/// Blobs in a local directory: `<root>/datasets/<dataset>/<object>`.
pub struct LocalStore {
    root: PathBuf,
}

pub(crate) const SCRATCH_PREFIX: &str = ".partial-";

impl LocalStore {
    pub fn open(root: &Path) -> Result<LocalStore, StoreError> {
        std::fs::create_dir_all(root.join("datasets")).map_err(io(root))?;
        Ok(LocalStore {
            root: root.to_path_buf(),
        })
    }

    fn dataset_dir(&self, dataset: &Id) -> PathBuf {
        self.root.join("datasets").join(dataset.as_str())
    }

    fn path(&self, key: &ObjectKey) -> PathBuf {
        self.dataset_dir(&key.dataset).join(key.object.as_str())
    }
}

impl BlobStore for LocalStore {
    fn scratch(&self, key: &ObjectKey) -> Result<tempfile::NamedTempFile, StoreError> {
        let dir = self.dataset_dir(&key.dataset);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        tempfile::Builder::new()
            .prefix(SCRATCH_PREFIX)
            .tempfile_in(&dir)
            .map_err(io(&dir))
    }

    fn publish(&self, key: &ObjectKey, src: tempfile::NamedTempFile) -> Result<u64, StoreError> {
        let dest = self.path(key);
        src.as_file().sync_all().map_err(io(&dest))?;
        let len = src.as_file().metadata().map_err(io(&dest))?.len();
        // persist_noclobber: an existing object is never replaced behind the catalogue's back.
        src.persist_noclobber(&dest).map_err(|e| {
            if e.error.kind() == std::io::ErrorKind::AlreadyExists {
                StoreError::Conflict(format!("object {} already exists", key.object.as_str()))
            } else {
                io(&dest)(e.error)
            }
        })?;
        Ok(len)
    }

    fn open(&self, key: &ObjectKey) -> Result<Box<dyn Read + Send>, StoreError> {
        let p = self.path(key);
        match File::open(&p) {
            Ok(f) => Ok(Box::new(BufReader::with_capacity(1 << 20, f))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(StoreError::NotFound(
                format!("{}/{}", key.dataset.as_str(), key.object.as_str()),
            )),
            Err(e) => Err(io(&p)(e)),
        }
    }

    fn exists(&self, key: &ObjectKey) -> bool {
        self.path(key).is_file()
    }

    fn delete(&self, key: &ObjectKey) -> Result<(), StoreError> {
        let p = self.path(key);
        match std::fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&p)(e)),
        }
    }

    fn delete_dataset(&self, dataset: &Id) -> Result<usize, StoreError> {
        let n = self.list(dataset)?.len();
        let dir = self.dataset_dir(dataset);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(n),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(io(&dir)(e)),
        }
    }

    fn list(&self, dataset: &Id) -> Result<Vec<Id>, StoreError> {
        let dir = self.dataset_dir(dataset);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&dir)(e)),
        };
        let mut ids: Vec<Id> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| Id::parse("object", n).ok())
            })
            .collect();
        ids.sort();
        Ok(ids)
    }

    fn datasets(&self) -> Result<Vec<Id>, StoreError> {
        let top = self.root.join("datasets");
        let mut ids: Vec<Id> = std::fs::read_dir(&top)
            .map_err(io(&top))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| Id::parse("dataset", n).ok())
            })
            .collect();
        ids.sort();
        Ok(ids)
    }

    fn clean_scratch(&self) -> Result<usize, StoreError> {
        let mut n = 0;
        let top = self.root.join("datasets");
        for ds in std::fs::read_dir(&top)
            .map_err(io(&top))?
            .filter_map(|e| e.ok())
        {
            let Ok(files) = std::fs::read_dir(ds.path()) else {
                continue;
            };
            for f in files.filter_map(|e| e.ok()) {
                if f.file_name().to_string_lossy().starts_with(SCRATCH_PREFIX) {
                    std::fs::remove_file(f.path()).map_err(io(&f.path()))?;
                    n += 1;
                }
            }
        }
        Ok(n)
    }
}

/// Encrypt `plain` with the dataset's key and publish it.
pub fn put_encrypted(
    store: &dyn BlobStore,
    key: &ObjectKey,
    data_key: &DataKey,
    plain: impl Read,
) -> Result<u64, StoreError> {
    let mut scratch = store.scratch(key)?;
    encrypt_object(
        data_key,
        key.dataset.as_str(),
        key.object.as_str(),
        plain,
        scratch.as_file_mut(),
    )?;
    store.publish(key, scratch)
}

/// Decrypt an object into `out`. On error, what was written must be discarded.
pub fn get_decrypted(
    store: &dyn BlobStore,
    key: &ObjectKey,
    data_key: &DataKey,
    out: impl Write,
) -> Result<u64, StoreError> {
    let blob = store.open(key)?;
    Ok(decrypt_object(
        data_key,
        key.dataset.as_str(),
        key.object.as_str(),
        blob,
        out,
    )?)
}

/// What an upload promises, fixed when it starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UploadPlan {
    pub size: u64,
    /// SHA-256 of the whole object, hex.
    pub sha256: String,
    pub chunk_size: u64,
}

impl UploadPlan {
    pub fn chunks(&self) -> u64 {
        self.size.div_ceil(self.chunk_size).max(1)
    }

    fn chunk_len(&self, index: u64) -> u64 {
        if self.size == 0 {
            0
        } else if index + 1 == self.chunks() {
            self.size - index * self.chunk_size
        } else {
            self.chunk_size
        }
    }
}

/// Staged uploads under `<root>/<upload id>/`: a plan and the chunks received so far.
pub struct Uploads {
    root: PathBuf,
}

impl Uploads {
    pub fn open(root: &Path) -> Result<Uploads, StoreError> {
        std::fs::create_dir_all(root).map_err(io(root))?;
        Ok(Uploads {
            root: root.to_path_buf(),
        })
    }

    fn dir(&self, id: &Id) -> PathBuf {
        self.root.join(id.as_str())
    }

    /// Start an upload; returns its id.
    pub fn start(&self, plan: &UploadPlan) -> Result<Id, StoreError> {
        if plan.chunk_size == 0 || hex::decode(&plan.sha256).map(|b| b.len()) != Ok(32) {
            return Err(StoreError::Integrity(
                "an upload needs a chunk size above 0 and the whole object's SHA-256 (64 hex digits)".into(),
            ));
        }
        let id = Id::random();
        let dir = self.dir(&id);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        write_atomic(
            &dir.join("plan.json"),
            serde_json::to_vec(plan).unwrap_or_default().as_slice(),
        )?;
        Ok(id)
    }

    pub fn plan(&self, id: &Id) -> Result<UploadPlan, StoreError> {
        let p = self.dir(id).join("plan.json");
        let bytes = std::fs::read(&p)
            .map_err(|_| StoreError::NotFound(format!("upload {}", id.as_str())))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| StoreError::Integrity(format!("upload plan unreadable: {e}")))
    }

    /// Store chunk `index`, checked against `sha256` (hex). Sending a chunk again is harmless.
    pub fn put_chunk(
        &self,
        id: &Id,
        index: u64,
        bytes: &[u8],
        sha256: &str,
    ) -> Result<(), StoreError> {
        let plan = self.plan(id)?;
        if index >= plan.chunks() {
            return Err(StoreError::Integrity(format!(
                "chunk {index} of an upload with {} chunks",
                plan.chunks()
            )));
        }
        if bytes.len() as u64 != plan.chunk_len(index) {
            return Err(StoreError::Integrity(format!(
                "chunk {index} has {} bytes, {} expected",
                bytes.len(),
                plan.chunk_len(index)
            )));
        }
        let got = hex::encode(Sha256::digest(bytes));
        if !got.eq_ignore_ascii_case(sha256) {
            return Err(StoreError::Integrity(format!(
                "chunk {index}: SHA-256 is {got}, the client sent {sha256}"
            )));
        }
        write_atomic(&self.dir(id).join(format!("chunk-{index:08}")), bytes)
    }

    /// Indices of the chunks still missing (what a resumed client sends).
    pub fn missing(&self, id: &Id) -> Result<Vec<u64>, StoreError> {
        let plan = self.plan(id)?;
        let dir = self.dir(id);
        Ok((0..plan.chunks())
            .filter(|i| !dir.join(format!("chunk-{i:08}")).is_file())
            .collect())
    }

    /// Check the whole object, encrypt it into `store` under `key` and remove the staging area.
    pub fn complete(
        &self,
        id: &Id,
        store: &dyn BlobStore,
        key: &ObjectKey,
        data_key: &DataKey,
    ) -> Result<u64, StoreError> {
        let plan = self.plan(id)?;
        let missing = self.missing(id)?;
        if !missing.is_empty() {
            return Err(StoreError::Conflict(format!(
                "{} chunks still missing (first: {})",
                missing.len(),
                missing[0]
            )));
        }
        let dir = self.dir(id);
        let reader = self.chunk_reader(id, &plan);
        let mut scratch = store.scratch(key)?;
        let mut hashing = reader;
        encrypt_object(
            data_key,
            key.dataset.as_str(),
            key.object.as_str(),
            &mut hashing,
            scratch.as_file_mut(),
        )?;
        let whole = hashing.digest.clone().unwrap_or_default();
        if !whole.eq_ignore_ascii_case(&plan.sha256) {
            // The scratch file is dropped (deleted); nothing was published.
            return Err(StoreError::Integrity(format!(
                "the assembled object's SHA-256 is {whole}, the upload promised {}",
                plan.sha256
            )));
        }
        let n = store.publish(key, scratch)?;
        std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
        Ok(n)
    }

    /// The received chunks in order, as one stream (to inspect an object before completing it).
    pub fn assembled(&self, id: &Id) -> Result<impl Read + use<>, StoreError> {
        let plan = self.plan(id)?;
        Ok(self.chunk_reader(id, &plan))
    }

    fn chunk_reader(&self, id: &Id, plan: &UploadPlan) -> ChunkReader {
        ChunkReader {
            dir: self.dir(id),
            next: 0,
            chunks: plan.chunks(),
            current: None,
            hasher: Sha256::new(),
            digest: None,
        }
    }

    pub fn abort(&self, id: &Id) -> Result<(), StoreError> {
        let dir = self.dir(id);
        std::fs::remove_dir_all(&dir).map_err(io(&dir))
    }
}

/// The chunks of an upload in order, hashing what passes through.
struct ChunkReader {
    dir: PathBuf,
    next: u64,
    chunks: u64,
    current: Option<File>,
    hasher: Sha256,
    digest: Option<String>,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if self.current.is_none() {
                if self.next == self.chunks {
                    if self.digest.is_none() {
                        self.digest = Some(hex::encode(self.hasher.clone().finalize()));
                    }
                    return Ok(0);
                }
                self.current = Some(File::open(
                    self.dir.join(format!("chunk-{:08}", self.next)),
                )?);
                self.next += 1;
            }
            let n = self.current.as_mut().map_or(Ok(0), |f| f.read(buf))?;
            if n == 0 {
                self.current = None;
                continue;
            }
            self.hasher.update(&buf[..n]);
            return Ok(n);
        }
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    medfed_durable::write_atomically(path, bytes, medfed_durable::Publish::REPLACE)
        .map_err(io(path))
}
