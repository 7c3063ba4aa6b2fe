//! DICOMweb on the catalogue (PS3.18): QIDO-RS search at study, series and instance level,
//! WADO-RS retrieval of instances, STOW-RS upload into a dataset (`?dataset=<id>`). Same
//! authentication, policy and audit as the rest of the API: QIDO only ever sees datasets of
//! studies the caller has a role in, and results are always paged.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use futures_util::StreamExt;
use medfed_catalogue::{Dataset, DicomMatch, DicomQuery, Level, ObjectEntry, now_ms};
use medfed_policy::{Action, Decision, Resource, decide};
use medfed_store::{Id, ObjectKey};
use serde_json::{Map, Value, json};

use crate::api::{
    ApiError, ApiResult, Caller, PageQuery, dataset_for, dataset_resource, peek, safe_token,
    stream_object,
};
use crate::config::Limits;
use crate::{Failpoint, Hub};

pub fn routes(l: &Limits) -> Router<Arc<Hub>> {
    Router::new()
        .route(
            "/api/v1/dicomweb/studies",
            get(qido_studies)
                .post(stow)
                .layer(DefaultBodyLimit::max(l.max_stow_bytes)),
        )
        .route("/api/v1/dicomweb/studies/{study}/series", get(qido_series))
        .route(
            "/api/v1/dicomweb/studies/{study}/series/{series}/instances",
            get(qido_instances),
        )
        .route(
            "/api/v1/dicomweb/studies/{study}/series/{series}/instances/{instance}",
            get(wado_instance),
        )
}

const DICOM_JSON: &str = "application/dicom+json";

fn attr(vr: &str, v: &str) -> Value {
    if v.is_empty() {
        json!({"vr": vr})
    } else if vr == "PN" {
        json!({"vr": vr, "Value": [{"Alphabetic": v}]})
    } else {
        json!({"vr": vr, "Value": [v]})
    }
}

/// The query from QIDO parameters (keywords or tag numbers).
fn dicom_query(params: &HashMap<String, String>) -> ApiResult<DicomQuery> {
    let get = |names: &[&str]| -> Option<String> {
        names
            .iter()
            .find_map(|n| params.get(*n))
            .filter(|v| !v.is_empty())
            .cloned()
    };
    let mut q = DicomQuery {
        study_uid: get(&["StudyInstanceUID", "0020000D"]),
        series_uid: get(&["SeriesInstanceUID", "0020000E"]),
        sop_uid: get(&["SOPInstanceUID", "00080018"]),
        patient_id: get(&["PatientID", "00100020"]),
        patient_name: get(&["PatientName", "00100010"]),
        modality: get(&["Modality", "ModalitiesInStudy", "00080060", "00080061"]),
        ..Default::default()
    };
    if let Some(d) = get(&["StudyDate", "00080020"]) {
        let valid =
            |s: &str| s.is_empty() || (s.len() == 8 && s.bytes().all(|b| b.is_ascii_digit()));
        let (from, to) = match d.split_once('-') {
            Some((a, b)) => (a.to_string(), b.to_string()),
            None => (d.clone(), d.clone()),
        };
        if !valid(&from) || !valid(&to) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "StudyDate must be YYYYMMDD or a range YYYYMMDD-YYYYMMDD",
            ));
        }
        q.study_date_from = (!from.is_empty()).then_some(from);
        q.study_date_to = (!to.is_empty()).then_some(to);
    }
    Ok(q)
}

