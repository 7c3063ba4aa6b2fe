//! The hub over real HTTPS on 127.0.0.1: TLS versions, request limits, rate-limited
//! authentication failures.

use std::io::{Read, Write};
use std::time::Duration;

use medfed_hub::client::HubClient;
use reqwest::StatusCode;
use serde_json::json;

use crate::support::{config_in, fresh_database};

async fn running(
    tweak: impl FnOnce(&mut medfed_hub::HubConfig),
) -> (tempfile::TempDir, medfed_hub::RunningHub, HubClient) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_in(dir.path(), fresh_database("sqlite", dir.path()).await);
    tweak(&mut cfg);
    let hub = medfed_hub::start(cfg).await.expect("hub starts");
    let client = HubClient::new(
        &format!("https://127.0.0.1:{}", hub.addr.port()),
        hub.ca_pem.as_deref(),
    )
    .unwrap();
    (dir, hub, client)
}

/// A ClientHello offering only TLS 1.1 (legacy_version 0x0302, no supported_versions
/// extension), written by hand so that no TLS library refuses to send it.
fn tls11_client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x02]; // client_version TLS 1.1
    body.extend_from_slice(&[0x11; 32]); // random
    body.push(0); // session id
    body.extend_from_slice(&[0x00, 0x04, 0x00, 0x2f, 0x00, 0x35]); // AES128-SHA, AES256-SHA
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    let mut hs = vec![0x01, 0x00, (body.len() >> 8) as u8, body.len() as u8];
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 0x03, 0x01, (hs.len() >> 8) as u8, hs.len() as u8];
    rec.extend_from_slice(&hs);
    rec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_below_1_2_is_refused_and_1_2_and_1_3_are_served() {
    let (_d, hub, client) = running(|_| {}).await;
    let addr = hub.addr;
    let answer = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(&tls11_client_hello()).unwrap();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap_or(0);
        buf[..n].to_vec()
    })
    .await
    .unwrap();
    // An alert record (21) of level fatal (2) with protocol_version (70), never a ServerHello.
    assert!(answer.len() >= 7, "no answer: {answer:?}");
    assert_eq!(answer[0], 21, "expected an alert record, got {answer:?}");
    // rustls answers handshake_failure (40) when no offered version is acceptable;
    // protocol_version (70) would do as well.
    assert_eq!(answer[5], 2, "expected a fatal alert: {answer:?}");
    assert!(
        [40, 70].contains(&answer[6]),
        "unexpected alert: {answer:?}"
    );

    for version in [
        reqwest::tls::Version::TLS_1_2,
        reqwest::tls::Version::TLS_1_3,
    ] {
        let ca =
            reqwest::Certificate::from_pem(&std::fs::read(hub.ca_pem.as_ref().unwrap()).unwrap())
                .unwrap();
        let c = reqwest::Client::builder()
            .add_root_certificate(ca)
            .min_tls_version(version)
            .max_tls_version(version)
            .build()
            .unwrap();
        let r = c
            .get(format!("https://127.0.0.1:{}/api/v1/health", addr.port()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{version:?}");
    }
    // Plain HTTP gets no HTTP answer.
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{}/api/v1/health", addr.port()))
        .send()
        .await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
    let (s, doc) = client
        .send(client.request(reqwest::Method::GET, "/api/v1/openapi.json"))
        .await
        .unwrap();
    assert_eq!(s, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/api/v1/dicomweb/studies"]["post"].is_object());
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_bodies_and_deep_json_are_refused() {
    let (_d, hub, client) = running(|c| c.limits.max_json_bytes = 4096).await;
    let (_, token) = medfed_hub::bootstrap_on(&hub.hub, "local:admin", None)
        .await
        .unwrap();
    let c = client.with_token(&token);
    // Header too large: 431 from the HTTP layer, or the connection is refused.
    let r = c
        .request(reqwest::Method::GET, "/api/v1/me")
        .header("x-filler", "a".repeat(64 * 1024))
        .send()
        .await;
    if let Ok(r) = r {
        assert_eq!(r.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    }
    // Body too large.
    let big = json!({"id": "org-x", "name": "n".repeat(10_000)});
    let (s, _) = c
        .send(
            c.request(reqwest::Method::POST, "/api/v1/organisations")
                .json(&big),
        )
        .await
        .unwrap();
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    // Nesting too deep.
    let deep = format!(
        "{{\"id\": \"org-x\", \"name\": \"n\", \"x\": {}1{}}}",
        "[".repeat(40),
        "]".repeat(40)
    );
    let (s, v) = c
        .send(
            c.request(reqwest::Method::POST, "/api/v1/organisations")
                .header("content-type", "application/json")
                .body(deep),
        )
        .await
        .unwrap();
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    // Within limits it works.
    let (s, _) = c
        .send(
            c.request(reqwest::Method::POST, "/api/v1/organisations")
                .json(&json!({"id": "org-x", "name": "X"})),
        )
        .await
        .unwrap();
    assert_eq!(s, StatusCode::CREATED);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_authentication_failures_get_429_with_retry_after() {
    let (_d, hub, client) = running(|c| {
        c.limits.auth_failures = 3;
        c.limits.auth_failure_window_s = 60;
    })
    .await;
    let (_, token) = medfed_hub::bootstrap_on(&hub.hub, "local:admin", None)
        .await
        .unwrap();
    // The last character changed (to a different one: it may already be 'x').
    let last = if token.ends_with('x') { "y" } else { "x" };
    let forged = format!("{}{last}", &token[..token.len() - 1]);
    let bad = client.with_token(&forged);
    for _ in 0..3 {
        let (s, _) = bad
            .send(bad.request(reqwest::Method::GET, "/api/v1/me"))
            .await
            .unwrap();
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
    let r = bad
        .request(reqwest::Method::GET, "/api/v1/me")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait));
    // The limit is per claimed identity: another account from the same address is not blocked.
    let other = hub
        .hub
        .catalogue
        .create_user("local:other", None, false)
        .await
        .unwrap();
    let other_token = medfed_hub::issue_token(&hub.hub, &other.id, 1)
        .await
        .unwrap();
    let good = client.with_token(&other_token);
    let (s, _) = good
        .send(good.request(reqwest::Method::GET, "/api/v1/me"))
        .await
        .unwrap();
    assert_eq!(s, StatusCode::OK);
    hub.stop().await;
}
