//! The OpenAPI 3.1 document the hub serves at `/api/v1/openapi.json`, built from one route
//! table ([`ROUTES`]) that the authorisation-matrix test also walks, so a route cannot be added
//! without appearing in both.

use axum::Json;
use serde_json::{Map, Value, json};

/// One operation of the API.
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub summary: &'static str,
    /// Whether the operation needs a bearer token.
    pub authenticated: bool,
    /// The request body's media type, if any.
    pub body: Option<&'static str>,
}

const fn r(
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    body: Option<&'static str>,
) -> Route {
    Route {
        method,
        path,
        summary,
        authenticated: true,
        body,
    }
}

const JSON: Option<&str> = Some("application/json");

pub const ROUTES: &[Route] = &[
    Route {
        method: "GET",
        path: "/api/v1/health",
        summary: "Liveness and version",
        authenticated: false,
        body: None,
    },
    Route {
        method: "GET",
        path: "/api/v1/openapi.json",
        summary: "This document",
        authenticated: false,
        body: None,
    },
    r(
        "GET",
        "/api/v1/me",
        "The caller's account and study roles",
        None,
    ),
    r(
        "POST",
        "/api/v1/tokens",
        "Issue an API token for the caller (shown once)",
        JSON,
    ),
    r(
        "DELETE",
        "/api/v1/tokens/{token}",
        "Revoke an API token (own, or any as platform admin)",
        None,
    ),
    r(
        "GET",
        "/api/v1/organisations",
        "List organisations (platform admin)",
        None,
    ),
    r(
        "POST",
        "/api/v1/organisations",
        "Create an organisation (platform admin)",
        JSON,
    ),
    r("GET", "/api/v1/users", "List users (platform admin)", None),
    r(
        "POST",
        "/api/v1/users",
        "Create a user for an OIDC subject (platform admin)",
        JSON,
    ),
    r(
        "GET",
        "/api/v1/admin/studies",
        "All studies' ids and titles (platform admin; no study data)",
        None,
    ),
    r(
        "GET",
        "/api/v1/studies",
        "Studies the caller has a role in",
        None,
    ),
    r(
        "POST",
        "/api/v1/studies",
        "Create a study with its organisations and coordinator (platform admin)",
        JSON,
    ),
    r("GET", "/api/v1/studies/{study}", "A study", None),
    r(
        "POST",
        "/api/v1/studies/{study}/grants",
        "Grant a study role (study coordinator)",
        JSON,
    ),
    r(
        "DELETE",
        "/api/v1/studies/{study}/grants/{user}/{role}",
        "Revoke a study role (study coordinator)",
        None,
    ),
    r(
        "GET",
        "/api/v1/studies/{study}/datasets",
        "Datasets of a study",
        None,
    ),
    r(
        "POST",
        "/api/v1/studies/{study}/datasets",
        "Register a dataset of the caller's organisation (site operator)",
        JSON,
    ),
    r(
        "GET",
        "/api/v1/studies/{study}/audit",
        "Audit records of a study (auditor, study coordinator)",
        None,
    ),
    r(
        "GET",
        "/api/v1/datasets",
        "Search the catalogue (?study, ?q; paged)",
        None,
    ),
    r(
        "GET",
        "/api/v1/datasets/{dataset}",
        "A dataset's catalogue entry",
        None,
    ),
    r(
        "DELETE",
        "/api/v1/datasets/{dataset}",
        "Delete a dataset with its objects and key (data owner)",
        None,
    ),
    r(
        "PUT",
        "/api/v1/datasets/{dataset}/legal-hold",
        "Place or lift a legal hold (data owner)",
        JSON,
    ),
    r(
        "GET",
        "/api/v1/datasets/{dataset}/objects",
        "Objects of a dataset",
        None,
    ),
    r(
        "GET",
        "/api/v1/datasets/{dataset}/objects/{object}",
        "An object's content (researcher)",
        None,
    ),
    r(
        "POST",
        "/api/v1/datasets/{dataset}/uploads",
        "Start a chunked, resumable upload (site operator)",
        JSON,
    ),
    r(
        "GET",
        "/api/v1/uploads/{upload}",
        "An upload's state and missing chunks",
        None,
    ),
    r(
        "DELETE",
        "/api/v1/uploads/{upload}",
        "Abandon an upload",
        None,
    ),
    r(
        "PUT",
        "/api/v1/uploads/{upload}/chunks/{index}",
        "Send one chunk (header x-medfed-chunk-sha256)",
        Some("application/octet-stream"),
    ),
    r(
        "POST",
        "/api/v1/uploads/{upload}/complete",
        "Verify the whole object, encrypt and publish it",
        None,
    ),
    r(
        "GET",
        "/api/v1/dicomweb/studies",
        "QIDO-RS: search studies",
        None,
    ),
    r(
        "POST",
        "/api/v1/dicomweb/studies",
        "STOW-RS: store instances into ?dataset=<id>",
        Some("multipart/related"),
    ),
    r(
        "GET",
        "/api/v1/dicomweb/studies/{study}/series",
        "QIDO-RS: search series of a study",
        None,
    ),
    r(
        "GET",
        "/api/v1/dicomweb/studies/{study}/series/{series}/instances",
        "QIDO-RS: search instances of a series",
        None,
    ),
    r(
        "GET",
        "/api/v1/dicomweb/studies/{study}/series/{series}/instances/{instance}",
        "WADO-RS: retrieve an instance",
        None,
    ),
    Route {
        method: "GET",
        path: "/api/v1/enrol/trust",
        summary: "The certificate(s) an enrolling site trusts for the hub (checked against its token)",
        authenticated: false,
        body: None,
    },
    Route {
        method: "POST",
        path: "/api/v1/enrol",
        summary: "Enrol a site: one-time token + certificate request -> client certificate",
        authenticated: false,
        body: JSON,
    },
    r(
        "POST",
        "/api/v1/site/poll",
        "Site (mutual TLS): heartbeat and long poll for tasks",
        JSON,
    ),
    r(
        "POST",
        "/api/v1/site/renew",
        "Site (mutual TLS): renew its client certificate",
        JSON,
    ),
    r(
        "POST",
        "/api/v1/site/tasks/{task}",
        "Site (mutual TLS): report a task's state (accepted, refused, progress, result)",
        JSON,
    ),
    r(
        "POST",
        "/api/v1/studies/{study}/enrolments",
        "Create a one-time site enrolment token for an organisation (study coordinator)",
        JSON,
    ),
    r(
        "GET",
        "/api/v1/studies/{study}/sites",
        "Sites of the study's organisations: online, last seen, version, reported state",
        None,
    ),
    r(
        "GET",
        "/api/v1/studies/{study}/tasks",
        "Tasks handed to the study's sites and their state",
        None,
    ),
    r(
        "POST",
        "/api/v1/studies/{study}/tasks",
        "Hand a task to a site (study coordinator); the site's policy decides",
        JSON,
    ),
    r(
        "DELETE",
        "/api/v1/studies/{study}/tasks/{task}",
        "Cancel a task (study coordinator)",
        None,
    ),
    r(
        "GET",
        "/api/v1/studies/{study}/runs",
        "Federated runs of the study",
        None,
    ),
    r(
        "POST",
        "/api/v1/studies/{study}/runs",
        "Start a federated run from a study spec (TOML in `spec`; study coordinator); the study's sites get a federated-learning task",
        JSON,
    ),
    r(
        "GET",
        "/api/v1/studies/{study}/runs/{run}",
        "A run: round, stage, sites, history, results (`after` + `wait_s`: long poll for a change)",
        None,
    ),
    r(
        "DELETE",
        "/api/v1/studies/{study}/runs/{run}",
        "Cancel a running run (study coordinator); its sites stop, no results are stored",
        None,
    ),
    r(
        "GET",
        "/api/v1/studies/{study}/runs/{run}/results/{name}",
        "A finished run's stored result file (model.safetensors, result.json, spec.toml, run.json; study coordinators and researchers)",
        None,
    ),
    r(
        "POST",
        "/api/v1/site/runs/{run}/exchange",
        "Site (mutual TLS): one step of a federated run (key, masked release, reveal); answers with the site's next instruction",
        JSON,
    ),
    r(
        "GET",
        "/api/v1/sites",
        "All enrolled sites (platform admin)",
        None,
    ),
    r(
        "POST",
        "/api/v1/sites/{site}/revoke",
        "Revoke a site: its certificates are refused at once (platform admin)",
        None,
    ),
];