fn to_json(m: &DicomMatch, level: Level) -> Value {
    let mut o = Map::new();
    o.insert("0020000D".into(), attr("UI", &m.study_uid));
    o.insert("00100020".into(), attr("LO", &m.patient_id));
    o.insert("00100010".into(), attr("PN", &m.patient_name));
    o.insert("00080020".into(), attr("DA", &m.study_date));
    match level {
        Level::Study => {
            o.insert("00080061".into(), attr("CS", &m.modality));
            o.insert(
                "00201208".into(),
                json!({"vr": "IS", "Value": [m.instances]}),
            );
        }
        Level::Series => {
            o.insert(
                "0020000E".into(),
                attr("UI", m.series_uid.as_deref().unwrap_or("")),
            );
            o.insert("00080060".into(), attr("CS", &m.modality));
            o.insert(
                "00200011".into(),
                attr("IS", m.series_number.as_deref().unwrap_or("")),
            );
            o.insert(
                "00201209".into(),
                json!({"vr": "IS", "Value": [m.instances]}),
            );
        }
        Level::Instance => {
            o.insert(
                "0020000E".into(),
                attr("UI", m.series_uid.as_deref().unwrap_or("")),
            );
            o.insert(
                "00080018".into(),
                attr("UI", m.sop_uid.as_deref().unwrap_or("")),
            );
            o.insert(
                "00080016".into(),
                attr("UI", m.sop_class_uid.as_deref().unwrap_or("")),
            );
            o.insert("00080060".into(), attr("CS", &m.modality));
            o.insert(
                "00200013".into(),
                attr("IS", m.instance_number.as_deref().unwrap_or("")),
            );
        }
    }
    Value::Object(o)
}

/// Run a QIDO query and keep only rows of datasets the caller may search.
async fn qido(
    hub: &Arc<Hub>,
    c: &Caller,
    level: Level,
    q: DicomQuery,
    params: &HashMap<String, String>,
) -> ApiResult<Response> {
    let page = PageQuery {
        limit: params.get("limit").cloned(),
        offset: params.get("offset").cloned(),
    }
    .page(&hub.config.limits)?;
    let rows = hub
        .catalogue
        .query_dicom(&c.user.id, level, &q, peek(page))
        .await?;
    let more = rows.len() as i64 > page.limit;
    // Each row carries its dataset's study and owner: one decision per row, no extra queries.
    let out: Vec<Value> = rows
        .iter()
        .take(page.limit as usize)
        .filter(|m| {
            let on = Resource::Dataset {
                study: m.study.clone(),
                owner_organisation: m.owner_organisation.clone(),
            };
            decide(&c.principal, Action::SearchDatasets, &on) == Decision::Allow
        })
        .map(|m| to_json(m, level))
        .collect();
    let mut r = (StatusCode::OK, serde_json::to_vec(&out).unwrap_or_default()).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(DICOM_JSON));
    if more {
        r.headers_mut().insert(
            header::WARNING,
            HeaderValue::from_static(
                "299 medfed: \"There are additional results that can be requested\"",
            ),
        );
    }
    Ok(r)
}

async fn qido_studies(
    State(hub): State<Arc<Hub>>,
    c: Caller,
    Query(p): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    c.note.resource("dicomweb/studies");
    let q = dicom_query(&p)?;
    qido(&hub, &c, Level::Study, q, &p).await
}

async fn qido_series(
    State(hub): State<Arc<Hub>>,
    c: Caller,
    Path(study): Path<String>,
    Query(p): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    c.note
        .resource(format!("dicomweb/studies/{}", safe_token(&study)));
    let mut q = dicom_query(&p)?;
    q.study_uid = Some(study);
    qido(&hub, &c, Level::Series, q, &p).await
}

async fn qido_instances(
    State(hub): State<Arc<Hub>>,
    c: Caller,
    Path((study, series)): Path<(String, String)>,
    Query(p): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    c.note.resource(format!(
        "dicomweb/studies/{}/series/{}",
        safe_token(&study),
        safe_token(&series)
    ));
    let mut q = dicom_query(&p)?;
    q.study_uid = Some(study);
    q.series_uid = Some(series);
    qido(&hub, &c, Level::Instance, q, &p).await
}

fn boundary() -> String {
    format!("medfed-{}", Id::random().as_str())
}

