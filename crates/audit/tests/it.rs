//! Tampering with an audit log in every way the hub must detect.

use std::path::Path;

use ed25519_dalek::SigningKey;
use medfed_audit::{AuditLog, Event, head_path, verify};

fn event(i: usize) -> Event {
    Event {
        actor: format!("user:{}", i % 3),
        on_behalf_of: i.is_multiple_of(5).then(|| "site:7".to_string()),
        action: if i.is_multiple_of(2) {
            "dataset.read".into()
        } else {
            "dataset.search".into()
        },
        resource: format!("study/1/dataset/{i}"),
        outcome: if i.is_multiple_of(7) {
            "denied".into()
        } else {
            "allowed".into()
        },
    }
}

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn write_log(path: &Path, n: usize) {
    let log = AuditLog::open(path, key(1), 4).unwrap();
    for i in 0..n {
        log.append(event(i)).unwrap();
    }
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

#[test]
fn an_intact_log_verifies_and_reopens_where_it_ended() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    write_log(&path, 10);
    let v = verify(&path, &key(1).verifying_key()).unwrap();
    assert_eq!((v.records, v.checkpoints), (10, 2));
    // Reopening continues the chain.
    let log = AuditLog::open(&path, key(1), 4).unwrap();
    assert_eq!(log.len(), 10);
    log.append(event(10)).unwrap();
    assert_eq!(verify(&path, &key(1).verifying_key()).unwrap().records, 11);
    // Another key does not verify it.
    let e = verify(&path, &key(2).verifying_key()).unwrap_err();
    assert!(e.reason.contains("does not verify"), "{e}");
}

#[test]
fn changed_removed_reordered_and_truncated_records_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    write_log(&path, 10);
    let original = lines(&path);
    let head = std::fs::read(head_path(&path)).unwrap();
    let vk = key(1).verifying_key();

    // Changed: an outcome flipped in the third line (record 3).
    let mut l = original.clone();
    l[2] = l[2].replace("\"allowed\"", "\"denied\"");
    assert_ne!(l[2], original[2]);
    write_lines(&path, &l);
    let e = verify(&path, &vk).unwrap_err();
    assert_eq!(e.line, 3, "{e}");
    assert!(e.reason.contains("changed"), "{e}");

    // Removed: record 2 (line 2) dropped.
    let mut l = original.clone();
    l.remove(1);
    write_lines(&path, &l);
    let e = verify(&path, &vk).unwrap_err();
    assert_eq!(e.line, 2, "{e}");
    assert!(e.reason.contains("removed"), "{e}");

    // Reordered: lines 2 and 3 swapped.
    let mut l = original.clone();
    l.swap(1, 2);
    write_lines(&path, &l);
    let e = verify(&path, &vk).unwrap_err();
    assert_eq!(e.line, 2, "{e}");

    // Truncated: the last two records gone (the head still says 10).
    let mut l = original.clone();
    l.truncate(l.len() - 2);
    write_lines(&path, &l);
    let e = verify(&path, &vk).unwrap_err();
    assert!(e.reason.contains("truncated"), "{e}");

    // A forged head does not help: its signature fails.
    write_lines(&path, &original);
    let forged = String::from_utf8(head.clone())
        .unwrap()
        .replace("\"seq\":10", "\"seq\":9");
    std::fs::write(head_path(&path), forged).unwrap();
    assert!(verify(&path, &vk).is_err());

    // Restored, it verifies again, and a broken log refuses further appends.
    std::fs::write(head_path(&path), &head).unwrap();
    verify(&path, &vk).unwrap();
    let mut l = original.clone();
    l[5] = l[5].replace("dataset/4", "dataset/5");
    assert_ne!(l[5], original[5]);
    write_lines(&path, &l);
    assert!(AuditLog::open(&path, key(1), 4).is_err());
}

