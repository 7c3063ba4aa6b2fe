//! The tamper-evident audit log shared by the hub and the site nodes: every event is one JSON line
//! whose hash covers the previous line's hash and which the writer signs (Ed25519), checkpoints
//! are interleaved, and a signed head beside the log records the last event, so that [`verify`]
//! detects a changed, removed, reordered or truncated record and names the first bad one. A
//! writer killed between a record and its head leaves signed records after the head: the log
//! still verifies and reopens (the head is then rewritten); unsigned records there do not.
//!
//! Records carry who (an opaque principal id), for whom, what, which resource, the outcome and
//! when. They must never carry identifying data of patients: callers pass ids and pseudonyms,
//! not names (the hub's and the site's tests grep their logs for planted values).

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Why the log could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Key(String),
    #[error("{0}: the audit log is open in another process (is the hub running?)")]
    InUse(PathBuf),
    #[error("{path}: the log does not verify, so nothing more is appended: {problem}")]
    Broken { path: PathBuf, problem: Problem },
}

/// One audited event, as the caller describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Who acted: an opaque principal id (`user:<id>`, `site:<id>`, `token:<id>`), never a name.
    pub actor: String,
    /// For whom, when acting on someone's behalf.
    pub on_behalf_of: Option<String>,
    /// What was attempted (`dataset.read`, `task.accept`, ...).
    pub action: String,
    /// Which resource (`study/<id>/dataset/<id>`), as the API names it.
    pub resource: String,
    /// `allowed`, `denied`, `error`, ...
    pub outcome: String,
}

/// A line of the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Line {
    Record(Record),
    Checkpoint(Checkpoint),
}

/// An event with its place in the chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub seq: u64,
    /// Milliseconds since 1970-01-01 UTC.
    pub unix_ms: u64,
    /// The same instant as RFC 3339 UTC, for people reading the log.
    pub time: String,
    #[serde(flatten)]
    pub event: Event,
    /// Hash of the previous record (64 zeros for the first).
    pub prev: String,
    /// SHA-256 over `prev` and this record's other fields.
    pub hash: String,
    /// Ed25519 signature over `seq` and `hash` (as for checkpoints): a record found after the
    /// signed head (an append interrupted before its head was written) must carry one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

/// A signature over the chain up to `seq`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub seq: u64,
    pub hash: String,
    /// First 8 bytes of the verifying key, hex.
    pub key_id: String,
    pub signature: String,
}

/// The first thing wrong with a log.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct Problem {
    /// 1-based line number in the log (0: the head file).
    pub line: usize,
    pub reason: String,
}

/// What a verified log holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    pub records: u64,
    pub checkpoints: u64,
    pub last_hash: String,
    /// Signed records after the signed head: the writer stopped between a record and its head
    /// (a crash); opening the log for appending seals them with a new head.
    pub after_head: u64,
}

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

fn record_hash(prev: &str, seq: u64, unix_ms: u64, time: &str, e: &Event) -> String {
    // The hashed bytes: fixed field order, JSON-encoded strings (unambiguous separators).
    let body = serde_json::json!([
        prev,
        seq,
        unix_ms,
        time,
        e.actor,
        e.on_behalf_of,
        e.action,
        e.resource,
        e.outcome
    ]);
    hex::encode(Sha256::digest(body.to_string().as_bytes()))
}

fn checkpoint_message(seq: u64, hash: &str) -> Vec<u8> {
    format!("medfed-audit-checkpoint\n{seq}\n{hash}").into_bytes()
}

/// The signed head: the last record's seq and hash, kept beside the log (`<log>.head`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Head {
    seq: u64,
    hash: String,
    signature: String,
}

pub fn head_path(log: &Path) -> PathBuf {
    let mut s = log.as_os_str().to_owned();
    s.push(".head");
    PathBuf::from(s)
}

/// An audit log open for appending. Appends are serialised; each is flushed before it returns.
pub struct AuditLog {
    path: PathBuf,
    key: SigningKey,
    checkpoint_every: u64,
    state: Mutex<State>,
}

struct State {
    file: File,
    seq: u64,
    last_hash: String,
}