async fn wado_instance(
    State(hub): State<Arc<Hub>>,
    c: Caller,
    Path((study, series, instance)): Path<(String, String, String)>,
) -> ApiResult<Response> {
    c.note.resource(format!(
        "dicomweb/studies/{}/series/{}/instances/{}",
        safe_token(&study),
        safe_token(&series),
        safe_token(&instance)
    ));
    let q = DicomQuery {
        study_uid: Some(study),
        series_uid: Some(series),
        sop_uid: Some(instance),
        ..Default::default()
    };
    let page = medfed_catalogue::Page {
        limit: 16,
        offset: 0,
    };
    let rows = hub
        .catalogue
        .query_dicom(&c.user.id, Level::Instance, &q, page)
        .await?;
    // The first copy the caller may read; a hidden one answers like a missing one.
    let mut found: Option<(Dataset, ObjectEntry)> = None;
    let mut forbidden = false;
    for m in rows {
        let Some(d) = hub.catalogue.dataset(&m.dataset).await? else {
            continue;
        };
        match decide(&c.principal, Action::ReadData, &dataset_resource(&d)) {
            Decision::Allow => {
                if let Some(o) = hub
                    .catalogue
                    .object(&d.id, m.object.as_deref().unwrap_or(""))
                    .await?
                {
                    c.note.resource(format!(
                        "study/{}/dataset/{}/object/{}",
                        d.study, d.id, o.id
                    ));
                    found = Some((d, o));
                    break;
                }
            }
            Decision::Forbidden => forbidden = true,
            Decision::Hidden => {}
        }
    }
    let Some((d, o)) = found else {
        return Err(if forbidden {
            ApiError::new(StatusCode::FORBIDDEN, "not permitted")
        } else {
            ApiError::not_found()
        });
    };
    let b = boundary();
    let head = Bytes::from(format!(
        "--{b}\r\nContent-Type: application/dicom\r\nContent-Length: {}\r\n\r\n",
        o.size
    ));
    let tail = Bytes::from(format!("\r\n--{b}--\r\n"));
    let body = stream_object(&hub, &d, &o).await?.into_data_stream();
    let stream = futures_util::stream::once(async move { Ok::<Bytes, axum::Error>(head) })
        .chain(body)
        .chain(futures_util::stream::once(async move { Ok(tail) }));
    let mut r = Response::new(Body::from_stream(stream));
    if let Ok(v) = HeaderValue::from_str(&format!(
        "multipart/related; type=\"application/dicom\"; boundary={b}"
    )) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    Ok(r)
}

/// The SHA-256 a part's `Content-Digest: sha-256=:<base64>:` header (RFC 9530) declares, if
/// it has one.
fn declared_sha256(headers: &HeaderMap) -> Result<Option<Vec<u8>>, &'static str> {
    use base64::Engine;
    let Some(value) = headers.get("content-digest") else {
        return Ok(None);
    };
    let value = value.to_str().map_err(|_| "Content-Digest is not ASCII")?;
    let b64 = value
        .split(',')
        .map(str::trim)
        .find_map(|d| {
            let (alg, v) = d.split_once('=')?;
            alg.trim()
                .eq_ignore_ascii_case("sha-256")
                .then(|| v.trim().strip_prefix(':')?.strip_suffix(':'))
                .flatten()
        })
        .ok_or("Content-Digest without a sha-256 value")?;
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .ok()
        .filter(|d| d.len() == 32)
        .map(Some)
        .ok_or("Content-Digest sha-256 is not 32 bytes of base64")
}

/// The parameters of a media type (RFC 9110 8.3.1): names lower-cased, quoted strings
/// unquoted; `None` if the syntax is broken.
fn media_type_params(content_type: &str) -> Option<(String, Vec<(String, String)>)> {
    let (media, mut rest) = match content_type.find(';') {
        Some(i) => (&content_type[..i], &content_type[i..]),
        None => (content_type, ""),
    };
    let mut params = Vec::new();
    loop {
        rest = rest.trim_start_matches([' ', '\t']);
        let Some(r) = rest.strip_prefix(';') else {
            break;
        };
        let r = r.trim_start_matches([' ', '\t']);
        if r.is_empty() {
            break;
        }
        let eq = r.find('=')?;
        let name = r[..eq].trim().to_ascii_lowercase();
        let r = &r[eq + 1..];
        let (value, after) = if let Some(q) = r.strip_prefix('"') {
            let mut v = String::new();
            let mut chars = q.char_indices();
            let mut end = None;
            while let Some((i, ch)) = chars.next() {
                match ch {
                    '\\' => v.push(chars.next()?.1),
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    _ => v.push(ch),
                }
            }
            (v, &q[end?..])
        } else {
            let end = r.find(';').unwrap_or(r.len());
            (r[..end].trim().to_string(), &r[end..])
        };
        params.push((name, value));
        rest = after;
    }
    Some((media.trim().to_ascii_lowercase(), params))
}