#[test]
fn a_crash_between_a_record_and_its_head_reopens_but_a_foreign_record_after_the_head_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    write_log(&path, 6);
    let vk = key(1).verifying_key();
    // The writer is killed after appending record 7 and before writing its head: the head
    // still says 6. The record is signed, so it is the writer's, and the log verifies.
    let head_at_6 = std::fs::read(head_path(&path)).unwrap();
    write_log(&path, 1);
    let with_7 = lines(&path);
    std::fs::write(head_path(&path), &head_at_6).unwrap();
    let v = verify(&path, &vk).unwrap();
    assert_eq!((v.records, v.after_head), (7, 1));
    // Reopening seals it with a new head and goes on.
    let log = AuditLog::open(&path, key(1), 4).unwrap();
    assert_eq!(log.len(), 7);
    drop(log);
    assert_eq!(verify(&path, &vk).unwrap().after_head, 0);

    // Someone without the key appends a record after the head: named, and the log is closed
    // to appends.
    std::fs::write(head_path(&path), &head_at_6).unwrap();
    let mut forged = with_7.clone();
    let unsigned: serde_json::Value = serde_json::from_str(&forged[forged.len() - 1]).unwrap();
    let mut unsigned = unsigned.as_object().unwrap().clone();
    unsigned.remove("signature");
    let n = forged.len();
    forged[n - 1] = serde_json::Value::Object(unsigned).to_string();
    write_lines(&path, &forged);
    let e = verify(&path, &vk).unwrap_err();
    assert_eq!(e.line, n, "{e}");
    assert!(e.reason.contains("not signed"), "{e}");
    assert!(AuditLog::open(&path, key(1), 4).is_err());
}

#[test]
fn a_key_file_gets_its_public_key_beside_it_and_only_that_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("audit.key");
    let key = medfed_audit::load_or_create_key(&key_path).unwrap();
    let public_path = medfed_audit::public_key_path(&key_path);
    assert_eq!(public_path, dir.path().join("audit.pub"));
    let log_path = dir.path().join("a.jsonl");
    let log = AuditLog::open(&log_path, key, 4).unwrap();
    log.append(event(1)).unwrap();
    drop(log);
    let public =
        medfed_audit::parse_public_key(&std::fs::read_to_string(&public_path).unwrap()).unwrap();
    verify(&log_path, &public).unwrap();
    // The private key file read as a public key does not verify; its derived key does.
    let private_text = std::fs::read_to_string(&key_path).unwrap();
    // (About half of all private keys are not even a valid point when read as a public key.)
    if let Ok(wrong) = medfed_audit::parse_public_key(&private_text) {
        assert!(verify(&log_path, &wrong).is_err());
    }
    let derived = medfed_audit::public_key_of_private(&private_text).unwrap();
    assert_eq!(derived, public);
    // Reopening the key keeps it and rewrites the same public key.
    std::fs::remove_file(&public_path).unwrap();
    let again = medfed_audit::load_or_create_key(&key_path).unwrap();
    assert_eq!(again.verifying_key(), public);
    assert!(public_path.is_file());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}

#[test]
fn the_writer_thread_batches_concurrent_appends_into_one_verifying_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    let writer =
        medfed_audit::AuditWriter::spawn(AuditLog::open(&path, key(1), 16).unwrap()).unwrap();
    let writer = std::sync::Arc::new(writer);
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let w = writer.clone();
            std::thread::spawn(move || {
                (0..50)
                    .map(|i| w.append_blocking(event(t * 50 + i)).unwrap().seq)
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut seqs: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (1..=400).collect::<Vec<_>>(),
        "every append got its own record"
    );
    assert_eq!(writer.log().len(), 400);
    writer.close();
    let v = verify(&path, &key(1).verifying_key()).unwrap();
    assert_eq!(v.records, 400);
    assert_eq!(v.checkpoints, 25);
    // After close nothing more is accepted, and the caller is told.
    assert!(writer.append_blocking(event(0)).is_err());
}
