//! The review's probes of authentication and request limits (issue 13, defects 7, 18, 19),
//! replayed against a real hub over HTTPS on 127.0.0.1: concurrent clients, clients from other
//! loopback addresses (127.0.0.2, ...), raw TLS connections that send slowly, a JWKS issuer that
//! stalls or never stops sending.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::get;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use medfed_hub::config::OidcConfig;
use medfed_hub::{HubConfig, RunningHub};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{config_in, fresh_database};

async fn running(tweak: impl FnOnce(&mut HubConfig)) -> (tempfile::TempDir, RunningHub) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_in(dir.path(), fresh_database("sqlite", dir.path()).await);
    tweak(&mut cfg);
    let hub = medfed_hub::start(cfg).await.expect("hub starts");
    (dir, hub)
}

fn base(hub: &RunningHub) -> String {
    format!("https://127.0.0.1:{}", hub.addr.port())
}

/// An HTTPS client trusting the hub, connecting from `from` (any 127.x.y.z is this host).
fn client_from(hub: &RunningHub, from: [u8; 4], http1: bool) -> reqwest::Client {
    // The hub's CA (it signed the generated server certificate).
    let ca = hub.hub.ca.cert_pem.as_bytes();
    let mut b = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca).unwrap())
        .local_address(IpAddr::from(from))
        .timeout(Duration::from_secs(60));
    if http1 {
        b = b.http1_only();
    }
    b.build().unwrap()
}

