//! A client of the hub's API over HTTPS (the CLI, the demo, site nodes, tests and the
//! benchmark use it): JSON calls, chunked resumable uploads with retries, STOW-RS.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Http(#[from] reqwest::Error),
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("the hub answered {status}: {detail}")]
    Status { status: StatusCode, detail: String },
    #[error("{0}")]
    Tls(String),
}

#[derive(Clone)]
pub struct HubClient {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> ClientError + '_ {
    move |source| ClientError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Default chunk size of uploads.
pub const CHUNK: u64 = 8 << 20;

impl HubClient {
    /// `base` like `https://127.0.0.1:8443`; `ca_pem`: the CA to trust besides the system's.
    pub fn new(base: &str, ca_pem: Option<&Path>) -> Result<HubClient, ClientError> {
        let mut b = reqwest::Client::builder()
            .https_only(true)
            .timeout(Duration::from_secs(300))
            .pool_max_idle_per_host(64);
        if let Some(p) = ca_pem {
            // A client is built before any request, outside the hub's request workers.
            #[allow(clippy::disallowed_methods)]
            let pem = std::fs::read(p).map_err(io(p))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| ClientError::Tls(e.to_string()))?;
            b = b.add_root_certificate(cert);
        }
        Ok(HubClient {
            base: base.trim_end_matches('/').to_string(),
            http: b.build()?,
            token: None,
        })
    }

    /// A site node's client: it trusts only `trust_pem` (what it pinned at enrolment, not the
    /// system's roots) and, given its certificate and key (one PEM), authenticates with them
    /// (mutual TLS).
    pub fn for_site(
        base: &str,
        trust_pem: &[u8],
        identity_pem: Option<&[u8]>,
    ) -> Result<HubClient, ClientError> {
        let tls = |e: reqwest::Error| ClientError::Tls(e.to_string());
        let roots = reqwest::Certificate::from_pem_bundle(trust_pem).map_err(tls)?;
        let mut b = reqwest::Client::builder()
            .https_only(true)
            .timeout(Duration::from_secs(300))
            .connect_timeout(Duration::from_secs(10))
            .tls_certs_only(roots);
        if let Some(pem) = identity_pem {
            b = b.identity(reqwest::Identity::from_pem(pem).map_err(tls)?);
        }
        let http = b.build()?;
        Ok(HubClient {
            base: base.trim_end_matches('/').to_string(),
            http,
            token: None,
        })
    }

    /// What the hub asks enrolling sites to trust, fetched without verifying the server: the
    /// caller must compare it with the fingerprint its enrolment token carries.
    pub async fn fetch_server_trust(base: &str) -> Result<String, ClientError> {
        let http = reqwest::Client::builder()
            .https_only(true)
            .timeout(Duration::from_secs(30))
            .tls_danger_accept_invalid_certs(true)
            .build()?;
        let url = format!("{}/api/v1/enrol/trust", base.trim_end_matches('/'));
        let resp = http.get(url).send().await?;
        let status = resp.status();
        if !status.is_success() {
            return Err(ClientError::Status {
                status,
                detail: "no enrolment trust offered".into(),
            });
        }
        Ok(resp.text().await?)
    }

    pub fn with_token(&self, token: &str) -> HubClient {
        HubClient {
            token: Some(token.to_string()),
            ..self.clone()
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, self.url(path));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    /// Send and return status and JSON body (`null` when the body is empty or not JSON).
    pub async fn send(
        &self,
        rb: reqwest::RequestBuilder,
    ) -> Result<(StatusCode, Value), ClientError> {
        let resp = rb.send().await?;
        let status = resp.status();
        let bytes = resp.bytes().await?;
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }

    /// A call that must succeed (2xx); its JSON body.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, ClientError> {
        let mut rb = self.request(method, path);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let (status, v) = self.send(rb).await?;
        if !status.is_success() {
            return Err(ClientError::Status {
                status,
                detail: v
                    .get("detail")
                    .and_then(|d| d.as_str())
                    .unwrap_or("")
                    .to_string(),
            });
        }
        Ok(v)
    }

    /// Upload a file into a dataset in chunks; resumes `resume` (an upload id) when given.
    /// Each chunk is retried with backoff; `progress` receives bytes sent.
    pub async fn upload_file(
        &self,
        dataset: &str,
        path: &Path,
        media_type: &str,
        resume: Option<&str>,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<Value, ClientError> {
        // Hashing reads the whole file: off the async workers.
        let owned = path.to_path_buf();
        let (size, sha) = tokio::task::spawn_blocking(move || hash_file(&owned))
            .await
            .map_err(|e| io(path)(std::io::Error::other(e.to_string())))??;
        let upload = match resume {
            Some(u) => u.to_string(),
            None => {
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().to_string())
                    .unwrap_or_else(|| "object".into());
                let v = self
                    .call(
                        reqwest::Method::POST,
                        &format!("/api/v1/datasets/{dataset}/uploads"),
                        Some(json!({"name": name, "media_type": media_type, "size": size, "sha256": sha, "chunk_size": CHUNK})),
                    )
                    .await?;
                v["upload"].as_str().unwrap_or_default().to_string()
            }
        };
        self.send_missing_chunks(&upload, path, progress).await?;
        self.call(
            reqwest::Method::POST,
            &format!("/api/v1/uploads/{upload}/complete"),
            None,
        )
        .await
    }

