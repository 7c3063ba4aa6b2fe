//! `medfed site serve`: the running site node. Three loops share one state:
//!
//! - the DICOM receiver fills the inbox (its own threads; it refuses with 0xA700 while the
//!   inbox quota or the disk reserve is reached, so nothing is lost);
//! - the link keeps one outbound connection to the hub: a long poll that doubles as the
//!   heartbeat (it carries the site's state), tasks in, task reports out, certificate renewal;
//!   after any failure it reconnects by itself with exponential backoff and full jitter;
//! - the harvest loop runs accepted harvest tasks over the inbox, retries what failed and sets
//!   aside (quarantine, with the reason) an instance that failed too often.
//!
//! Every task decision is made here with the site's policy alone and recorded in the site's
//! audit log before it is reported. Accepted tasks and pending reports are kept in
//! `<storage>/state/tasks.json` (written atomically), so a restart of either side resumes them;
//! `<storage>/state/status.json` is what `medfed site status` shows.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use medfed_audit::{AuditLog, Event};
use medfed_hub::client::{ClientError, HubClient};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::harvest::{HarvestError, Harvester};
use crate::identity::{IdentityError, SiteIdentity, write_atomically};
use crate::inbox::Inbox;
use crate::policy::{SitePolicy, WayOfWorking};
use crate::scp::Receiver;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Inbox(#[from] crate::inbox::InboxError),
    #[error(transparent)]
    Audit(#[from] medfed_audit::AuditError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A task as the site keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocalTask {
    pub id: String,
    pub study: String,
    pub kind: String,
    pub params: Value,
    /// awaiting-approval, running, done, failed, refused, cancelled
    pub status: String,
    pub detail: String,
    pub progress: Value,
    /// Whether the hub has been told the current status and progress.
    pub reported: bool,
}

impl LocalTask {
    fn is_final(&self) -> bool {
        matches!(
            self.status.as_str(),
            "done" | "failed" | "refused" | "cancelled"
        )
    }
}

/// One inbox instance that failed, for `medfed site status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemFailure {
    pub file: String,
    pub reason: String,
    pub attempts: u32,
}

/// What `status.json` says.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub site_id: String,
    pub hub_url: String,
    pub connected: bool,
    pub last_contact_ms: Option<i64>,
    pub hub_unreachable_since_ms: Option<i64>,
    pub hub_error: Option<String>,
    /// Why new DICOM is refused now (quota, disk reserve), if it is.
    pub intake_paused: Option<String>,
    /// Why harvesting waits now (hub unreachable, refused), if it does.
    pub harvest_paused: Option<String>,
    pub inbox_instances: usize,
    pub inbox_bytes: u64,
    pub inbox_quota_bytes: u64,
    pub sent: u64,
    pub already_on_hub: u64,
    pub failures: Vec<ItemFailure>,
    pub quarantined: Vec<ItemFailure>,
    pub tasks: Vec<LocalTask>,
    pub updated_ms: i64,
}

/// Knobs of the running node (defaults for production; tests shorten them).
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// How long one poll may wait at the hub.
    pub poll_wait_s: u64,
    /// How often the harvest loop looks at the inbox.
    pub harvest_every: Duration,
    /// Longest pause between reconnection attempts.
    pub max_backoff: Duration,
    /// Attempts before an instance that keeps failing is set aside.
    pub max_attempts: u32,
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            poll_wait_s: 25,
            harvest_every: Duration::from_secs(2),
            max_backoff: Duration::from_secs(30),
            max_attempts: 5,
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The wait before reconnection attempt `n` (0-based): exponential from 250 ms up to `max`,
/// drawn uniformly below that ("full jitter"), so sites that lost the hub together do not
/// come back together.
pub fn backoff(n: u32, max: Duration) -> Duration {
    let ceiling = Duration::from_millis(250)
        .saturating_mul(1u32 << n.min(16))
        .min(max);
    let ms = ceiling.as_millis().max(1) as u64;
    Duration::from_millis(rand::random_range(ms / 4..=ms))
}

