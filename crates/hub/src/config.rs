//! `hub.toml`: every setting has a default that needs no other server (SQLite and a local
//! directory under `data_dir`), so `medfed hub serve` runs with an empty file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use medfed_store::S3Config;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HubConfig {
    /// Address to listen on (HTTPS only).
    pub listen: SocketAddr,
    /// Where the embedded defaults keep their files: catalogue, objects, keys, audit log, TLS.
    pub data_dir: PathBuf,
    /// `sqlite://PATH` or `postgres://...`; default `sqlite://<data_dir>/catalogue.db`.
    pub database_url: Option<String>,
    pub storage: StorageConfig,
    pub keys: KeysConfig,
    pub tls: TlsConfig,
    pub oidc: Option<OidcConfig>,
    pub limits: Limits,
    pub audit: AuditConfig,
    pub lifecycle: LifecycleConfig,
    pub sites: SitesConfig,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            data_dir: PathBuf::from("hub-data"),
            database_url: None,
            storage: StorageConfig::default(),
            keys: KeysConfig::default(),
            tls: TlsConfig::default(),
            oidc: None,
            limits: Limits::default(),
            audit: AuditConfig::default(),
            lifecycle: LifecycleConfig::default(),
            sites: SitesConfig::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum StorageConfig {
    /// Objects in a local directory, `<data_dir>/objects` unless `path` is given.
    Local {
        path: Option<PathBuf>,
    },
    S3(S3Config),
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig::Local { path: None }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct KeysConfig {
    /// Directory of versioned master keys `master-v<N>.key` (mode 0600); default
    /// `<data_dir>/keys`. A key in `MEDFED_MASTER_KEY` (hex) is used instead when set.
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain and key. Without them the hub makes its own CA and server
    /// certificate under `<data_dir>/tls` (clients then trust `ca.pem`).
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Extra DNS names or IP addresses for a generated certificate.
    pub names: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    pub issuer: String,
    pub audience: String,
    /// HTTPS address of the issuer's JWKS.
    pub jwks_url: String,
    /// Extra CA certificate (PEM) to trust for the JWKS endpoint.
    pub ca_file: Option<PathBuf>,
    /// Allowed clock skew for exp/nbf, seconds.
    #[serde(default = "default_skew")]
    pub leeway_s: u64,
    /// Minimum seconds between two JWKS fetches caused by unknown key ids.
    #[serde(default = "default_refetch")]
    pub refetch_interval_s: u64,
}

fn default_skew() -> u64 {
    60
}

fn default_refetch() -> u64 {
    30
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// JSON request bodies.
    pub max_json_bytes: usize,
    /// One chunk of a resumable upload.
    pub max_chunk_bytes: usize,
    /// One STOW-RS request.
    pub max_stow_bytes: usize,
    /// One site message of a federated run (a masked release with its shares).
    pub max_run_message_bytes: usize,
    /// All request headers together.
    pub max_header_bytes: usize,
    /// Nesting depth of JSON bodies.
    pub max_json_depth: usize,
    /// Default and maximum page size of listings and QIDO-RS.
    pub default_page: i64,
    pub max_page: i64,
    /// Authentication failures allowed per presented credential (the exact token) within the
    /// window, before 429.
    pub auth_failures: u32,
    /// Authentication failures allowed per client address (IPv6: per /64) within the window,
    /// whatever the tokens, before 429 (every bearer request from it then waits out the window).
    pub auth_failures_per_address: u32,
    pub auth_failure_window_s: u64,
    /// Longest a client may take to send a request's headers (HTTP/1.1) or to finish the TLS
    /// handshake; slower connections are closed.
    pub header_timeout_s: u64,
    /// Open connections allowed per client address; more are closed at once.
    pub max_connections_per_address: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_json_bytes: 64 * 1024,
            max_chunk_bytes: 16 << 20,
            max_stow_bytes: 256 << 20,
            max_run_message_bytes: 32 << 20,
            max_header_bytes: 16 * 1024,
            max_json_depth: 16,
            default_page: 50,
            max_page: 500,
            auth_failures: 10,
            auth_failures_per_address: 50,
            auth_failure_window_s: 60,
            header_timeout_s: 10,
            max_connections_per_address: 64,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Default `<data_dir>/audit/hub.audit.jsonl`.
    pub log: Option<PathBuf>,
    /// Signed checkpoint every this many records.
    pub checkpoint_every: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            log: None,
            checkpoint_every: 100,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LifecycleConfig {
    /// How often expired datasets are removed (also once at start).
    pub sweep_interval_s: u64,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        LifecycleConfig {
            sweep_interval_s: 3600,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SitesConfig {
    /// Lifetime of the client certificates the hub signs for sites; sites renew when a third
    /// of it is left.
    pub certificate_lifetime_s: u64,
    /// How long an enrolment token may be used (once).
    pub enrolment_valid_s: u64,
    /// Longest a site's poll waits for a task before it is answered empty.
    pub poll_wait_s: u64,
    /// A site counts as online when it was seen within this many seconds.
    pub online_within_s: u64,
}

impl Default for SitesConfig {
    fn default() -> Self {
        SitesConfig {
            certificate_lifetime_s: 30 * 86_400,
            enrolment_valid_s: 72 * 3600,
            poll_wait_s: 25,
            online_within_s: 60,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
}

impl HubConfig {
    /// Read `hub.toml`; relative paths in it are relative to the file's directory.
    // Start-up and host-side commands only, before or beside serving: never on a request path.
    #[allow(clippy::disallowed_methods)]
    pub fn load(path: &Path) -> Result<HubConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut cfg: HubConfig = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        if let Some(base) = path.parent().filter(|p| !p.as_os_str().is_empty())
            && cfg.data_dir.is_relative()
        {
            cfg.data_dir = base.join(&cfg.data_dir);
        }
        Ok(cfg)
    }

    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("catalogue.db").display()))
    }

    pub fn keys_dir(&self) -> PathBuf {
        self.keys
            .dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("keys"))
    }

    pub fn audit_log(&self) -> PathBuf {
        self.audit
            .log
            .clone()
            .unwrap_or_else(|| self.data_dir.join("audit").join("hub.audit.jsonl"))
    }

    pub fn tls_dir(&self) -> PathBuf {
        self.data_dir.join("tls")
    }

    pub fn uploads_dir(&self) -> PathBuf {
        self.data_dir.join("uploads")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_gives_the_embedded_defaults_and_unknown_keys_are_refused() {
        let cfg: HubConfig = toml::from_str("").unwrap();
        assert_eq!(cfg, HubConfig::default());
        assert!(cfg.database_url().starts_with("sqlite://"));
        assert!(toml::from_str::<HubConfig>("listen_on = \"x\"").is_err());
        let s3: HubConfig = toml::from_str(
            "[storage]\nkind = \"s3\"\nbucket = \"b\"\nendpoint = \"http://127.0.0.1:9000\"\nallow_http = true\n",
        )
        .unwrap();
        assert!(matches!(s3.storage, StorageConfig::S3(ref c) if c.bucket == "b"));
    }
}
