//! HTTPS for the hub: rustls with TLS 1.3 and 1.2 only (1.1 and below are refused during the
//! handshake), HTTP/2 and HTTP/1.1 by ALPN, bounded header size, and the hub's own accept loop so
//! that each request carries the client's address (for per-client rate limits).
//!
//! Without a configured certificate the hub makes a local CA and a server certificate for
//! `localhost` and `127.0.0.1` (plus configured names) under `<data_dir>/tls`; clients trust
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

fn tls_err(what: impl std::fmt::Display) -> HubError {
    HubError::Tls(what.to_string())
}

pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A server configuration for this chain and key: TLS 1.3 and 1.2 only.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, HubError> {
    let mut cfg = ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(tls_err)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(tls_err)?;
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

/// Files of a generated local CA and server certificate.
pub struct GeneratedTls {
    pub ca_pem: PathBuf,
    pub cert_pem: PathBuf,
    pub key_pem: PathBuf,
}

fn write_private(path: &Path, text: &str) -> Result<(), HubError> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| HubError::io(dir, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o600))
            .map_err(|e| HubError::io(path, e))?;
    }
    tmp.write_all(text.as_bytes())
        .map_err(|e| HubError::io(path, e))?;
    tmp.persist(path).map_err(|e| HubError::io(path, e.error))?;
    Ok(())
}

/// The local CA and server certificate under `dir`, made on first use.
pub fn ensure_generated(dir: &Path, extra_names: &[String]) -> Result<GeneratedTls, HubError> {
    let out = GeneratedTls {
        ca_pem: dir.join("ca.pem"),
        cert_pem: dir.join("server.pem"),
        key_pem: dir.join("server.key"),
    };
    if out.ca_pem.is_file() && out.cert_pem.is_file() && out.key_pem.is_file() {
        return Ok(out);
    }
    std::fs::create_dir_all(dir).map_err(|e| HubError::io(dir, e))?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(tls_err)?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "medfed hub local CA");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let now = rcgen::date_time_ymd(2025, 1, 1);
    ca_params.not_before = now;
    ca_params.not_after = rcgen::date_time_ymd(2045, 1, 1);
    let ca_key = rcgen::KeyPair::generate().map_err(tls_err)?;
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).map_err(tls_err)?;
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    names.extend(extra_names.iter().cloned());
    let mut params = rcgen::CertificateParams::new(names).map_err(tls_err)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "medfed hub");
    params.not_before = now;
    params.not_after = rcgen::date_time_ymd(2036, 1, 1);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key = rcgen::KeyPair::generate().map_err(tls_err)?;
    let cert = params.signed_by(&key, &ca).map_err(tls_err)?;
    // The CA's key is not kept: this CA signs exactly one certificate.
    write_private(&out.key_pem, &key.serialize_pem())?;
    std::fs::write(&out.cert_pem, cert.pem()).map_err(|e| HubError::io(&out.cert_pem, e))?;
    std::fs::write(&out.ca_pem, ca.pem()).map_err(|e| HubError::io(&out.ca_pem, e))?;
    Ok(out)
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
            let svc = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(PeerAddr(peer));
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
