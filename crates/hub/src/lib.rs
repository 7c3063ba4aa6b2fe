//! The hub: medfed's central service. It serves the JSON API under `/api/v1` and DICOMweb
//! (QIDO-RS, WADO-RS, STOW-RS) over HTTPS, keeps metadata in the catalogue (SQLite or
//! PostgreSQL), objects encrypted per dataset in a blob store (local directory or S3), and
//! appends every request, allowed or denied, to the hash-chained audit log.
//!
//! Request path: TLS accept loop ([`tls`]) -> limits -> audit middleware -> authentication
//! (OIDC bearer token or API token, rate-limited failures) -> the handler, which asks
//! `medfed_policy::decide` before touching anything -> catalogue / blob store.
//!
//! Crash consistency: an object's blob is published (rename / single PUT) before its catalogue
//! row commits; a dataset's rows and wrapped key are deleted before its blobs. So after a crash
//! the only possible debris is blobs without rows, which [`Hub::recover`] removes at start.

pub mod api;
pub mod bulk;
pub mod client;
pub mod config;
pub mod dicom;
mod dicomweb;
pub mod host;
pub mod jwks;
pub mod keys;
pub mod names;
pub mod openapi;
mod runs;
mod sites;
pub mod tls;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use medfed_audit::{AuditLog, AuditWriter, Event};
use medfed_auth::OidcValidator;
use medfed_catalogue::{Catalogue, CatalogueError, Dataset, now_ms};
use medfed_store::{BlobStore, Id, LocalStore, ObjectKey, S3Store, StoreError, Uploads};
use tokio::sync::watch;

pub use api::router;
pub use config::HubConfig;
use config::StorageConfig;
use keys::MasterKeys;

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Catalogue(#[from] CatalogueError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Crypto(#[from] medfed_crypto::CryptoError),
    #[error(transparent)]
    Audit(#[from] medfed_audit::AuditError),
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("{0}")]
    Invalid(String),
}

impl HubError {
    pub fn io(path: &Path, source: std::io::Error) -> HubError {
        HubError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Test hooks: abort the process at a chosen point of an upload, to prove crash consistency.
/// Set through `MEDFED_HUB_FAILPOINT`; never set in production.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failpoint {
    /// After the blob is published, before its catalogue row commits.
    AfterBlobPublish,
    /// After the catalogue row commits, before the request's audit record.
    AfterIndexCommit,
}

impl Failpoint {
    fn from_env() -> Option<Failpoint> {
        match std::env::var("MEDFED_HUB_FAILPOINT").ok()?.as_str() {
            "after-blob-publish" => Some(Failpoint::AfterBlobPublish),
            "after-index-commit" => Some(Failpoint::AfterIndexCommit),
            _ => None,
        }
    }
}

/// Everything a request handler needs.
pub struct Hub {
    pub config: HubConfig,
    pub catalogue: Catalogue,
    pub blobs: Arc<dyn BlobStore>,
    pub uploads: Uploads,
    pub keys: MasterKeys,
    /// Appends go to the audit writer thread (group commit), never onto an async worker.
    pub audit: AuditWriter,
    pub oidc: Option<Arc<OidcValidator>>,
    pub(crate) failures: api::FailureLimiter,
    /// Signs site certificates (and the generated server certificate).
    pub ca: tls::HubCa,
    /// What an enrolling site is told to trust for the hub's server certificate (PEM).
    pub server_trust_pem: String,
    /// Bumped whenever a site's tasks or standing change, to wake its pending poll.
    pub(crate) site_events: watch::Sender<u64>,
    /// The federated runs this process drives.
    pub(crate) runs: runs::Registry,
    /// Hashing, encryption and parsing of uploads, at lower OS priority than the request path.
    pub bulk: bulk::BulkPool,
    failpoint: Option<Failpoint>,
}

/// What a lifecycle sweep or a recovery did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Housekeeping {
    pub datasets_removed: usize,
    pub orphan_blobs_removed: usize,
    pub dangling_rows_removed: usize,
    pub scratch_files_removed: usize,
}

