//! Object storage: hostile ids never touch the file system, uploads resume and verify, nothing
//! is visible before it is complete, and crashes leave only scratch files that are cleaned up.

use std::collections::BTreeSet;
use std::path::Path;

use medfed_crypto::DataKey;
use medfed_store::{
    BlobStore, Id, LocalStore, ObjectKey, UploadPlan, Uploads, get_decrypted, put_encrypted,
};
use sha2::{Digest, Sha256};

fn tree(root: &Path) -> BTreeSet<String> {
    walkdir::WalkDir::new(root)
        .into_iter()
        .filter_map(|e| e.ok())
        .map(|e| e.path().strip_prefix(root).unwrap().display().to_string())
        .collect()
}

#[test]
fn hostile_names_are_refused_before_any_file_system_call() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let store = LocalStore::open(&root).unwrap();
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret"), b"not yours").unwrap();
    let before = tree(dir.path());
    let hostile = [
        "..",
        "../outside",
        "..%2Foutside",
        "a/b",
        "a\\b",
        "/etc/passwd",
        "a\0b",
        "",
        "-rf",
        "ＡＢ",       // full-width letters
        "a\u{2215}b", // division slash
        "ds\u{0301}", // combining accent
        "UPPER",
        &"x".repeat(65),
    ];
    for bad in hostile {
        assert!(ObjectKey::parse(bad, "obj").is_err(), "dataset {bad:?}");
        assert!(ObjectKey::parse("ds", bad).is_err(), "object {bad:?}");
        assert!(Id::parse("upload", bad).is_err(), "upload {bad:?}");
    }
    // The tree is exactly what it was: nothing created, nothing read outside.
    assert_eq!(tree(dir.path()), before);
    // A well-formed key works and lands under the root.
    let key = ObjectKey::parse("ds-1", "obj-1").unwrap();
    put_encrypted(&store, &key, &DataKey::generate(), &b"x"[..]).unwrap();
    assert!(root.join("datasets/ds-1/obj-1").is_file());
}

#[test]
fn uploads_resume_verify_and_publish_only_when_whole() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(&dir.path().join("store")).unwrap();
    let uploads = Uploads::open(&dir.path().join("uploads")).unwrap();
    let dk = DataKey::generate();
    let object: Vec<u8> = (0..10_000u32).flat_map(|i| i.to_le_bytes()).collect();
    let chunk = 4096usize;
    let plan = UploadPlan {
        size: object.len() as u64,
        sha256: hex::encode(Sha256::digest(&object)),
        chunk_size: chunk as u64,
    };
    let id = uploads.start(&plan).unwrap();
    let key = ObjectKey::parse("ds-7", "obj-3").unwrap();
    let chunks: Vec<&[u8]> = object.chunks(chunk).collect();
    let sha = |c: &[u8]| hex::encode(Sha256::digest(c));
    // The first half arrives, then the connection drops.
    for (i, c) in chunks.iter().enumerate().take(5) {
        uploads.put_chunk(&id, i as u64, c, &sha(c)).unwrap();
    }
    // A corrupted chunk is refused and stays missing; completing early is refused.
    let mut bad = chunks[5].to_vec();
    bad[0] ^= 1;
    assert!(uploads.put_chunk(&id, 5, &bad, &sha(chunks[5])).is_err());
    assert_eq!(
        uploads.missing(&id).unwrap(),
        (5..chunks.len() as u64).collect::<Vec<_>>()
    );
    assert!(uploads.complete(&id, &store, &key, &dk).is_err());
    assert!(
        !store.exists(&key),
        "nothing visible before the upload is complete"
    );
    // Resumed: the missing chunks (one sent twice) and completion.
    for i in uploads.missing(&id).unwrap() {
        let c = chunks[i as usize];
        uploads.put_chunk(&id, i, c, &sha(c)).unwrap();
    }
    uploads
        .put_chunk(&id, 6, chunks[6], &sha(chunks[6]))
        .unwrap();
    uploads.complete(&id, &store, &key, &dk).unwrap();
    let mut back = Vec::new();
    get_decrypted(&store, &key, &dk, &mut back).unwrap();
    assert_eq!(back, object);
    // Publishing never replaces an existing object.
    assert!(put_encrypted(&store, &key, &dk, &b"other"[..]).is_err());
}

#[test]
fn a_wrong_whole_hash_publishes_nothing_and_crash_leftovers_are_cleaned() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let store = LocalStore::open(&root).unwrap();
    let uploads = Uploads::open(&dir.path().join("uploads")).unwrap();
    let dk = DataKey::generate();
    let data = b"pseudonymised instance bytes".to_vec();
    let plan = UploadPlan {
        size: data.len() as u64,
        sha256: hex::encode(Sha256::digest(b"something else")),
        chunk_size: 1024,
    };
    let id = uploads.start(&plan).unwrap();
    uploads
        .put_chunk(&id, 0, &data, &hex::encode(Sha256::digest(&data)))
        .unwrap();
    let key = ObjectKey::parse("ds-2", "obj-1").unwrap();
    let e = uploads
        .complete(&id, &store, &key, &dk)
        .unwrap_err()
        .to_string();
    assert!(e.contains("SHA-256"), "{e}");
    assert!(!store.exists(&key));
    assert!(store.list(&key.dataset).unwrap().is_empty());
    // A crash between scratch write and publish leaves a scratch file: never listed, cleaned.
    let scratch = store.scratch(&key).unwrap();
    let (_, leftover) = scratch.keep().unwrap();
    assert!(leftover.exists());
    assert!(store.list(&key.dataset).unwrap().is_empty());
    assert_eq!(store.clean_scratch().unwrap(), 1);
    assert!(!leftover.exists());
    // Deleting a dataset removes its objects.
    put_encrypted(
        &store,
        &ObjectKey::parse("ds-2", "a").unwrap(),
        &dk,
        &b"1"[..],
    )
    .unwrap();
    put_encrypted(
        &store,
        &ObjectKey::parse("ds-2", "b").unwrap(),
        &dk,
        &b"2"[..],
    )
    .unwrap();
    assert_eq!(store.delete_dataset(&key.dataset).unwrap(), 2);
    assert!(!root.join("datasets/ds-2").exists());
}
