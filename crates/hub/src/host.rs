//! The host socket: host-side administration of a running hub (`medfed hub issue-token`).
//!
//! Only one process may write the audit log, so a host command that opened the hub itself would
//! need the server stopped. A running hub instead listens on a Unix socket `<data_dir>/host.sock`
//! (mode 0600; each peer's uid is checked to be the hub's own or root) and does the work itself,
//! audited like any request. Who may use it is who may already read the hub's keys: the host's
//! operator, not an API account, so it adds no power to any role (segregation of duties holds:
//! no account mints tokens for another).
//!
//! Protocol: one JSON request line, one JSON answer line, then the hub closes the connection.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

use crate::{Hub, HubError};

/// The socket's file name under `data_dir`.
pub const SOCKET_NAME: &str = "host.sock";

/// Longest request line read; a request is a few dozen bytes.
const MAX_REQUEST_BYTES: u64 = 4096;

/// Where a hub with this data directory listens for host commands.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_NAME)
}

/// A host command.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case", deny_unknown_fields)]
pub enum HostRequest {
    /// An API token for an existing user (for accounts without OIDC).
    IssueToken { user: String, days: u64 },
}

/// The hub's answer to a [`HostRequest`].
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostAnswer {
    Token(String),
    Refused(String),
}

/// Bind the host socket: bound under a temporary name, restricted to 0600, then renamed into
/// place, so that it is never reachable with wider permissions. A stale socket from a hub that
/// died is replaced; a live one (another hub on this data directory) is an error.
pub(crate) async fn bind(data_dir: &Path) -> Result<UnixListener, HubError> {
    use std::os::unix::fs::PermissionsExt;
    let path = socket_path(data_dir);
    if UnixStream::connect(&path).await.is_ok() {
        return Err(HubError::Invalid(format!(
            "{} answers: another hub serves this data directory",
            path.display()
        )));
    }
    let temp = data_dir.join(format!(".{SOCKET_NAME}.{}", std::process::id()));
    let _ = tokio::fs::remove_file(&temp).await;
    let listener = UnixListener::bind(&temp).map_err(|e| HubError::io(&temp, e))?;
    tokio::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o600))
        .await
        .map_err(|e| HubError::io(&temp, e))?;
    tokio::fs::rename(&temp, &path)
        .await
        .map_err(|e| HubError::io(&path, e))?;
    Ok(listener)
}

/// Answer host commands until `stop` turns true, then remove the socket.
pub(crate) async fn serve(
    hub: Arc<Hub>,
    listener: UnixListener,
    path: PathBuf,
    mut stop: watch::Receiver<bool>,
) {
    let own_uid = own_uid().await;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let hub = hub.clone();
                    tokio::spawn(async move {
                        if let Err(e) = answer(&hub, stream, own_uid).await {
                            tracing::warn!(error = %e, "host socket request failed");
                        }
                    });
                }
                Err(e) => {
                    tracing::error!(error = %e, "host socket accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            _ = stop.changed() => break,
        }
    }
    let _ = tokio::fs::remove_file(&path).await;
}

async fn own_uid() -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    tokio::fs::metadata("/proc/self")
        .await
        .ok()
        .map(|m| m.uid())
}

async fn answer(hub: &Hub, stream: UnixStream, own_uid: Option<u32>) -> std::io::Result<()> {
    let peer = stream.peer_cred()?.uid();
    let (read, mut write) = stream.into_split();
    let answer = if own_uid.is_some_and(|me| peer != me && peer != 0) {
        HostAnswer::Refused(format!(
            "uid {peer} is neither the hub's user nor root; the host socket is the hub host's"
        ))
    } else {
        let mut line = String::new();
        BufReader::new(AsyncReadExt::take(read, MAX_REQUEST_BYTES))
            .read_line(&mut line)
            .await?;
        match serde_json::from_str::<HostRequest>(&line) {
            Ok(request) => carry_out(hub, request).await,
            Err(e) => HostAnswer::Refused(format!("not a host request: {e}")),
        }
    };
    let mut out = serde_json::to_vec(&answer).map_err(std::io::Error::other)?;
    out.push(b'\n');
    write.write_all(&out).await?;
    write.shutdown().await
}

async fn carry_out(hub: &Hub, request: HostRequest) -> HostAnswer {
    match request {
        HostRequest::IssueToken { user, days } => {
            let outcome = issue_token(hub, &user, days).await;
            let resource = format!("user/{}", crate::api::safe_token(&user));
            let noted = match &outcome {
                HostAnswer::Token(_) => "allowed",
                HostAnswer::Refused(_) => "refused",
            };
            // Fail closed: a token the audit log does not hold is not handed out.
            match hub
                .audit_system("token.issue-on-host", &resource, noted)
                .await
            {
                Ok(()) => outcome,
                Err(e) => HostAnswer::Refused(format!("the audit log refused the record: {e}")),
            }
        }
    }
}

async fn issue_token(hub: &Hub, user: &str, days: u64) -> HostAnswer {
    match hub.catalogue.user(user).await {
        Ok(_) => {}
        Err(medfed_catalogue::CatalogueError::NotFound(_)) => {
            return HostAnswer::Refused(format!("no user {user}"));
        }
        Err(e) => return HostAnswer::Refused(e.to_string()),
    }
    match crate::issue_token(hub, user, days).await {
        Ok(token) => HostAnswer::Token(token),
        Err(e) => HostAnswer::Refused(e.to_string()),
    }
}

/// Send one host command to the hub running on `data_dir`. `Ok(None)`: no hub answers there
/// (no socket, or a stale one), so the caller may open the hub itself.
pub async fn request(
    data_dir: &Path,
    request: &HostRequest,
) -> Result<Option<HostAnswer>, HubError> {
    let path = socket_path(data_dir);
    let stream = match UnixStream::connect(&path).await {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(HubError::io(&path, e)),
    };
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(request).map_err(|e| HubError::Invalid(e.to_string()))?;
    line.push(b'\n');
    write
        .write_all(&line)
        .await
        .map_err(|e| HubError::io(&path, e))?;
    let mut answer = String::new();
    BufReader::new(read)
        .read_line(&mut answer)
        .await
        .map_err(|e| HubError::io(&path, e))?;
    serde_json::from_str(&answer)
        .map(Some)
        .map_err(|e| HubError::Invalid(format!("{}: unreadable answer: {e}", path.display())))
}