impl Hub {
    /// Open everything the configuration names (creating the embedded defaults on first
    /// start), run migrations, and clean up after a crash.
    // Start-up, before the hub serves: blocking here delays nobody.
    #[allow(clippy::disallowed_methods)]
    pub async fn open(config: HubConfig) -> Result<Arc<Hub>, HubError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| HubError::io(&config.data_dir, e))?;
        let catalogue = Catalogue::open(&config.database_url()).await?;
        let blobs: Arc<dyn BlobStore> = match &config.storage {
            StorageConfig::Local { path } => Arc::new(LocalStore::open(
                &path
                    .clone()
                    .unwrap_or_else(|| config.data_dir.join("objects")),
            )?),
            StorageConfig::S3(s3) => Arc::new(S3Store::open(s3, &config.data_dir.join("scratch"))?),
        };
        let uploads = Uploads::open(&config.uploads_dir())?;
        let keys = MasterKeys::load(&config.keys_dir())?;
        let audit_key = medfed_audit::load_or_create_key(&config.keys_dir().join("audit.key"))?;
        // Its verifying key is beside it, <keys>/audit.pub, for `medfed audit verify`.
        let audit = AuditWriter::spawn(AuditLog::open(
            &config.audit_log(),
            audit_key,
            config.audit.checkpoint_every,
        )?)?;
        let oidc = config
            .oidc
            .as_ref()
            .map(|o| jwks::validator(o).map(Arc::new))
            .transpose()?;
        let failures = api::FailureLimiter::new(&config.limits);
        let ca = tls::HubCa::load_or_create(&config.tls_dir())?;
        let server_trust_pem = match &config.tls.cert_file {
            Some(chain) => std::fs::read_to_string(chain).map_err(|e| HubError::io(chain, e))?,
            None => ca.cert_pem.clone(),
        };
        let hub = Arc::new(Hub {
            config,
            catalogue,
            blobs,
            uploads,
            keys,
            audit,
            oidc,
            failures,
            ca,
            server_trust_pem,
            site_events: watch::channel(0).0,
            runs: runs::Registry::default(),
            bulk: bulk::BulkPool::new().map_err(|e| HubError::Invalid(e.to_string()))?,
            failpoint: Failpoint::from_env(),
        });
        let h = hub.recover().await?;
        if h != Housekeeping::default() {
            tracing::warn!(?h, "recovered after an unclean stop");
        }
        Ok(hub)
    }

    pub(crate) fn failpoint(&self, at: Failpoint) {
        if self.failpoint == Some(at) {
            eprintln!("failpoint {at:?}: aborting");
            std::process::abort();
        }
    }

    /// The key that verifies this hub's audit log.
    pub fn audit_public_key(&self) -> ed25519_dalek::VerifyingKey {
        self.audit.verifying_key()
    }

    /// Append a record that the hub itself (not a request) produced.
    pub async fn audit_system(
        &self,
        action: &str,
        resource: &str,
        outcome: &str,
    ) -> Result<(), HubError> {
        self.audit
            .append(Event {
                actor: "hub".into(),
                on_behalf_of: None,
                action: action.into(),
                resource: resource.into(),
                outcome: outcome.into(),
            })
            .await?;
        Ok(())
    }

    /// Run a blocking blob-store operation off the async threads.
    pub(crate) async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn BlobStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, HubError> {
        let blobs = self.blobs.clone();
        tokio::task::spawn_blocking(move || f(blobs.as_ref()))
            .await
            .map_err(|e| HubError::Invalid(format!("blob task failed: {e}")))?
            .map_err(HubError::from)
    }

    /// After a crash: remove blobs that no catalogue row names (published but never committed,
    /// or left by an interrupted dataset deletion), rows whose blob is missing, and scratch files.
    pub async fn recover(&self) -> Result<Housekeeping, HubError> {
        let mut h = Housekeeping {
            scratch_files_removed: self.blocking(|b| b.clean_scratch()).await?,
            ..Default::default()
        };
        let known: std::collections::HashSet<String> = self
            .catalogue
            .all_dataset_ids()
            .await?
            .into_iter()
            .collect();
        for ds in self.blocking(|b| b.datasets()).await? {
            if !known.contains(ds.as_str()) {
                let d = ds.clone();
                h.orphan_blobs_removed += self.blocking(move |b| b.delete_dataset(&d)).await?;
                self.audit_system(
                    "recovery.remove-orphans",
                    &format!("dataset/{}", ds.as_str()),
                    "done",
                )
                .await?;
                continue;
            }
            let rows: std::collections::HashSet<String> = self
                .catalogue
                .object_ids(ds.as_str())
                .await?
                .into_iter()
                .collect();
            let d = ds.clone();
            let stored = self.blocking(move |b| b.list(&d)).await?;
            for o in &stored {
                if !rows.contains(o.as_str()) {
                    let key = ObjectKey {
                        dataset: ds.clone(),
                        object: o.clone(),
                    };
                    self.blocking(move |b| b.delete(&key)).await?;
                    h.orphan_blobs_removed += 1;
                    self.audit_system(
                        "recovery.remove-orphan",
                        &format!("dataset/{}/object/{}", ds.as_str(), o.as_str()),
                        "done",
                    )
                    .await?;
                }
            }
            let stored: std::collections::HashSet<&str> = stored.iter().map(Id::as_str).collect();
            for r in &rows {
                if !stored.contains(r.as_str()) {
                    self.catalogue.delete_object(ds.as_str(), r).await?;
                    h.dangling_rows_removed += 1;
                    tracing::error!(dataset = ds.as_str(), object = %r, "catalogue row without its blob removed");
                    self.audit_system(
                        "recovery.remove-dangling-row",
                        &format!("dataset/{}/object/{r}", ds.as_str()),
                        "done",
                    )
                    .await?;
                }
            }
        }
        Ok(h)
    }

    /// Remove a dataset completely: rows and wrapped data key first (one transaction: from
    /// then on the blobs are unreadable), then the blobs. Refused while on legal hold.
    pub async fn remove_dataset(&self, d: &Dataset) -> Result<usize, HubError> {
        if d.legal_hold {
            return Err(HubError::Invalid(format!(
                "dataset {} is on legal hold",
                d.id
            )));
        }
        self.catalogue.delete_dataset(&d.id).await?;
        let id = Id::parse("dataset", &d.id)?;
        self.blocking(move |b| b.delete_dataset(&id)).await
    }

    /// Remove datasets whose retention ended (legal holds excepted); each removal is audited.
    pub async fn sweep_expired(&self, now_ms: i64) -> Result<Housekeeping, HubError> {
        let mut h = Housekeeping::default();
        for d in self.catalogue.expired_datasets(now_ms).await? {
            self.remove_dataset(&d).await?;
            self.audit_system(
                "dataset.expire",
                &format!("study/{}/dataset/{}", d.study, d.id),
                "removed",
            )
            .await?;
            h.datasets_removed += 1;
        }
        Ok(h)
    }
}

