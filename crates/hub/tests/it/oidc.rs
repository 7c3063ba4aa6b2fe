//! OIDC bearer tokens through the hub, against an in-test issuer whose JWKS is served over
//! HTTPS on 127.0.0.1 (its own generated CA); key rotation is picked up without a restart.

use std::sync::{Arc, Mutex};

use axum::Json;
use axum::routing::get;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use medfed_hub::client::HubClient;
use medfed_hub::config::OidcConfig;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{config_in, fresh_database};

const ISS: &str = "https://issuer.test";
const AUD: &str = "medfed-hub";

fn testdata(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/../auth/tests/testdata/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
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

fn token(kid: Option<&str>, key: u8, claims: &Value) -> String {
    let mut h = Header::new(Algorithm::RS256);
    h.kid = kid.map(String::from);
    encode(
        &h,
        claims,
        &EncodingKey::from_rsa_pem(testdata(&format!("issuer-key-{key}.pem")).as_bytes()).unwrap(),
    )
    .unwrap()
}

fn good() -> Value {
    json!({"iss": ISS, "aud": AUD, "sub": "alice", "exp": now() + 300, "nbf": now() - 10, "iat": now()})
}

/// The issuer: a JWKS document served over HTTPS by the hub's own TLS stack.
async fn issuer(
    dir: &std::path::Path,
    keys: Arc<Mutex<Value>>,
) -> (String, std::path::PathBuf, tokio::sync::watch::Sender<bool>) {
    let tls = medfed_hub::tls::ensure_generated(&dir.join("issuer-tls"), &[]).unwrap();
    let (chain, key) = medfed_hub::tls::load_pem(&tls.cert_pem, &tls.key_pem).unwrap();
    let cfg = medfed_hub::tls::server_config(chain, key, None).unwrap();
    let app = axum::Router::new().route(
        "/jwks.json",
        get(move || {
            let keys = keys.clone();
            async move { Json(keys.lock().unwrap().clone()) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(medfed_hub::tls::serve(listener, cfg, app, 16 * 1024, rx));
    (
        format!("https://127.0.0.1:{port}/jwks.json"),
        tls.ca_pem,
        tx,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_tokens_are_checked_against_the_issuers_jwks_over_https() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Arc::new(Mutex::new(json!({"keys": [jwk("k1", 1)]})));
    let (jwks_url, issuer_ca, _stop) = issuer(dir.path(), keys.clone()).await;
    let mut cfg = config_in(dir.path(), fresh_database("sqlite", dir.path()).await);
    cfg.oidc = Some(OidcConfig {
        issuer: ISS.into(),
        audience: AUD.into(),
        jwks_url,
        ca_file: Some(issuer_ca),
        leeway_s: 30,
        refetch_interval_s: 0,
    });
    cfg.limits.auth_failures = 1000;
    let hub = medfed_hub::start(cfg).await.unwrap();
    hub.hub
        .catalogue
        .create_user(&format!("oidc:{ISS}#alice"), None, false)
        .await
        .unwrap();
    let client = HubClient::new(
        &format!("https://127.0.0.1:{}", hub.addr.port()),
        hub.ca_pem.as_deref(),
    )
    .unwrap();
    let me = |t: String| {
        let c = client.with_token(&t);
        async move {
            c.send(c.request(reqwest::Method::GET, "/api/v1/me"))
                .await
                .unwrap()
                .0
        }
    };
    assert_eq!(me(token(Some("k1"), 1, &good())).await, StatusCode::OK);

    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = good();
        f(&mut c);
        token(Some("k1"), 1, &c)
    };
    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let payload = token(Some("k1"), 1, &good())
        .split('.')
        .nth(1)
        .unwrap()
        .to_string();
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some("k1".into());
    let mut flipped = token(Some("k1"), 1, &good()).into_bytes();
    let i = flipped.len() - 5;
    flipped[i] = if flipped[i] == b'A' { b'B' } else { b'A' };
    let bad = [
        ("expired", with(&|c| c["exp"] = json!(now() - 120))),
        ("not yet valid", with(&|c| c["nbf"] = json!(now() + 600))),
        (
            "wrong issuer",
            with(&|c| c["iss"] = json!("https://evil.example")),
        ),
        ("wrong audience", with(&|c| c["aud"] = json!("another-app"))),
        (
            "missing audience",
            with(&|c| drop(c.as_object_mut().unwrap().remove("aud"))),
        ),
        (
            "missing exp",
            with(&|c| drop(c.as_object_mut().unwrap().remove("exp"))),
        ),
        ("unknown kid", token(Some("k9"), 1, &good())),
        (
            "alg none",
            format!("{}.{payload}.", b64(br#"{"alg":"none","kid":"k1"}"#)),
        ),
        (
            "HS256 with the public key",
            encode(
                &hs,
                &good(),
                &EncodingKey::from_secret(testdata("issuer-key-1.pub.pem").as_bytes()),
            )
            .unwrap(),
        ),
        ("bad signature", token(Some("k1"), 2, &good())),
        ("flipped byte", String::from_utf8(flipped).unwrap()),
        ("oversized", with(&|c| c["pad"] = json!("x".repeat(10_000)))),
        ("unknown subject", with(&|c| c["sub"] = json!("mallory"))),
    ];
    for (what, t) in bad {
        assert_eq!(me(t).await, StatusCode::UNAUTHORIZED, "{what}");
    }
    // Rotation at the issuer: the new kid is fetched on first sight, without a restart.
    *keys.lock().unwrap() = json!({"keys": [jwk("k2", 2)]});
    assert_eq!(me(token(Some("k2"), 2, &good())).await, StatusCode::OK);
    hub.stop().await;
}
