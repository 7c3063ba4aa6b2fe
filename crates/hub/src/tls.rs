//! HTTPS for the hub: rustls with TLS 1.3 and 1.2 only (1.1 and below are refused during the
//! handshake), HTTP/2 and HTTP/1.1 by ALPN, bounded header size, and the hub's own accept loop so
//! that each request carries the client's address (for per-client rate limits).
//!
//! The hub keeps its own CA under `<data_dir>/tls` (`ca.pem`, `ca.key`): it signs the site
//! nodes' client certificates (mutual TLS) and, without a configured certificate, the hub's
//! server certificate for `localhost` and `127.0.0.1` (plus configured names); clients trust
//! `ca.pem`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::HubError;

/// The client's address, put into every request's extensions by the accept loop.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// The fingerprint of the client certificate the connection was authenticated with (verified
/// against the hub's CA during the handshake), in every request's extensions.
#[derive(Debug, Clone)]
pub struct PeerCertificate(pub String);

fn tls_err(what: impl std::fmt::Display) -> HubError {
    HubError::Tls(what.to_string())
}

pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A server configuration for this chain and key: TLS 1.3 and 1.2 only.
/// With `client_ca`, client certificates are optional at the handshake (people use bearer
/// tokens); one that is presented must chain to `client_ca` (the hub's CA, which signs site
/// certificates) and be within its validity, or the handshake fails.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_ca: Option<CertificateDer<'static>>,
) -> Result<Arc<ServerConfig>, HubError> {
    let builder = ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(tls_err)?;
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca).map_err(tls_err)?;
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                crypto_provider(),
            )
            .allow_unauthenticated()
            .build()
            .map_err(tls_err)?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder.with_single_cert(chain, key).map_err(tls_err)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

pub fn load_pem(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), HubError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| tls_err(format!("{}: {e}", cert.display())))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_err(format!("{}: {e}", cert.display())))?;
    if chain.is_empty() {
        return Err(tls_err(format!("{}: no certificate in it", cert.display())));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| tls_err(format!("{}: {e}", key.display())))?;
    Ok((chain, key))
}

/// Files of the hub's CA and a generated server certificate.
pub struct GeneratedTls {
    pub ca_pem: PathBuf,
    pub cert_pem: PathBuf,
    pub key_pem: PathBuf,
}

pub(crate) fn write_private(path: &Path, text: &str) -> Result<(), HubError> {
    write_atomically(path, text, true)
}

/// Write through a temporary file and rename, so a reader never sees half a certificate.
pub(crate) fn write_atomically(path: &Path, text: &str, private: bool) -> Result<(), HubError> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| HubError::io(dir, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = if private { 0o600 } else { 0o644 };
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(mode))
            .map_err(|e| HubError::io(path, e))?;
    }
    tmp.write_all(text.as_bytes())
        .and_then(|_| tmp.as_file().sync_all())
        .map_err(|e| HubError::io(path, e))?;
    tmp.persist(path).map_err(|e| HubError::io(path, e.error))?;
    Ok(())
}

/// The hub's CA: it signs the generated server certificate and the sites' client
/// certificates. Sites pin it at enrolment, so a re-issued server certificate (same CA) keeps
/// working for them.
pub struct HubCa {
    pub cert_pem: String,
    key: rcgen::KeyPair,
}

impl HubCa {
    /// `<dir>/ca.pem` and `<dir>/ca.key` (0600), made on first use.
    pub fn load_or_create(dir: &Path) -> Result<HubCa, HubError> {
        let (cert, key) = (dir.join("ca.pem"), dir.join("ca.key"));
        if cert.is_file() && key.is_file() {
            let cert_pem = std::fs::read_to_string(&cert).map_err(|e| HubError::io(&cert, e))?;
            let key_pem = std::fs::read_to_string(&key).map_err(|e| HubError::io(&key, e))?;
            let key = rcgen::KeyPair::from_pem(&key_pem).map_err(tls_err)?;
            return Ok(HubCa { cert_pem, key });
        }
        std::fs::create_dir_all(dir).map_err(|e| HubError::io(dir, e))?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(tls_err)?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "medfed hub CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        params.not_before = rcgen::date_time_ymd(2025, 1, 1);
        params.not_after = rcgen::date_time_ymd(2045, 1, 1);
        let key_pair = rcgen::KeyPair::generate().map_err(tls_err)?;
        let ca = params.self_signed(&key_pair).map_err(tls_err)?;
        // A new CA invalidates a server certificate of an older one.
        let _ = std::fs::remove_file(dir.join("server.pem"));
        write_private(&key, &key_pair.serialize_pem())?;
        write_atomically(&cert, &ca.pem(), false)?;
        Ok(HubCa {
            cert_pem: ca.pem(),
            key: key_pair,
        })
    }

