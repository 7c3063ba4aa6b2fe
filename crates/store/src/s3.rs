//! Blobs in any S3-compatible object store (through `object_store`), for production hubs.
//!
//! Keys are `datasets/<dataset>/<object>` as in [`crate::LocalStore`]. Scratch files are local
//! temporary files; publishing uploads the finished (encrypted) file in one PUT, or a multipart
//! upload for large objects, so a half-written object is never visible in the bucket. The
//! [`crate::BlobStore`] interface is blocking: call it from blocking threads (the hub uses
//! `spawn_blocking`), never from an async task.

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use serde::{Deserialize, Serialize};
use tokio::runtime::Handle;

use crate::{BlobStore, Id, ObjectKey, SCRATCH_PREFIX, StoreError};

/// Objects up to this size go in one PUT; larger ones as a multipart upload.
const SINGLE_PUT: u64 = 64 << 20;
/// Reads fetch ranges of this size.
const READ_RANGE: u64 = 8 << 20;

/// Where the bucket is. Credentials may come from the environment instead
/// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    pub bucket: String,
    /// For S3-compatible servers other than AWS (`https://s3.example.org`, `http://127.0.0.1:9000`).
    pub endpoint: Option<String>,
    #[serde(default = "default_region")]
    pub region: String,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// Plain HTTP to the endpoint; only sensible on loopback (tests).
    #[serde(default)]
    pub allow_http: bool,
}

fn default_region() -> String {
    "us-east-1".into()
}

pub struct S3Store {
    store: Arc<dyn ObjectStore>,
    scratch_dir: PathBuf,
    rt: Handle,
}

fn s3_err(what: &str) -> impl Fn(object_store::Error) -> StoreError + '_ {
    move |e| match e {
        object_store::Error::NotFound { .. } => StoreError::NotFound(what.to_string()),
        other => StoreError::Io {
            path: PathBuf::from(what),
            source: std::io::Error::other(other.to_string()),
        },
    }
}

fn object_path(key: &ObjectKey) -> StorePath {
    StorePath::from(format!(
        "datasets/{}/{}",
        key.dataset.as_str(),
        key.object.as_str()
    ))
}

impl S3Store {
    /// Connect to the bucket; `scratch_dir` holds local scratch files. Must be called inside a
    /// tokio runtime, whose handle later blocking calls use.
    pub fn open(cfg: &S3Config, scratch_dir: &std::path::Path) -> Result<S3Store, StoreError> {
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(&cfg.bucket)
            .with_region(&cfg.region)
            .with_allow_http(cfg.allow_http);
        if let Some(e) = &cfg.endpoint {
            b = b.with_endpoint(e);
        }
        if let Some(k) = &cfg.access_key_id {
            b = b.with_access_key_id(k);
        }
        if let Some(k) = &cfg.secret_access_key {
            b = b.with_secret_access_key(k);
        }
        let store = b.build().map_err(s3_err(&cfg.bucket))?;
        std::fs::create_dir_all(scratch_dir).map_err(|source| StoreError::Io {
            path: scratch_dir.to_path_buf(),
            source,
        })?;
        let rt = Handle::try_current().map_err(|e| StoreError::Io {
            path: scratch_dir.to_path_buf(),
            source: std::io::Error::other(format!("S3 store needs a tokio runtime: {e}")),
        })?;
        Ok(S3Store {
            store: Arc::new(store),
            scratch_dir: scratch_dir.to_path_buf(),
            rt,
        })
    }

    fn list_prefix(&self, prefix: &str) -> Result<Vec<StorePath>, StoreError> {
        let store = self.store.clone();
        let prefix = StorePath::from(prefix);
        self.rt.block_on(async move {
            let mut out = Vec::new();
            let mut s = store.list(Some(&prefix));
            while let Some(m) = s.next().await {
                out.push(m.map_err(s3_err("list"))?.location);
            }
            Ok(out)
        })
    }
}

impl BlobStore for S3Store {
    fn scratch(&self, _key: &ObjectKey) -> Result<tempfile::NamedTempFile, StoreError> {
        tempfile::Builder::new()
            .prefix(SCRATCH_PREFIX)
            .tempfile_in(&self.scratch_dir)
            .map_err(|source| StoreError::Io {
                path: self.scratch_dir.clone(),
                source,
            })
    }