/// A federated-learning task's spec against the study's rules here, before any data is read.
fn federated_check(sp: &crate::policy::StudyPolicy, params: &Value) -> Result<(), String> {
    let text = params["spec"]
        .as_str()
        .ok_or("a federated-learning task needs params.spec")?;
    if params["run"].as_str().is_none() {
        return Err("a federated-learning task needs params.run".into());
    }
    let spec = medfed_federated::spec::StudySpec::from_toml(text).map_err(|e| e.to_string())?;
    if spec.study != sp.id {
        return Err(format!(
            "the spec is for study {}, not {}",
            spec.study, sp.id
        ));
    }
    sp.check_run(&spec)
}

/// Which way of working a task kind asks for.
fn way_of(kind: &str) -> Option<WayOfWorking> {
    match kind {
        "harvest" => Some(WayOfWorking::Harvest),
        "features" => Some(WayOfWorking::Features),
        "federated-learning" => Some(WayOfWorking::FederatedLearning),
        _ => None,
    }
}

/// The registered tables' (size, mtime) stamps, and their descriptions made then.
type DescribedTables = (
    Vec<(u64, Option<std::time::SystemTime>)>,
    Vec<crate::tables::TableInfo>,
);

pub(crate) struct Shared {
    pub(crate) policy: SitePolicy,
    pub(crate) options: NodeOptions,
    inbox: Arc<Inbox>,
    audit: AuditLog,
    state_dir: PathBuf,
    pub(crate) tasks: Mutex<BTreeMap<String, LocalTask>>,
    status: Mutex<NodeStatus>,
    attempts: Mutex<BTreeMap<PathBuf, ItemFailure>>,
    pub(crate) client: Mutex<HubClient>,
    pub(crate) identity: Mutex<SiteIdentity>,
    /// The registered tables as last described, with the (size, mtime) of each file then.
    tables: Mutex<DescribedTables>,
    pub(crate) stop: Arc<AtomicBool>,
    /// Federated-learning tasks with a participant running in this process.
    participating: Mutex<std::collections::BTreeSet<String>>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn actor(&self) -> String {
        format!("site:{}", self.policy.organisation)
    }

    /// Record an event the site goes on with whether or not it could be recorded (a decision
    /// kept locally, a cancellation); a failure is logged. What leaves the site goes through
    /// [`Shared::audit_durably`] instead.
    pub(crate) fn audit(&self, action: &str, resource: String, outcome: &str) {
        if let Err(e) = self.append(action, resource, outcome) {
            tracing::error!(error = %e, "site audit append failed");
        }
    }

    /// Record, and sync to disk, what is about to leave the site. The caller sends nothing when
    /// this fails (fail closed): nothing leaves a site that its audit log does not hold.
    pub(crate) fn audit_durably(
        &self,
        action: &str,
        resource: String,
        outcome: &str,
    ) -> Result<(), medfed_audit::AuditError> {
        self.append(action, resource, outcome)?;
        self.audit.sync()
    }

    fn append(
        &self,
        action: &str,
        resource: String,
        outcome: &str,
    ) -> Result<(), medfed_audit::AuditError> {
        self.audit.append(Event {
            actor: self.actor(),
            on_behalf_of: None,
            action: action.into(),
            resource,
            outcome: outcome.into(),
        })?;
        Ok(())
    }

    /// How a record names an inbox file (`<original SOP Instance UID>.dcm`): by the
    /// de-identified UID the hub holds or would hold for it (HMAC under the site key). The
    /// original UID never goes into a record or a log: a plain hash of it would not do either,
    /// since anyone holding the original (the PACS, the modality) could hash it and find it.
    fn instance_resource(&self, file: &str) -> String {
        let uid = file.strip_suffix(".dcm").unwrap_or(file);
        match medfed_deid::SiteKey::load(&self.policy.storage.dir.join("site.key")) {
            Ok(key) => format!(
                "instance/{}",
                medfed_deid::Pseudonymizer::new(key).remap_uid(uid)
            ),
            Err(_) => "instance/(site key unreadable)".into(),
        }
    }