/// One request first, so that the client's HTTP/2 connection exists and concurrent requests
/// share it instead of each opening a connection.
async fn warm(c: &reqwest::Client, hub: &RunningHub) {
    let r = c
        .get(format!("{}/api/v1/health", base(hub)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

async fn me(c: &reqwest::Client, hub: &RunningHub, token: &str) -> StatusCode {
    c.get(format!("{}/api/v1/me", base(hub)))
        .bearer_auth(token)
        .send()
        .await
        .expect("an HTTP answer")
        .status()
}

fn forged(token: &str) -> String {
    let last = if token.ends_with('x') { "y" } else { "x" };
    format!("{}{last}", &token[..token.len() - 1])
}

fn count(answers: &[StatusCode], s: StatusCode) -> usize {
    answers.iter().filter(|&&a| a == s).count()
}

// ------------------------------------------------------------------ defect 18

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_requests_with_one_bad_token_get_only_the_allowed_401s() {
    let (_d, hub) = running(|c| {
        c.limits.auth_failures = 10;
        c.limits.auth_failures_per_address = 1000;
    })
    .await;
    let (_, token) = medfed_hub::bootstrap_on(&hub.hub, "local:admin", None)
        .await
        .unwrap();
    let bad = forged(&token);
    let c = client_from(&hub, [127, 0, 0, 1], false);
    warm(&c, &hub).await;
    let answers: Vec<StatusCode> =
        futures_util::future::join_all((0..200).map(|_| me(&c, &hub, &bad))).await;
    assert_eq!(count(&answers, StatusCode::UNAUTHORIZED), 10, "{answers:?}");
    assert_eq!(
        count(&answers, StatusCode::TOO_MANY_REQUESTS),
        190,
        "{answers:?}"
    );
    // The real token from the same address still works: its own credential has no failures.
    assert_eq!(me(&c, &hub, &token).await, StatusCode::OK);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_different_bad_tokens_from_one_address_lock_that_address_only() {
    let (_d, hub) = running(|c| {
        c.limits.auth_failures = 10;
        c.limits.auth_failures_per_address = 50;
    })
    .await;
    let (_, token) = medfed_hub::bootstrap_on(&hub.hub, "local:admin", None)
        .await
        .unwrap();
    let attacker = client_from(&hub, [127, 0, 0, 2], false);
    warm(&attacker, &hub).await;
    let tokens: Vec<String> = (0..200)
        .map(|i| format!("mf_{:016x}_{}", 0xbad0_0000u64 + i, "s".repeat(43)))
        .collect();
    let answers: Vec<StatusCode> =
        futures_util::future::join_all(tokens.iter().map(|t| me(&attacker, &hub, t))).await;
    assert_eq!(count(&answers, StatusCode::UNAUTHORIZED), 50, "{answers:?}");
    assert_eq!(
        count(&answers, StatusCode::TOO_MANY_REQUESTS),
        150,
        "{answers:?}"
    );
    // The locked address gets 429 before any verification, even with a valid token ...
    assert_eq!(
        me(&attacker, &hub, &token).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    // ... while the same token from another address works.
    let user = client_from(&hub, [127, 0, 0, 1], false);
    assert_eq!(me(&user, &hub, &token).await, StatusCode::OK);
    hub.stop().await;
}

const ISS: &str = "https://issuer.test";
const AUD: &str = "medfed-hub";

/// The test issuer's keys (medfed-auth's test data), embedded at build time.
fn testdata(name: &str) -> &'static str {
    macro_rules! key {
        ($f:literal) => {
            include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../auth/tests/testdata/",
                $f
            ))
        };
    }
    match name {
        "issuer-key-1.n" => key!("issuer-key-1.n"),
        "issuer-key-2.n" => key!("issuer-key-2.n"),
        "issuer-key-1.pem" => key!("issuer-key-1.pem"),
        "issuer-key-2.pem" => key!("issuer-key-2.pem"),
        _ => panic!("no test key {name}"),
    }
}

fn jwk(kid: &str, key: u8) -> Value {
    json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": testdata(&format!("issuer-key-{key}.n")).trim(), "e": "AQAB"})
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A token for `sub` with key id `kid`, signed with test key `key`; `nonce` makes it unique.
fn oidc_token(kid: &str, key: u8, sub: &str, nonce: u64) -> String {
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some(kid.into());
    let claims = json!({"iss": ISS, "aud": AUD, "sub": sub, "exp": now() + 300, "nbf": now() - 10, "iat": now(), "jti": nonce.to_string()});
    encode(
        &h,
        &claims,
        &EncodingKey::from_rsa_pem(testdata(&format!("issuer-key-{key}.pem")).as_bytes()).unwrap(),
    )
    .unwrap()
}

/// An OIDC issuer over HTTPS (its own CA) serving `app`; returns the JWKS address and CA.
async fn issuer(dir: &std::path::Path, app: axum::Router) -> (String, std::path::PathBuf) {
    let tls = medfed_hub::tls::ensure_generated(&dir.join("issuer-tls"), &[]).unwrap();
    let (chain, key) = medfed_hub::tls::load_pem(&tls.cert_pem, &tls.key_pem).unwrap();
    let cfg = medfed_hub::tls::server_config(chain, key, None).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::watch::channel(false);
    // The issuer lives as long as the test process.
    std::mem::forget(tx);
    tokio::spawn(medfed_hub::tls::serve(listener, cfg, app, 16 * 1024, rx));
    (format!("https://127.0.0.1:{port}/jwks.json"), tls.ca_pem)
}

async fn oidc_hub(
    dir: &std::path::Path,
    jwks_url: String,
    ca: std::path::PathBuf,
    tweak: impl FnOnce(&mut HubConfig),
) -> RunningHub {
    let mut cfg = config_in(dir, fresh_database("sqlite", dir).await);
    cfg.oidc = Some(OidcConfig {
        issuer: ISS.into(),
        audience: AUD.into(),
        jwks_url,
        ca_file: Some(ca),
        leeway_s: 30,
        refetch_interval_s: 0,
    });
    tweak(&mut cfg);
    let hub = medfed_hub::start(cfg).await.unwrap();
    hub.hub
        .catalogue
        .create_user(&format!("oidc:{ISS}#alice"), None, false)
        .await
        .unwrap();
    hub
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_claiming_alice_do_not_lock_the_real_alice_out() {
    let dir = tempfile::tempdir().unwrap();
    let keys = json!({"keys": [jwk("k1", 1)]});
    let app = axum::Router::new().route("/jwks.json", get(move || async move { axum::Json(keys) }));
    let (url, ca) = issuer(dir.path(), app).await;
    let hub = oidc_hub(dir.path(), url, ca, |c| {
        c.limits.auth_failures = 10;
        c.limits.auth_failures_per_address = 50;
    })
    .await;
    let stranger = client_from(&hub, [127, 0, 0, 3], false);
    // Ten (and more) tokens naming alice, signed with a key that is not the issuer's.
    for i in 0..12 {
        let s = me(&stranger, &hub, &oidc_token("k1", 2, "alice", i)).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "forgery {i}");
    }
    // The real alice, from her own address and from the stranger's, is let in.
    let alice = client_from(&hub, [127, 0, 0, 1], false);
    assert_eq!(
        me(&alice, &hub, &oidc_token("k1", 1, "alice", 100)).await,
        StatusCode::OK
    );
    assert_eq!(
        me(&stranger, &hub, &oidc_token("k1", 1, "alice", 101)).await,
        StatusCode::OK
    );
    // One forged token replayed is locked after its ten failures.
    let replayed = oidc_token("k1", 2, "alice", 200);
    warm(&stranger, &hub).await;
    let answers: Vec<StatusCode> =
        futures_util::future::join_all((0..20).map(|_| me(&stranger, &hub, &replayed))).await;
    assert_eq!(count(&answers, StatusCode::UNAUTHORIZED), 10, "{answers:?}");
    hub.stop().await;
}

// ------------------------------------------------------------------ defect 7

/// Sets `true` while a JWKS request is held inside the issuer, `false` when it ends.
struct Stalled(Arc<AtomicBool>);

impl Drop for Stalled {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_jwks_refetch_does_not_hold_up_logins_with_known_keys() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Arc::new(Mutex::new(json!({"keys": [jwk("k1", 1)]})));
    let stall = Arc::new(AtomicBool::new(false));
    let stalled = Arc::new(AtomicBool::new(false));
    let release = Arc::new(tokio::sync::Notify::new());
    let app = {
        let (keys, stall, stalled, release) = (
            keys.clone(),
            stall.clone(),
            stalled.clone(),
            release.clone(),
        );
        axum::Router::new().route(
            "/jwks.json",
            get(move || {
                let (keys, stall, stalled, release) = (
                    keys.clone(),
                    stall.clone(),
                    stalled.clone(),
                    release.clone(),
                );
                async move {
                    if stall.load(Ordering::SeqCst) {
                        stalled.store(true, Ordering::SeqCst);
                        let _held = Stalled(stalled.clone());
                        release.notified().await;
                    }
                    axum::Json(keys.lock().unwrap().clone())
                }
            }),
        )
    };
    let (url, ca) = issuer(dir.path(), app).await;
    let hub = oidc_hub(dir.path(), url, ca, |c| c.limits.auth_failures = 1000).await;
    let alice = client_from(&hub, [127, 0, 0, 1], false);
    assert_eq!(
        me(&alice, &hub, &oidc_token("k1", 1, "alice", 1)).await,
        StatusCode::OK
    );
    // The issuer rotates in k2 and stalls: the first k2 login starts a refetch that hangs.
    *keys.lock().unwrap() = json!({"keys": [jwk("k1", 1), jwk("k2", 2)]});
    stall.store(true, Ordering::SeqCst);
    let k2_login = {
        let (alice, t) = (alice.clone(), oidc_token("k2", 2, "alice", 2));
        let url = format!("{}/api/v1/me", base(&hub));
        tokio::spawn(async move {
            alice
                .get(url)
                .bearer_auth(t)
                .send()
                .await
                .map(|r| r.status())
        })
    };
    let mut waited = 0;
    while !stalled.load(Ordering::SeqCst) {
        assert!(
            waited < 200,
            "the hub never asked the issuer for the new key"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += 1;
    }
    // Logins with the cached k1 are answered while that fetch is still hanging.
    for i in 0..5 {
        assert_eq!(
            me(&alice, &hub, &oidc_token("k1", 1, "alice", 10 + i)).await,
            StatusCode::OK
        );
    }
    assert!(
        stalled.load(Ordering::SeqCst),
        "the refetch ended before the k1 logins were answered"
    );
    release.notify_waiters();
    assert_eq!(k2_login.await.unwrap().unwrap(), StatusCode::OK);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_jwks_is_read_only_up_to_its_cap() {
    let dir = tempfile::tempdir().unwrap();
    let served = Arc::new(AtomicU64::new(0));
    let app = {
        let served = served.clone();
        axum::Router::new().route(
            "/jwks.json",
            get(move || {
                let served = served.clone();
                async move {
                    let head = futures_util::stream::once(async {
                        Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"{\"keys\": ["))
                    });
                    let filler = futures_util::stream::repeat_with(move || {
                        served.fetch_add(64 * 1024, Ordering::SeqCst);
                        Ok(bytes::Bytes::from(vec![b' '; 64 * 1024]))
                    });
                    (
                        [("content-type", "application/json")],
                        axum::body::Body::from_stream(futures_util::StreamExt::chain(head, filler)),
                    )
                }
            }),
        )
    };
    let (url, ca) = issuer(dir.path(), app).await;
    let hub = oidc_hub(dir.path(), url, ca, |c| c.limits.auth_failures = 1000).await;
    let alice = client_from(&hub, [127, 0, 0, 1], false);
    assert_eq!(
        me(&alice, &hub, &oidc_token("k1", 1, "alice", 1)).await,
        StatusCode::UNAUTHORIZED
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The cap is 256 KiB; what the issuer produced beyond it sat in socket buffers only.
    let n = served.load(Ordering::SeqCst);
    assert!(n < 16 << 20, "the hub read {n} bytes of an endless JWKS");
    hub.stop().await;
}

// ------------------------------------------------------------------ defect 19

/// A site operator's API token and a dataset of theirs (study `s`, organisation `org1`).
async fn site_operator_with_dataset(hub: &RunningHub) -> (String, String) {
    let c = &hub.hub.catalogue;
    c.create_organisation("org1", "One").await.unwrap();
    c.create_study("s", "S", &["org1".into()]).await.unwrap();
    let op = c
        .create_user("local:op", Some("org1"), false)
        .await
        .unwrap();
    c.grant(&op.id, "s", medfed_policy::StudyRole::SiteOperator)
        .await
        .unwrap();
    let token = medfed_hub::issue_token(&hub.hub, &op.id, 1).await.unwrap();
    let r = client_from(hub, [127, 0, 0, 1], false)
        .post(format!("{}/api/v1/studies/s/datasets", base(hub)))
        .bearer_auth(&token)
        .json(&crate::support::dataset_body())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let v: Value = r.json().await.unwrap();
    (token, v["id"].as_str().unwrap().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_are_answered_413_over_http1_and_http2() {
    let (_d, hub) = running(|c| {
        c.limits.max_chunk_bytes = 1 << 20;
        c.limits.max_stow_bytes = 2 << 20;
    })
    .await;
    let (token, dataset) = site_operator_with_dataset(&hub).await;
    // One multipart part that never ends within the limit.
    let mut big = b"--b\r\nContent-Type: application/dicom\r\n\r\n".to_vec();
    big.resize(12 << 20, b'x');
    for http1 in [true, false] {
        let c = client_from(&hub, [127, 0, 0, 1], http1);
        let stow = format!("{}/api/v1/dicomweb/studies?dataset={dataset}", base(&hub));
        let chunk = format!("{}/api/v1/uploads/u/chunks/0", base(&hub));
        // With a Content-Length and streamed without one (chunked / HTTP/2 DATA frames).
        for url in [&stow, &chunk] {
            let r = c
                .request(
                    if url == &stow {
                        reqwest::Method::POST
                    } else {
                        reqwest::Method::PUT
                    },
                    url,
                )
                .bearer_auth(&token)
                .header(
                    "content-type",
                    "multipart/related; type=\"application/dicom\"; boundary=b",
                )
                .body(big.clone())
                .send()
                .await
                .unwrap_or_else(|e| panic!("{url} (http1 {http1}): no answer: {e:?}"));
            assert_eq!(
                r.status(),
                StatusCode::PAYLOAD_TOO_LARGE,
                "{url} http1 {http1}"
            );
            let pieces: Vec<Result<bytes::Bytes, std::io::Error>> = big
                .chunks(256 * 1024)
                .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
                .collect();
            let r = c
                .request(
                    if url == &stow {
                        reqwest::Method::POST
                    } else {
                        reqwest::Method::PUT
                    },
                    url,
                )
                .bearer_auth(&token)
                .header(
                    "content-type",
                    "multipart/related; type=\"application/dicom\"; boundary=b",
                )
                .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                    pieces,
                )))
                .send()
                .await
                .unwrap_or_else(|e| panic!("{url} streamed (http1 {http1}): no answer: {e:?}"));
            assert_eq!(
                r.status(),
                StatusCode::PAYLOAD_TOO_LARGE,
                "{url} streamed, http1 {http1}"
            );
        }
    }
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_176_kb_header_is_answered_431() {
    let (_d, hub) = running(|_| {}).await;
    for http1 in [true, false] {
        let c = client_from(&hub, [127, 0, 0, 1], http1);
        let r = c
            .get(format!("{}/api/v1/health", base(&hub)))
            .header("x-filler", "a".repeat(176 * 1024))
            .send()
            .await;
        match r {
            Ok(r) => assert_eq!(
                r.status(),
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "http1 {http1}"
            ),
            Err(e) => panic!("no answer (http1 {http1}): {e:?}"),
        }
        // The same client goes on working.
        let r = c
            .get(format!("{}/api/v1/health", base(&hub)))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    hub.stop().await;
}

/// A TLS connection to the hub from `from`, with this ALPN protocol.
async fn raw_tls(
    hub: &RunningHub,
    from: [u8; 4],
    alpn: &[u8],
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    let ca = hub.hub.ca.cert_pem.as_bytes();
    for c in rustls_pki_types::pem::PemObject::pem_slice_iter(ca) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(medfed_hub::tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.bind(SocketAddr::from((from, 0)))?;
    let tcp = sock.connect(hub.addr).await?;
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
}

/// Whether the server closed this connection within `within` (EOF or an error on read).
async fn closed_within<S: tokio::io::AsyncRead + Unpin>(s: &mut S, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    matches!(
        tokio::time::timeout(within, async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue,
                }
            }
        })
        .await,
        Ok(())
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_header_connections_are_closed_after_the_header_timeout() {
    let (_d, hub) = running(|c| c.limits.header_timeout_s = 2).await;
    let hub = Arc::new(hub);
    let mut probes = Vec::new();
    for i in 0..20u8 {
        let hub = hub.clone();
        probes.push(tokio::spawn(async move {
            let alpn: &[u8] = if i % 4 == 3 { b"h2" } else { b"http/1.1" };
            let tls = raw_tls(&hub, [127, 0, 0, 1], alpn)
                .await
                .expect("TLS connects");
            let (mut rd, mut wr) = tokio::io::split(tls);
            // One byte of headers every 300 ms, never finishing (for h2: not even the preface);
            // every fifth connection sends nothing at all.
            let writer = tokio::spawn(async move {
                if i % 5 == 0 {
                    return;
                }
                let _ = wr
                    .write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n")
                    .await;
                loop {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    if wr.write_all(b"x").await.is_err() || wr.flush().await.is_err() {
                        return;
                    }
                }
            });
            // Closed at the 2 s timeout; 20 s is the bound that fails the probe.
            let closed = closed_within(&mut rd, Duration::from_secs(20)).await;
            writer.abort();
            closed
        }));
    }
    for (i, p) in probes.into_iter().enumerate() {
        assert!(
            p.await.unwrap(),
            "slow connection {i} was still open after 20 s"
        );
    }
    // A prompt request is served as usual.
    let c = client_from(&hub, [127, 0, 0, 1], true);
    let r = c
        .get(format!("{}/api/v1/health", base(&hub)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_address_are_capped() {
    let (_d, hub) = running(|c| {
        c.limits.max_connections_per_address = 5;
        c.limits.header_timeout_s = 60;
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(
            raw_tls(&hub, [127, 0, 0, 1], b"http/1.1")
                .await
                .expect("within the cap"),
        );
    }
    // The sixth from the same address is closed before its handshake completes.
    match raw_tls(&hub, [127, 0, 0, 1], b"http/1.1").await {
        Err(_) => {}
        Ok(mut s) => assert!(
            closed_within(&mut s, Duration::from_secs(5)).await,
            "a sixth connection was kept"
        ),
    }
    // Another address is not affected.
    let other = client_from(&hub, [127, 0, 0, 2], true);
    let r = other
        .get(format!("{}/api/v1/health", base(&hub)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // Closing one frees its place.
    drop(held.pop());
    let mut again = None;
    for _ in 0..50 {
        if let Ok(mut s) = raw_tls(&hub, [127, 0, 0, 1], b"http/1.1").await {
            s.write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            let mut answer = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer)).await;
            if answer.starts_with(b"HTTP/1.1 200") {
                again = Some(());
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        again.is_some(),
        "no connection accepted after one of five was closed"
    );
    drop(held);
    hub.stop().await;
}

async fn status_of(
    c: &reqwest::Client,
    hub: &RunningHub,
    method: reqwest::Method,
    path: &str,
) -> StatusCode {
    c.request(method, format!("{}{path}", base(hub)))
        .send()
        .await
        .expect("an HTTP answer")
        .status()
}

async fn audit_records(hub: &RunningHub) -> Vec<Value> {
    tokio::fs::read_to_string(hub.hub.config.audit_log())
        .await
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Monitors poll the liveness probe; it leaves no audit record (its sync would tie liveness to
/// the disk's write-back, and its records would bury the real events). Every other request
/// still leaves one: a denied one, one to an unknown path under it, another method on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_liveness_probe_goes_unaudited() {
    let (_dir, hub) = running(|_| {}).await;
    let c = client_from(&hub, [127, 0, 0, 1], false);
    let before = audit_records(&hub).await.len();
    for _ in 0..5 {
        warm(&c, &hub).await;
    }
    assert_eq!(
        status_of(&c, &hub, reqwest::Method::HEAD, "/api/v1/health").await,
        StatusCode::OK
    );
    assert_eq!(
        audit_records(&hub).await.len(),
        before,
        "the probe is not audited"
    );

    assert_eq!(
        me(&c, &hub, "mft1.not-a-token").await,
        StatusCode::UNAUTHORIZED
    );
    let unknown = status_of(&c, &hub, reqwest::Method::GET, "/api/v1/health/extra").await;
    assert_eq!(
        status_of(&c, &hub, reqwest::Method::POST, "/api/v1/health").await,
        StatusCode::METHOD_NOT_ALLOWED
    );
    let records = audit_records(&hub).await;
    let new: Vec<&Value> = records[before..].iter().collect();
    assert_eq!(new.len(), 3, "{new:?} (unknown path answered {unknown})");
    assert!(
        new.iter().any(|r| r["outcome"] == "denied 401"),
        "the bad token's refusal is audited: {new:?}"
    );
    hub.stop().await;
}