/// The boundary of a STOW-RS body's `multipart/related` content type. Parameter names are
/// case-insensitive, the value may be quoted, and it must be 1-70 characters of RFC 2046's
/// `bchars`, not ending in a space.
fn stow_boundary(content_type: &str) -> Result<String, ApiError> {
    let unsupported = || {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "multipart/related; type=\"application/dicom\" expected",
        )
    };
    let (media, params) = media_type_params(content_type).ok_or_else(unsupported)?;
    if media != "multipart/related" {
        return Err(unsupported());
    }
    let param = |n: &str| params.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
    if param("type").is_some_and(|t| !t.eq_ignore_ascii_case("application/dicom")) {
        return Err(unsupported());
    }
    let b = param("boundary").ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "multipart/related with a boundary expected",
        )
    })?;
    let bchar = |c: char| c.is_ascii_alphanumeric() || "'()+_,-./:=? ".contains(c);
    if b.is_empty() || b.len() > 70 || b.ends_with(' ') || !b.chars().all(bchar) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "the boundary must be 1-70 characters of RFC 2046 bchars",
        ));
    }
    Ok(b.to_string())
}

/// Whether a part's own Content-Type (when it has one) is application/dicom.
fn part_is_dicom(headers: &HeaderMap) -> bool {
    match headers.get(header::CONTENT_TYPE) {
        None => true,
        Some(v) => v
            .to_str()
            .ok()
            .and_then(media_type_params)
            .is_some_and(|(m, _)| m == "application/dicom"),
    }
}

/// PS3.18 STOW-RS failure reasons.
const PROCESSING_FAILURE: u16 = 0x0110;
const DUPLICATE_SOP: u16 = 0x0111;
const CANNOT_UNDERSTAND: u16 = 0xC000;