    /// Send the chunks the hub does not have yet, [`IN_FLIGHT`] at a time (so reading, hashing,
    /// the network and the hub's fsync of each chunk overlap).
    pub async fn send_missing_chunks(
        &self,
        upload: &str,
        path: &Path,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<(), ClientError> {
        use futures_util::StreamExt;
        let state = self
            .call(
                reqwest::Method::GET,
                &format!("/api/v1/uploads/{upload}"),
                None,
            )
            .await?;
        let chunk = state["chunk_size"].as_u64().unwrap_or(CHUNK);
        let missing: Vec<u64> = state["missing"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_u64()).collect())
            .unwrap_or_default();
        let file = std::sync::Arc::new(
            tokio::fs::File::open(path)
                .await
                .map_err(io(path))?
                .into_std()
                .await,
        );
        let mut sends = futures_util::stream::iter(missing)
            .map(|i| {
                let file = file.clone();
                async move {
                    let body = tokio::task::spawn_blocking(move || {
                        read_chunk(&file, i * chunk, chunk as usize)
                    })
                    .await
                    .map_err(|e| std::io::Error::other(e.to_string()))
                    .and_then(|r| r)
                    .map_err(io(path))?;
                    let n = body.len() as u64;
                    self.send_chunk(upload, i, body).await.map(|()| n)
                }
            })
            .buffer_unordered(IN_FLIGHT);
        while let Some(r) = sends.next().await {
            progress(r?);
        }
        Ok(())
    }

    /// One chunk, retried with backoff on network errors and server errors (not on refusals).
    async fn send_chunk(
        &self,
        upload: &str,
        index: u64,
        body: bytes::Bytes,
    ) -> Result<(), ClientError> {
        let sha = hex::encode(Sha256::digest(&body));
        let mut attempt = 0;
        loop {
            let rb = self
                .request(
                    reqwest::Method::PUT,
                    &format!("/api/v1/uploads/{upload}/chunks/{index}"),
                )
                .header(crate::api::CHUNK_SHA256_HEADER, &sha)
                .body(body.clone());
            match self.send(rb).await {
                Ok((s, _)) if s.is_success() => return Ok(()),
                Ok((s, v)) if s.is_client_error() => {
                    return Err(ClientError::Status {
                        status: s,
                        detail: v
                            .get("detail")
                            .and_then(|d| d.as_str())
                            .unwrap_or("")
                            .to_string(),
                    });
                }
                r if attempt >= 5 => {
                    return match r {
                        Err(e) => Err(e),
                        Ok((status, _)) => Err(ClientError::Status {
                            status,
                            detail: "chunk refused".into(),
                        }),
                    };
                }
                _ => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                }
            }
        }
    }

    /// STOW-RS: store DICOM instances into a dataset; the hub's DICOM JSON answer.
    pub async fn stow(
        &self,
        dataset: &str,
        instances: &[Vec<u8>],
    ) -> Result<(StatusCode, Value), ClientError> {
        let boundary = format!("medfed-{}", uuid::Uuid::new_v4().simple());
        let mut body = Vec::new();
        for i in instances {
            use base64::Engine;
            // Content-Digest (RFC 9530): the hub refuses a part whose bytes do not match.
            let digest = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(i));
            body.extend_from_slice(
                format!(
                    "--{boundary}\r\nContent-Type: application/dicom\r\nContent-Digest: sha-256=:{digest}:\r\n\r\n"
                )
                .as_bytes(),
            );
            body.extend_from_slice(i);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        let rb = self
            .request(
                reqwest::Method::POST,
                &format!("/api/v1/dicomweb/studies?dataset={dataset}"),
            )
            .header(
                reqwest::header::CONTENT_TYPE,
                format!("multipart/related; type=\"application/dicom\"; boundary={boundary}"),
            )
            .body(body);
        self.send(rb).await
    }
}

/// Chunks sent concurrently by one upload.
pub const IN_FLIGHT: usize = 4;

/// Up to `len` bytes of `file` from `offset`.
fn read_chunk(file: &std::fs::File, offset: u64, len: usize) -> std::io::Result<bytes::Bytes> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; len];
    let mut n = 0;
    while n < len {
        match file.read_at(&mut buf[n..], offset + n as u64)? {
            0 => break,
            k => n += k,
        }
    }
    buf.truncate(n);
    Ok(bytes::Bytes::from(buf))
}

/// Size and SHA-256 (hex) of a file.
/// Blocking: call it from a blocking context.
pub fn hash_file(path: &Path) -> Result<(u64, String), ClientError> {
    #[allow(clippy::disallowed_methods)] // documented as blocking; upload_file spawns it
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, hex::encode(h.finalize())))
}
