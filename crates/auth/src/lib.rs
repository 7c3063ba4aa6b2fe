//! Who is calling the hub. Two kinds of credentials, both failing closed:
//!
//! - [`OidcValidator`]: OIDC bearer tokens (JWTs) from the configured issuer, checked against the
//!   issuer's JWKS: signature, an algorithm allow-list (asymmetric only, so a token signed with the
//!   public key as an HMAC secret is refused), `iss`, `aud`, `exp` (required), `nbf`, with a
//!   bounded clock skew. An unknown `kid` triggers one JWKS refetch, at most once per interval, so
//!   key rotation works without a restart and a flood of bogus kids cannot hammer the issuer.
//!   The fetch runs without the cache lock (logins with cached keys never wait for the issuer)
//!   and is single-flight: concurrent logins with the new kid wait for the one fetch.
//! - [`ApiTokens`]: hub-issued tokens for the CLI: shown once, stored only as a hash, expiring,
//!   revocable.
//!
//! Authorisation is not decided here (see `medfed-policy`).

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Why a credential was refused. The messages are for logs; clients get a plain 401.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AuthError {
    #[error("token rejected: {0}")]
    Rejected(String),
    #[error("the issuer's keys could not be fetched: {0}")]
    Jwks(String),
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// `oidc:<issuer>#<sub>` or `token:<id>` style subject, stable across sessions.
    pub subject: String,
}

/// Where the JWKS comes from (HTTPS in the hub; anything in tests).
pub trait JwksSource: Send + Sync {
    fn fetch(&self) -> Result<JwkSet, AuthError>;
}

/// Tokens larger than this are refused before parsing.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
}

/// Validates OIDC bearer tokens of one issuer and audience.
pub struct OidcValidator {
    issuer: String,
    audience: String,
    /// Allowed clock skew for `exp` and `nbf`.
    leeway: Duration,
    /// Minimum time between two JWKS fetches caused by unknown key ids.
    refetch_interval: Duration,
    /// Longest wait for a fetch another login started.
    fetch_wait: Duration,
    source: Box<dyn JwksSource>,
    cache: Mutex<Cache>,
    /// Signalled when a fetch ends.
    fetch_done: Condvar,
}

struct Cache {
    keys: Option<JwkSet>,
    /// When the last fetch started.
    fetched: Option<Instant>,
    /// A fetch is in flight (the lock is not held during it).
    fetching: bool,
}

/// Asymmetric algorithms only: an HMAC algorithm would turn a public key into a shared secret.
const ALLOWED: [Algorithm; 5] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::ES256,
    Algorithm::PS256,
];

impl OidcValidator {
    pub fn new(issuer: &str, audience: &str, source: Box<dyn JwksSource>) -> Self {
        OidcValidator {
            issuer: issuer.to_string(),
            audience: audience.to_string(),
            leeway: Duration::from_secs(60),
            refetch_interval: Duration::from_secs(30),
            fetch_wait: Duration::from_secs(15),
            source,
            cache: Mutex::new(Cache {
                keys: None,
                fetched: None,
                fetching: false,
            }),
            fetch_done: Condvar::new(),
        }
    }

    pub fn with_leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    pub fn with_refetch_interval(mut self, interval: Duration) -> Self {
        self.refetch_interval = interval;
        self
    }

    /// How long a login with an unknown key id waits for a fetch already in flight before it
    /// is refused (the source's own timeout should be shorter).
    pub fn with_fetch_wait(mut self, wait: Duration) -> Self {
        self.fetch_wait = wait;
        self
    }

    /// Check a bearer token; on success, who it names.
    pub fn validate(&self, token: &str) -> Result<Identity, AuthError> {
        let reject = |m: &str| Err(AuthError::Rejected(m.to_string()));
        if token.len() > MAX_TOKEN_BYTES {
            return reject("token too large");
        }
        let header =
            decode_header(token).map_err(|e| AuthError::Rejected(format!("malformed: {e}")))?;
        if !ALLOWED.contains(&header.alg) {
            return Err(AuthError::Rejected(format!(
                "algorithm {:?} is not allowed",
                header.alg
            )));
        }
        let Some(kid) = header.kid.as_deref() else {
            return reject("no key id (kid)");
        };
        let jwk = self.key_for(kid)?;
        let key = DecodingKey::from_jwk(&jwk)
            .map_err(|e| AuthError::Rejected(format!("unusable key {kid}: {e}")))?;
        // jsonwebtoken refuses an algorithm whose family differs from the key's (an EC key with
        // RS256, say); the allow-list above has already excluded HMAC and `none`.
        let mut v = Validation::new(header.alg);
        v.algorithms = vec![header.alg];
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&[&self.audience]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        v.validate_nbf = true;
        v.leeway = self.leeway.as_secs();
        let data =
            decode::<Claims>(token, &key, &v).map_err(|e| AuthError::Rejected(e.to_string()))?;
        Ok(Identity {
            subject: format!("oidc:{}#{}", self.issuer, data.claims.sub),
        })
    }

