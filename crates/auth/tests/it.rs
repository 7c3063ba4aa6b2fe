//! Token validation against an in-test OIDC issuer (its own RSA keys and JWKS), and API tokens.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use medfed_auth::{ApiTokens, AuthError, JwksSource, OidcValidator};
use serde_json::json;

const ISS: &str = "https://idp.example.test/realms/medfed";
const AUD: &str = "medfed-hub";

fn testdata(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/testdata/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn jwk(kid: &str, key: u8) -> serde_json::Value {
    json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
           "n": testdata(&format!("issuer-key-{key}.n")).trim(), "e": "AQAB"})
}

/// The issuer's JWKS, which a test can rotate, counting fetches.
struct Issuer {
    keys: std::sync::Mutex<serde_json::Value>,
    fetches: AtomicUsize,
}

struct Source(Arc<Issuer>);

impl JwksSource for Source {
    fn fetch(&self) -> Result<JwkSet, AuthError> {
        self.0.fetches.fetch_add(1, Ordering::SeqCst);
        serde_json::from_value(self.0.keys.lock().unwrap().clone())
            .map_err(|e| AuthError::Jwks(e.to_string()))
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn token(kid: Option<&str>, key: u8, claims: serde_json::Value) -> String {
    let mut h = Header::new(Algorithm::RS256);
    h.kid = kid.map(String::from);
    let pem = testdata(&format!("issuer-key-{key}.pem"));
    encode(
        &h,
        &claims,
        &EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
    )
    .unwrap()
}

fn good_claims() -> serde_json::Value {
    json!({"iss": ISS, "aud": AUD, "sub": "alice", "exp": now() + 300, "nbf": now() - 10, "iat": now()})
}

fn setup() -> (Arc<Issuer>, OidcValidator) {
    let issuer = Arc::new(Issuer {
        keys: std::sync::Mutex::new(json!({"keys": [jwk("k1", 1)]})),
        fetches: AtomicUsize::new(0),
    });
    let v = OidcValidator::new(ISS, AUD, Box::new(Source(issuer.clone())))
        .with_leeway(Duration::from_secs(30))
        .with_refetch_interval(Duration::from_millis(300));
    (issuer, v)
}

fn rejected(v: &OidcValidator, t: &str) -> String {
    match v.validate(t) {
        Err(AuthError::Rejected(m)) => m,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[test]
fn a_good_token_names_its_subject() {
    let (_, v) = setup();
    let id = v.validate(&token(Some("k1"), 1, good_claims())).unwrap();
    assert_eq!(id.subject, format!("oidc:{ISS}#alice"));
}

#[test]
fn every_kind_of_bad_token_is_rejected() {
    let (_, v) = setup();
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut c = good_claims();
        f(&mut c);
        token(Some("k1"), 1, c)
    };
    // Expired (beyond the 30 s skew) and not yet valid.
    assert!(rejected(&v, &with(&|c| c["exp"] = json!(now() - 120))).contains("xpired"));
    assert!(
        v.validate(&with(&|c| c["exp"] = json!(now() - 10))).is_ok(),
        "within the skew"
    );
    assert!(rejected(&v, &with(&|c| c["nbf"] = json!(now() + 600))).contains("mmature"));
    // Wrong issuer, wrong or missing audience, missing exp.
    assert!(!rejected(&v, &with(&|c| c["iss"] = json!("https://evil.example"))).is_empty());
    assert!(!rejected(&v, &with(&|c| c["aud"] = json!("another-app"))).is_empty());
    assert!(
        !rejected(
            &v,
            &with(&|c| drop(c.as_object_mut().unwrap().remove("aud")))
        )
        .is_empty()
    );
    assert!(
        !rejected(
            &v,
            &with(&|c| drop(c.as_object_mut().unwrap().remove("exp")))
        )
        .is_empty()
    );
    // No kid, an unknown kid.
    assert!(rejected(&v, &token(None, 1, good_claims())).contains("kid"));
    assert!(rejected(&v, &token(Some("nope"), 1, good_claims())).contains("unknown key"));
    // Signed by another key under the known kid: bad signature.
    assert!(!rejected(&v, &token(Some("k1"), 2, good_claims())).is_empty());
    // A flipped byte in the signature.
    let mut t = token(Some("k1"), 1, good_claims()).into_bytes();
    let last = t.len() - 5;
    t[last] = if t[last] == b'A' { b'B' } else { b'A' };
    assert!(!rejected(&v, &String::from_utf8(t).unwrap()).is_empty());
    // alg "none".
    let body = token(Some("k1"), 1, good_claims());
    let payload = body.split('.').nth(1).unwrap();
    use base64::Engine;
    let none_header =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"alg":"none","kid":"k1"}"#);
    assert!(!rejected(&v, &format!("{none_header}.{payload}.")).is_empty());
    // HS256 with the issuer's public key as the HMAC secret (algorithm confusion).
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some("k1".into());
    let public_pem = testdata("issuer-key-1.pub.pem");
    let forged = encode(
        &h,
        &good_claims(),
        &EncodingKey::from_secret(public_pem.as_bytes()),
    )
    .unwrap();
    assert!(rejected(&v, &forged).contains("not allowed"));
    // Oversized.
    let huge = with(&|c| c["pad"] = json!("x".repeat(10_000)));
    assert!(rejected(&v, &huge).contains("too large"));
}

#[test]
fn key_rotation_is_picked_up_without_restart_and_refetches_are_rate_limited() {
    let (issuer, v) = setup();
    v.validate(&token(Some("k1"), 1, good_claims())).unwrap();
    assert_eq!(issuer.fetches.load(Ordering::SeqCst), 1);
    // Bogus kids in a burst cause at most one refetch per interval.
    for _ in 0..20 {
        assert!(v.validate(&token(Some("bogus"), 1, good_claims())).is_err());
    }
    assert!(
        issuer.fetches.load(Ordering::SeqCst) <= 2,
        "{}",
        issuer.fetches.load(Ordering::SeqCst)
    );
    // The issuer rotates to k2; after the interval a k2 token is accepted.
    *issuer.keys.lock().unwrap() = json!({"keys": [jwk("k2", 2)]});
    std::thread::sleep(Duration::from_millis(350));
    let id = v.validate(&token(Some("k2"), 2, good_claims())).unwrap();
    assert_eq!(id.subject, format!("oidc:{ISS}#alice"));
    // The retired k1 is gone from the fetched set: k1 tokens now fail.
    std::thread::sleep(Duration::from_millis(350));
    assert!(v.validate(&token(Some("k1"), 1, good_claims())).is_err());
}

#[test]
fn api_tokens_are_shown_once_stored_hashed_and_expire_or_revoke() {
    let (token, stored) = ApiTokens::issue("user:42", 2_000);
    assert!(token.starts_with("mf_"));
    let secret = token.rsplit('_').next().unwrap();
    assert!(
        !serde_json::to_string(&stored).unwrap().contains(secret),
        "the secret is not stored"
    );
    assert_eq!(ApiTokens::id_of(&token), Some(stored.id.as_str()));
    assert_eq!(
        ApiTokens::verify(&token, &stored, 1_000).unwrap().subject,
        "user:42"
    );
    assert!(
        ApiTokens::verify(&token, &stored, 2_000).is_err(),
        "expired"
    );
    let mut revoked = stored.clone();
    revoked.revoked = true;
    assert!(ApiTokens::verify(&token, &revoked, 1_000).is_err());
    // One character of the secret changed (to a different one: the last may already be 'Q').
    let mut wrong = token.clone();
    let last = wrong.pop().unwrap();
    wrong.push(if last == 'Q' { 'R' } else { 'Q' });
    assert!(ApiTokens::verify(&wrong, &stored, 1_000).is_err());
    assert!(ApiTokens::id_of("Bearer abc").is_none());
    let (other, _) = ApiTokens::issue("user:42", 2_000);
    assert!(ApiTokens::verify(&other, &stored, 1_000).is_err());
}

/// A JWKS source that blocks in `fetch` until the test opens the gate, announcing each fetch.
struct GatedSource {
    issuer: Arc<Issuer>,
    started: std::sync::mpsc::Sender<()>,
    gate: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
}

impl JwksSource for GatedSource {
    fn fetch(&self) -> Result<JwkSet, AuthError> {
        let _ = self.started.send(());
        let (open, cv) = &*self.gate;
        let mut g = open.lock().unwrap();
        while !*g {
            g = cv.wait(g).unwrap();
        }
        drop(g);
        Source(self.issuer.clone()).fetch()
    }
}

#[test]
fn a_slow_refetch_never_blocks_logins_with_known_keys_and_is_fetched_once() {
    let issuer = Arc::new(Issuer {
        keys: std::sync::Mutex::new(json!({"keys": [jwk("k1", 1)]})),
        fetches: AtomicUsize::new(0),
    });
    let (started_tx, started) = std::sync::mpsc::channel();
    let gate = Arc::new((std::sync::Mutex::new(true), std::sync::Condvar::new()));
    let v = Arc::new(
        OidcValidator::new(
            ISS,
            AUD,
            Box::new(GatedSource {
                issuer: issuer.clone(),
                started: started_tx,
                gate: gate.clone(),
            }),
        )
        .with_refetch_interval(Duration::ZERO)
        .with_fetch_wait(Duration::from_secs(30)),
    );
    // The first login fills the cache with k1 (gate open).
    v.validate(&token(Some("k1"), 1, good_claims())).unwrap();
    started.recv().unwrap();
    assert_eq!(issuer.fetches.load(Ordering::SeqCst), 1);
    // The issuer rotates in k2 and becomes slow: the fetch for k2 hangs until the gate opens.
    *issuer.keys.lock().unwrap() = json!({"keys": [jwk("k1", 1), jwk("k2", 2)]});
    *gate.0.lock().unwrap() = false;
    let new_kid = |v: &Arc<OidcValidator>| {
        let v = v.clone();
        std::thread::spawn(move || v.validate(&token(Some("k2"), 2, good_claims())))
    };
    let first = new_kid(&v);
    started
        .recv_timeout(Duration::from_secs(30))
        .expect("the k2 login starts a fetch");
    // Five more logins with k2 while that fetch hangs: they wait for it, none starts another.
    let waiting: Vec<_> = (0..5).map(|_| new_kid(&v)).collect();
    // A login with the cached k1 is answered while the fetch is still hanging.
    let (tx, rx) = std::sync::mpsc::channel();
    let known = v.clone();
    std::thread::spawn(move || {
        let _ = tx.send(known.validate(&token(Some("k1"), 1, good_claims())));
    });
    let answer = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("a login with a cached key must not wait for the issuer");
    assert_eq!(answer.unwrap().subject, format!("oidc:{ISS}#alice"));
    assert!(!*gate.0.lock().unwrap(), "the fetch was still hanging");
    // The issuer answers: every k2 login succeeds, from the one fetch.
    *gate.0.lock().unwrap() = true;
    gate.1.notify_all();
    for h in std::iter::once(first).chain(waiting) {
        assert_eq!(
            h.join().unwrap().unwrap().subject,
            format!("oidc:{ISS}#alice")
        );
    }
    assert_eq!(issuer.fetches.load(Ordering::SeqCst), 2);
    assert!(started.try_recv().is_err(), "a second fetch was started");
}