    fn tasks_file(&self) -> PathBuf {
        self.state_dir.join("tasks.json")
    }

    fn save_tasks(&self) {
        let tasks = lock(&self.tasks).clone();
        let path = self.tasks_file();
        let bytes = serde_json::to_vec_pretty(&tasks).unwrap_or_default();
        if let Err(e) = write_atomically(&path, &bytes, false) {
            tracing::error!(error = %e, path = %path.display(), "cannot save the task list");
        }
    }

    /// Change what a task says about itself (not its status); reported if it changed.
    fn set_task_detail(&self, id: &str, detail: &str) {
        let changed = match lock(&self.tasks).get_mut(id) {
            Some(t) if t.detail != detail => {
                t.detail = detail.into();
                t.reported = false;
                true
            }
            _ => false,
        };
        if changed {
            self.save_tasks();
        }
    }

    pub(crate) fn set_task(&self, id: &str, status: &str, detail: &str) {
        if let Some(t) = lock(&self.tasks).get_mut(id) {
            t.status = status.into();
            t.detail = detail.into();
            t.reported = false;
        }
        self.save_tasks();
    }

    /// Decide on a task the hub sent, with the site's policy alone; audited here first.
    fn decide(&self, t: &Value) {
        let (Some(id), Some(study), Some(kind)) =
            (t["id"].as_str(), t["study"].as_str(), t["kind"].as_str())
        else {
            return;
        };
        let resource = format!("study/{study}/task/{id}");
        let params = t["params"].clone();
        let (status, detail) = match way_of(kind) {
            None => ("refused", format!("unknown task kind {kind:?}")),
            Some(way) => match self.policy.allows(study, way) {
                Err(refusal) => ("refused", refusal.to_string()),
                Ok(sp) => match (way, self.policy.intake_study()) {
                    (WayOfWorking::Harvest, intake) if intake != Some(study) => (
                        "refused",
                        format!(
                            "this site's DICOM intake feeds {}, not study {study}",
                            intake.unwrap_or("no study")
                        ),
                    ),
                    (WayOfWorking::Harvest, _) if params["dataset"].as_str().is_none() => {
                        ("refused", "a harvest task needs params.dataset".into())
                    }
                    (WayOfWorking::Harvest, _) if self.harvest_running(study).is_some() => (
                        "refused",
                        format!(
                            "harvest task {} for this study is already running; cancel it first",
                            self.harvest_running(study).unwrap_or_default()
                        ),
                    ),
                    (WayOfWorking::Harvest, _) if sp.auto_approve.contains(&way) => {
                        ("running", String::new())
                    }
                    (WayOfWorking::Harvest, _) => (
                        "awaiting-approval",
                        "waiting for approval at the site (medfed site approve)".into(),
                    ),
                    (WayOfWorking::FederatedLearning, _) => match federated_check(sp, &params) {
                        Err(refusal) => ("refused", refusal),
                        Ok(()) if sp.auto_approve.contains(&way) => ("running", String::new()),
                        Ok(()) => (
                            "awaiting-approval",
                            "waiting for approval at the site (medfed site approve)".into(),
                        ),
                    },
                    _ => (
                        "failed",
                        format!(
                            "{kind} tasks are not supported by medfed {}",
                            env!("CARGO_PKG_VERSION")
                        ),
                    ),
                },
            },
        };
        let action = match status {
            "refused" => "task.refuse",
            "running" => "task.accept",
            "awaiting-approval" => "task.hold",
            _ => "task.fail",
        };
        // The decision is reported to the hub, so it is recorded first; if it cannot be, the
        // task is not taken in (the hub offers it again with the next poll).
        if let Err(e) = self.audit_durably(action, resource, &format!("{kind}: {detail}")) {
            tracing::error!(task = id, error = %e, "task not decided: the site's audit log cannot be written");
            return;
        }
        tracing::info!(task = id, study, kind, status, %detail, "task decided");
        lock(&self.tasks).insert(
            id.to_string(),
            LocalTask {
                id: id.into(),
                study: study.into(),
                kind: kind.into(),
                params,
                status: status.into(),
                detail,
                progress: json!({}),
                reported: false,
            },
        );
        self.save_tasks();
    }