    /// The key with this id, fetching the JWKS when it is unknown (rate-limited).
    ///
    /// The cache lock is never held across the fetch: a login whose key is cached never waits
    /// for the issuer. One fetch is in flight at a time; callers that need it wait for its
    /// outcome (at most `fetch_wait`) instead of starting their own.
    fn key_for(&self, kid: &str) -> Result<jsonwebtoken::jwk::Jwk, AuthError> {
        let unknown = || AuthError::Rejected(format!("unknown key id {kid}"));
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = cache.find(kid) {
            return Ok(k);
        }
        if cache.fetching {
            let deadline = Instant::now() + self.fetch_wait;
            while cache.fetching {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(unknown());
                }
                cache = self
                    .fetch_done
                    .wait_timeout(cache, left)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            // That fetch was this interval's: its keys are all there is to look at.
            return cache.find(kid).ok_or_else(unknown);
        }
        let may_fetch = cache
            .fetched
            .is_none_or(|t| t.elapsed() >= self.refetch_interval);
        if !may_fetch {
            return Err(unknown());
        }
        cache.fetched = Some(Instant::now());
        cache.fetching = true;
        drop(cache);
        // Clears `fetching` and wakes the waiters however the fetch ends (a panic included).
        let done = FetchDone(self);
        let fresh = self.source.fetch();
        // The new keys are in the cache before `done` wakes the waiters (it drops last).
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        // A failed fetch keeps the keys we had: fail closed for unknown kids only.
        let fresh = fresh?;
        cache.keys = Some(fresh);
        let found = cache.find(kid);
        drop(cache);
        drop(done);
        found.ok_or_else(unknown)
    }
}

/// Ends a fetch in flight: clears the flag and wakes everyone waiting on it.
struct FetchDone<'a>(&'a OidcValidator);

impl Drop for FetchDone<'_> {
    fn drop(&mut self) {
        let mut cache = self.0.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.fetching = false;
        drop(cache);
        self.0.fetch_done.notify_all();
    }
}

impl Cache {
    fn find(&self, kid: &str) -> Option<jsonwebtoken::jwk::Jwk> {
        self.keys.as_ref().and_then(|s| s.find(kid)).cloned()
    }
}

/// A hub-issued API token as stored: the hash of its secret, never the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredToken {
    pub id: String,
    pub subject: String,
    /// SHA-256 of the secret part, hex. The secret has 256 bits of entropy, so a fast hash
    /// suffices (no password stretching needed).
    pub secret_sha256: String,
    /// Seconds since 1970.
    pub expires_at: u64,
    pub revoked: bool,
}

/// Issue and check API tokens of the form `mf_<id>_<secret>`.
pub struct ApiTokens;

impl ApiTokens {
    /// A new token for `subject`: the string to show once, and what to store.
    pub fn issue(subject: &str, expires_at: u64) -> (String, StoredToken) {
        use base64::Engine;
        let mut id = [0u8; 8];
        let mut secret = [0u8; 32];
        rand::fill(&mut id);
        rand::fill(&mut secret);
        let id = hex::encode(id);
        let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
        let stored = StoredToken {
            id: id.clone(),
            subject: subject.to_string(),
            secret_sha256: hex::encode(Sha256::digest(secret.as_bytes())),
            expires_at,
            revoked: false,
        };
        (format!("mf_{id}_{secret}"), stored)
    }

    /// The id part of a presented token (to look the stored record up), if well formed.
    pub fn id_of(token: &str) -> Option<&str> {
        let rest = token.strip_prefix("mf_")?;
        let (id, secret) = rest.split_once('_')?;
        (id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()) && !secret.is_empty())
            .then_some(id)
    }

    /// Check a presented token against its stored record at time `now` (seconds since 1970).
    pub fn verify(token: &str, stored: &StoredToken, now: u64) -> Result<Identity, AuthError> {
        let reject = |m: &str| Err(AuthError::Rejected(m.to_string()));
        if token.len() > MAX_TOKEN_BYTES {
            return reject("token too large");
        }
        let Some(id) = Self::id_of(token) else {
            return reject("not a medfed API token");
        };
        let secret = &token[3 + id.len() + 1..];
        if id != stored.id {
            return reject("token id does not match");
        }
        let presented = hex::encode(Sha256::digest(secret.as_bytes()));
        if !bool::from(presented.as_bytes().ct_eq(stored.secret_sha256.as_bytes())) {
            return reject("wrong secret");
        }
        if stored.revoked {
            return reject("revoked");
        }
        if now >= stored.expires_at {
            return reject("expired");
        }
        Ok(Identity {
            subject: stored.subject.clone(),
        })
    }
}
