//! The JSON API under `/api/v1`: routes, authentication, the audit middleware, limits, paging
//! and the mapping of errors to problem+json responses.
//!
//! Every handler resolves what the request touches into a `medfed_policy::Resource` and asks
//! `medfed_policy::decide` before reading or changing anything; a hidden resource answers
//! exactly like a missing one (404, same body), so nothing of a study is discoverable without a
//! role in it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{
    DefaultBodyLimit, FromRequest, FromRequestParts, MatchedPath, Path, Query, Request, State,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header, request::Parts};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use bytes::Bytes;
use medfed_audit::Event;
use medfed_catalogue::{
    CatalogueError, Dataset, ObjectEntry, Page, Provenance, UploadEntry, User, now_ms,
};
use medfed_policy::{Action, Decision, GrantRefusal, Principal, Resource, StudyRole, decide};
use medfed_store::{Id, ObjectKey, StoreError, UploadPlan};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::config::Limits;
use crate::tls::{PeerAddr, PeerCertificate};
use crate::{Failpoint, Hub, HubError};

// ---------------------------------------------------------------- errors

/// An error answer: RFC 9457 problem+json.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub detail: String,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, detail: impl Into<String>) -> ApiError {
        ApiError {
            status,
            detail: detail.into(),
            retry_after: None,
        }
    }

    /// The one answer for "missing" and "hidden", so the two cannot be told apart.
    pub fn not_found() -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not found")
    }

    pub(crate) fn unauthorized() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "authentication required or credentials refused",
        )
    }

    pub(crate) fn invalid(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, detail)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "type": "about:blank",
            "title": self.status.canonical_reason().unwrap_or("error"),
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        let mut r = (self.status, Json(body)).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(s) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        r
    }
}

impl From<HubError> for ApiError {
    fn from(e: HubError) -> ApiError {
        match e {
            HubError::Catalogue(CatalogueError::NotFound(_)) => ApiError::not_found(),
            HubError::Catalogue(CatalogueError::Exists(what)) => {
                ApiError::new(StatusCode::CONFLICT, format!("{what} already exists"))
            }
            HubError::Store(StoreError::NotFound(_)) => ApiError::not_found(),
            HubError::Store(StoreError::InvalidId { .. }) => ApiError::not_found(),
            HubError::Store(StoreError::Integrity(m)) => ApiError::invalid(m),
            HubError::Store(StoreError::Conflict(m)) => ApiError::new(StatusCode::CONFLICT, m),
            HubError::Invalid(m) => ApiError::new(StatusCode::CONFLICT, m),
            other => {
                tracing::error!(error = %other, "internal error");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
            }
        }
    }
}

