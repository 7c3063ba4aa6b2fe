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

/// One part of a `multipart/related` body: the SHA-256 its `Content-Digest` header (RFC 9530)
/// declares, if any, and its bytes.
#[derive(Debug, PartialEq)]
struct Part<'a> {
    sha256: Option<Vec<u8>>,
    body: &'a [u8],
}

/// The SHA-256 a part's `Content-Digest: sha-256=:<base64>:` header declares, if it has one.
fn declared_sha256(headers: &str) -> Result<Option<Vec<u8>>, String> {
    use base64::Engine;
    let Some(value) = headers.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-digest")
            .then(|| value.trim())
    }) else {
        return Ok(None);
    };
    let b64 = value
        .split(',')
        .map(str::trim)
        .find_map(|d| d.strip_prefix("sha-256=:")?.strip_suffix(':'))
        .ok_or("Content-Digest without a sha-256 value")?;
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .ok()
        .filter(|d| d.len() == 32)
        .map(Some)
        .ok_or_else(|| "Content-Digest sha-256 is not 32 bytes of base64".into())
}

/// The parts of a `multipart/related` body.
fn multipart_parts<'a>(content_type: &str, body: &'a [u8]) -> Result<Vec<Part<'a>>, String> {
    let boundary = content_type
        .split(';')
        .map(str::trim)
        .find_map(|p| p.strip_prefix("boundary="))
        .map(|b| b.trim_matches('"'))
        .filter(|b| !b.is_empty() && b.len() <= 70)
        .ok_or("multipart/related with a boundary expected")?;
    let delim = format!("--{boundary}");
    let finder = memchr::memmem::Finder::new(delim.as_bytes());
    let mut starts: Vec<usize> = finder.find_iter(body).collect();
    if starts.len() < 2 {
        return Err("no complete part in the body".into());
    }
    let mut parts = Vec::new();
    for w in starts.windows(2) {
        let mut part = &body[w[0] + delim.len()..w[1]];
        part = part.strip_prefix(b"\r\n").unwrap_or(part);
        part = part.strip_suffix(b"\r\n").unwrap_or(part);
        let Some(h) = memchr::memmem::find(part, b"\r\n\r\n") else {
            return Err("a part has no header/body separator".into());
        };
        let raw = String::from_utf8_lossy(&part[..h]);
        let headers = raw.to_ascii_lowercase();
        if headers.contains("content-type:") && !headers.contains("application/dicom") {
            return Err("every part must be application/dicom".into());
        }
        parts.push(Part {
            sha256: declared_sha256(&raw)?,
            body: &part[h + 4..],
        });
    }
    // The last delimiter must close the body.
    let last = starts.pop().unwrap_or(0);
    if !body[last + delim.len()..].starts_with(b"--") {
        return Err("the body does not end with the closing boundary".into());
    }
    Ok(parts)
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
    body: Bytes,
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
    if !ct.starts_with("multipart/related") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "multipart/related; type=\"application/dicom\" expected",
        ));
    }
    let parts =
        multipart_parts(ct, &body).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    let dk = Arc::new(hub.keys.unwrap(&hub.catalogue.wrapped_key(&d.id).await?)?);
    let mut stored = Vec::new();
    let mut failed = Vec::new();
    for Part {
        sha256: declared,
        body: part,
    } in parts
    {
        let object = Id::random();
        let entry = match crate::dicom::index_entry(part, &d.id, object.as_str()) {
            Ok(e) => e,
            Err(why) => {
                tracing::info!(%why, "STOW part refused");
                failed.push(json!({"00081197": {"vr": "US", "Value": [CANNOT_UNDERSTAND]}}));
                continue;
            }
        };
        let key = ObjectKey::parse(&d.id, object.as_str())?;
        let bytes = Bytes::copy_from_slice(part);
        let dk2 = dk.clone();
        let k2 = key.clone();
        let size = bytes.len() as i64;
        let digest = {
            use sha2::Digest;
            sha2::Sha256::digest(&bytes).to_vec()
        };
        // End-to-end check: what the sender hashed is what arrived.
        if declared.as_ref().is_some_and(|d| *d != digest) {
            tracing::warn!(sop = %entry.sop_uid, "STOW part refused: Content-Digest mismatch");
            failed.push(failure(&entry, PROCESSING_FAILURE));
            continue;
        }
        let sha = hex::encode(&digest);
        if let Err(e) = hub
            .blocking(move |b| medfed_store::put_encrypted(b, &k2, &dk2, &bytes[..]))
            .await
        {
            tracing::error!(error = %e, "STOW blob write failed");
            failed.push(failure(&entry, PROCESSING_FAILURE));
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
                let reason = if matches!(e, medfed_catalogue::CatalogueError::Exists(_)) {
                    DUPLICATE_SOP
                } else {
                    tracing::error!(error = %e, "STOW index failed");
                    PROCESSING_FAILURE
                };
                failed.push(failure(&entry, reason));
            }
        }
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

fn failure(e: &medfed_catalogue::InstanceEntry, reason: u16) -> Value {
    json!({
        "00081150": {"vr": "UI", "Value": [e.sop_class_uid]},
        "00081155": {"vr": "UI", "Value": [e.sop_uid]},
        "00081197": {"vr": "US", "Value": [reason]},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_bodies_split_into_their_parts_and_bad_ones_are_refused() {
        let ct = "multipart/related; type=\"application/dicom\"; boundary=XyZ";
        let body = b"--XyZ\r\nContent-Type: application/dicom\r\n\r\nAAA\r\n--XyZ\r\nContent-Type: application/dicom\r\n\r\nBB\r\n--XyZ--\r\n";
        let parts = multipart_parts(ct, body).unwrap();
        let bodies: Vec<&[u8]> = parts.iter().map(|p| p.body).collect();
        assert_eq!(bodies, vec![&b"AAA"[..], &b"BB"[..]]);
        assert!(parts.iter().all(|p| p.sha256.is_none()));
        // A declared digest is read from its header (names case-insensitive, base64 as sent).
        let sha = "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0="; // SHA-256 of "abc"
        let with = format!("--XyZ\r\nCONTENT-DIGEST: sha-256=:{sha}:\r\n\r\nabc\r\n--XyZ--\r\n");
        let parts = multipart_parts(ct, with.as_bytes()).unwrap();
        use sha2::Digest;
        assert_eq!(
            parts[0].sha256.as_deref(),
            Some(&sha2::Sha256::digest(b"abc")[..])
        );
        let bad = "--XyZ\r\nContent-Digest: sha-256=:nope:\r\n\r\nabc\r\n--XyZ--\r\n";
        assert!(multipart_parts(ct, bad.as_bytes()).is_err());
        assert!(multipart_parts("multipart/related", body).is_err());
        let unterminated = b"--XyZ\r\nContent-Type: application/dicom\r\n\r\nAAA\r\n--XyZ\r\n\r\nB";
        assert!(multipart_parts(ct, unterminated).is_err());
        let wrong_type = b"--XyZ\r\nContent-Type: text/plain\r\n\r\nAAA\r\n--XyZ--";
        assert!(multipart_parts(ct, wrong_type).is_err());
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
