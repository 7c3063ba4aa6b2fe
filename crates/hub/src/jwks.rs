//! The OIDC issuer's JWKS, fetched over HTTPS (rustls, certificate verified; plain HTTP is
//! refused), for `medfed_auth::OidcValidator`.
//!
//! The validator is synchronous and is called from blocking threads; the fetch runs on the
//! hub's runtime through its handle.

use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use medfed_auth::{AuthError, JwksSource, OidcValidator};
use tokio::runtime::Handle;

use crate::HubError;
use crate::config::OidcConfig;

/// Larger JWKS documents are refused (a real issuer's set is a few KiB).
pub const MAX_JWKS_BYTES: usize = 256 * 1024;

pub struct HttpsJwks {
    url: String,
    client: reqwest::Client,
    rt: Handle,
}

impl HttpsJwks {
    pub fn new(url: &str, extra_ca_pem: Option<&[u8]>) -> Result<HttpsJwks, HubError> {
        if !url.starts_with("https://") {
            return Err(HubError::Invalid(format!(
                "the JWKS address must be https:// ({url})"
            )));
        }
        let mut b = reqwest::Client::builder()
            .https_only(true)
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none());
        if let Some(pem) = extra_ca_pem {
            let cert = reqwest::Certificate::from_pem(pem)
                .map_err(|e| HubError::Tls(format!("JWKS CA certificate: {e}")))?;
            b = b.add_root_certificate(cert);
        }
        let client = b
            .build()
            .map_err(|e| HubError::Tls(format!("JWKS client: {e}")))?;
        let rt = Handle::try_current()
            .map_err(|e| HubError::Invalid(format!("the JWKS fetcher needs a runtime: {e}")))?;
        Ok(HttpsJwks {
            url: url.to_string(),
            client,
            rt,
        })
    }
}

impl JwksSource for HttpsJwks {
    fn fetch(&self) -> Result<JwkSet, AuthError> {
        let fail = |e: String| AuthError::Jwks(e);
        self.rt.block_on(async {
            let mut resp = self
                .client
                .get(&self.url)
                .send()
                .await
                .map_err(|e| fail(e.to_string()))?;
            if !resp.status().is_success() {
                return Err(fail(format!("{} answered {}", self.url, resp.status())));
            }
            // Read chunk by chunk and stop at the cap: an endless or huge answer costs at most
            // MAX_JWKS_BYTES of memory and the time to read them, never the whole body.
            if resp
                .content_length()
                .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
            {
                return Err(fail("JWKS too large".into()));
            }
            let mut body = Vec::new();
            while let Some(chunk) = resp.chunk().await.map_err(|e| fail(e.to_string()))? {
                if body.len() + chunk.len() > MAX_JWKS_BYTES {
                    return Err(fail("JWKS too large".into()));
                }
                body.extend_from_slice(&chunk);
            }
            serde_json::from_slice(&body).map_err(|e| fail(format!("JWKS unreadable: {e}")))
        })
    }
}

/// The validator the configuration describes.
// Built once at start-up.
#[allow(clippy::disallowed_methods)]
pub fn validator(o: &OidcConfig) -> Result<OidcValidator, HubError> {
    let ca = o
        .ca_file
        .as_ref()
        .map(|p| std::fs::read(p).map_err(|e| HubError::io(p, e)))
        .transpose()?;
    let source = HttpsJwks::new(&o.jwks_url, ca.as_deref())?;
    Ok(OidcValidator::new(&o.issuer, &o.audience, Box::new(source))
        .with_leeway(Duration::from_secs(o.leeway_s))
        .with_refetch_interval(Duration::from_secs(o.refetch_interval_s)))
}