impl From<CatalogueError> for ApiError {
    fn from(e: CatalogueError) -> ApiError {
        HubError::from(e).into()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        HubError::from(e).into()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// Map a policy decision to an answer.
pub fn require(who: &Principal, action: Action, on: &Resource) -> ApiResult<()> {
    match decide(who, action, on) {
        Decision::Allow => Ok(()),
        Decision::Forbidden => Err(ApiError::new(StatusCode::FORBIDDEN, "not permitted")),
        Decision::Hidden => Err(ApiError::not_found()),
    }
}

// ---------------------------------------------------------------- audit

/// What the audit record of the current request says; filled in as the request is understood.
#[derive(Debug, Clone, Default)]
pub struct AuditNote(Arc<Mutex<NoteFields>>);

#[derive(Debug, Default)]
struct NoteFields {
    actor: Option<String>,
    on_behalf_of: Option<String>,
    route: Option<String>,
    resource: Option<String>,
}

impl AuditNote {
    pub(crate) fn actor(&self, actor: String) {
        self.with(|n| n.actor = Some(actor));
    }

    fn with<R>(&self, f: impl FnOnce(&mut NoteFields) -> R) -> R {
        f(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn resource(&self, r: impl Into<String>) {
        self.with(|n| n.resource = Some(r.into()));
    }
}

/// Path values enter the audit log only when they are plain ids or UIDs, so a request cannot
/// smuggle text (a patient's name, say) into the log through its path.
pub fn safe_token(s: &str) -> &str {
    let id_like = !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if id_like { s } else { "invalid" }
}

async fn record_route(req: Request, next: Next) -> Response {
    if let (Some(note), Some(m)) = (
        req.extensions().get::<AuditNote>(),
        req.extensions().get::<MatchedPath>(),
    ) {
        let route = m.as_str().to_string();
        note.with(|n| n.route = Some(route));
    }
    next.run(req).await
}

/// The liveness probe: unauthenticated, it touches no data and names no one.
const HEALTH_PATH: &str = "/api/v1/health";

async fn audit_requests(State(hub): State<Arc<Hub>>, mut req: Request, next: Next) -> Response {
    // Load balancers and monitors poll the liveness probe every few seconds per instance; its
    // records would bury the log's real events, and waiting for their sync would tie liveness to
    // the disk's write-back (Kubernetes' audit policies leave /healthz out for the same reasons).
    // A token sent with it is never read.
    if req.uri().path() == HEALTH_PATH
        && matches!(
            *req.method(),
            axum::http::Method::GET | axum::http::Method::HEAD
        )
    {
        return next.run(req).await;
    }
    let note = AuditNote::default();
    req.extensions_mut().insert(note.clone());
    let method = req.method().clone();
    let started = Instant::now();
    let response = next.run(req).await;
    let status = response.status();
    let (actor, on_behalf_of, route, resource) = note.with(|n| {
        (
            n.actor.clone().unwrap_or_else(|| "anonymous".into()),
            n.on_behalf_of.clone(),
            n.route.clone().unwrap_or_else(|| "unmatched".into()),
            n.resource.clone(),
        )
    });
    let outcome = match status.as_u16() {
        200..=399 => "allowed",
        401 | 403 | 404 | 429 => "denied",
        400..=499 => "refused",
        _ => "error",
    };
    let action = format!("{method} {route}");
    tracing::info!(%action, status = status.as_u16(), %actor, ms = started.elapsed().as_millis() as u64, "request");
    let appended = hub
        .audit
        .append(Event {
            actor,
            on_behalf_of,
            action,
            resource: resource.unwrap_or_else(|| route.clone()),
            outcome: format!("{outcome} {}", status.as_u16()),
        })
        .await;
    match appended {
        Ok(_) => response,
        Err(e) => {
            // Fail closed: what cannot be audited is not answered.
            tracing::error!(error = %e, "audit append failed");
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "audit log unavailable").into_response()
        }
    }
}

// ---------------------------------------------------------------- authentication

/// Authentication failures in a sliding window, counted per client address and per presented
/// credential (a hash of the whole token), never per claimed identity: a stranger sending bad
/// tokens that name someone cannot lock that person out, and one address cannot try many
/// tokens.
///
/// Admission and counting happen under one lock: a verification is admitted only while the
/// failures plus the verifications in flight stay below the limit of each key, so concurrent
/// requests cannot overrun it (the others wait until those in flight have ended).
pub(crate) struct FailureLimiter {
    per_credential: u32,
    per_address: u32,
    window: Duration,
    seen: Mutex<HashMap<String, Attempts>>,
    settled: tokio::sync::Notify,
}

#[derive(Default)]
struct Attempts {
    failures: VecDeque<Instant>,
    in_flight: u32,
}

/// Longest wait for a verification slot before the request is answered 429.
const ADMISSION_WAIT: Duration = Duration::from_secs(10);

impl FailureLimiter {
    pub(crate) fn new(l: &Limits) -> FailureLimiter {
        FailureLimiter {
            per_credential: l.auth_failures.max(1),
            per_address: l.auth_failures_per_address.max(1),
            window: Duration::from_secs(l.auth_failure_window_s.max(1)),
            seen: Mutex::new(HashMap::new()),
            settled: tokio::sync::Notify::new(),
        }
    }

    /// Admit one verification of `credential` from `address`, or the seconds to wait (429)
    /// when either has used up its failures.
    pub(crate) async fn admit(&self, address: &str, credential: &str) -> Result<Admitted<'_>, u64> {
        let keys = [format!("a:{address}"), format!("c:{credential}")];
        let limits = [self.per_address, self.per_credential];
        let deadline = tokio::time::Instant::now() + ADMISSION_WAIT;
        loop {
            // Registered before the check, so a settle between the check and the wait is seen.
            let settled = self.settled.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            {
                let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
                if seen.len() > 100_000 {
                    let window = self.window;
                    seen.retain(|_, a| {
                        a.in_flight > 0 || a.failures.back().is_some_and(|t| t.elapsed() < window)
                    });
                }
                let mut room = true;
                for (key, max) in keys.iter().zip(limits) {
                    let Some(a) = seen.get_mut(key) else { continue };
                    while a
                        .failures
                        .front()
                        .is_some_and(|t| t.elapsed() >= self.window)
                    {
                        a.failures.pop_front();
                    }
                    if a.failures.len() as u32 >= max {
                        let oldest = a.failures.front().map(|t| t.elapsed()).unwrap_or_default();
                        return Err(self.window.saturating_sub(oldest).as_secs().max(1));
                    }
                    room &= a.failures.len() as u32 + a.in_flight < max;
                }
                if room {
                    for key in &keys {
                        seen.entry(key.clone()).or_default().in_flight += 1;
                    }
                    return Ok(Admitted {
                        limiter: self,
                        keys,
                        failed: false,
                    });
                }
            }
            if tokio::time::timeout_at(deadline, settled).await.is_err() {
                return Err(1);
            }
        }
    }
}

/// A verification admitted by the [`FailureLimiter`]; it counts as a failure if
/// [`Admitted::failed`] is called, and ends (waking waiters) when dropped.
pub(crate) struct Admitted<'a> {
    limiter: &'a FailureLimiter,
    keys: [String; 2],
    failed: bool,
}

impl Admitted<'_> {
    pub(crate) fn failed(mut self) {
        self.failed = true;
    }
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        let l = self.limiter;
        let mut seen = l.seen.lock().unwrap_or_else(|p| p.into_inner());
        for key in &self.keys {
            let Some(a) = seen.get_mut(key) else { continue };
            a.in_flight = a.in_flight.saturating_sub(1);
            if self.failed {
                a.failures.push_back(Instant::now());
            }
            if a.in_flight == 0 && a.failures.is_empty() {
                seen.remove(key);
            }
        }
        drop(seen);
        l.settled.notify_waiters();
    }
}

/// An authenticated caller with their policy view.
pub struct Caller {
    pub user: User,
    pub principal: Principal,
    pub note: AuditNote,
    /// Set when the caller is a site node, authenticated by its client certificate.
    pub site: Option<medfed_catalogue::Site>,
}