    /// Start a participant for every running federated-learning task that has none (after
    /// approval, and after a restart of the node).
    fn start_participants(self: &Arc<Self>) {
        let due: Vec<LocalTask> = lock(&self.tasks)
            .values()
            .filter(|t| t.kind == "federated-learning" && t.status == "running")
            .filter(|t| !lock(&self.participating).contains(&t.id))
            .cloned()
            .collect();
        for t in due {
            lock(&self.participating).insert(t.id.clone());
            tokio::spawn(crate::participant::participate(self.clone(), t));
        }
    }

    /// The harvest task of `study` that is running or waiting for approval, if any: the inbox
    /// feeds one dataset at a time.
    fn harvest_running(&self, study: &str) -> Option<String> {
        lock(&self.tasks)
            .values()
            .find(|t| {
                t.kind == "harvest"
                    && t.study == study
                    && matches!(t.status.as_str(), "running" | "awaiting-approval")
            })
            .map(|t| t.id.clone())
    }

    /// Approvals and rejections a person left with `medfed site approve|reject`.
    fn apply_decisions(&self) {
        let dir = self.state_dir.join("decisions");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        for e in entries.filter_map(Result::ok) {
            let name = e.file_name().to_string_lossy().to_string();
            let Some((id, what)) = name.rsplit_once('.') else {
                continue;
            };
            let waiting = lock(&self.tasks)
                .get(id)
                .is_some_and(|t| t.status == "awaiting-approval");
            if waiting {
                let who = std::fs::read_to_string(e.path()).unwrap_or_default();
                let study = lock(&self.tasks)[id].study.clone();
                let resource = format!("study/{study}/task/{id}");
                let (action, status, detail) = match what {
                    "approve" => ("task.approve", "running", ""),
                    _ => ("task.reject", "refused", "rejected at the site"),
                };
                // Kept for the next look when it cannot be recorded.
                if let Err(e) = self.audit_durably(action, resource, who.trim()) {
                    tracing::error!(task = id, error = %e, "decision not applied: the site's audit log cannot be written");
                    continue;
                }
                self.set_task(id, status, detail);
            }
            let _ = std::fs::remove_file(e.path());
        }
    }

    fn write_status(&self) {
        let mut st = lock(&self.status).clone();
        st.inbox_instances = self.inbox.list().map(|l| l.len()).unwrap_or(0);
        st.inbox_bytes = self.inbox.used_bytes();
        st.inbox_quota_bytes = self.inbox.quota_bytes();
        st.intake_paused = self.inbox.paused();
        st.failures = lock(&self.attempts).values().cloned().collect();
        st.tasks = lock(&self.tasks).values().cloned().collect();
        st.updated_ms = now_ms();
        *lock(&self.status) = st.clone();
        let path = self.state_dir.join("status.json");
        let _ = write_atomically(
            &path,
            &serde_json::to_vec_pretty(&st).unwrap_or_default(),
            false,
        );
    }

    /// The registered tables' schemas and counts, described again only when a file changed.
    fn tables(&self) -> Vec<crate::tables::TableInfo> {
        let stamps: Vec<(u64, Option<std::time::SystemTime>)> = self
            .policy
            .tables
            .iter()
            .map(|t| std::fs::metadata(&t.path).map_or((0, None), |m| (m.len(), m.modified().ok())))
            .collect();
        let mut cached = lock(&self.tables);
        if cached.0 != stamps || cached.1.len() != self.policy.tables.len() {
            *cached = (stamps, crate::tables::describe(&self.policy));
        }
        cached.1.clone()
    }