fn parameters(path: &str) -> Vec<Value> {
    path.split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
        .collect()
}

pub fn build() -> Value {
    let mut paths = Map::new();
    for route in ROUTES {
        let mut op = json!({
            "summary": route.summary,
            "parameters": parameters(route.path),
            "responses": {
                "200": {"description": "success"},
                "401": {"description": "no or refused credentials"},
                "403": {"description": "known to the caller, not permitted"},
                "404": {"description": "missing, or hidden from the caller (need-to-know)"},
                "429": {"description": "too many failed authentications; see Retry-After"},
            },
        });
        if route.method == "GET" && !route.path.ends_with('}') && route.authenticated {
            let params = op["parameters"].as_array_mut().expect("array");
            params.push(json!({"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1}}));
            params.push(json!({"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0}}));
        }
        if let Some(mt) = route.body {
            op["requestBody"] = json!({"required": true, "content": {mt: {}}});
        }
        if route.authenticated {
            op["security"] = json!([{"bearer": []}]);
        } else {
            op["security"] = json!([]);
        }
        let entry = paths
            .entry(route.path.to_string())
            .or_insert_with(|| json!({}));
        entry[route.method.to_ascii_lowercase()] = op;
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "medfed hub",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Studies, catalogue, encrypted storage, DICOMweb and audit for multi-centre medical imaging. Every request is audited; what a caller may not see answers 404.",
        },
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "OIDC access token (JWT) or a medfed API token (mf_...)"}}},
        "paths": paths,
    })
}

pub async fn document() -> Json<Value> {
    Json(build())
}