impl Caller {
    /// Platform administration (users, organisations, the study list).
    fn administer(&self) -> ApiResult<()> {
        require(
            &self.principal,
            Action::AdministerPlatform,
            &Resource::Platform,
        )
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// Who a credential claims to be, before it is checked, as an opaque short hash (for the audit
/// record of a failure; never the raw value, and never a rate-limiting key: anyone can claim).
fn claimed_identity(token: &str) -> String {
    use sha2::Digest;
    let claim = if let Some(id) = medfed_auth::ApiTokens::id_of(token) {
        format!("token:{id}")
    } else {
        jsonwebtoken::dangerous::insecure_decode::<Value>(token)
            .ok()
            .and_then(|d| {
                d.claims
                    .get("sub")
                    .and_then(|s| s.as_str())
                    .map(|s| format!("sub:{s}"))
            })
            .unwrap_or_else(|| "malformed".into())
    };
    hex::encode(&sha2::Sha256::digest(claim.as_bytes())[..8])
}

async fn authenticate(hub: &Arc<Hub>, token: &str) -> Result<(User, Option<String>), String> {
    if token.starts_with("mf_") {
        let id = medfed_auth::ApiTokens::id_of(token).ok_or("malformed API token")?;
        let (stored, user) = hub
            .catalogue
            .token_with_user(id)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("unknown API token")?;
        let st = medfed_auth::StoredToken {
            id: stored.id.clone(),
            subject: stored.user_id.clone(),
            secret_sha256: stored.secret_sha256,
            expires_at: (stored.expires_ms / 1000) as u64,
            revoked: stored.revoked,
        };
        medfed_auth::ApiTokens::verify(token, &st, (now_ms() / 1000) as u64)
            .map_err(|e| e.to_string())?;
        return Ok((user, Some(format!("token:{}", stored.id))));
    }
    let oidc = hub
        .oidc
        .clone()
        .ok_or("OIDC is not configured on this hub")?;
    let token = token.to_string();
    let ident = tokio::task::spawn_blocking(move || oidc.validate(&token))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let user = hub
        .catalogue
        .user_by_subject(&ident.subject)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("no account for this subject")?;
    Ok((user, None))
}

impl FromRequestParts<Arc<Hub>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, hub: &Arc<Hub>) -> Result<Self, ApiError> {
        let note = parts
            .extensions
            .get::<AuditNote>()
            .cloned()
            .unwrap_or_default();
        let Some(token) = bearer(&parts.headers) else {
            return match parts.extensions.get::<PeerCertificate>() {
                Some(cert) => crate::sites::site_caller(hub, &cert.0, note).await,
                None => Err(ApiError::unauthorized()),
            };
        };
        let address = parts
            .extensions
            .get::<PeerAddr>()
            .map(|p| address_key(p.0.ip()))
            .unwrap_or_else(|| "in-process".into());
        let claimed = claimed_identity(token);
        let admitted = match hub.failures.admit(&address, &credential_key(token)).await {
            Ok(a) => a,
            Err(wait) => {
                note.with(|n| n.actor = Some(format!("unauthenticated:{claimed}")));
                let mut e = ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many failed authentications",
                );
                e.retry_after = Some(wait);
                return Err(e);
            }
        };
        match authenticate(hub, token).await {
            Ok((user, via)) => {
                drop(admitted);
                let principal = hub.catalogue.principal(&user).await?;
                note.with(|n| {
                    n.actor = Some(via.clone().unwrap_or_else(|| format!("user:{}", user.id)));
                    n.on_behalf_of = via.map(|_| format!("user:{}", user.id));
                });
                Ok(Caller {
                    user,
                    principal,
                    note,
                    site: None,
                })
            }
            Err(why) => {
                admitted.failed();
                tracing::info!(%why, claimed = %claimed, "authentication refused");
                note.with(|n| n.actor = Some(format!("unauthenticated:{claimed}")));
                Err(ApiError::unauthorized())
            }
        }
    }
}

/// The address a client's failures are counted under: the IPv4 address, or the /64 of an
/// IPv6 address (one host usually holds a whole /64).
fn address_key(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

/// The presented credential as the limiter counts it: a hash of the whole token, so only
/// its bearer (who knows the exact string) adds failures to it.
pub(crate) fn credential_key(token: &str) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(token.as_bytes())[..16])
}

// ---------------------------------------------------------------- bodies and paging

/// A JSON body within the configured size (enforced by the body limit) and nesting depth.
pub struct JsonBody<T>(pub T);

fn json_depth_within(bytes: &[u8], max: usize) -> bool {
    let (mut depth, mut in_str, mut esc) = (0usize, false, false);
    for &c in bytes {
        if in_str {
            match (esc, c) {
                (true, _) => esc = false,
                (false, b'\\') => esc = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match c {
            b'"' => in_str = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return false;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    true
}

impl<T: DeserializeOwned> FromRequest<Arc<Hub>> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, hub: &Arc<Hub>) -> Result<Self, ApiError> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "expected application/json",
            ));
        }
        let bytes = Bytes::from_request(req, hub)
            .await
            .map_err(|e| ApiError::new(e.status(), e.body_text()))?;
        if !json_depth_within(&bytes, hub.config.limits.max_json_depth) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "JSON nested too deeply",
            ));
        }
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")))
    }
}

#[derive(Debug, Deserialize, Default)]
pub struct PageQuery {
    pub limit: Option<String>,
    pub offset: Option<String>,
}

impl PageQuery {
    /// The page asked for: `limit` defaults to the configured page and may not exceed the
    /// maximum (an error, not a silent cut, so clients learn to page).
    pub fn page(&self, l: &Limits) -> ApiResult<Page> {
        let num = |v: &Option<String>, what: &str| -> ApiResult<Option<i64>> {
            v.as_deref()
                .map(|s| {
                    s.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
                        ApiError::new(
                            StatusCode::BAD_REQUEST,
                            format!("{what} must be a non-negative integer"),
                        )
                    })
                })
                .transpose()
        };
        let limit = num(&self.limit, "limit")?.unwrap_or(l.default_page);
        if limit == 0 || limit > l.max_page {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("limit must be between 1 and {}", l.max_page),
            ));
        }
        let offset = num(&self.offset, "offset")?.unwrap_or(0);
        Ok(Page { limit, offset })
    }
}

/// A page of results: one more row than asked is fetched to know whether there is a next page.
pub fn paged<T: Serialize>(mut items: Vec<T>, page: Page) -> Json<Value> {
    let more = items.len() as i64 > page.limit;
    items.truncate(page.limit as usize);
    Json(json!({
        "items": items,
        "limit": page.limit,
        "offset": page.offset,
        "next_offset": more.then_some(page.offset + page.limit),
    }))
}

pub fn peek(page: Page) -> Page {
    Page {
        limit: page.limit + 1,
        offset: page.offset,
    }
}

// ---------------------------------------------------------------- router

pub fn router(hub: Arc<Hub>) -> Router {
    let l = hub.config.limits.clone();
    Router::new()
        .route(HEALTH_PATH, get(health))
        .route("/api/v1/openapi.json", get(crate::openapi::document))
        .route("/api/v1/me", get(me))
        .route("/api/v1/tokens", post(create_token))
        .route("/api/v1/tokens/{token}", delete(revoke_token))
        .route(
            "/api/v1/organisations",
            get(list_organisations).post(create_organisation),
        )
        .route("/api/v1/users", get(list_users).post(create_user))
        .route("/api/v1/admin/studies", get(admin_list_studies))
        .route("/api/v1/studies", get(list_studies).post(create_study))
        .route("/api/v1/studies/{study}", get(get_study))
        .route("/api/v1/studies/{study}/grants", post(grant_role))
        .route(
            "/api/v1/studies/{study}/grants/{user}/{role}",
            delete(revoke_role),
        )
        .route(
            "/api/v1/studies/{study}/datasets",
            get(list_study_datasets).post(create_dataset),
        )
        .route("/api/v1/studies/{study}/audit", get(study_audit))
        .route("/api/v1/datasets", get(search_datasets))
        .route(
            "/api/v1/datasets/{dataset}",
            get(get_dataset).delete(delete_dataset),
        )
        .route("/api/v1/datasets/{dataset}/legal-hold", put(set_legal_hold))
        .route("/api/v1/datasets/{dataset}/objects", get(list_objects))
        .route(
            "/api/v1/datasets/{dataset}/objects/{object}",
            get(read_object),
        )
        .route("/api/v1/datasets/{dataset}/uploads", post(start_upload))
        .route(
            "/api/v1/uploads/{upload}",
            get(upload_status).delete(abort_upload),
        )
        .route(
            "/api/v1/uploads/{upload}/chunks/{index}",
            put(put_chunk).layer(DefaultBodyLimit::max(l.max_chunk_bytes)),
        )
        .route("/api/v1/uploads/{upload}/complete", post(complete_upload))
        .merge(crate::dicomweb::routes(&l))
        .merge(crate::sites::routes())
        .merge(crate::runs::routes(&l))
        .route_layer(middleware::from_fn(record_route))
        .fallback(|| async { ApiError::not_found() })
        .layer(DefaultBodyLimit::max(l.max_json_bytes))
        .layer(middleware::from_fn_with_state(hub.clone(), audit_requests))
        .with_state(hub)
}

