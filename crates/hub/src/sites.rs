//! Site nodes on the hub: enrolment with a one-time token (the hub's CA signs the site's
//! certificate request), authentication of sites by their client certificate (mutual TLS, a
//! revoked site is refused on its next request and its pending poll is woken to be refused),
//! the long poll through which a site receives its tasks and reports its state, task reports,
//! certificate renewal, and the study-side routes that enrol sites, hand them tasks and show
//! each site's state.
//!
//! The hub only proposes: a site checks every task against its own policy and may refuse it.
//! Refusals, failures and completions reported by a site are recorded in the hub's audit log.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use medfed_audit::Event;
use medfed_catalogue::{Enrolment, Site, SiteCertificate, Task, now_ms};
use medfed_policy::{Action, Grant, Principal, Resource, StudyRole};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::Hub;
use crate::api::{
    ApiError, ApiResult, AuditNote, Caller, JsonBody, PageQuery, paged, peek, require, safe_token,
    study_for, study_resource,
};
use crate::tls::PeerAddr;

pub fn routes() -> Router<Arc<Hub>> {
    Router::new()
        .route("/api/v1/enrol/trust", get(server_trust))
        .route("/api/v1/enrol", post(enrol))
        .route("/api/v1/site/poll", post(poll))
        .route("/api/v1/site/renew", post(renew))
        .route("/api/v1/site/tasks/{task}", post(report_task))
        .route("/api/v1/studies/{study}/enrolments", post(create_enrolment))
        .route("/api/v1/studies/{study}/sites", get(study_sites))
        .route(
            "/api/v1/studies/{study}/tasks",
            get(list_tasks).post(create_task),
        )
        .route(
            "/api/v1/studies/{study}/tasks/{task}",
            axum::routing::delete(cancel_task),
        )
        .route("/api/v1/sites", get(all_sites))
        .route("/api/v1/sites/{site}/revoke", post(revoke_site))
}

/// The prefix of enrolment tokens (version 1).
pub const ENROLMENT_PREFIX: &str = "mfe1";

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

impl Hub {
    /// Wake pending site polls: a task or a site's standing changed.
    pub(crate) fn sites_changed(&self) {
        self.site_events.send_modify(|n| *n += 1);
    }

    async fn audit_site(
        &self,
        site: &str,
        action: &str,
        resource: String,
        outcome: &str,
    ) -> ApiResult<()> {
        self.audit
            .append(Event {
                actor: format!("site:{site}"),
                on_behalf_of: None,
                action: action.into(),
                resource,
                outcome: outcome.into(),
            })
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "audit append failed");
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "audit log unavailable")
            })?;
        Ok(())
    }
}

/// The caller behind a verified client certificate: a site acting as site operator of its
/// organisation in every study that organisation takes part in. Unknown or revoked: 401.
pub(crate) async fn site_caller(
    hub: &Arc<Hub>,
    fingerprint: &str,
    note: AuditNote,
) -> ApiResult<Caller> {
    let Some((site, not_after_ms)) = hub.catalogue.site_by_certificate(fingerprint).await? else {
        note.actor("unknown-certificate".into());
        return Err(ApiError::unauthorized());
    };
    note.actor(format!("site:{}", site.id));
    if site.revoked_ms.is_some() || not_after_ms <= now_ms() {
        tracing::info!(site = %site.id, "site refused: revoked or certificate expired");
        return Err(ApiError::unauthorized());
    }
    let user = hub.catalogue.user(&site.user_id).await?;
    let grants = hub
        .catalogue
        .studies_of_organisation(&site.organisation)
        .await?
        .into_iter()
        .map(|study| Grant {
            study,
            role: StudyRole::SiteOperator,
        })
        .collect();
    let principal = Principal {
        id: user.id.clone(),
        organisation: Some(site.organisation.clone()),
        platform_admin: false,
        grants,
    };
    Ok(Caller {
        user,
        principal,
        note,
        site: Some(site),
    })
}

fn site_of(c: &Caller) -> ApiResult<&Site> {
    c.site.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "only enrolled site nodes (mutual TLS)",
        )
    })
}