impl AuditLog {
    /// Open (or create) the log at `path`, signing checkpoints with `key`. An existing log is
    /// verified first; a log that does not verify is not appended to.
    pub fn open(path: &Path, key: SigningKey, checkpoint_every: u64) -> Result<Self, AuditError> {
        let io = |source| AuditError::Io {
            path: path.to_path_buf(),
            source,
        };
        let fresh = !path.exists();
        let (seq, last_hash, unsealed) = if !fresh {
            let v = verify(path, &key.verifying_key()).map_err(|problem| AuditError::Broken {
                path: path.to_path_buf(),
                problem,
            })?;
            (v.records, v.last_hash, v.after_head > 0)
        } else {
            (0, GENESIS.to_string(), false)
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io)?;
        // One writer per log: a second process appending would fork the chain.
        file.try_lock()
            .map_err(|_| AuditError::InUse(path.to_path_buf()))?;
        let log = AuditLog {
            path: path.to_path_buf(),
            key,
            checkpoint_every: checkpoint_every.max(1),
            state: Mutex::new(State {
                file,
                seq,
                last_hash,
            }),
        };
        // A new log gets its signed head at once, so that it verifies (and reopens) even
        // before its first record.
        if fresh {
            log.write_head(0, GENESIS)?;
        }
        if unsealed {
            let st = log.state.lock().unwrap_or_else(|p| p.into_inner());
            log.write_head(st.seq, &st.last_hash)?;
        }
        Ok(log)
    }

    /// Append one event; returns its record.
    pub fn append(&self, event: Event) -> Result<Record, AuditError> {
        let mut records = self.append_batch(vec![event])?;
        Ok(records.remove(0))
    }

    /// Append events in order, as one write with one signed head (group commit): each record
    /// is still hashed into the chain and signed. All are written or, on an I/O error, none is
    /// counted (the next open verifies what reached the file).
    pub fn append_batch(&self, events: Vec<Event>) -> Result<Vec<Record>, AuditError> {
        let io = |source| AuditError::Io {
            path: self.path.clone(),
            source,
        };
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let time = rfc3339(unix_ms);
        let (mut seq, mut prev) = (st.seq, st.last_hash.clone());
        let mut text = String::new();
        let mut records = Vec::with_capacity(events.len());
        let mut checkpointed = false;
        for event in events {
            seq += 1;
            let hash = record_hash(&prev, seq, unix_ms, &time, &event);
            let record = Record {
                seq,
                unix_ms,
                time: time.clone(),
                event,
                prev,
                hash: hash.clone(),
                signature: Some(hex::encode(
                    self.key.sign(&checkpoint_message(seq, &hash)).to_bytes(),
                )),
            };
            text.push_str(
                &serde_json::to_string(&Line::Record(record.clone())).unwrap_or_default(),
            );
            text.push('\n');
            if seq.is_multiple_of(self.checkpoint_every) {
                let cp = self.checkpoint(seq, &hash);
                text.push_str(&serde_json::to_string(&Line::Checkpoint(cp)).unwrap_or_default());
                text.push('\n');
                checkpointed = true;
            }
            prev = hash;
            records.push(record);
        }
        st.file.write_all(text.as_bytes()).map_err(io)?;
        st.file.flush().map_err(io)?;
        if checkpointed {
            st.file.sync_data().map_err(io)?;
        }
        st.seq = seq;
        st.last_hash = prev.clone();
        self.write_head(seq, &prev)?;
        Ok(records)
    }

    fn checkpoint(&self, seq: u64, hash: &str) -> Checkpoint {
        Checkpoint {
            seq,
            hash: hash.to_string(),
            key_id: key_id(&self.key.verifying_key()),
            signature: hex::encode(self.key.sign(&checkpoint_message(seq, hash)).to_bytes()),
        }
    }