// ---------------------------------------------------------------- handlers: platform

async fn health() -> Json<Value> {
    Json(json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")}))
}

async fn me(c: Caller) -> Json<Value> {
    c.note.resource(format!("user/{}", c.user.id));
    Json(json!({
        "user": c.user,
        "grants": c.principal.grants,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    #[serde(default = "default_token_days")]
    days: u64,
}

fn default_token_days() -> u64 {
    90
}

/// A token for the caller themself: nobody can mint a token for someone else (an
/// administrator could otherwise act as a researcher).
async fn create_token(
    State(hub): State<Arc<Hub>>,
    c: Caller,
    JsonBody(b): JsonBody<NewToken>,
) -> ApiResult<impl IntoResponse> {
    if b.days == 0 || b.days > 365 {
        return Err(ApiError::invalid("days must be between 1 and 365"));
    }
    c.note.resource(format!("user/{}", c.user.id));
    let token = crate::issue_token(&hub, &c.user.id, b.days).await?;
    let id = medfed_auth::ApiTokens::id_of(&token)
        .unwrap_or_default()
        .to_string();
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": id, "token": token, "note": "shown once; store it now"})),
    ))
}

async fn revoke_token(
    State(hub): State<Arc<Hub>>,
    c: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    c.note.resource(format!("token/{}", safe_token(&id)));
    let t = hub
        .catalogue
        .token(&id)
        .await?
        .ok_or_else(ApiError::not_found)?;
    if t.user_id != c.user.id && !c.principal.platform_admin {
        return Err(ApiError::not_found());
    }
    hub.catalogue.revoke_token(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewOrganisation {
    id: String,
    name: String,
}

async fn create_organisation(
    State(hub): State<Arc<Hub>>,
    c: Caller,
    JsonBody(b): JsonBody<NewOrganisation>,
) -> ApiResult<impl IntoResponse> {
    c.administer()?;
    let id = Id::parse("organisation", &b.id).map_err(|e| ApiError::invalid(e.to_string()))?;
    c.note.resource(format!("organisation/{}", id.as_str()));
    hub.catalogue
        .create_organisation(id.as_str(), &b.name)
        .await?;
    Ok((StatusCode::CREATED, Json(json!({"id": id.as_str()}))))
}

async fn list_organisations(
    State(hub): State<Arc<Hub>>,
    c: Caller,
    Query(p): Query<PageQuery>,
) -> ApiResult<Json<Value>> {
    c.administer()?;
    let page = p.page(&hub.config.limits)?;
    Ok(paged(
        hub.catalogue.list_organisations(peek(page)).await?,
        page,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    subject: String,
    organisation: Option<String>,
    #[serde(default)]
    platform_admin: bool,
}

async fn create_user(
    State(hub): State<Arc<Hub>>,
    c: Caller,
    JsonBody(b): JsonBody<NewUser>,
) -> ApiResult<impl IntoResponse> {
    c.administer()?;
    if b.subject.is_empty() || b.subject.len() > 256 {
        return Err(ApiError::invalid("subject must be 1-256 characters"));
    }
    if let Some(o) = &b.organisation
        && !hub.catalogue.organisation_exists(o).await?
    {
        return Err(ApiError::invalid("unknown organisation"));
    }
    let u = hub
        .catalogue
        .create_user(&b.subject, b.organisation.as_deref(), b.platform_admin)
        .await?;
    c.note.resource(format!("user/{}", u.id));
    Ok((StatusCode::CREATED, Json(json!(u))))
}

async fn list_users(
    State(hub): State<Arc<Hub>>,
    c: Caller,
    Query(p): Query<PageQuery>,
) -> ApiResult<Json<Value>> {
    c.administer()?;
    let page = p.page(&hub.config.limits)?;
    Ok(paged(hub.catalogue.list_users(peek(page)).await?, page))
}

// ---------------------------------------------------------------- handlers: studies

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewStudy {
    id: String,
    title: String,
    organisations: Vec<String>,
    /// The user who coordinates the study (gets the study-coordinator role).
    coordinator: String,
}

async fn create_study(
    State(hub): State<Arc<Hub>>,
    c: Caller,
    JsonBody(b): JsonBody<NewStudy>,
) -> ApiResult<impl IntoResponse> {
    require(&c.principal, Action::CreateStudy, &Resource::Platform)?;
    let id = Id::parse("study", &b.id).map_err(|e| ApiError::invalid(e.to_string()))?;
    c.note.resource(format!("study/{}", id.as_str()));
    for o in &b.organisations {
        if !hub.catalogue.organisation_exists(o).await? {
            return Err(ApiError::invalid("unknown organisation"));
        }
    }
    let coordinator = hub
        .catalogue
        .user(&b.coordinator)
        .await
        .map_err(|_| ApiError::invalid("unknown coordinator"))?;
    medfed_policy::check_appointment(&c.principal, &as_grantee(&coordinator))
        .map_err(|e| ApiError::new(StatusCode::FORBIDDEN, e.to_string()))?;
    hub.catalogue
        .create_study(id.as_str(), &b.title, &b.organisations)
        .await?;
    hub.catalogue
        .grant(&coordinator.id, id.as_str(), StudyRole::StudyCoordinator)
        .await?;
    Ok((StatusCode::CREATED, Json(json!({"id": id.as_str()}))))
}

/// Studies the caller has a role in.
async fn list_studies(
    State(hub): State<Arc<Hub>>,
    c: Caller,
    Query(p): Query<PageQuery>,
) -> ApiResult<Json<Value>> {
    let page = p.page(&hub.config.limits)?;
    let studies: Vec<_> = hub
        .catalogue
        .list_studies(Some(&c.user.id), peek(page))
        .await?
        .into_iter()
        .filter(|s| {
            decide(
                &c.principal,
                Action::ReadStudy,
                &Resource::Study {
                    study: s.id.clone(),
                },
            ) == Decision::Allow
        })
        .collect();
    Ok(paged(studies, page))
}

/// Platform administration sees every study's id, title and organisations (to manage them),
/// nothing of their data.
async fn admin_list_studies(
    State(hub): State<Arc<Hub>>,
    c: Caller,
    Query(p): Query<PageQuery>,
) -> ApiResult<Json<Value>> {
    c.administer()?;
    let page = p.page(&hub.config.limits)?;
    Ok(paged(
        hub.catalogue.list_studies(None, peek(page)).await?,
        page,
    ))
}

pub(crate) async fn study_resource(c: &Caller, study: &str) -> Resource {
    c.note.resource(format!("study/{}", safe_token(study)));
    Resource::Study {
        study: study.to_string(),
    }
}

/// A study the caller may read; missing and hidden both answer 404.
pub(crate) async fn study_for(
    hub: &Hub,
    c: &Caller,
    study: &str,
) -> ApiResult<medfed_catalogue::Study> {
    require(
        &c.principal,
        Action::ReadStudy,
        &study_resource(c, study).await,
    )?;
    hub.catalogue
        .study(study)
        .await?
        .ok_or_else(ApiError::not_found)
}

async fn get_study(
    State(hub): State<Arc<Hub>>,
    c: Caller,
    Path(study): Path<String>,
) -> ApiResult<Json<Value>> {
    let s = study_for(&hub, &c, &study).await?;
    Ok(Json(json!(s)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewGrant {
    user: String,
    role: StudyRole,
}

async fn grant_role(
    State(hub): State<Arc<Hub>>,
    c: Caller,
    Path(study): Path<String>,
    JsonBody(b): JsonBody<NewGrant>,
) -> ApiResult<StatusCode> {
    require(
        &c.principal,
        Action::ManageStudy,
        &study_resource(&c, &study).await,
    )?;
    // One answer for a missing user and one outside the study, so a coordinator learns
    // nothing about accounts of other organisations.
    let not_here = || ApiError::invalid("no such user in this study's organisations");
    let grantee = hub.catalogue.user(&b.user).await.map_err(|_| not_here())?;
    let s = hub
        .catalogue
        .study(&study)
        .await?
        .ok_or_else(ApiError::not_found)?;
    medfed_policy::check_grant(&c.principal, &as_grantee(&grantee), &s.organisations).map_err(
        |e| match e {
            GrantRefusal::OutsideTheStudy => not_here(),
            GrantRefusal::SelfGrant => ApiError::new(StatusCode::FORBIDDEN, e.to_string()),
        },
    )?;
    hub.catalogue.grant(&b.user, &study, b.role).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A grantee as `medfed_policy::check_grant` sees them (their existing grants do not matter).
fn as_grantee(u: &User) -> Principal {
    Principal {
        id: u.id.clone(),
        organisation: u.organisation.clone(),
        platform_admin: u.platform_admin,
        grants: Vec::new(),
    }
}

async fn revoke_role(
    State(hub): State<Arc<Hub>>,
    c: Caller,
    Path((study, user, role)): Path<(String, String, String)>,
) -> ApiResult<StatusCode> {
    require(
        &c.principal,
        Action::ManageStudy,
        &study_resource(&c, &study).await,
    )?;
    let role = medfed_catalogue::parse_role(&role).ok_or_else(ApiError::not_found)?;
    if hub.catalogue.revoke_grant(&user, &study, role).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found())
    }
}

// ---------------------------------------------------------------- handlers: datasets

pub fn dataset_resource(d: &Dataset) -> Resource {
    Resource::Dataset {
        study: d.study.clone(),
        owner_organisation: d.owner_organisation.clone(),
    }
}

/// Load a dataset and check `action` on it; missing and hidden both answer 404.
pub async fn dataset_for(hub: &Hub, c: &Caller, id: &str, action: Action) -> ApiResult<Dataset> {
    c.note.resource(format!("dataset/{}", safe_token(id)));
    let d = hub
        .catalogue
        .dataset(id)
        .await?
        .ok_or_else(ApiError::not_found)?;
    let r = dataset_resource(&d);
    if decide(&c.principal, Action::SearchDatasets, &r) == Decision::Hidden {
        return Err(ApiError::not_found());
    }
    c.note
        .resource(format!("study/{}/dataset/{}", d.study, d.id));
    require(&c.principal, action, &r)?;
    Ok(d)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewDataset {
    title: String,
    licence: String,
    /// `YYYY-MM-DD`: the dataset is removed after this day.
    retention_until: String,
    provenance: NewProvenance,
}

/// Provenance as a client sends it. `site` is the hub's to set (the caller's organisation, as
/// authenticated: a site node's certificate or a person's account); a client may leave it
/// out or empty, and one naming another site is refused.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewProvenance {
    #[serde(default)]
    site: Option<String>,
    deid_settings: String,
    medfed_version: String,
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The end (exclusive) of the day `YYYY-MM-DD`, in ms since 1970.
pub fn parse_day_end_ms(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    if b.len() != 10
        || b[4] != b'-'
        || b[7] != b'-'
        || !digits(0..4)
        || !digits(5..7)
        || !digits(8..10)
    {
        return None;
    }
    let y: i64 = s[..4].parse().ok()?;
    let m: i64 = s[5..7].parse().ok()?;
    let d: i64 = s[8..].parse().ok()?;
    let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
    let month_days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if !(1..=month_days).contains(&d) {
        return None;
    }
    Some((days_from_civil(y, m, d) + 1) * 86_400_000)
}

async fn create_dataset(
    State(hub): State<Arc<Hub>>,
    c: Caller,
    Path(study): Path<String>,
    JsonBody(b): JsonBody<NewDataset>,
) -> ApiResult<impl IntoResponse> {
    let s = study_for(&hub, &c, &study).await?;
    let Some(org) = c.user.organisation.clone() else {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "not permitted"));
    };
    let resource = Resource::Dataset {
        study: study.clone(),
        owner_organisation: org.clone(),
    };
    require(&c.principal, Action::Upload, &resource)?;
    if !s.organisations.contains(&org) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "your organisation does not take part in this study",
        ));
    }
    let retention = parse_day_end_ms(&b.retention_until)
        .ok_or_else(|| ApiError::invalid("retention_until must be a date YYYY-MM-DD"))?;
    if b.title.is_empty() || b.licence.is_empty() {
        return Err(ApiError::invalid("title and licence are required"));
    }
    // The producing site is who authenticated (a site node's certificate names its
    // organisation), never what the body says: one hospital cannot claim another's data.
    let owner_site = c
        .site
        .as_ref()
        .map(|site| site.organisation.clone())
        .unwrap_or_else(|| org.clone());
    if let Some(claimed) = b.provenance.site.as_deref().filter(|s| !s.is_empty())
        && claimed != owner_site
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "provenance.site must be your own site",
        ));
    }
    let id = uuid::Uuid::new_v4().to_string();
    let d = Dataset {
        pid: format!("urn:uuid:{id}"),
        id: id.clone(),
        study: study.clone(),
        owner_organisation: org,
        title: b.title,
        licence: b.licence,
        provenance: Provenance {
            site: owner_site,
            deid_settings: b.provenance.deid_settings,
            medfed_version: b.provenance.medfed_version,
        },
        retention_until_ms: retention,
        legal_hold: false,
        created_ms: now_ms(),
    };
    let (_, wrapped) = hub.keys.new_data_key(&id);
    hub.catalogue
        .create_dataset(&d, &wrapped, &c.user.id)
        .await?;
    c.note.resource(format!("study/{study}/dataset/{id}"));
    Ok((StatusCode::CREATED, Json(json!(d))))
}

#[derive(Debug, Deserialize, Default)]
struct DatasetSearch {
    study: Option<String>,
    q: Option<String>,
    limit: Option<String>,
    offset: Option<String>,
}

async fn list_study_datasets(
    State(hub): State<Arc<Hub>>,
    c: Caller,
    Path(study): Path<String>,
    Query(p): Query<PageQuery>,
) -> ApiResult<Json<Value>> {
    require(
        &c.principal,
        Action::SearchDatasets,
        &study_resource(&c, &study).await,
    )?;
    let page = p.page(&hub.config.limits)?;
    let items = visible_datasets(
        &c,
        hub.catalogue
            .list_datasets(&c.user.id, Some(&study), None, peek(page))
            .await?,
    );
    Ok(paged(items, page))
}

fn visible_datasets(c: &Caller, ds: Vec<Dataset>) -> Vec<Dataset> {
    ds.into_iter()
        .filter(|d| {
            decide(&c.principal, Action::SearchDatasets, &dataset_resource(d)) == Decision::Allow
        })
        .collect()
}

/// Search the catalogue: only datasets of studies the caller has a role in exist here.
async fn search_datasets(
    State(hub): State<Arc<Hub>>,
    c: Caller,
    Query(s): Query<DatasetSearch>,
) -> ApiResult<Json<Value>> {
    let page = PageQuery {
        limit: s.limit.clone(),
        offset: s.offset.clone(),
    }
    .page(&hub.config.limits)?;
    c.note.resource("datasets");
    let found = hub
        .catalogue
        .list_datasets(&c.user.id, s.study.as_deref(), s.q.as_deref(), peek(page))
        .await?;
    Ok(paged(visible_datasets(&c, found), page))
}

async fn get_dataset(
    State(hub): State<Arc<Hub>>,
    c: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let d = dataset_for(&hub, &c, &id, Action::SearchDatasets).await?;
    let objects = hub
        .catalogue
        .list_objects(
            &d.id,
            Page {
                limit: 1,
                offset: 0,
            },
        )
        .await?;
    let mut v = json!(d);
    v["has_objects"] = json!(!objects.is_empty());
    Ok(Json(v))
}

async fn delete_dataset(
    State(hub): State<Arc<Hub>>,
    c: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let d = dataset_for(&hub, &c, &id, Action::DeleteDataset).await?;
    if d.legal_hold {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "the dataset is on legal hold",
        ));
    }
    hub.remove_dataset(&d).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Hold {
    hold: bool,
}