/// How the hub shows a site. Its registered tables are study metadata: within a study only
/// that study's are shown, and platform administration (no study) sees none.
fn site_view(hub: &Hub, s: &Site, study: Option<&str>) -> Value {
    let mut state = s.state.clone();
    match (study, state.as_object_mut()) {
        (Some(study), Some(o)) => {
            if let Some(list) = o.get_mut("tables").and_then(Value::as_array_mut) {
                list.retain(|t| t["study"] == study);
            }
        }
        (None, Some(o)) => {
            o.remove("tables");
        }
        _ => {}
    }
    let online = s.revoked_ms.is_none()
        && s.last_seen_ms
            .is_some_and(|t| now_ms() - t <= hub.config.sites.online_within_s as i64 * 1000);
    json!({
        "id": s.id,
        "organisation": s.organisation,
        "name": s.name,
        "online": online,
        "revoked": s.revoked_ms.is_some(),
        "enrolled_ms": s.enrolled_ms,
        "last_seen_ms": s.last_seen_ms,
        "version": s.version,
        "state": state,
    })
}

// ---------------------------------------------------------------- enrolment

/// The certificate(s) an enrolling site should trust for the hub; the site checks them against
/// the fingerprint in its enrolment token before it trusts anything.
async fn server_trust(State(hub): State<Arc<Hub>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/x-pem-file")],
        hub.server_trust_pem.clone(),
    )
}