    fn write_head(&self, seq: u64, hash: &str) -> Result<(), AuditError> {
        let head_file = head_path(&self.path);
        let io = |source| AuditError::Io {
            path: head_file.clone(),
            source,
        };
        let head = Head {
            seq,
            hash: hash.to_string(),
            signature: hex::encode(self.key.sign(&checkpoint_message(seq, hash)).to_bytes()),
        };
        // Not synced: a crash may leave signed records after an older head, which `open`
        // verifies and seals; a sync per head would cost more than the request it records.
        let how = medfed_durable::Publish {
            durable: false,
            ..medfed_durable::Publish::REPLACE
        };
        medfed_durable::write_atomically(
            &head_file,
            serde_json::to_string(&head).unwrap_or_default().as_bytes(),
            how,
        )
        .map_err(io)?;
        Ok(())
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// Records appended so far.
    pub fn len(&self) -> u64 {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).seq
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sync every record appended so far to disk. For a caller about to act on what it just
    /// recorded (a site releasing data): `append` syncs only at checkpoints, so without this a
    /// crash could lose the record of something that already left.
    pub fn sync(&self) -> Result<(), AuditError> {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.file.sync_data().map_err(|source| AuditError::Io {
            path: self.path.clone(),
            source,
        })
    }
}

/// The writer of a log for async servers: appends are handed to one thread, which writes
/// whatever has queued as one batch ([`AuditLog::append_batch`], group commit) and answers
/// each caller. A request therefore never signs, writes or renames on an async worker, and
/// under load the records of many requests share one write and one head.
pub struct AuditWriter {
    log: std::sync::Arc<AuditLog>,
    queue: Mutex<Option<std::sync::mpsc::Sender<Pending>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

struct Pending {
    event: Event,
    reply: tokio::sync::oneshot::Sender<Result<Record, AuditError>>,
}

/// Most events written as one batch.
const MAX_BATCH: usize = 512;

impl AuditWriter {
    /// Start the writer thread for `log`.
    pub fn spawn(log: AuditLog) -> Result<AuditWriter, AuditError> {
        let log = std::sync::Arc::new(log);
        let (tx, rx) = std::sync::mpsc::channel::<Pending>();
        let writer = log.clone();
        let thread = std::thread::Builder::new()
            .name("medfed-audit".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(p) => batch.push(p),
                            Err(_) => break,
                        }
                    }
                    let (events, replies): (Vec<_>, Vec<_>) =
                        batch.into_iter().map(|p| (p.event, p.reply)).unzip();
                    match writer.append_batch(events) {
                        Ok(records) => {
                            for (reply, record) in replies.into_iter().zip(records) {
                                let _ = reply.send(Ok(record));
                            }
                        }
                        Err(e) => {
                            for reply in replies {
                                let _ = reply.send(Err(e.duplicate()));
                            }
                        }
                    }
                }
            })
            .map_err(|source| AuditError::Io {
                path: log.path.clone(),
                source,
            })?;
        Ok(AuditWriter {
            log,
            queue: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
        })
    }

    fn enqueue(
        &self,
        event: Event,
    ) -> Result<tokio::sync::oneshot::Receiver<Result<Record, AuditError>>, AuditError> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        queue
            .as_ref()
            .and_then(|q| q.send(Pending { event, reply }).ok())
            .ok_or_else(|| self.stopped())?;
        Ok(rx)
    }

    fn stopped(&self) -> AuditError {
        AuditError::Io {
            path: self.log.path.clone(),
            source: std::io::Error::other("the audit writer has stopped"),
        }
    }

    /// Append one event; resolves once it is written (in a batch with whatever else queued).
    pub async fn append(&self, event: Event) -> Result<Record, AuditError> {
        let rx = self.enqueue(event)?;
        rx.await.map_err(|_| self.stopped())?
    }

    /// [`append`](Self::append) for synchronous callers (start-up, command-line tools); never
    /// from an async worker.
    pub fn append_blocking(&self, event: Event) -> Result<Record, AuditError> {
        let rx = self.enqueue(event)?;
        rx.blocking_recv().map_err(|_| self.stopped())?
    }

    /// The log itself, for reads and [`AuditLog::sync`].
    pub fn log(&self) -> &AuditLog {
        &self.log
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.log.verifying_key()
    }

    /// Write what has queued and stop the thread (also done on drop).
    pub fn close(&self) {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
    }
}

impl Drop for AuditWriter {
    fn drop(&mut self) {
        self.close();
    }
}