    fn issuer(&self) -> Result<rcgen::Issuer<'static, &rcgen::KeyPair>, HubError> {
        rcgen::Issuer::from_ca_cert_pem(&self.cert_pem, &self.key).map_err(tls_err)
    }

    /// The CA as a trust anchor (for verifying client certificates).
    pub fn der(&self) -> Result<CertificateDer<'static>, HubError> {
        CertificateDer::from_pem_slice(self.cert_pem.as_bytes()).map_err(tls_err)
    }

    /// A new server certificate (and key) for `localhost`, `127.0.0.1` and `extra_names`,
    /// written atomically under `dir`.
    pub fn issue_server_certificate(
        &self,
        dir: &Path,
        extra_names: &[String],
    ) -> Result<GeneratedTls, HubError> {
        let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        names.extend(extra_names.iter().cloned());
        let mut params = rcgen::CertificateParams::new(names).map_err(tls_err)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "medfed hub");
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = now + time::Duration::days(397);
        params.serial_number = Some(random_serial());
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = rcgen::KeyPair::generate().map_err(tls_err)?;
        let cert = params.signed_by(&key, &self.issuer()?).map_err(tls_err)?;
        let out = GeneratedTls {
            ca_pem: dir.join("ca.pem"),
            cert_pem: dir.join("server.pem"),
            key_pem: dir.join("server.key"),
        };
        write_private(&out.key_pem, &key.serialize_pem())?;
        write_atomically(&out.cert_pem, &cert.pem(), false)?;
        Ok(out)
    }

    /// Sign a site's certificate request: the hub decides every field (subject `site:<id>`,
    /// client authentication only, `lifetime`); only the public key comes from the request.
    pub fn sign_site(
        &self,
        csr_pem: &str,
        site_id: &str,
        lifetime: Duration,
    ) -> Result<SignedSiteCertificate, HubError> {
        let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| HubError::Invalid(format!("certificate request: {e}")))?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(tls_err)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("site:{site_id}"));
        let now = time::OffsetDateTime::now_utc();
        let not_after = now + lifetime;
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = not_after;
        let serial = random_serial();
        params.serial_number = Some(serial.clone());
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        let request = rcgen::CertificateSigningRequestParams {
            params,
            public_key: csr.public_key,
        };
        let cert = request.signed_by(&self.issuer()?).map_err(tls_err)?;
        Ok(SignedSiteCertificate {
            pem: cert.pem(),
            fingerprint: fingerprint(cert.der()),
            serial: hex::encode(serial.to_bytes()),
            not_after_ms: (not_after.unix_timestamp_nanos() / 1_000_000) as i64,
        })
    }
}

/// A client certificate just signed for a site.
pub struct SignedSiteCertificate {
    pub pem: String,
    pub fingerprint: String,
    pub serial: String,
    pub not_after_ms: i64,
}

fn random_serial() -> rcgen::SerialNumber {
    let mut b: [u8; 16] = rand::random();
    b[0] &= 0x7f; // positive
    rcgen::SerialNumber::from_slice(&b)
}

/// SHA-256 of a certificate's DER, hex: how the hub recognises a site's certificate.
pub fn fingerprint(der: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(der))
}

/// The hub's CA and a server certificate under `dir`, made on first use.
pub fn ensure_generated(dir: &Path, extra_names: &[String]) -> Result<GeneratedTls, HubError> {
    let ca = HubCa::load_or_create(dir)?;
    let out = GeneratedTls {
        ca_pem: dir.join("ca.pem"),
        cert_pem: dir.join("server.pem"),
        key_pem: dir.join("server.key"),
    };
    if out.cert_pem.is_file() && out.key_pem.is_file() {
        return Ok(out);
    }
    ca.issue_server_certificate(dir, extra_names)
}

/// Accept TLS connections on `listener` and serve `app` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    app: Router,
    max_header_bytes: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake refused");
                        return;
                    }
                    Err(_) => return,
                };
            let client_cert = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| PeerCertificate(fingerprint(c)));
            let svc = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(PeerAddr(peer));
                    if let Some(c) = &client_cert {
                        req.extensions_mut().insert(c.clone());
                    }
                    tower::ServiceExt::oneshot(app.clone(), req)
                },
            );
            let mut b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            b.http1()
                .max_buf_size(max_header_bytes.max(8192))
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30));
            b.http2()
                .max_header_list_size(max_header_bytes as u32)
                .timer(TokioTimer::new());
            if let Err(e) = b.serve_connection(TokioIo::new(tls), svc).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}
