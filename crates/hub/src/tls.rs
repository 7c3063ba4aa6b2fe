//! HTTPS for the hub: rustls with TLS 1.3 and 1.2 only (1.1 and below are refused during the
//! handshake), HTTP/2 and HTTP/1.1 by ALPN, and the hub's own accept loop so that each request
//! carries the client's address (for per-client rate limits). The loop bounds what one client
//! can hold: header size (431), header and handshake time, idle time, open connections per
//! address; after an early answer (413, 431) it keeps reading what the client still sends, so
//! the client gets the answer rather than a reset.
//!
//! The hub keeps its own CA under `<data_dir>/tls` (`ca.pem`, `ca.key`): it signs the site
//! nodes' client certificates (mutual TLS) and, without a configured certificate, the hub's
//! server certificate for `localhost` and `127.0.0.1` (plus configured names); clients trust
//! `ca.pem`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
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

/// Write through a temporary file and rename (medfed-durable), so a reader never sees half a
/// certificate; `private` files are created 0600.
// Called at start-up and by host-side commands (certificates), never on a request path.
#[allow(clippy::disallowed_methods)]
pub(crate) fn write_atomically(path: &Path, text: &str, private: bool) -> Result<(), HubError> {
    let how = if private {
        medfed_durable::Publish::PRIVATE
    } else {
        medfed_durable::Publish::REPLACE
    };
    medfed_durable::write_atomically(path, text.as_bytes(), how).map_err(|e| HubError::io(path, e))
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
    // Start-up and host-side commands only, before or beside serving: never on a request path.
    #[allow(clippy::disallowed_methods)]
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

/// What one client may hold of the accept loop.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// All request headers together: larger ones are answered 431.
    pub max_header_bytes: usize,
    /// Longest a TLS handshake, an HTTP/1.1 request's headers, or (HTTP/2) the first request
    /// may take; slower connections are closed.
    pub header_timeout: Duration,
    /// Open connections per client address (IPv6: per /64); more are closed at accept.
    pub max_connections_per_address: usize,
}

impl ConnectionLimits {
    pub fn from_limits(l: &crate::config::Limits) -> ConnectionLimits {
        ConnectionLimits {
            max_header_bytes: l.max_header_bytes,
            header_timeout: Duration::from_secs(l.header_timeout_s.max(1)),
            max_connections_per_address: l.max_connections_per_address.max(1),
        }
    }
}

/// A connection with no request in flight and no bytes moved for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// After the hub has answered and closed, how long it keeps reading (and discarding) what the
/// client is still sending, so that the client reads the answer (413, 431) instead of a reset.
const LINGER: Duration = Duration::from_secs(30);
const LINGER_IDLE: Duration = Duration::from_secs(5);

/// Accept TLS connections on `listener` and serve `app` until `shutdown` turns true, with the
/// default connection limits and this header size.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    app: Router,
    max_header_bytes: usize,
    shutdown: watch::Receiver<bool>,
) {
    let limits = ConnectionLimits {
        max_header_bytes,
        ..ConnectionLimits::from_limits(&crate::config::Limits::default())
    };
    serve_with(listener, tls, app, limits, shutdown).await
}

/// Open connections per client address.
#[derive(Default)]
struct OpenConnections(std::sync::Mutex<HashMap<IpAddr, usize>>);

/// One counted connection; uncounted when dropped.
struct ConnectionSlot {
    open: Arc<OpenConnections>,
    key: IpAddr,
}

impl OpenConnections {
    fn take(self: &Arc<Self>, peer: IpAddr, max: usize) -> Option<ConnectionSlot> {
        // One host usually holds a whole IPv6 /64.
        let key = match peer {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => {
                    let s = v6.segments();
                    IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
                }
            },
            v4 => v4,
        };
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(key).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(ConnectionSlot {
            open: self.clone(),
            key,
        })
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut m = self.open.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.key);
            }
        }
    }
}

/// What a connection is doing, for the idle watchdog.
struct Activity {
    born: Instant,
    requests: AtomicU64,
    in_flight: AtomicUsize,
    /// Milliseconds after `born` when bytes last moved.
    last_io_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        self.last_io_ms
            .store(self.born.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// One request of a connection in flight; ends when dropped.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// The TLS stream shared between hyper and the accept loop, so that the loop can still read
/// from it (linger) after hyper has finished with the connection.
struct SharedIo<T> {
    io: Arc<std::sync::Mutex<T>>,
    activity: Arc<Activity>,
}

impl<T: AsyncRead + Unpin> AsyncRead for SharedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let mut io = self.io.lock().unwrap_or_else(|p| p.into_inner());
        let r = Pin::new(&mut *io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for SharedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let mut io = self.io.lock().unwrap_or_else(|p| p.into_inner());
        let r = Pin::new(&mut *io).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let mut io = self.io.lock().unwrap_or_else(|p| p.into_inner());
        Pin::new(&mut *io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let mut io = self.io.lock().unwrap_or_else(|p| p.into_inner());
        Pin::new(&mut *io).poll_shutdown(cx)
    }
}

/// A request's header list size as HTTP/2 counts it (RFC 9113 6.5.2: name, value, 32 each).
fn header_list_size<B>(req: &hyper::Request<B>) -> usize {
    let fields: usize = req
        .headers()
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 32)
        .sum();
    fields + req.uri().to_string().len() + req.method().as_str().len()
}

fn header_too_large() -> axum::response::Response {
    let mut r = axum::response::Response::new(axum::body::Body::from("request headers too large"));
    *r.status_mut() = hyper::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
    r
}

/// Resolves when the connection should be closed for idleness: no request after
/// `header_timeout` (a client that connects and sends nothing, or an HTTP/2 client whose first
/// request never completes), or nothing in flight and no bytes moved for [`IDLE_TIMEOUT`].
async fn idle(activity: &Activity, header_timeout: Duration) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        if activity.in_flight.load(Ordering::Relaxed) > 0 {
            continue;
        }
        let age = activity.born.elapsed();
        if activity.requests.load(Ordering::Relaxed) == 0 && age >= header_timeout {
            return;
        }
        let last = Duration::from_millis(activity.last_io_ms.load(Ordering::Relaxed));
        if age.saturating_sub(last) >= IDLE_TIMEOUT {
            return;
        }
    }
}