async fn set_legal_hold(
    State(hub): State<Arc<Hub>>,
    c: Caller,
    Path(id): Path<String>,
    JsonBody(b): JsonBody<Hold>,
) -> ApiResult<StatusCode> {
    let d = dataset_for(&hub, &c, &id, Action::LegalHold).await?;
    hub.catalogue.set_legal_hold(&d.id, b.hold).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_objects(
    State(hub): State<Arc<Hub>>,
    c: Caller,
    Path(id): Path<String>,
    Query(p): Query<PageQuery>,
) -> ApiResult<Json<Value>> {
    let d = dataset_for(&hub, &c, &id, Action::SearchDatasets).await?;
    let page = p.page(&hub.config.limits)?;
    Ok(paged(
        hub.catalogue.list_objects(&d.id, peek(page)).await?,
        page,
    ))
}

/// Stream an object's plaintext. Each 1 MiB segment is authenticated before it is sent; a
/// failure aborts the response, so a client never receives an unverified or silently cut object.
pub async fn stream_object(
    hub: &Arc<Hub>,
    d: &Dataset,
    o: &ObjectEntry,
) -> ApiResult<axum::body::Body> {
    let key = ObjectKey::parse(&d.id, &o.id)?;
    let dk = hub.keys.unwrap(&hub.catalogue.wrapped_key(&d.id).await?)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let blobs = hub.blobs.clone();
    tokio::task::spawn_blocking(move || {
        struct Sink(tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>);
        impl std::io::Write for Sink {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0
                    .blocking_send(Ok(Bytes::copy_from_slice(b)))
                    .map_err(|_| std::io::Error::other("client went away"))?;
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        if let Err(e) = medfed_store::get_decrypted(blobs.as_ref(), &key, &dk, Sink(tx.clone())) {
            tracing::error!(error = %e, "object could not be read back");
            let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Ok(axum::body::Body::from_stream(stream))
}

async fn read_object(
    State(hub): State<Arc<Hub>>,
    c: Caller,
    Path((id, object)): Path<(String, String)>,
) -> ApiResult<Response> {
    let d = dataset_for(&hub, &c, &id, Action::ReadData).await?;
    let o = hub
        .catalogue
        .object(&d.id, &object)
        .await?
        .ok_or_else(ApiError::not_found)?;
    c.note.resource(format!(
        "study/{}/dataset/{}/object/{}",
        d.study, d.id, o.id
    ));
    let body = stream_object(&hub, &d, &o).await?;
    let mut r = Response::new(body);
    if let Ok(v) = HeaderValue::from_str(&o.media_type) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(o.size as u64));
    if let Ok(v) = HeaderValue::from_str(&format!("sha-256=:{}:", base64_of_hex(&o.sha256))) {
        r.headers_mut().insert("repr-digest", v);
    }
    Ok(r)
}

fn base64_of_hex(h: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(hex::decode(h).unwrap_or_default())
}

// ---------------------------------------------------------------- handlers: uploads

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUpload {
    name: String,
    media_type: String,
    size: u64,
    sha256: String,
    chunk_size: u64,
}

async fn start_upload(
    State(hub): State<Arc<Hub>>,
    c: Caller,
    Path(id): Path<String>,
    JsonBody(b): JsonBody<NewUpload>,
) -> ApiResult<impl IntoResponse> {
    let d = dataset_for(&hub, &c, &id, Action::Upload).await?;
    if b.chunk_size == 0 || b.chunk_size > hub.config.limits.max_chunk_bytes as u64 {
        return Err(ApiError::invalid(format!(
            "chunk_size must be between 1 and {}",
            hub.config.limits.max_chunk_bytes
        )));
    }
    // DICOM uploads are parsed whole for the index at completion, so they obey the STOW limit.
    if b.media_type == "application/dicom" && b.size > hub.config.limits.max_stow_bytes as u64 {
        return Err(ApiError::invalid(format!(
            "a DICOM instance may have at most {} bytes",
            hub.config.limits.max_stow_bytes
        )));
    }
    if b.media_type.is_empty() || b.media_type.len() > 128 {
        return Err(ApiError::invalid("media_type (1-128) is required"));
    }
    // Names are listed back to clients that save files by them: one NFC spelling, no path.
    let name =
        crate::names::object_name(&b.name).map_err(|e| ApiError::invalid(format!("name: {e}")))?;
    if hub.catalogue.object_named(&d.id, &name).await?.is_some() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "the dataset already has an object of this name (compared in Unicode NFC)",
        ));
    }
    let plan = UploadPlan {
        size: b.size,
        sha256: b.sha256.to_ascii_lowercase(),
        chunk_size: b.chunk_size,
    };
    let upload = hub
        .uploads
        .start(&plan)
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    let entry = UploadEntry {
        id: upload.as_str().to_string(),
        dataset: d.id.clone(),
        object: Id::random().as_str().to_string(),
        name,
        media_type: b.media_type,
        started_by: c.user.id.clone(),
    };
    hub.catalogue.create_upload(&entry).await?;
    c.note.resource(format!(
        "study/{}/dataset/{}/upload/{}",
        d.study, d.id, entry.id
    ));
    Ok((
        StatusCode::CREATED,
        Json(json!({"upload": entry.id, "chunks": plan.chunks(), "chunk_size": plan.chunk_size})),
    ))
}

async fn upload_for(
    hub: &Arc<Hub>,
    c: &Caller,
    upload: &str,
) -> ApiResult<(UploadEntry, Dataset, Id)> {
    c.note.resource(format!("upload/{}", safe_token(upload)));
    let u = hub
        .catalogue
        .upload(upload)
        .await?
        .ok_or_else(ApiError::not_found)?;
    let d = dataset_for(hub, c, &u.dataset, Action::Upload).await?;
    c.note.resource(format!(
        "study/{}/dataset/{}/upload/{}",
        d.study, d.id, u.id
    ));
    let id = Id::parse("upload", &u.id)?;
    Ok((u, d, id))
}

async fn upload_status(
    State(hub): State<Arc<Hub>>,
    c: Caller,
    Path(upload): Path<String>,
) -> ApiResult<Json<Value>> {
    let (u, _, id) = upload_for(&hub, &c, &upload).await?;
    let plan = hub.uploads.plan(&id)?;
    let missing = hub.uploads.missing(&id)?;
    Ok(Json(json!({
        "upload": u.id, "dataset": u.dataset, "size": plan.size, "chunk_size": plan.chunk_size,
        "chunks": plan.chunks(), "missing": missing,
    })))
}

async fn abort_upload(
    State(hub): State<Arc<Hub>>,
    c: Caller,
    Path(upload): Path<String>,
) -> ApiResult<StatusCode> {
    let (u, _, id) = upload_for(&hub, &c, &upload).await?;
    hub.uploads.abort(&id)?;
    hub.catalogue.delete_upload(&u.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub const CHUNK_SHA256_HEADER: &str = "x-medfed-chunk-sha256";

async fn put_chunk(
    State(hub): State<Arc<Hub>>,
    c: Caller,
    Path((upload, index)): Path<(String, u64)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let (_, _, id) = upload_for(&hub, &c, &upload).await?;
    let sha = headers
        .get(CHUNK_SHA256_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("{CHUNK_SHA256_HEADER} header required"),
            )
        })?
        .to_string();
    let hub2 = hub.clone();
    hub.bulk
        .run(move || hub2.uploads.put_chunk(&id, index, &body, &sha))
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error"))??;
    Ok(StatusCode::NO_CONTENT)
}

async fn complete_upload(
    State(hub): State<Arc<Hub>>,
    c: Caller,
    Path(upload): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let (u, d, id) = upload_for(&hub, &c, &upload).await?;
    let plan = hub.uploads.plan(&id)?;
    let missing = hub.uploads.missing(&id)?;
    if !missing.is_empty() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "{} chunks missing; GET the upload for the list",
                missing.len()
            ),
        ));
    }
    // DICOM is recognised by content, whatever media type the client declared: an
    // identifiable instance sent as octet-stream is refused like one sent as DICOM. Reading
    // and parsing block, so they run off the async workers.
    let declared_dicom = u.media_type == "application/dicom";
    let (max, size) = (hub.config.limits.max_stow_bytes as u64, plan.size);
    let (hub2, id2, dataset, object) = (hub.clone(), id.clone(), d.id.clone(), u.object.clone());
    let (is_dicom, instance) = hub
        .bulk
        .run(move || {
            let unreadable =
                |e: std::io::Error| ApiError::invalid(format!("upload unreadable: {e}"));
            let mut head = Vec::with_capacity(crate::dicom::SNIFF_LEN);
            std::io::Read::read_to_end(
                &mut std::io::Read::take(
                    hub2.uploads.assembled(&id2)?,
                    crate::dicom::SNIFF_LEN as u64,
                ),
                &mut head,
            )
            .map_err(unreadable)?;
            if !declared_dicom && !crate::dicom::looks_like_dicom(&head) {
                return Ok::<_, ApiError>((false, None));
            }
            if size > max {
                return Err(ApiError::invalid(format!(
                    "the content is DICOM, and a DICOM instance may have at most {max} bytes"
                )));
            }
            let mut bytes = Vec::with_capacity(size as usize);
            std::io::Read::read_to_end(&mut hub2.uploads.assembled(&id2)?, &mut bytes)
                .map_err(unreadable)?;
            let entry = crate::dicom::index_entry(&bytes, &dataset, &object)
                .map_err(|e| ApiError::invalid(e.to_string()))?;
            Ok((true, Some(entry)))
        })
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error"))??;
    if hub.catalogue.object_named(&d.id, &u.name).await?.is_some() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "the dataset already has an object of this name (compared in Unicode NFC)",
        ));
    }
    let key = ObjectKey::parse(&d.id, &u.object)?;
    let dk = hub.keys.unwrap(&hub.catalogue.wrapped_key(&d.id).await?)?;
    let hub2 = hub.clone();
    let id2 = id.clone();
    hub.bulk
        .run(move || hub2.uploads.complete(&id2, hub2.blobs.as_ref(), &key, &dk))
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error"))??;
    hub.failpoint(Failpoint::AfterBlobPublish);
    let entry = ObjectEntry {
        dataset: d.id.clone(),
        id: u.object.clone(),
        name: u.name.clone(),
        media_type: if is_dicom {
            "application/dicom".into()
        } else {
            u.media_type.clone()
        },
        size: plan.size as i64,
        sha256: plan.sha256.clone(),
        created_ms: now_ms(),
    };
    if let Err(e) = hub.catalogue.add_object(&entry, instance.as_ref()).await {
        // Not visible: take the blob back so nothing unindexed stays behind.
        let key = ObjectKey::parse(&d.id, &u.object)?;
        let _ = hub.blocking(move |b| b.delete(&key)).await;
        return Err(e.into());
    }
    hub.failpoint(Failpoint::AfterIndexCommit);
    hub.catalogue.delete_upload(&u.id).await?;
    c.note.resource(format!(
        "study/{}/dataset/{}/object/{}",
        d.study, d.id, entry.id
    ));
    Ok((StatusCode::CREATED, Json(json!(entry))))
}

