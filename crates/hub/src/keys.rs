//! The hub's key material outside the database: versioned master keys (`master-v<N>.key`,
//! mode 0600) or one key from `MEDFED_MASTER_KEY`, and the audit signing key.
//!
//! New data keys are wrapped by the newest master key; each dataset records the version that
//! wrapped its key, so rotation ([`MasterKeys::rotate`]) only re-wraps data keys and never
//! rewrites a blob, and every step of it is safe to interrupt.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use medfed_catalogue::{Catalogue, WrappedDataKey};
use medfed_crypto::{CryptoError, DataKey, MasterKey, WrappedKey};

use crate::HubError;

pub const MASTER_KEY_ENV: &str = "MEDFED_MASTER_KEY";

pub struct MasterKeys {
    keys: BTreeMap<u32, MasterKey>,
    dir: Option<PathBuf>,
}

fn key_file(dir: &Path, version: u32) -> PathBuf {
    dir.join(format!("master-v{version}.key"))
}

impl MasterKeys {
    /// Load every version from `dir` (creating version 1 on first start), or the key in
    /// `MEDFED_MASTER_KEY` when that is set.
    // Start-up and host-side commands only, before or beside serving: never on a request path.
    #[allow(clippy::disallowed_methods)]
    pub fn load(dir: &Path) -> Result<MasterKeys, HubError> {
        if let Ok(hex) = std::env::var(MASTER_KEY_ENV) {
            let mut keys = BTreeMap::new();
            keys.insert(1, MasterKey::from_hex(1, hex.trim())?);
            return Ok(MasterKeys { keys, dir: None });
        }
        std::fs::create_dir_all(dir).map_err(|e| HubError::io(dir, e))?;
        let mut keys = BTreeMap::new();
        for entry in std::fs::read_dir(dir).map_err(|e| HubError::io(dir, e))? {
            let entry = entry.map_err(|e| HubError::io(dir, e))?;
            let name = entry.file_name().to_string_lossy().to_string();
            let Some(v) = name
                .strip_prefix("master-v")
                .and_then(|r| r.strip_suffix(".key"))
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            keys.insert(v, MasterKey::from_file(v, &entry.path())?);
        }
        if keys.is_empty() {
            keys.insert(1, MasterKey::generate_to(1, &key_file(dir, 1))?);
            tracing::info!(dir = %dir.display(), "generated master key version 1");
        }
        Ok(MasterKeys {
            keys,
            dir: Some(dir.to_path_buf()),
        })
    }

    pub fn current_version(&self) -> u32 {
        self.keys.keys().next_back().copied().unwrap_or(1)
    }

    fn current(&self) -> &MasterKey {
        &self.keys[&self.current_version()]
    }

    /// A new data key for a dataset, and its wrapped form for the catalogue.
    pub fn new_data_key(&self, dataset: &str) -> (DataKey, WrappedDataKey) {
        let dk = DataKey::generate();
        let w = self.current().wrap(&dk, dataset);
        (
            dk,
            WrappedDataKey {
                dataset: dataset.to_string(),
                master_version: w.master_version,
                wrapped_hex: hex::encode(&w.blob),
            },
        )
    }

    pub fn unwrap(&self, w: &WrappedDataKey) -> Result<DataKey, HubError> {
        let key = self.keys.get(&w.master_version).ok_or_else(|| {
            HubError::Crypto(CryptoError::Integrity(format!(
                "dataset {} needs master key version {}, which is not loaded",
                w.dataset, w.master_version
            )))
        })?;
        let blob = hex::decode(&w.wrapped_hex).map_err(|_| {
            CryptoError::Integrity(format!("wrapped key of {} is not hex", w.dataset))
        })?;
        Ok(key.unwrap(
            &WrappedKey {
                master_version: w.master_version,
                blob,
            },
            &w.dataset,
        )?)
    }

    /// Rotation: make master key version N+1 and re-wrap every data key with it, in one
    /// transaction. Blobs are not touched. With `retire`, older key files are deleted after the
    /// commit. Returns the new version and how many data keys were re-wrapped.
    // `medfed hub rotate-key` on the host, not a request path.
    #[allow(clippy::disallowed_methods)]
    pub async fn rotate(
        &mut self,
        cat: &Catalogue,
        retire: bool,
    ) -> Result<(u32, usize), HubError> {
        let Some(dir) = self.dir.clone() else {
            return Err(HubError::Invalid(format!(
                "rotation needs a key directory; {MASTER_KEY_ENV} holds a single key"
            )));
        };
        let v = self.current_version() + 1;
        let new = MasterKey::generate_to(v, &key_file(&dir, v))?;
        self.keys.insert(v, new);
        let mut rewrapped = Vec::new();
        for w in cat.all_wrapped_keys().await? {
            let dk = self.unwrap(&w)?;
            let nw = self.current().wrap(&dk, &w.dataset);
            rewrapped.push(WrappedDataKey {
                dataset: w.dataset,
                master_version: nw.master_version,
                wrapped_hex: hex::encode(&nw.blob),
            });
        }
        cat.replace_wrapped_keys(&rewrapped).await?;
        if retire {
            let old: Vec<u32> = self.keys.keys().copied().filter(|&o| o < v).collect();
            for o in old {
                self.keys.remove(&o);
                let f = key_file(&dir, o);
                std::fs::remove_file(&f).map_err(|e| HubError::io(&f, e))?;
            }
        }
        Ok((v, rewrapped.len()))
    }
}