/// Close our side, then read and discard what the client still sends (until it closes, goes
/// quiet or [`LINGER`] passes): closing with unread bytes would make the kernel send a reset,
/// and the client would lose the answer it was about to read.
async fn linger<T: AsyncRead + AsyncWrite + Unpin>(io: &std::sync::Mutex<T>) {
    struct Locked<'a, T>(&'a std::sync::Mutex<T>);
    impl<T: AsyncRead + Unpin> AsyncRead for Locked<'_, T> {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let mut io = self.0.lock().unwrap_or_else(|p| p.into_inner());
            Pin::new(&mut *io).poll_read(cx, buf)
        }
    }
    impl<T: AsyncWrite + Unpin> AsyncWrite for Locked<'_, T> {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let mut io = self.0.lock().unwrap_or_else(|p| p.into_inner());
            Pin::new(&mut *io).poll_write(cx, buf)
        }
        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            let mut io = self.0.lock().unwrap_or_else(|p| p.into_inner());
            Pin::new(&mut *io).poll_flush(cx)
        }
        fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            let mut io = self.0.lock().unwrap_or_else(|p| p.into_inner());
            Pin::new(&mut *io).poll_shutdown(cx)
        }
    }
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut io = Locked(io);
    let _ = tokio::time::timeout(LINGER_IDLE, io.shutdown()).await;
    let _ = tokio::time::timeout(LINGER, async {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(Ok(n)) = tokio::time::timeout(LINGER_IDLE, io.read(&mut buf)).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// Accept TLS connections on `listener` and serve `app` until `shutdown` turns true.
pub async fn serve_with(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    app: Router,
    limits: ConnectionLimits,
    mut shutdown: watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let open = Arc::new(OpenConnections::default());
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
        let Some(slot) = open.take(peer.ip(), limits.max_connections_per_address) else {
            tracing::debug!(%peer, "connection refused: too many from this address");
            drop(tcp);
            continue;
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        let limits = limits.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let _ = tcp.set_nodelay(true);
            let tls = match tokio::time::timeout(limits.header_timeout, acceptor.accept(tcp)).await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake refused");
                    return;
                }
                Err(_) => return,
            };
            let conn = tls.get_ref().1;
            let client_cert = conn
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| PeerCertificate(fingerprint(c)));
            let h2 = conn.alpn_protocol() == Some(b"h2".as_slice());
            let activity = Arc::new(Activity {
                born: Instant::now(),
                requests: AtomicU64::new(0),
                in_flight: AtomicUsize::new(0),
                last_io_ms: AtomicU64::new(0),
            });
            let shared = Arc::new(std::sync::Mutex::new(tls));
            let io = TokioIo::new(SharedIo {
                io: shared.clone(),
                activity: activity.clone(),
            });
            let requests = activity.clone();
            let max_header_bytes = limits.max_header_bytes;
            let svc = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(PeerAddr(peer));
                    if let Some(c) = &client_cert {
                        req.extensions_mut().insert(c.clone());
                    }
                    requests.requests.fetch_add(1, Ordering::Relaxed);
                    requests.in_flight.fetch_add(1, Ordering::Relaxed);
                    let in_flight = InFlight(requests.clone());
                    let app = app.clone();
                    let too_large = h2 && header_list_size(&req) > max_header_bytes;
                    async move {
                        let _in_flight = in_flight;
                        if too_large {
                            return Ok(header_too_large());
                        }
                        tower::ServiceExt::oneshot(app, req).await
                    }
                },
            );
            // The protocol is the one ALPN chose: no sniffing of a preface, which a slow
            // client could stretch without any timeout.
            let ended = if h2 {
                let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                // h2 answers 431 itself above this and drops the whole connection above four
                // times it (its abuse guard); between the configured limit and this, the
                // service answers 431, so the 431 reaches clients for headers up to 16 times
                // the limit.
                b.max_header_list_size(limits.max_header_bytes.saturating_mul(4) as u32)
                    .timer(TokioTimer::new());
                let c = b.serve_connection(io, svc);
                tokio::select! {
                    r = c => Some(r),
                    _ = idle(&activity, limits.header_timeout) => None,
                }
            } else {
                let mut b = hyper::server::conn::http1::Builder::new();
                b.max_buf_size(limits.max_header_bytes.max(8192))
                    .timer(TokioTimer::new())
                    .header_read_timeout(limits.header_timeout);
                let c = b.serve_connection(io, svc);
                tokio::select! {
                    r = c => Some(r),
                    _ = idle(&activity, limits.header_timeout) => None,
                }
            };
            match ended {
                // Too slow or idle: close without reading more from it.
                None => {}
                Some(Err(e)) if e.is_timeout() => {
                    tracing::debug!(%peer, "connection closed: headers too slow");
                }
                Some(r) => {
                    // Linger only where the hub has answered (a response, or 431 for headers
                    // too large): a client that never made a request gets nothing more.
                    let answered = activity.requests.load(Ordering::Relaxed) > 0
                        || r.as_ref().is_err_and(|e| e.is_parse_too_large());
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                    if answered {
                        linger(&shared).await;
                    }
                }
            }
        });
    }
}