    fn publish(
        &self,
        key: &ObjectKey,
        mut src: tempfile::NamedTempFile,
    ) -> Result<u64, StoreError> {
        if self.exists(key) {
            return Err(StoreError::Conflict(format!(
                "object {} already exists",
                key.object.as_str()
            )));
        }
        let path = object_path(key);
        let io = |source| StoreError::Io {
            path: PathBuf::from(path.to_string()),
            source,
        };
        let len = src.as_file().metadata().map_err(io)?.len();
        let file = src.as_file_mut();
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        let store = self.store.clone();
        if len <= SINGLE_PUT {
            let mut buf = Vec::with_capacity(len as usize);
            file.read_to_end(&mut buf).map_err(io)?;
            self.rt
                .block_on(store.put(&path, PutPayload::from(buf)))
                .map_err(s3_err(path.as_ref()))?;
        } else {
            self.rt.block_on(async {
                let upload = store
                    .put_multipart(&path)
                    .await
                    .map_err(s3_err(path.as_ref()))?;
                let mut w = WriteMultipart::new_with_chunk_size(upload, 16 << 20);
                let mut buf = vec![0u8; 8 << 20];
                loop {
                    let n = file.read(&mut buf).map_err(io)?;
                    if n == 0 {
                        break;
                    }
                    w.wait_for_capacity(4)
                        .await
                        .map_err(s3_err(path.as_ref()))?;
                    w.write(&buf[..n]);
                }
                w.finish().await.map_err(s3_err(path.as_ref()))?;
                Ok::<(), StoreError>(())
            })?;
        }
        Ok(len)
    }

    fn open(&self, key: &ObjectKey) -> Result<Box<dyn Read + Send>, StoreError> {
        let path = object_path(key);
        let meta = self
            .rt
            .block_on(self.store.head(&path))
            .map_err(s3_err(path.as_ref()))?;
        Ok(Box::new(RangeReader {
            store: self.store.clone(),
            rt: self.rt.clone(),
            path,
            size: meta.size,
            pos: 0,
            buf: Bytes::new(),
        }))
    }

    fn exists(&self, key: &ObjectKey) -> bool {
        self.rt.block_on(self.store.head(&object_path(key))).is_ok()
    }

    fn delete(&self, key: &ObjectKey) -> Result<(), StoreError> {
        let path = object_path(key);
        match self.rt.block_on(self.store.delete(&path)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(s3_err(path.as_ref())(e)),
        }
    }

    fn delete_dataset(&self, dataset: &Id) -> Result<usize, StoreError> {
        let objects = self.list(dataset)?;
        for o in &objects {
            self.delete(&ObjectKey {
                dataset: dataset.clone(),
                object: o.clone(),
            })?;
        }
        Ok(objects.len())
    }

    fn list(&self, dataset: &Id) -> Result<Vec<Id>, StoreError> {
        let mut ids: Vec<Id> = self
            .list_prefix(&format!("datasets/{}", dataset.as_str()))?
            .iter()
            .filter_map(|p| p.filename().and_then(|n| Id::parse("object", n).ok()))
            .collect();
        ids.sort();
        Ok(ids)
    }

    fn clean_scratch(&self) -> Result<usize, StoreError> {
        let mut n = 0;
        for f in std::fs::read_dir(&self.scratch_dir)
            .map_err(|source| StoreError::Io {
                path: self.scratch_dir.clone(),
                source,
            })?
            .filter_map(|e| e.ok())
        {
            if f.file_name().to_string_lossy().starts_with(SCRATCH_PREFIX)
                && std::fs::remove_file(f.path()).is_ok()
            {
                n += 1;
            }
        }
        Ok(n)
    }

    fn datasets(&self) -> Result<Vec<Id>, StoreError> {
        let mut ids: Vec<Id> = self
            .list_prefix("datasets")?
            .iter()
            .filter_map(|p| {
                let mut parts = p.parts();
                parts.next()?;
                Id::parse("dataset", parts.next()?.as_ref()).ok()
            })
            .collect();
        ids.sort();
        ids.dedup();
        Ok(ids)
    }
}

/// Reads an object in ranges, so large objects never sit whole in memory.
struct RangeReader {
    store: Arc<dyn ObjectStore>,
    rt: Handle,
    path: StorePath,
    size: u64,
    pos: u64,
    buf: Bytes,
}

impl Read for RangeReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.buf.is_empty() {
            if self.pos >= self.size {
                return Ok(0);
            }
            let end = (self.pos + READ_RANGE).min(self.size);
            self.buf = self
                .rt
                .block_on(self.store.get_range(&self.path, self.pos..end))
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            self.pos = end;
        }
        let n = out.len().min(self.buf.len());
        out[..n].copy_from_slice(&self.buf[..n]);
        self.buf = self.buf.slice(n..);
        Ok(n)
    }
}