impl AuditError {
    /// The same error for another waiter of a failed batch (io::Error is not Clone).
    fn duplicate(&self) -> AuditError {
        match self {
            AuditError::Io { path, source } => AuditError::Io {
                path: path.clone(),
                source: std::io::Error::new(source.kind(), source.to_string()),
            },
            AuditError::Key(k) => AuditError::Key(k.clone()),
            AuditError::InUse(p) => AuditError::InUse(p.clone()),
            AuditError::Broken { path, problem } => AuditError::Broken {
                path: path.clone(),
                problem: problem.clone(),
            },
        }
    }
}

pub fn key_id(key: &VerifyingKey) -> String {
    hex::encode(&key.to_bytes()[..8])
}

/// Check every line of the log and its signed head; the first problem found is returned.
pub fn verify(path: &Path, key: &VerifyingKey) -> Result<Verified, Problem> {
    let bad = |line: usize, reason: String| Problem { line, reason };
    let file = File::open(path).map_err(|e| bad(0, format!("cannot open the log: {e}")))?;
    // The head is checked at the end; read first to know which records must be signed.
    let head = read_head(path, key);
    let head_seq = head.as_ref().map_or(u64::MAX, |h| h.seq);
    let mut hash_at_head = (head_seq == 0).then(|| GENESIS.to_string());
    let (mut seq, mut last_hash, mut checkpoints) = (0u64, GENESIS.to_string(), 0u64);
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let n = i + 1;
        let line = line.map_err(|e| bad(n, format!("unreadable: {e}")))?;
        let parsed: Line =
            serde_json::from_str(&line).map_err(|e| bad(n, format!("not an audit line: {e}")))?;
        match parsed {
            Line::Record(r) => {
                if r.seq != seq + 1 {
                    return Err(bad(
                        n,
                        format!(
                            "record {} where {} was expected: a record was removed or the records were reordered",
                            r.seq,
                            seq + 1
                        ),
                    ));
                }
                if r.prev != last_hash {
                    return Err(bad(
                        n,
                        format!(
                            "record {} does not follow the previous record's hash",
                            r.seq
                        ),
                    ));
                }
                let expect = record_hash(&r.prev, r.seq, r.unix_ms, &r.time, &r.event);
                if r.hash != expect {
                    return Err(bad(
                        n,
                        format!(
                            "record {} was changed: its content does not match its hash",
                            r.seq
                        ),
                    ));
                }
                if r.seq > head_seq {
                    let signed = r
                        .signature
                        .as_deref()
                        .is_some_and(|sig| check_signature(key, r.seq, &r.hash, sig).is_ok());
                    if !signed {
                        return Err(bad(
                            n,
                            format!(
                                "record {} comes after the signed head (record {head_seq}) and is not signed with the log's key",
                                r.seq
                            ),
                        ));
                    }
                }
                if r.seq == head_seq {
                    hash_at_head = Some(r.hash.clone());
                }
                seq = r.seq;
                last_hash = r.hash;
            }
            Line::Checkpoint(c) => {
                if c.seq != seq || c.hash != last_hash {
                    return Err(bad(
                        n,
                        format!("checkpoint for record {} does not match the chain", c.seq),
                    ));
                }
                check_signature(key, c.seq, &c.hash, &c.signature).map_err(|r| bad(n, r))?;
                checkpoints += 1;
            }
        }
    }
    // The head says where the log ended when last written: fewer records means truncation.
    let head = head?;
    if head.seq > seq {
        return Err(bad(
            0,
            format!(
                "truncated: the log ends at record {seq}, its signed head says {}",
                head.seq
            ),
        ));
    }
    if hash_at_head.as_deref() != Some(head.hash.as_str()) {
        return Err(bad(
            0,
            format!(
                "the signed head (record {}) does not match the log at that record",
                head.seq
            ),
        ));
    }
    Ok(Verified {
        records: seq,
        checkpoints,
        last_hash,
        after_head: seq - head.seq,
    })
}

/// The signed head beside the log, its signature checked.
fn read_head(path: &Path, key: &VerifyingKey) -> Result<Head, Problem> {
    let bad = |reason: String| Problem { line: 0, reason };
    let head_text = std::fs::read_to_string(head_path(path)).map_err(|e| {
        bad(format!(
            "the signed head is missing ({e}): the log cannot be checked for truncation"
        ))
    })?;
    let head: Head = serde_json::from_str(&head_text)
        .map_err(|e| bad(format!("the signed head is unreadable: {e}")))?;
    check_signature(key, head.seq, &head.hash, &head.signature)
        .map_err(|r| bad(format!("head: {r}")))?;
    Ok(head)
}