    fn report_state(&self) -> Value {
        let st = lock(&self.status).clone();
        json!({
            "intake_paused": st.intake_paused,
            "harvest_paused": st.harvest_paused,
            "inbox_instances": st.inbox_instances,
            "sent": st.sent,
            "already_on_hub": st.already_on_hub,
            "failures": st.failures.len(),
            "quarantined": st.quarantined.len(),
            "running_tasks": lock(&self.tasks).values().filter(|t| t.status == "running").map(|t| t.id.clone()).collect::<Vec<_>>(),
            "tables": self.tables(),
        })
    }
}

/// The site node, ready to serve.
pub struct SiteNode {
    shared: Arc<Shared>,
    receiver: Option<Receiver>,
}

impl SiteNode {
    /// Open everything `policy` names; the site must be enrolled.
    pub fn open(policy: SitePolicy, options: NodeOptions) -> Result<SiteNode, NodeError> {
        let dir = policy.storage.dir.clone();
        let identity = SiteIdentity::load(&dir)?;
        let client = identity.client()?;
        let inbox = Arc::new(Inbox::with_reserve(
            &policy.inbox_dir(),
            policy.storage.inbox_quota_bytes,
            policy.storage.min_free_disk_bytes,
        )?);
        let key = medfed_audit::load_or_create_key(&dir.join("audit.key"))?;
        let audit = AuditLog::open(&dir.join("site.audit.jsonl"), key, 100)?;
        let state_dir = dir.join("state");
        std::fs::create_dir_all(state_dir.join("decisions")).map_err(|source| NodeError::Io {
            path: state_dir.clone(),
            source,
        })?;
        let tasks: BTreeMap<String, LocalTask> = std::fs::read(state_dir.join("tasks.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let status = NodeStatus {
            site_id: identity.enrolled.site_id.clone(),
            hub_url: identity.enrolled.hub_url.clone(),
            ..Default::default()
        };
        let receiver = if policy.dicom.allowed_calling_ae_titles.is_empty() {
            None
        } else {
            Some(
                Receiver::bind(
                    policy.dicom.bind,
                    &policy.dicom.ae_title,
                    &policy.dicom.allowed_calling_ae_titles,
                )
                .map_err(|source| NodeError::Io {
                    path: PathBuf::from(policy.dicom.bind.to_string()),
                    source,
                })?,
            )
        };
        Ok(SiteNode {
            shared: Arc::new(Shared {
                policy,
                options,
                inbox,
                audit,
                state_dir,
                tasks: Mutex::new(tasks),
                status: Mutex::new(status),
                attempts: Mutex::new(BTreeMap::new()),
                client: Mutex::new(client),
                identity: Mutex::new(identity),
                tables: Mutex::new((Vec::new(), Vec::new())),
                stop: Arc::new(AtomicBool::new(false)),
                participating: Mutex::new(Default::default()),
            }),
            receiver,
        })
    }

    /// Where the DICOM receiver listens (None when no calling AE title is allowed).
    pub fn dicom_addr(&self) -> Option<std::net::SocketAddr> {
        self.receiver.as_ref().and_then(|r| r.local_addr().ok())
    }

    /// A flag that stops the node when set.
    pub fn stopper(&self) -> Arc<AtomicBool> {
        self.shared.stop.clone()
    }

    /// Run until the stop flag is set.
    pub async fn serve(mut self) -> Result<(), NodeError> {
        let s = self.shared.clone();
        let receiver = self.receiver.take().map(|r| {
            let (inbox, stop) = (s.inbox.clone(), s.stop.clone());
            std::thread::spawn(move || r.run(inbox, stop))
        });
        s.write_status();
        let link = tokio::spawn(link_loop(s.clone()));
        let harvest = tokio::spawn(harvest_loop(s.clone()));
        while !s.stop.load(Ordering::Relaxed) {
            s.apply_decisions();
            s.start_participants();
            s.write_status();
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        link.abort();
        harvest.abort();
        if let Some(r) = receiver {
            let _ = tokio::task::spawn_blocking(move || r.join()).await;
        }
        s.write_status();
        Ok(())
    }
}

/// Run blocking work (de-identification, table reads, training, fsyncs) from async code
/// without stalling the node's other tasks: on a multi-threaded runtime the worker hands its
/// queue to another thread first (`block_in_place`), so the link's heartbeat keeps its beat.
/// On a current-thread runtime (some tests) there is nobody to hand over to: it runs inline.
pub(crate) fn off_worker<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

fn is_refusal(e: &ClientError) -> bool {
    matches!(e, ClientError::Status { status, .. } if status.as_u16() == 401 || status.as_u16() == 403)
}

/// Tell the hub what changed (task decisions, progress); false if the hub could not be told.
async fn flush_reports(s: &Shared, client: &HubClient) -> Result<(), ClientError> {
    let pending: Vec<LocalTask> = lock(&s.tasks)
        .values()
        .filter(|t| !t.reported)
        .cloned()
        .collect();
    for t in pending {
        let status = if t.status == "cancelled" {
            None
        } else {
            Some(t.status.clone())
        };
        if let Some(status) = status {
            let r = client
                .call(
                    reqwest::Method::POST,
                    &format!("/api/v1/site/tasks/{}", t.id),
                    Some(json!({"status": status, "detail": t.detail, "progress": t.progress})),
                )
                .await;
            match r {
                Ok(_) => {}
                // The hub finished or cancelled it meanwhile: nothing more to say.
                Err(ClientError::Status { status, .. })
                    if status.as_u16() == 409 || status.as_u16() == 404 => {}
                Err(e) => return Err(e),
            }
        }
        if let Some(x) = lock(&s.tasks).get_mut(&t.id)
            && x.status == t.status
            && x.progress == t.progress
        {
            x.reported = true;
        }
    }
    // Finished and reported tasks need not be kept.
    lock(&s.tasks).retain(|_, t| !(t.is_final() && t.reported));
    s.save_tasks();
    Ok(())
}

async fn link_loop(s: Arc<Shared>) {
    let mut failures = 0u32;
    while !s.stop.load(Ordering::Relaxed) {
        let client = lock(&s.client).clone();
        match link_round(&s, &client).await {
            Ok(()) => {
                failures = 0;
                let mut st = lock(&s.status);
                st.connected = true;
                st.last_contact_ms = Some(now_ms());
                st.hub_unreachable_since_ms = None;
                st.hub_error = None;
            }
            Err(e) => {
                let refused = is_refusal(&e);
                {
                    let mut st = lock(&s.status);
                    st.connected = false;
                    st.hub_unreachable_since_ms.get_or_insert(now_ms());
                    st.hub_error = Some(if refused {
                        format!(
                            "the hub refused this site's certificate (revoked or expired?): {e}"
                        )
                    } else {
                        format!("hub unreachable: {e}")
                    });
                }
                if failures == 0 {
                    tracing::warn!(error = %e, refused, "link to the hub lost; reconnecting with backoff");
                    if refused {
                        s.audit("link.refused", "hub".into(), &e.to_string());
                    }
                }
                let wait = backoff(failures, s.options.max_backoff);
                failures = failures.saturating_add(1);
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// One exchange with the hub: renew the certificate if due, send pending reports, poll.
async fn link_round(s: &Arc<Shared>, client: &HubClient) -> Result<(), ClientError> {
    let due = lock(&s.identity).renewal_due();
    if due {
        let mut identity = SiteIdentity::load(&s.policy.storage.dir)
            .map_err(|e| ClientError::Tls(e.to_string()))?;
        match identity.renew(client).await {
            Ok(()) => {
                s.audit(
                    "certificate.renew",
                    format!("site/{}", identity.enrolled.site_id),
                    "renewed",
                );
                let next = identity
                    .client()
                    .map_err(|e| ClientError::Tls(e.to_string()))?;
                *lock(&s.client) = next;
                *lock(&s.identity) = identity;
                return Ok(());
            }
            Err(IdentityError::Hub(e)) => return Err(e),
            Err(e) => return Err(ClientError::Tls(e.to_string())),
        }
    }
    flush_reports(s, client).await?;
    s.write_status();
    // Come back in time to renew the certificate (a third of its lifetime before expiry).
    let wait_s = lock(&s.identity)
        .seconds_until_renewal()
        .clamp(1, s.options.poll_wait_s.max(1));
    let known: Vec<String> = lock(&s.tasks)
        .values()
        .filter(|t| !t.is_final())
        .map(|t| t.id.clone())
        .collect();
    let answer = client
        .call(
            reqwest::Method::POST,
            "/api/v1/site/poll",
            Some(json!({
                "version": env!("CARGO_PKG_VERSION"),
                "state": s.report_state(),
                "known": known,
                "wait_s": wait_s,
            })),
        )
        .await?;
    {
        let mut st = lock(&s.status);
        st.connected = true;
        st.last_contact_ms = Some(now_ms());
    }
    for id in answer["cancelled"].as_array().into_iter().flatten() {
        let Some(id) = id.as_str() else { continue };
        let study = lock(&s.tasks).get(id).map(|t| t.study.clone());
        if let Some(study) = study {
            s.audit(
                "task.cancel",
                format!("study/{study}/task/{id}"),
                "cancelled by the hub",
            );
            if let Some(t) = lock(&s.tasks).get_mut(id) {
                t.status = "cancelled".into();
                t.reported = true;
            }
        }
    }
    for t in answer["tasks"].as_array().into_iter().flatten() {
        s.decide(t);
    }
    flush_reports(s, client).await
}

async fn harvest_loop(s: Arc<Shared>) {
    let site_key = s.policy.storage.dir.join("site.key");
    let mut failures = 0u32;
    while !s.stop.load(Ordering::Relaxed) {
        let running: Vec<LocalTask> = lock(&s.tasks)
            .values()
            .filter(|t| t.kind == "harvest" && t.status == "running")
            .cloned()
            .collect();
        let mut wait = s.options.harvest_every;
        for t in running {
            let has_work = s.inbox.list().map(|l| !l.is_empty()).unwrap_or(false);
            if !has_work {
                continue;
            }
            let dataset = t.params["dataset"].as_str().unwrap_or_default().to_string();
            let client = lock(&s.client).clone();
            let harvester = Harvester {
                policy: &s.policy,
                study: &t.study,
                dataset: &dataset,
                inbox: &s.inbox,
                hub: &client,
                site_key: &site_key,
                audit: &s.audit,
            };
            match harvester.run_once().await {
                Ok(r) => {
                    failures = 0;
                    // More may have arrived while this pass ran: look again at once.
                    if r.sent + r.already_there > 0 {
                        wait = Duration::from_millis(20);
                    }
                    if t.detail.starts_with("site audit log unwritable") {
                        s.set_task_detail(&t.id, "");
                    }
                    record_pass(&s, &t.id, &r);
                }
                Err(HarvestError::Hub(e)) => {
                    lock(&s.status).harvest_paused =
                        Some(format!("waiting for the hub (will retry): {e}"));
                    wait = backoff(failures, s.options.max_backoff);
                    failures = failures.saturating_add(1);
                }
                Err(HarvestError::Audit(e)) => {
                    // Nothing was sent that the log does not hold; the inbox keeps the rest.
                    // The task stays running and says why it sends nothing.
                    let why = format!(
                        "site audit log unwritable, nothing is sent until it can be written: {e}"
                    );
                    if failures == 0 {
                        tracing::error!(task = %t.id, error = %e, "harvest stopped: the site's audit log cannot be written");
                    }
                    lock(&s.status).harvest_paused = Some(why.clone());
                    s.set_task_detail(&t.id, &why);
                    wait = backoff(failures, s.options.max_backoff);
                    failures = failures.saturating_add(1);
                }
                Err(e) => {
                    lock(&s.status).harvest_paused = Some(e.to_string());
                    wait = backoff(failures, s.options.max_backoff);
                    failures = failures.saturating_add(1);
                }
            }
        }
        tokio::time::sleep(wait).await;
    }
}

/// Count what a pass did, retry bookkeeping for what failed, quarantine what failed too often.
fn record_pass(s: &Shared, task: &str, r: &crate::harvest::HarvestReport) {
    {
        let mut st = lock(&s.status);
        st.harvest_paused = None;
        st.sent += r.sent as u64;
        st.already_on_hub += r.already_there as u64;
    }
    let mut quarantine = Vec::new();
    {
        let mut attempts = lock(&s.attempts);
        let failed: std::collections::HashSet<&PathBuf> = r.failed.iter().map(|(p, _)| p).collect();
        attempts.retain(|p, _| failed.contains(p));
        for (path, why) in &r.failed {
            let a = attempts.entry(path.clone()).or_insert_with(|| ItemFailure {
                file: path
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into(),
                reason: String::new(),
                attempts: 0,
            });
            a.attempts += 1;
            a.reason = why.clone();
            if a.attempts >= s.options.max_attempts {
                quarantine.push((path.clone(), a.clone()));
            }
        }
        for (p, _) in &quarantine {
            attempts.remove(p);
        }
    }
    for (path, f) in quarantine {
        let dir = s.policy.storage.dir.join("quarantine");
        let _ = std::fs::create_dir_all(&dir);
        let dest = dir.join(&f.file);
        if s.inbox.move_out(&path, &dest).is_ok() {
            let _ = std::fs::write(dir.join(format!("{}.reason.txt", f.file)), &f.reason);
            s.audit(
                "harvest.quarantine",
                s.instance_resource(&f.file),
                &format!("after {} attempts: {}", f.attempts, f.reason),
            );
            lock(&s.status).quarantined.push(f);
        }
    }
    let st = lock(&s.status).clone();
    if let Some(t) = lock(&s.tasks).get_mut(task) {
        let progress = json!({
            "sent": st.sent,
            "already_on_hub": st.already_on_hub,
            "failed": r.failed.len(),
            "quarantined": st.quarantined.len(),
        });
        if t.progress != progress {
            t.progress = progress;
            t.reported = false;
        }
    }
    s.save_tasks();
}

/// Leave a person's decision on a task waiting for approval, for the running node to apply.
pub fn leave_decision(
    storage_dir: &Path,
    task: &str,
    approve: bool,
    who: &str,
) -> Result<(), NodeError> {
    if task.is_empty() || !task.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(NodeError::Io {
            path: PathBuf::from(task),
            source: std::io::Error::other("not a task id"),
        });
    }
    let dir = storage_dir.join("state").join("decisions");
    std::fs::create_dir_all(&dir).map_err(|source| NodeError::Io {
        path: dir.clone(),
        source,
    })?;
    let path = dir.join(format!(
        "{task}.{}",
        if approve { "approve" } else { "reject" }
    ));
    write_atomically(&path, who.as_bytes(), false).map_err(|source| NodeError::Io { path, source })
}

/// What `status.json` says now.
pub fn read_status(storage_dir: &Path) -> Option<NodeStatus> {
    let bytes = std::fs::read(storage_dir.join("state").join("status.json")).ok()?;
    serde_json::from_slice(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_ceiling_and_is_jittered() {
        let max = Duration::from_secs(30);
        for n in 0..40 {
            let d = backoff(n, max);
            assert!(d <= max, "{n}: {d:?}");
            let ceiling = Duration::from_millis(250)
                .saturating_mul(1 << n.min(16))
                .min(max);
            assert!(d >= ceiling / 4 - Duration::from_millis(1), "{n}: {d:?}");
        }
        let draws: std::collections::HashSet<_> = (0..50).map(|_| backoff(10, max)).collect();
        assert!(draws.len() > 10, "jitter: {draws:?}");
    }

    #[test]
    fn a_decision_file_needs_a_task_id() {
        let d = tempfile::tempdir().unwrap();
        assert!(leave_decision(d.path(), "../x", true, "me").is_err());
        leave_decision(d.path(), "abc-1", true, "me").unwrap();
        assert!(d.path().join("state/decisions/abc-1.approve").is_file());
    }
}
