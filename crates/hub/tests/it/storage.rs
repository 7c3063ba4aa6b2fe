//! Objects at rest and their lifecycle through the API: resumable uploads, encryption, blob
//! integrity, key rotation, crypto-shredding, legal hold, retention, hostile names.

use axum::http::StatusCode;
use serde_json::json;

use crate::support::{
    Fixture, Site, backends, dataset_body, instance_described, pseudonym, sha256, site,
};

const PLANTED: &str = "PLANTED^SECRET^NAME";

fn blobs(f: &Fixture, dataset: &str) -> Vec<std::path::PathBuf> {
    let dir = f.dir.path().join("objects/datasets").join(dataset);
    std::fs::read_dir(&dir)
        .map(|r| r.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_upload_resumes_and_nothing_is_visible_before_it_is_verified() {
    for backend in backends() {
        let s = site(backend).await;
        let data: Vec<u8> = (0..100_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let up =
            s.f.start_upload(
                &s.op,
                &s.dataset,
                "volume.raw",
                "application/octet-stream",
                &data,
                64 * 1024,
            )
            .await;
        // Three of the chunks arrive, then the connection "drops".
        let chunks: Vec<&[u8]> = data.chunks(64 * 1024).collect();
        for i in [0, 2, 4] {
            assert_eq!(
                s.f.put_chunk(&s.op, &up, i, chunks[i]).await.0,
                StatusCode::NO_CONTENT
            );
        }
        // A corrupted chunk is refused.
        let (st, _) = {
            let mut bad = chunks[1].to_vec();
            bad[10] ^= 1;
            let req = axum::http::Request::builder()
                .method("PUT")
                .uri(format!("/api/v1/uploads/{up}/chunks/1"))
                .header("authorization", format!("Bearer {}", s.op))
                .header("x-medfed-chunk-sha256", sha256(chunks[1]))
                .body(axum::body::Body::from(bad))
                .unwrap();
            s.f.send(req).await
        };
        assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{backend}");
        let (_, v) =
            s.f.call("GET", &format!("/api/v1/uploads/{up}"), Some(&s.op), None)
                .await;
        let missing: Vec<u64> = v["missing"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect();
        assert_eq!(
            missing,
            (0..chunks.len() as u64)
                .filter(|i| ![0, 2, 4].contains(i))
                .collect::<Vec<_>>()
        );
        // Completing early is refused and publishes nothing.
        let (st, _) =
            s.f.call(
                "POST",
                &format!("/api/v1/uploads/{up}/complete"),
                Some(&s.op),
                None,
            )
            .await;
        assert_eq!(st, StatusCode::CONFLICT);
        let (_, v) =
            s.f.call(
                "GET",
                &format!("/api/v1/datasets/{}/objects", s.dataset),
                Some(&s.researcher),
                None,
            )
            .await;
        assert!(v["items"].as_array().unwrap().is_empty());
        assert!(blobs(&s.f, &s.dataset).is_empty());
        // Resume with what is missing.
        for i in missing {
            assert_eq!(
                s.f.put_chunk(&s.op, &up, i as usize, chunks[i as usize])
                    .await
                    .0,
                StatusCode::NO_CONTENT
            );
        }
        let (st, v) =
            s.f.call(
                "POST",
                &format!("/api/v1/uploads/{up}/complete"),
                Some(&s.op),
                None,
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{v}");
        let object = v["id"].as_str().unwrap();
        let (st, _, body) =
            s.f.get_raw(
                &format!("/api/v1/datasets/{}/objects/{object}", s.dataset),
                &s.researcher,
            )
            .await;
        assert_eq!(st, StatusCode::OK);
        assert_eq!(body, data, "{backend}: round trip");
    }
}

/// A whole object that does not match its promised SHA-256 is never published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_whole_object_hash_publishes_nothing() {
    let s = site("sqlite").await;
    let data = b"abcdefgh".to_vec();
    let (st, v) = s
        .f
        .call(
            "POST",
            &format!("/api/v1/datasets/{}/uploads", s.dataset),
            Some(&s.op),
            Some(json!({"name": "x", "media_type": "application/octet-stream", "size": 8, "sha256": sha256(b"something else"), "chunk_size": 8})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let up = v["upload"].as_str().unwrap();
    assert_eq!(
        s.f.put_chunk(&s.op, up, 0, &data).await.0,
        StatusCode::NO_CONTENT
    );
    let (st, _) =
        s.f.call(
            "POST",
            &format!("/api/v1/uploads/{up}/complete"),
            Some(&s.op),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(blobs(&s.f, &s.dataset).is_empty());
}

async fn read(s: &Site, object: &str) -> (StatusCode, Vec<u8>) {
    let (st, _, body) =
        s.f.get_raw(
            &format!("/api/v1/datasets/{}/objects/{object}", s.dataset),
            &s.researcher,
        )
        .await;
    (st, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_are_encrypted_bound_to_their_place_and_survive_key_rotation() {
    for backend in backends() {
        let s = site(backend).await;
        let p1 = pseudonym("one");
        // A free-text description kept under Clean Descriptors carries the planted value.
        let dicom = instance_described("2.25.11", "2.25.12", "2.25.13", &p1, &p1, true, PLANTED);
        let a =
            s.f.upload(
                &s.op,
                &s.dataset,
                "a.dcm",
                "application/dicom",
                &dicom,
                1 << 20,
            )
            .await;
        let b =
            s.f.upload(
                &s.op,
                &s.dataset,
                "b.bin",
                "application/octet-stream",
                PLANTED.as_bytes(),
                1 << 20,
            )
            .await;
        let dir = s.f.dir.path().join("objects/datasets").join(&s.dataset);
        for blob in blobs(&s.f, &s.dataset) {
            let bytes = std::fs::read(&blob).unwrap();
            assert!(
                memchr::memmem::find(&bytes, b"DICM").is_none(),
                "DICOM magic in {blob:?}"
            );
            assert!(
                memchr::memmem::find(&bytes, PLANTED.as_bytes()).is_none(),
                "planted value in {blob:?}"
            );
            assert!(memchr::memmem::find(&bytes, b"PLANTED").is_none());
        }
        assert_eq!(read(&s, &a).await, (StatusCode::OK, dicom.clone()));
        // Swapped blobs: each is bound to its object id, so both reads fail.
        let (pa, pb) = (dir.join(&a), dir.join(&b));
        let (ba, bb) = (std::fs::read(&pa).unwrap(), std::fs::read(&pb).unwrap());
        std::fs::write(&pa, &bb).unwrap();
        std::fs::write(&pb, &ba).unwrap();
        assert_ne!(
            read(&s, &a).await.1,
            dicom,
            "{backend}: swapped blob must not read as the original"
        );
        std::fs::write(&pa, &ba).unwrap();
        std::fs::write(&pb, &bb).unwrap();
        // A flipped byte: the read is cut off with an error, never delivered whole.
        let mut flipped = ba.clone();
        flipped[40] ^= 0x01;
        std::fs::write(&pa, &flipped).unwrap();
        let (_, got) = read(&s, &a).await;
        assert_ne!(
            got, dicom,
            "{backend}: a flipped byte must not be delivered as the object"
        );
        std::fs::write(&pa, &ba).unwrap();
        assert_eq!(read(&s, &a).await.1, dicom);
        // Rotation: a new master key version re-wraps data keys; blobs are untouched.
        let before = s.f.hub.catalogue.wrapped_key(&s.dataset).await.unwrap();
        let mut keys = medfed_hub::keys::MasterKeys::load(&s.f.dir.path().join("keys")).unwrap();
        let (v, n) = keys.rotate(&s.f.hub.catalogue, true).await.unwrap();
        assert_eq!((v, n), (2, 1));
        let after = s.f.hub.catalogue.wrapped_key(&s.dataset).await.unwrap();
        assert_eq!(after.master_version, 2);
        assert_ne!(after.wrapped_hex, before.wrapped_hex);
        assert_eq!(
            std::fs::read(&pa).unwrap(),
            ba,
            "rotation must not rewrite blobs"
        );
        assert!(
            !s.f.dir.path().join("keys/master-v1.key").exists(),
            "retired key removed"
        );
        // Keys loaded afresh (only version 2 remains) read everything.
        let fresh = medfed_hub::keys::MasterKeys::load(&s.f.dir.path().join("keys")).unwrap();
        let dk = fresh.unwrap(&after).unwrap();
        let mut out = Vec::new();
        medfed_store::get_decrypted(
            s.f.hub.blobs.as_ref(),
            &medfed_store::ObjectKey::parse(&s.dataset, &a).unwrap(),
            &dk,
            &mut out,
        )
        .unwrap();
        assert_eq!(out, dicom);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_shreds_the_key_and_objects_unless_on_legal_hold_and_retention_expires() {
    for backend in backends() {
        let s = site(backend).await;
        s.f.upload(
            &s.op,
            &s.dataset,
            "a.bin",
            "application/octet-stream",
            b"payload",
            1024,
        )
        .await;
        // Legal hold blocks deletion, by the owner and by the retention sweep.
        let hold_path = format!("/api/v1/datasets/{}/legal-hold", s.dataset);
        let hold = |h: bool| {
            s.f.call("PUT", &hold_path, Some(&s.owner), Some(json!({"hold": h})))
        };
        assert_eq!(hold(true).await.0, StatusCode::NO_CONTENT);
        assert_eq!(
            s.f.call(
                "DELETE",
                &format!("/api/v1/datasets/{}", s.dataset),
                Some(&s.owner),
                None
            )
            .await
            .0,
            StatusCode::CONFLICT
        );
        let far_future = 4_102_444_800_000i64 + 10 * 86_400_000 * 365;
        assert_eq!(
            s.f.hub
                .sweep_expired(far_future)
                .await
                .unwrap()
                .datasets_removed,
            0
        );
        assert_eq!(blobs(&s.f, &s.dataset).len(), 1);
        assert_eq!(hold(false).await.0, StatusCode::NO_CONTENT);
        // The owner deletes: rows, wrapped key and blobs are gone.
        assert_eq!(
            s.f.call(
                "DELETE",
                &format!("/api/v1/datasets/{}", s.dataset),
                Some(&s.owner),
                None
            )
            .await
            .0,
            StatusCode::NO_CONTENT
        );
        assert!(
            s.f.hub.catalogue.wrapped_key(&s.dataset).await.is_err(),
            "{backend}: data key destroyed"
        );
        assert!(
            s.f.hub
                .catalogue
                .dataset(&s.dataset)
                .await
                .unwrap()
                .is_none()
        );
        assert!(blobs(&s.f, &s.dataset).is_empty());
        assert_eq!(
            s.f.call(
                "GET",
                &format!("/api/v1/datasets/{}", s.dataset),
                Some(&s.researcher),
                None
            )
            .await
            .0,
            StatusCode::NOT_FOUND
        );
        // Retention: a dataset past its date is removed by the sweep, and the removal is audited.
        let mut body = dataset_body();
        body["retention_until"] = json!("2001-01-01");
        let (_, v) =
            s.f.call(
                "POST",
                "/api/v1/studies/study-a/datasets",
                Some(&s.op),
                Some(body),
            )
            .await;
        let old = v["id"].as_str().unwrap().to_string();
        s.f.upload(
            &s.op,
            &old,
            "a.bin",
            "application/octet-stream",
            b"old",
            1024,
        )
        .await;
        let h =
            s.f.hub
                .sweep_expired(medfed_catalogue::now_ms())
                .await
                .unwrap();
        assert_eq!(h.datasets_removed, 1, "{backend}");
        assert!(s.f.hub.catalogue.dataset(&old).await.unwrap().is_none());
        assert!(blobs(&s.f, &old).is_empty());
        let log = std::fs::read_to_string(s.f.hub.config.audit_log()).unwrap();
        assert!(log.contains(&format!(
            "\"action\":\"dataset.expire\",\"resource\":\"study/study-a/dataset/{old}\""
        )));
        assert!(log.contains(&format!("\"action\":\"DELETE /api/v1/datasets/{{dataset}}\",\"resource\":\"study/study-a/dataset/{}\",\"outcome\":\"allowed 204\"", s.dataset)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_names_and_ids_never_touch_anything_outside_their_place() {
    let s = site("sqlite").await;
    s.f.upload(
        &s.op,
        &s.dataset,
        "ok.bin",
        "application/octet-stream",
        b"fine",
        1024,
    )
    .await;
    let before = s.f.tree();
    let hostile = [
        "..",
        "../..",
        "..%2f..%2fetc",
        "%2e%2e%2f",
        "%00",
        "a%00b",
        "%2fetc%2fpasswd",
        "C:%5cwindows",
        "%E2%80%A4%E2%80%A4",
        "%EF%BC%8E%EF%BC%8E",
        "%EF%BD%81%EF%BD%82%EF%BD%83",
    ];
    for h in hostile {
        for path in [
            format!("/api/v1/datasets/{h}"),
            format!("/api/v1/datasets/{h}/objects"),
            format!("/api/v1/datasets/{}/objects/{h}", s.dataset),
            format!("/api/v1/uploads/{h}"),
            format!("/api/v1/studies/{h}/datasets"),
        ] {
            let (st, _) = s.f.call("GET", &path, Some(&s.researcher), None).await;
            assert!(
                st == StatusCode::NOT_FOUND || st == StatusCode::BAD_REQUEST,
                "{path}: {st}"
            );
            let (st, _) = s.f.call("DELETE", &path, Some(&s.owner), None).await;
            assert!(st.is_client_error(), "{path}: {st}");
        }
        // A hostile object *name* is refused at the API (it would be listed back to clients
        // that save by name); the blobs go under random ids in any case.
        let name = h.replace('%', "/");
        let (st, v) = s
            .f
            .call(
                "POST",
                &format!("/api/v1/datasets/{}/uploads", s.dataset),
                Some(&s.op),
                Some(serde_json::json!({"name": format!("../../{name}"), "media_type": "application/octet-stream", "size": 1, "sha256": sha256(b"x"), "chunk_size": 1024})),
            )
            .await;
        assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{name}: {v}");
    }
    let after = s.f.tree();
    let outside: Vec<_> = after
        .iter()
        .filter(|(p, _)| !before.iter().any(|(b, _)| b == p))
        .filter(|(p, _)| !p.starts_with(&format!("objects/datasets/{}/", s.dataset)))
        .filter(|(p, _)| !p.starts_with("audit/") && !p.starts_with("catalogue.db"))
        .collect();
    assert!(
        outside.is_empty(),
        "files appeared outside the dataset's place: {outside:?}"
    );
    // Files that existed are unchanged, except the audit log and the database.
    for (p, size) in &before {
        if p.starts_with("audit/") || p.starts_with("catalogue.db") {
            continue;
        }
        assert!(after.contains(&(p.clone(), *size)), "{p} changed");
    }
}