fn check_signature(
    key: &VerifyingKey,
    seq: u64,
    hash: &str,
    signature: &str,
) -> Result<(), String> {
    let bytes: [u8; 64] = hex::decode(signature)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or("signature is not 64 hex-encoded bytes")?;
    key.verify(
        &checkpoint_message(seq, hash),
        &Signature::from_bytes(&bytes),
    )
    .map_err(|_| {
        format!(
            "signature over record {seq} does not verify with key {}",
            key_id(key)
        )
    })
}

/// Read an Ed25519 signing key (32 bytes, hex) from a file, or create one (mode 0600).
pub fn load_or_create_key(path: &Path) -> Result<SigningKey, AuditError> {
    let io = |source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    };
    let key = if path.exists() {
        let text = std::fs::read_to_string(path).map_err(io)?;
        let bytes: [u8; 32] = hex::decode(text.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| {
                AuditError::Key(format!("{}: not 32 hex-encoded bytes", path.display()))
            })?;
        SigningKey::from_bytes(&bytes)
    } else {
        let mut bytes = [0u8; 32];
        rand::fill(&mut bytes);
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        // Never replaces a key another process made meanwhile (that would orphan its log).
        let how = medfed_durable::Publish {
            replace: false,
            ..medfed_durable::Publish::PRIVATE
        };
        medfed_durable::write_atomically(path, hex::encode(bytes).as_bytes(), how).map_err(io)?;
        SigningKey::from_bytes(&bytes)
    };
    // The verifying key beside it, for `medfed audit verify --public-key`: written on every
    // open, so it is there (and right) for logs made before it was written.
    let public = public_key_path(path);
    medfed_durable::write_atomically(
        &public,
        public_key_hex(&key).as_bytes(),
        medfed_durable::Publish::REPLACE,
    )
    .map_err(|source| AuditError::Io {
        path: public.clone(),
        source,
    })?;
    Ok(key)
}

/// Where [`load_or_create_key`] writes the public half of `key_path`: `audit.key` ->
/// `audit.pub`.
pub fn public_key_path(key_path: &Path) -> std::path::PathBuf {
    key_path.with_extension("pub")
}

/// The public half of a key file, hex (for `medfed audit verify --public-key`).
pub fn public_key_hex(key: &SigningKey) -> String {
    hex::encode(key.verifying_key().to_bytes())
}

/// The public key of a hex private key (the content of a key file).
pub fn public_key_of_private(hex_text: &str) -> Result<VerifyingKey, AuditError> {
    let bytes: [u8; 32] = hex::decode(hex_text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| AuditError::Key("a private key is 32 hex-encoded bytes".into()))?;
    Ok(SigningKey::from_bytes(&bytes).verifying_key())
}

/// Parse a hex public key.
pub fn parse_public_key(hex_text: &str) -> Result<VerifyingKey, AuditError> {
    let bytes: [u8; 32] = hex::decode(hex_text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| AuditError::Key("a public key is 32 hex-encoded bytes".into()))?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| AuditError::Key(e.to_string()))
}

/// `unix_ms` as RFC 3339 UTC with milliseconds (civil-from-days, no time zone database needed).
fn rfc3339(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60,
        unix_ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_of_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        // 2026-11-26T18:37:42.5Z
        assert_eq!(rfc3339(1_795_718_262_500), "2026-11-26T18:37:42.500Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn a_log_closed_before_its_first_record_reopens_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.audit.jsonl");
        let key = SigningKey::from_bytes(&[7u8; 32]);
        drop(AuditLog::open(&path, key.clone(), 10).unwrap());
        assert_eq!(verify(&path, &key.verifying_key()).unwrap().records, 0);
        let log = AuditLog::open(&path, key.clone(), 10).unwrap();
        log.append(Event {
            actor: "t".into(),
            on_behalf_of: None,
            action: "a".into(),
            resource: "r".into(),
            outcome: "o".into(),
        })
        .unwrap();
        drop(log);
        assert_eq!(verify(&path, &key.verifying_key()).unwrap().records, 1);
    }
}