/// A hub listening on an address.
pub struct RunningHub {
    pub addr: SocketAddr,
    pub hub: Arc<Hub>,
    /// The CA certificate clients should trust, when the hub generated its own.
    pub ca_pem: Option<PathBuf>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningHub {
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }
}

/// Async worker threads per core of the hub's runtime.
///
/// TLS records of uploads are decrypted on the async workers (inside hyper's connection
/// tasks), so with one worker per core a `/health` request can wait behind a worker that is
/// busy with an upload's body until its poll ends; with more workers than cores the
/// operating system preempts instead. On two cores under four 64 MB uploads, the p99 of
/// `/health` fell from 82 ms to 37 ms going from 2 to 8 workers (`bench/hub/health.sh`).
pub const WORKERS_PER_CORE: usize = 4;

/// The runtime `medfed hub serve` runs the hub on: [`WORKERS_PER_CORE`] workers per core.
pub fn server_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores * WORKERS_PER_CORE)
        .thread_name("medfed-hub")
        .enable_all()
        .build()
}

/// Open the hub and serve it over HTTPS (on the configured address; port 0 picks one).
pub async fn start(config: HubConfig) -> Result<RunningHub, HubError> {
    let hub = Hub::open(config).await?;
    let resumed = runs::resume_all(&hub).await?;
    if resumed > 0 {
        tracing::info!(resumed, "federated runs resumed");
    }
    let config = &hub.config;
    let (chain, key, ca_pem) = match (&config.tls.cert_file, &config.tls.key_file) {
        (Some(c), Some(k)) => {
            let (chain, key) = tls::load_pem(c, k)?;
            (chain, key, None)
        }
        (None, None) => {
            let g = tls::ensure_generated(&config.tls_dir(), &config.tls.names)?;
            let (chain, key) = tls::load_pem(&g.cert_pem, &g.key_pem)?;
            (chain, key, Some(g.ca_pem))
        }
        _ => {
            return Err(HubError::Invalid(
                "[tls] needs both cert_file and key_file, or neither".into(),
            ));
        }
    };
    let tls_cfg = tls::server_config(chain, key, Some(hub.ca.der()?))?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| HubError::io(Path::new(&config.listen.to_string()), e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| HubError::io(Path::new("listener"), e))?;
    let app = router(hub.clone());
    let (tx, rx) = watch::channel(false);
    // Host commands (`medfed hub issue-token`) while serving: the audit log has one writer.
    let host_socket = host::socket_path(&hub.config.data_dir);
    let host_commands = match host::bind(&hub.config.data_dir).await {
        Ok(l) => Some(tokio::spawn(host::serve(
            hub.clone(),
            l,
            host_socket,
            rx.clone(),
        ))),
        Err(e @ HubError::Invalid(_)) => return Err(e),
        Err(e) => {
            tracing::warn!(error = %e, "no host socket: host commands need the hub stopped");
            None
        }
    };
    let connection_limits = tls::ConnectionLimits::from_limits(&hub.config.limits);
    let sweeper = hub.clone();
    let mut sweep_stop = rx.clone();
    let task = tokio::spawn(async move {
        let lifecycle = tokio::spawn(async move {
            let every =
                std::time::Duration::from_secs(sweeper.config.lifecycle.sweep_interval_s.max(1));
            loop {
                match sweeper.sweep_expired(now_ms()).await {
                    Ok(h) if h.datasets_removed > 0 => {
                        tracing::info!(removed = h.datasets_removed, "expired datasets removed")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::error!(error = %e, "lifecycle sweep failed"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = sweep_stop.changed() => break,
                }
            }
        });
        tls::serve_with(listener, tls_cfg, app, connection_limits, rx).await;
        lifecycle.abort();
        // Stopped means the socket is gone too, so a restart on this data directory binds it.
        if let Some(h) = host_commands {
            let _ = h.await;
        }
    });
    Ok(RunningHub {
        addr,
        hub,
        ca_pem,
        shutdown: tx,
        task,
    })
}

/// `medfed hub bootstrap`: the first platform administrator and an API token for them (shown
/// once). Refused when an administrator exists already.
pub async fn bootstrap(
    config: &HubConfig,
    subject: &str,
    organisation: Option<&str>,
) -> Result<(String, String), HubError> {
    let hub = Hub::open(config.clone()).await?;
    if let Some(org) = organisation
        && !hub.catalogue.organisation_exists(org).await?
    {
        hub.catalogue.create_organisation(org, org).await?;
    }
    bootstrap_on(&hub, subject, organisation).await
}

/// [`bootstrap`] on an open hub.
pub async fn bootstrap_on(
    hub: &Hub,
    subject: &str,
    organisation: Option<&str>,
) -> Result<(String, String), HubError> {
    if hub.catalogue.count_platform_admins().await? > 0 {
        return Err(HubError::Invalid(
            "a platform administrator exists already; bootstrap runs once".into(),
        ));
    }
    let user = hub
        .catalogue
        .create_user(subject, organisation, true)
        .await?;
    let token = issue_token(hub, &user.id, 90).await?;
    hub.audit
        .append(Event {
            actor: "hub-cli".into(),
            on_behalf_of: None,
            action: "platform.bootstrap".into(),
            resource: format!("user/{}", user.id),
            outcome: "allowed".into(),
        })
        .await?;
    Ok((user.id, token))
}

/// Issue an API token for a user (stored hashed; the returned string is shown once).
pub async fn issue_token(hub: &Hub, user_id: &str, days: u64) -> Result<String, HubError> {
    if !(1..=365).contains(&days) {
        return Err(HubError::Invalid("days must be between 1 and 365".into()));
    }
    let expires = (now_ms() as u64) / 1000 + days * 86_400;
    let (token, stored) = medfed_auth::ApiTokens::issue(user_id, expires);
    hub.catalogue
        .store_token(&medfed_catalogue::TokenEntry {
            id: stored.id,
            user_id: user_id.to_string(),
            secret_sha256: stored.secret_sha256,
            expires_ms: (stored.expires_at * 1000) as i64,
            revoked: false,
        })
        .await?;
    Ok(token)
}