async fn stow(
    State(hub): State<Arc<Hub>>,
    c: Caller,
    Query(p): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let Some(dataset) = p.get("dataset") else {
        c.note.resource("dicomweb/studies");
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "name the target dataset: ?dataset=<id>",
        ));
    };
    let d = dataset_for(&hub, &c, dataset, Action::Upload).await?;
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let boundary = stow_boundary(ct)?;
    // Streamed: one part is in memory at a time, the whole body is bounded too.
    let limit = hub.config.limits.max_stow_bytes as u64;
    let constraints = multer::Constraints::new().size_limit(
        multer::SizeLimit::new()
            .whole_stream(limit)
            .per_field(limit),
    );
    let mut parts =
        multer::Multipart::with_constraints(body.into_data_stream(), boundary, constraints);
    let dk = Arc::new(hub.keys.unwrap(&hub.catalogue.wrapped_key(&d.id).await?)?);
    let mut stored = Vec::new();
    let mut failed = Vec::new();
    let mut seen = 0usize;
    let mut malformed = None;
    loop {
        // A body broken after some parts keeps what was complete and verified before the break.
        let parts_read = seen;
        let broken = move |e: multer::Error| {
            tracing::info!(error = %e, parts = parts_read, "STOW body not understood");
            match e {
                multer::Error::StreamSizeExceeded { .. }
                | multer::Error::FieldSizeExceeded { .. } => (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the body exceeds {limit} bytes"),
                ),
                _ => (
                    StatusCode::BAD_REQUEST,
                    format!("the multipart body is malformed after {parts_read} parts"),
                ),
            }
        };
        let field = match parts.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) if seen == 0 => {
                let (status, why) = broken(e);
                return Err(ApiError::new(status, why));
            }
            Err(e) => {
                malformed = Some(broken(e));
                break;
            }
        };
        seen += 1;
        let part_headers = field.headers().clone();
        let part = match field.bytes().await {
            Ok(b) => b,
            Err(e) => {
                malformed = Some(broken(e));
                break;
            }
        };
        if !part_is_dicom(&part_headers) {
            failed.push(unparsed(
                CANNOT_UNDERSTAND,
                "the part is not application/dicom",
            ));
            continue;
        }
        let declared = match declared_sha256(&part_headers) {
            Ok(d) => d,
            Err(why) => {
                failed.push(unparsed(CANNOT_UNDERSTAND, why));
                continue;
            }
        };
        let object = Id::random();
        // Parsing and the check are CPU work on up to max_stow_bytes: off the async workers.
        let (p2, ds2, o2) = (part.clone(), d.id.clone(), object.as_str().to_string());
        let checked = hub
            .bulk
            .run(move || {
                use sha2::Digest;
                crate::dicom::index_entry(&p2, &ds2, &o2)
                    .map(|entry| (entry, sha2::Sha256::digest(&p2[..]).to_vec()))
            })
            .await
            .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error"))?;
        let (entry, digest) = match checked {
            Ok(e) => e,
            Err(why) => {
                tracing::info!(%why, "STOW part refused");
                failed.push(unparsed(CANNOT_UNDERSTAND, &why.to_string()));
                continue;
            }
        };
        // End-to-end check: what the sender hashed is what arrived. A site node always hashes
        // (medfed's client does), so a site's part without a digest is refused.
        match &declared {
            None if c.site.is_some() => {
                tracing::warn!("STOW part from a site refused: no Content-Digest");
                failed.push(failure(
                    &entry,
                    PROCESSING_FAILURE,
                    "site nodes must send Content-Digest: sha-256 on every part",
                ));
                continue;
            }
            Some(d) if *d != digest => {
                tracing::warn!("STOW part refused: Content-Digest mismatch");
                failed.push(failure(
                    &entry,
                    PROCESSING_FAILURE,
                    "the part does not match its Content-Digest",
                ));
                continue;
            }
            _ => {}
        }
        let key = ObjectKey::parse(&d.id, object.as_str())?;
        let dk2 = dk.clone();
        let k2 = key.clone();
        let size = part.len() as i64;
        let sha = hex::encode(&digest);
        let blobs = hub.blobs.clone();
        let written = hub
            .bulk
            .run(move || medfed_store::put_encrypted(blobs.as_ref(), &k2, &dk2, &part[..]))
            .await;
        if let Err(e) = written
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()))
        {
            tracing::error!(error = %e, "STOW blob write failed");
            failed.push(failure(
                &entry,
                PROCESSING_FAILURE,
                "the hub could not store it",
            ));
            continue;
        }
        hub.failpoint(Failpoint::AfterBlobPublish);
        let o = ObjectEntry {
            dataset: d.id.clone(),
            id: object.as_str().to_string(),
            name: format!("{}.dcm", entry.sop_uid),
            media_type: "application/dicom".into(),
            size,
            sha256: sha,
            created_ms: now_ms(),
        };
        match hub.catalogue.add_object(&o, Some(&entry)).await {
            Ok(()) => {
                hub.failpoint(Failpoint::AfterIndexCommit);
                stored.push(json!({
                    "00081150": {"vr": "UI", "Value": [entry.sop_class_uid]},
                    "00081155": {"vr": "UI", "Value": [entry.sop_uid]},
                }));
            }
            Err(e) => {
                let _ = hub.blocking(move |b| b.delete(&key)).await;
                let (reason, why) = if matches!(e, medfed_catalogue::CatalogueError::Exists(_)) {
                    (DUPLICATE_SOP, "the dataset already holds this SOP instance")
                } else {
                    tracing::error!(error = %e, "STOW index failed");
                    (PROCESSING_FAILURE, "the hub could not index it")
                };
                failed.push(failure(&entry, reason, why));
            }
        }
    }
    match malformed {
        // Nothing stored: the body is refused as a whole, like one broken from the start.
        Some((status, why)) if stored.is_empty() => {
            return Err(ApiError::new(status, why));
        }
        Some((_, why)) => failed.push(unparsed(CANNOT_UNDERSTAND, &why)),
        None if stored.is_empty() && failed.is_empty() => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "no part in the body",
            ));
        }
        None => {}
    }
    let status = match (stored.is_empty(), failed.is_empty()) {
        (false, true) => StatusCode::OK,
        (false, false) => StatusCode::ACCEPTED,
        _ => StatusCode::CONFLICT,
    };
    let mut resp = Map::new();
    if !stored.is_empty() {
        resp.insert("00081199".into(), json!({"vr": "SQ", "Value": stored}));
    }
    if !failed.is_empty() {
        resp.insert("00081198".into(), json!({"vr": "SQ", "Value": failed}));
    }
    let mut r = (
        status,
        serde_json::to_vec(&Value::Object(resp)).unwrap_or_default(),
    )
        .into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(DICOM_JSON));
    Ok(r)
}