/// A study the caller coordinates (ManageStudy), or the policy's answer.
pub(crate) async fn managed_study(
    hub: &Hub,
    c: &Caller,
    study: &str,
) -> ApiResult<medfed_catalogue::Study> {
    require(
        &c.principal,
        Action::ManageStudy,
        &study_resource(c, study).await,
    )?;
    hub.catalogue
        .study(study)
        .await?
        .ok_or_else(ApiError::not_found)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewEnrolment {
    organisation: String,
    /// Seconds the token may be used in; at most the configured validity.
    valid_s: Option<u64>,
}

async fn create_enrolment(
    State(hub): State<Arc<Hub>>,
    c: Caller,
    Path(study): Path<String>,
    JsonBody(b): JsonBody<NewEnrolment>,
) -> ApiResult<impl IntoResponse> {
    let s = managed_study(&hub, &c, &study).await?;
    if !s.organisations.contains(&b.organisation) {
        return Err(ApiError::invalid(
            "the organisation does not take part in this study",
        ));
    }
    let id = hex::encode(rand::random::<[u8; 8]>());
    let secret = hex::encode(rand::random::<[u8; 32]>());
    let valid = b
        .valid_s
        .unwrap_or(hub.config.sites.enrolment_valid_s)
        .min(hub.config.sites.enrolment_valid_s);
    let expires_ms = now_ms() + valid as i64 * 1000;
    hub.catalogue
        .create_enrolment(&Enrolment {
            id: id.clone(),
            study: study.clone(),
            organisation: b.organisation.clone(),
            secret_sha256: sha256_hex(secret.as_bytes()),
            expires_ms,
            created_by: c.user.id.clone(),
            used_ms: None,
        })
        .await?;
    c.note
        .resource(format!("study/{}/enrolment/{id}", safe_token(&study)));
    // The token carries the fingerprint of what the site must trust, so the first connection
    // needs no certificate installed by hand and cannot be intercepted.
    let token = format!(
        "{ENROLMENT_PREFIX}.{id}.{secret}.{}",
        sha256_hex(hub.server_trust_pem.as_bytes())
    );
    Ok((
        StatusCode::CREATED,
        Json(json!({"token": token, "organisation": b.organisation, "expires_ms": expires_ms})),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnrolRequest {
    token: String,
    csr_pem: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    version: String,
}

async fn enrol(
    State(hub): State<Arc<Hub>>,
    note: Option<axum::Extension<AuditNote>>,
    peer: Option<axum::Extension<PeerAddr>>,
    JsonBody(b): JsonBody<EnrolRequest>,
) -> ApiResult<impl IntoResponse> {
    let note = note.map(|n| n.0).unwrap_or_default();
    let mut parts = b.token.split('.');
    let (Some(ENROLMENT_PREFIX), Some(id), Some(secret)) =
        (parts.next(), parts.next(), parts.next())
    else {
        return Err(ApiError::unauthorized());
    };
    let id = safe_token(id).to_string();
    note.actor(format!("enrolment:{id}"));
    // Failures count per address and per presented token, not per enrolment id, so bad
    // secrets sent with a real id cannot lock that site's enrolment out.
    let address = peer.map(|p| p.0.0.ip().to_string()).unwrap_or_default();
    let admitted = match hub
        .failures
        .admit(&address, &crate::api::credential_key(&b.token))
        .await
    {
        Ok(a) => a,
        Err(wait) => {
            let mut e = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too many failed enrolments");
            e.retry_after = Some(wait);
            return Err(e);
        }
    };
    let e = hub.catalogue.enrolment(&id).await?;
    let valid = e.as_ref().is_some_and(|e| {
        use subtle::ConstantTimeEq;
        e.used_ms.is_none()
            && e.expires_ms > now_ms()
            && bool::from(
                sha256_hex(secret.as_bytes())
                    .as_bytes()
                    .ct_eq(e.secret_sha256.as_bytes()),
            )
    });
    let Some(e) = e.filter(|_| valid) else {
        admitted.failed();
        return Err(ApiError::unauthorized());
    };
    drop(admitted);
    let site_id = uuid::Uuid::new_v4().simple().to_string();
    let lifetime = Duration::from_secs(hub.config.sites.certificate_lifetime_s.max(10));
    let cert = hub
        .ca
        .sign_site(&b.csr_pem, &site_id, lifetime)
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    let name: String = b
        .name
        .chars()
        .filter(|c| !c.is_control())
        .take(100)
        .collect();
    let site = Site {
        id: site_id.clone(),
        organisation: e.organisation.clone(),
        user_id: uuid::Uuid::new_v4().simple().to_string(),
        name,
        enrolled_ms: now_ms(),
        revoked_ms: None,
        last_seen_ms: None,
        version: b.version.chars().take(40).collect(),
        state: json!({}),
    };
    hub.catalogue
        .redeem_enrolment(
            &id,
            &site,
            &SiteCertificate {
                fingerprint: cert.fingerprint.clone(),
                site_id: site_id.clone(),
                serial: cert.serial.clone(),
                not_after_ms: cert.not_after_ms,
            },
        )
        .await
        .map_err(|_| ApiError::unauthorized())?;
    note.resource(format!("site/{site_id}"));
    hub.audit_site(
        &site_id,
        "site.enrol",
        format!("study/{}/site/{site_id}", e.study),
        &format!("enrolled for organisation {}", e.organisation),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "site_id": site_id,
            "organisation": e.organisation,
            "certificate_pem": cert.pem,
            "certificate_not_after_ms": cert.not_after_ms,
            "server_trust_pem": hub.server_trust_pem,
        })),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RenewRequest {
    csr_pem: String,
}

/// A new certificate for the calling site (its current one still valid until it expires).
async fn renew(
    State(hub): State<Arc<Hub>>,
    c: Caller,
    JsonBody(b): JsonBody<RenewRequest>,
) -> ApiResult<Json<Value>> {
    let site = site_of(&c)?;
    let lifetime = Duration::from_secs(hub.config.sites.certificate_lifetime_s.max(10));
    let cert = hub
        .ca
        .sign_site(&b.csr_pem, &site.id, lifetime)
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    hub.catalogue
        .add_site_certificate(&SiteCertificate {
            fingerprint: cert.fingerprint.clone(),
            site_id: site.id.clone(),
            serial: cert.serial.clone(),
            not_after_ms: cert.not_after_ms,
        })
        .await?;
    c.note.resource(format!("site/{}", site.id));
    hub.audit_site(
        &site.id,
        "site.certificate.renew",
        format!("site/{}/certificate/{}", site.id, cert.serial),
        "issued",
    )
    .await?;
    Ok(Json(json!({
        "certificate_pem": cert.pem,
        "certificate_not_after_ms": cert.not_after_ms,
    })))
}

// ---------------------------------------------------------------- the site link

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PollRequest {
    #[serde(default)]
    version: String,
    /// What the site reports about itself (queues, pauses, running tasks); shown on the hub.
    #[serde(default)]
    state: Value,
    /// Ids of the tasks the site holds and has not finished.
    #[serde(default)]
    known: Vec<String>,
    /// Seconds to wait for a task (capped by the hub's configuration).
    #[serde(default)]
    wait_s: u64,
}

/// The long poll: doubles as the heartbeat. Answers at once when there is a task the site does
/// not know or a known task was cancelled; otherwise when one appears or the wait ends.
async fn poll(
    State(hub): State<Arc<Hub>>,
    c: Caller,
    JsonBody(b): JsonBody<PollRequest>,
) -> ApiResult<Json<Value>> {
    let site = site_of(&c)?.clone();
    c.note.resource(format!("site/{}", site.id));
    let version: String = b.version.chars().take(40).collect();
    hub.catalogue
        .site_seen(&site.id, &version, &b.state)
        .await?;
    let wait = Duration::from_secs(b.wait_s.min(hub.config.sites.poll_wait_s));
    let deadline = Instant::now() + wait;
    let mut events = hub.site_events.subscribe();
    loop {
        events.borrow_and_update();
        let current = hub
            .catalogue
            .site(&site.id)
            .await?
            .ok_or_else(ApiError::unauthorized)?;
        if current.revoked_ms.is_some() {
            return Err(ApiError::unauthorized());
        }
        let open = hub.catalogue.open_tasks_of_site(&site.id).await?;
        let new: Vec<&Task> = open.iter().filter(|t| !b.known.contains(&t.id)).collect();
        let cancelled: Vec<&String> = b
            .known
            .iter()
            .filter(|k| !open.iter().any(|t| &t.id == *k))
            .collect();
        let now = Instant::now();
        if !new.is_empty() || !cancelled.is_empty() || now >= deadline {
            for t in new.iter().filter(|t| t.status == "queued") {
                hub.catalogue
                    .update_task(&t.id, "delivered", "", &t.progress)
                    .await?;
            }
            return Ok(Json(json!({
                "site_id": site.id,
                "tasks": new,
                "cancelled": cancelled,
            })));
        }
        tokio::select! {
            _ = events.changed() => {}
            _ = tokio::time::sleep(deadline - now) => {}
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskReport {
    status: String,
    #[serde(default)]
    detail: String,
    #[serde(default)]
    progress: Value,
}

/// A site reports on one of its tasks. Refusals, failures and completions are audited here as
/// the site's own acts, besides the request record.
async fn report_task(
    State(hub): State<Arc<Hub>>,
    c: Caller,
    Path(task): Path<String>,
    JsonBody(b): JsonBody<TaskReport>,
) -> ApiResult<StatusCode> {
    let site = site_of(&c)?;
    let t = hub
        .catalogue
        .task(&task)
        .await?
        .filter(|t| t.site_id == site.id)
        .ok_or_else(ApiError::not_found)?;
    c.note.resource(format!("study/{}/task/{}", t.study, t.id));
    if !matches!(
        b.status.as_str(),
        "awaiting-approval" | "running" | "done" | "failed" | "refused"
    ) {
        return Err(ApiError::invalid(
            "status must be awaiting-approval, running, done, failed or refused",
        ));
    }
    let detail: String = b
        .detail
        .chars()
        .filter(|c| !c.is_control())
        .take(300)
        .collect();
    if !hub
        .catalogue
        .update_task(&t.id, &b.status, &detail, &b.progress)
        .await?
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "the task is finished or cancelled",
        ));
    }
    if medfed_catalogue::task_is_final(&b.status) || b.status == "running" && t.status != "running"
    {
        hub.audit_site(
            &site.id,
            &format!("site.task.{}", b.status),
            format!("study/{}/task/{}", t.study, t.id),
            format!("{} {}", t.kind, detail).trim(),
        )
        .await?;
    }
    let left = matches!(b.status.as_str(), "failed" | "refused");
    if let (true, "federated-learning", Some(run)) =
        (left, t.kind.as_str(), t.params["run"].as_str())
    {
        crate::runs::site_left(&hub, run, &site.id, &format!("{}: {detail}", b.status));
    }
    hub.sites_changed();
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------- study and platform routes

async fn study_sites(
    State(hub): State<Arc<Hub>>,
    c: Caller,
    Path(study): Path<String>,
    Query(p): Query<PageQuery>,
) -> ApiResult<Json<Value>> {
    let s = study_for(&hub, &c, &study).await?;
    let page = p.page(&hub.config.limits)?;
    let sites = hub
        .catalogue
        .list_sites(Some(&s.organisations), peek(page))
        .await?;
    Ok(paged(
        sites
            .iter()
            .map(|x| site_view(&hub, x, Some(&study)))
            .collect(),
        page,
    ))
}

async fn all_sites(
    State(hub): State<Arc<Hub>>,
    c: Caller,
    Query(p): Query<PageQuery>,
) -> ApiResult<Json<Value>> {
    require(
        &c.principal,
        Action::AdministerPlatform,
        &Resource::Platform,
    )?;
    let page = p.page(&hub.config.limits)?;
    let sites = hub.catalogue.list_sites(None, peek(page)).await?;
    Ok(paged(
        sites.iter().map(|x| site_view(&hub, x, None)).collect(),
        page,
    ))
}

/// Cut a site off at once: every later request with its certificates is refused, and its
/// pending poll is woken to be refused.
async fn revoke_site(
    State(hub): State<Arc<Hub>>,
    c: Caller,
    Path(site): Path<String>,
) -> ApiResult<StatusCode> {
    require(
        &c.principal,
        Action::AdministerPlatform,
        &Resource::Platform,
    )?;
    c.note.resource(format!("site/{}", safe_token(&site)));
    if hub.catalogue.site(&site).await?.is_none() {
        return Err(ApiError::not_found());
    }
    if !hub.catalogue.revoke_site(&site).await? {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "the site is revoked already",
        ));
    }
    hub.sites_changed();
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTask {
    site: String,
    kind: String,
    #[serde(default)]
    params: Value,
}

/// A study coordinator hands a task to a site of the study. The hub checks only what it knows
/// (the site takes part, a harvest's dataset belongs to the site's organisation); the site
/// decides with its own policy whether to run it.
async fn create_task(
    State(hub): State<Arc<Hub>>,
    c: Caller,
    Path(study): Path<String>,
    JsonBody(b): JsonBody<NewTask>,
) -> ApiResult<impl IntoResponse> {
    let s = managed_study(&hub, &c, &study).await?;
    let site = hub
        .catalogue
        .site(&b.site)
        .await?
        .filter(|x| s.organisations.contains(&x.organisation) && x.revoked_ms.is_none())
        .ok_or_else(|| ApiError::invalid("no such active site in this study"))?;
    if safe_token(&b.kind) != b.kind {
        return Err(ApiError::invalid("kind must be a short lowercase name"));
    }
    if b.kind == "harvest" {
        let ds = b.params["dataset"].as_str().unwrap_or_default();
        let ok = hub
            .catalogue
            .dataset(ds)
            .await?
            .is_some_and(|d| d.study == study && d.owner_organisation == site.organisation);
        if !ok {
            return Err(ApiError::invalid(
                "a harvest needs params.dataset: a dataset of this study owned by the site's organisation",
            ));
        }
    }
    let now = now_ms();
    let task = Task {
        id: uuid::Uuid::new_v4().simple().to_string(),
        site_id: site.id.clone(),
        study: study.clone(),
        kind: b.kind,
        params: b.params,
        status: "queued".into(),
        detail: String::new(),
        progress: json!({}),
        created_by: c.user.id.clone(),
        created_ms: now,
        updated_ms: now,
    };
    hub.catalogue.create_task(&task).await?;
    c.note.resource(format!("study/{study}/task/{}", task.id));
    hub.sites_changed();
    Ok((StatusCode::CREATED, Json(json!(task))))
}

async fn list_tasks(
    State(hub): State<Arc<Hub>>,
    c: Caller,
    Path(study): Path<String>,
    Query(p): Query<PageQuery>,
) -> ApiResult<Json<Value>> {
    study_for(&hub, &c, &study).await?;
    let page = p.page(&hub.config.limits)?;
    Ok(paged(
        hub.catalogue.list_study_tasks(&study, peek(page)).await?,
        page,
    ))
}

async fn cancel_task(
    State(hub): State<Arc<Hub>>,
    c: Caller,
    Path((study, task)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    require(
        &c.principal,
        Action::ManageStudy,
        &study_resource(&c, &study).await,
    )?;
    let t = hub
        .catalogue
        .task(&task)
        .await?
        .filter(|t| t.study == study)
        .ok_or_else(ApiError::not_found)?;
    c.note.resource(format!("study/{study}/task/{}", t.id));
    if !hub
        .catalogue
        .update_task(&t.id, "cancelled", "cancelled on the hub", &t.progress)
        .await?
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "the task is finished already",
        ));
    }
    if let (true, Some(run)) = (t.kind == "federated-learning", t.params["run"].as_str()) {
        crate::runs::site_left(&hub, run, &t.site_id, "its task was cancelled on the hub");
    }
    hub.sites_changed();
    Ok(StatusCode::NO_CONTENT)
}