// ---------------------------------------------------------------- handlers: audit

async fn study_audit(
    State(hub): State<Arc<Hub>>,
    c: Caller,
    Path(study): Path<String>,
    Query(p): Query<PageQuery>,
) -> ApiResult<Json<Value>> {
    c.note
        .resource(format!("study/{}/audit", safe_token(&study)));
    require(
        &c.principal,
        Action::ReadAudit,
        &Resource::StudyAudit {
            study: study.clone(),
        },
    )?;
    let page = p.page(&hub.config.limits)?;
    let path = hub.config.audit_log();
    let prefix = format!("study/{study}/");
    let exact = format!("study/{study}");
    let records = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<Value>> {
        use std::io::BufRead;
        #[allow(clippy::disallowed_methods)] // in spawn_blocking
        let f = std::io::BufReader::new(std::fs::File::open(&path)?);
        let mut out = Vec::new();
        for line in f.lines() {
            let line = line?;
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                let r = v.get("resource").and_then(|r| r.as_str()).unwrap_or("");
                if v.get("type").and_then(|t| t.as_str()) == Some("record")
                    && (r == exact || r.starts_with(&prefix))
                {
                    out.push(v);
                }
            }
        }
        Ok(out)
    })
    .await
    .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error"))?
    .map_err(|e| HubError::io(&hub.config.audit_log(), e))?;
    let items: Vec<Value> = records
        .into_iter()
        .skip(page.offset as usize)
        .take(page.limit as usize + 1)
        .collect();
    Ok(paged(items, page))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_depth_counts_only_structure_outside_strings() {
        assert!(json_depth_within(br#"{"a":[1,{"b":2}]}"#, 3));
        assert!(!json_depth_within(br#"{"a":[1,{"b":2}]}"#, 2));
        assert!(json_depth_within(br#"{"a":"[[[[[[\"[[["}"#, 1));
        let deep = "[".repeat(1000);
        assert!(!json_depth_within(deep.as_bytes(), 16));
    }

    #[test]
    fn dates_parse_to_the_end_of_the_day() {
        assert_eq!(parse_day_end_ms("1970-01-01"), Some(86_400_000));
        assert_eq!(
            parse_day_end_ms("2000-03-01"),
            Some((11_017 + 1) * 86_400_000)
        );
        assert_eq!(parse_day_end_ms("2000-13-01"), None);
        assert_eq!(parse_day_end_ms("20000301"), None);
        assert_eq!(parse_day_end_ms("2026-02-31"), None);
        assert_eq!(parse_day_end_ms("2026-02-29"), None);
        assert_eq!(parse_day_end_ms("2100-02-29"), None);
        assert_eq!(parse_day_end_ms("2026-04-31"), None);
        assert_eq!(parse_day_end_ms("+026-01-01"), None);
        assert_eq!(
            parse_day_end_ms("2024-02-29"),
            parse_day_end_ms("2024-03-01").map(|t| t - 86_400_000)
        );
        assert!(parse_day_end_ms("2000-02-29").is_some());
    }

    #[test]
    fn only_id_like_path_values_reach_the_audit_log() {
        assert_eq!(safe_token("study-a"), "study-a");
        assert_eq!(safe_token("1.2.840.10008.1"), "1.2.840.10008.1");
        assert_eq!(safe_token("DOE^JOHN"), "invalid");
        assert_eq!(safe_token("../etc"), "invalid");
    }
}