/// A Failed SOP Sequence item for a part whose SOP instance could not be read. Error Comment
/// (0000,0902) says why, in words that carry no value of the part.
fn unparsed(reason: u16, why: &str) -> Value {
    json!({
        "00081197": {"vr": "US", "Value": [reason]},
        "00000902": {"vr": "LO", "Value": [why]},
    })
}

fn failure(e: &medfed_catalogue::InstanceEntry, reason: u16, why: &str) -> Value {
    json!({
        "00081150": {"vr": "UI", "Value": [e.sop_class_uid]},
        "00081155": {"vr": "UI", "Value": [e.sop_uid]},
        "00081197": {"vr": "US", "Value": [reason]},
        "00000902": {"vr": "LO", "Value": [why]},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The parts of a body as the STOW handler reads them: the boundary from the content type,
    /// then multer with a size bound.
    async fn split(ct: &str, body: &'static [u8]) -> Result<Vec<(HeaderMap, Bytes)>, String> {
        let b = stow_boundary(ct).map_err(|e| e.detail.clone())?;
        let stream = futures_util::stream::iter(
            body.chunks(7)
                .map(|c| Ok::<_, std::io::Error>(Bytes::from_static(c))),
        );
        let c = multer::Constraints::new().size_limit(multer::SizeLimit::new().whole_stream(1000));
        let mut m = multer::Multipart::with_constraints(stream, b, c);
        let mut out = Vec::new();
        while let Some(f) = m.next_field().await.map_err(|e| e.to_string())? {
            let h = f.headers().clone();
            out.push((h, f.bytes().await.map_err(|e| e.to_string())?));
        }
        Ok(out)
    }

    fn bodies(parts: &[(HeaderMap, Bytes)]) -> Vec<&[u8]> {
        parts.iter().map(|(_, b)| &b[..]).collect()
    }

    #[tokio::test]
    async fn multipart_bodies_split_on_crlf_anchored_delimiters_only() {
        let ct = "multipart/related; type=\"application/dicom\"; boundary=XyZ";
        let body = b"--XyZ\r\nContent-Type: application/dicom\r\n\r\nAAA\r\n--XyZ\r\nContent-Type: application/dicom\r\n\r\nBB\r\n--XyZ--\r\n";
        assert_eq!(
            bodies(&split(ct, body).await.unwrap()),
            vec![&b"AAA"[..], &b"BB"[..]]
        );
        // The boundary text inside a part, not after CRLF, is data (RFC 2046 5.1.1).
        let inside = b"--XyZ\r\nContent-Type: application/dicom\r\n\r\nA--XyZ B--XyZ--\r\n--XyZ--";
        assert_eq!(
            bodies(&split(ct, inside).await.unwrap()),
            vec![&b"A--XyZ B--XyZ--"[..]]
        );
        // A preamble before the first delimiter and an epilogue after the last are ignored.
        let framed =
            b"this is a preamble\r\n--XyZ\r\nA: b\r\n\r\nAAA\r\n--XyZ--\r\nepilogue --XyZ\r\n";
        assert_eq!(bodies(&split(ct, framed).await.unwrap()), vec![&b"AAA"[..]]);
        // Transport padding after a delimiter is allowed.
        let padded = b"--XyZ  \r\nA: b\r\n\r\nAAA\r\n--XyZ--";
        assert_eq!(bodies(&split(ct, padded).await.unwrap()), vec![&b"AAA"[..]]);
        // Parameter names are case-insensitive; quoted boundaries may hold bchars like ':' ' '.
        let upper = "Multipart/Related; TYPE=\"application/dicom\"; BOUNDARY=\"a:b c\"";
        let q = b"--a:b c\r\nA: b\r\n\r\nAAA\r\n--a:b c--\r\n";
        assert_eq!(bodies(&split(upper, q).await.unwrap()), vec![&b"AAA"[..]]);
        // Unterminated bodies and bodies over the bound fail.
        let cut = b"--XyZ\r\nA: b\r\n\r\nAAA\r\n--XyZ\r\nA: b\r\n\r\nB";
        assert!(split(ct, cut).await.is_err());
        // multer needs at least one header line per part (PS3.18 parts carry Content-Type).
        assert!(split(ct, b"--XyZ\r\n\r\nAAA\r\n--XyZ--").await.is_err());
        assert!(split(ct, &[b'x'; 2000]).await.is_err());
        static BIG: [u8; 1200] = {
            let mut b = [b'A'; 1200];
            let head = b"--XyZ\r\nA: b\r\n\r\n";
            let mut i = 0;
            while i < head.len() {
                b[i] = head[i];
                i += 1;
            }
            b
        };
        assert!(
            split(ct, &BIG).await.is_err(),
            "the size bound holds while streaming"
        );
    }

    #[test]
    fn content_types_and_digests_are_read_as_the_rfcs_say() {
        assert!(stow_boundary("multipart/related").is_err());
        assert!(stow_boundary("multipart/form-data; boundary=x").is_err());
        assert!(
            stow_boundary("multipart/related; type=\"application/dicom+json\"; boundary=x")
                .is_err()
        );
        assert!(stow_boundary("multipart/related; boundary=\"ends with space \"").is_err());
        assert!(stow_boundary(&format!("multipart/related; boundary={}", "a".repeat(71))).is_err());
        assert_eq!(
            stow_boundary("multipart/related;boundary=\"q\\\"x\";type=application/dicom")
                .err()
                .map(|e| e.status),
            Some(StatusCode::BAD_REQUEST),
            "a quote is not a bchar"
        );
        assert_eq!(
            stow_boundary("multipart/related; start=\"<a;b>\"; boundary=ok").unwrap(),
            "ok"
        );
        use sha2::Digest;
        let sha = "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0="; // SHA-256 of "abc"
        let mut h = HeaderMap::new();
        assert_eq!(declared_sha256(&h), Ok(None));
        h.insert(
            "content-digest",
            HeaderValue::from_str(&format!("sha-512=:AA==:, SHA-256=:{sha}:")).unwrap(),
        );
        assert_eq!(
            declared_sha256(&h).unwrap().as_deref(),
            Some(&sha2::Sha256::digest(b"abc")[..])
        );
        h.insert("content-digest", HeaderValue::from_static("sha-256=:nope:"));
        assert!(declared_sha256(&h).is_err());
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("Application/DICOM; transfer-syntax=1.2.840.10008.1.2.1"),
        );
        assert!(part_is_dicom(&h));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert!(!part_is_dicom(&h));
    }

    #[test]
    fn study_date_ranges_are_parsed_and_garbage_refused() {
        let p = |v: &str| HashMap::from([("StudyDate".to_string(), v.to_string())]);
        let q = dicom_query(&p("20200101-20201231")).unwrap();
        assert_eq!(q.study_date_from.as_deref(), Some("20200101"));
        assert_eq!(q.study_date_to.as_deref(), Some("20201231"));
        let q = dicom_query(&p("-20201231")).unwrap();
        assert_eq!(q.study_date_from, None);
        assert!(dicom_query(&p("2020")).is_err());
    }
}
