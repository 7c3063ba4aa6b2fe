//! Envelope encryption and segmented objects: round trips, and every way a blob can be damaged
//! or misplaced is an integrity error.

use medfed_crypto::{
    CryptoError, DataKey, MasterKey, SEGMENT, decrypt_object, encrypt_object, rewrap,
};

fn seal(key: &DataKey, ds: &str, obj: &str, plain: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encrypt_object(key, ds, obj, plain, &mut out).unwrap();
    out
}

fn open(key: &DataKey, ds: &str, obj: &str, blob: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let mut out = Vec::new();
    decrypt_object(key, ds, obj, blob, &mut out)?;
    Ok(out)
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 % 251) as u8).collect()
}

#[test]
fn objects_round_trip_at_segment_boundaries() {
    let key = DataKey::generate();
    for n in [
        0,
        1,
        1000,
        SEGMENT - 1,
        SEGMENT,
        SEGMENT + 1,
        3 * SEGMENT + 17,
    ] {
        let plain = pattern(n);
        let blob = seal(&key, "ds-1", "obj-1", &plain);
        assert_eq!(
            blob.len(),
            11 + n + 16 * n.div_ceil(SEGMENT).max(1),
            "size {n}"
        );
        assert_eq!(
            open(&key, "ds-1", "obj-1", &blob).unwrap(),
            plain,
            "size {n}"
        );
    }
}

#[test]
fn damaged_swapped_reordered_and_truncated_blobs_are_refused() {
    let key = DataKey::generate();
    let plain = pattern(2 * SEGMENT + 100);
    let blob = seal(&key, "ds-1", "obj-1", &plain);
    let integrity = |r: Result<Vec<u8>, CryptoError>| matches!(r, Err(CryptoError::Integrity(_)));
    // A flipped byte in the header, each segment's body and each tag.
    for at in [5, 20, SEGMENT + 30, SEGMENT + 11 + 16 + 5, blob.len() - 1] {
        let mut b = blob.clone();
        b[at] ^= 0x40;
        assert!(integrity(open(&key, "ds-1", "obj-1", &b)), "flip at {at}");
    }
    // The right blob under another object or dataset id (a swapped blob).
    assert!(integrity(open(&key, "ds-1", "obj-2", &blob)));
    assert!(integrity(open(&key, "ds-2", "obj-1", &blob)));
    // Another dataset's key.
    assert!(integrity(open(
        &DataKey::generate(),
        "ds-1",
        "obj-1",
        &blob
    )));
    // Segments swapped.
    let seg = SEGMENT + 16;
    let mut b = blob[..11].to_vec();
    b.extend_from_slice(&blob[11 + seg..11 + 2 * seg]);
    b.extend_from_slice(&blob[11..11 + seg]);
    b.extend_from_slice(&blob[11 + 2 * seg..]);
    assert!(integrity(open(&key, "ds-1", "obj-1", &b)));
    // The last segment dropped, or the blob cut mid-segment.
    assert!(integrity(open(
        &key,
        "ds-1",
        "obj-1",
        &blob[..11 + 2 * seg]
    )));
    assert!(integrity(open(
        &key,
        "ds-1",
        "obj-1",
        &blob[..blob.len() - 40]
    )));
    assert!(integrity(open(&key, "ds-1", "obj-1", &blob[..6])));
}

#[test]
fn blobs_hold_no_plaintext() {
    let key = DataKey::generate();
    let mut plain = vec![0u8; 128];
    plain.extend_from_slice(b"DICM");
    plain.extend_from_slice(b"Mustermann^Erika 19640812 PAT-0815");
    plain.extend(pattern(5000));
    let blob = seal(&key, "ds", "o", &plain);
    for needle in [&b"DICM"[..], b"Mustermann", b"19640812", b"PAT-0815"] {
        assert!(
            !blob.windows(needle.len()).any(|w| w == needle),
            "{needle:?} visible"
        );
    }
}

#[test]
fn rotation_rewraps_without_touching_blobs_and_wraps_are_bound_to_their_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let m1 = MasterKey::generate_to(1, &dir.path().join("master-1.key")).unwrap();
    let m2 = MasterKey::generate_to(2, &dir.path().join("master-2.key")).unwrap();
    let dk = DataKey::generate();
    let blob = seal(&dk, "ds-9", "o", b"pixel data");
    let w1 = m1.wrap(&dk, "ds-9");
    let w2 = rewrap(&m1, &m2, &w1, "ds-9").unwrap();
    assert_eq!(w2.master_version, 2);
    // The blob is unchanged and opens with the re-wrapped key; the old master no longer applies.
    assert_eq!(
        open(&m2.unwrap(&w2, "ds-9").unwrap(), "ds-9", "o", &blob).unwrap(),
        b"pixel data"
    );
    assert!(m1.unwrap(&w2, "ds-9").is_err());
    // A wrapped key copied to another dataset does not unwrap there.
    assert!(matches!(
        m1.unwrap(&w1, "ds-10"),
        Err(CryptoError::Integrity(_))
    ));
    // Key files are private and reload to the same key.
    let again = MasterKey::from_file(1, &dir.path().join("master-1.key")).unwrap();
    assert!(again.unwrap(&w1, "ds-9").is_ok());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.path().join("master-1.key");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = MasterKey::from_file(1, &p).err().unwrap().to_string();
        assert!(e.contains("chmod 600"), "{e}");
    }
    // Crypto-shredding: once the wrapped key is gone, nothing opens the blob; a fresh key does not.
    drop(w1);
    assert!(open(&DataKey::generate(), "ds-9", "o", &blob).is_err());
}
