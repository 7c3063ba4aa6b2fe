//! DICOMweb: STOW-RS accepts only de-identified instances, QIDO-RS finds them by their
//! pseudonymised attributes (paged), WADO-RS returns the stored bytes.

use axum::http::StatusCode;

use crate::support::{backends, instance, pseudonym, site};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stow_qido_and_wado_round_trip_under_the_access_rules() {
    for backend in backends() {
        let site = site(backend).await;
        let (f, op, res, ds) = (&site.f, &site.op, &site.researcher, &site.dataset);
        let mut instances = Vec::new();
        for s in 0..3 {
            for i in 0..4 {
                instances.push(instance(
                    "2.25.500",
                    &format!("2.25.50{s}"),
                    &format!("2.25.5{s}{i}"),
                    &pseudonym("seven"),
                    &pseudonym("seven"),
                    true,
                ));
            }
        }
        let not_deidentified = instance(
            "2.25.600", "2.25.601", "2.25.602", "MRN-123", "DOE^JANE", false,
        );
        let mut batch = instances.clone();
        batch.push(not_deidentified);
        batch.push(b"not dicom at all".to_vec());
        let (s, v) = f.stow(op, ds, &batch).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{backend}: partial success: {v}");
        assert_eq!(v["00081199"]["Value"].as_array().unwrap().len(), 12);
        assert_eq!(v["00081198"]["Value"].as_array().unwrap().len(), 2);
        // Storing the same instance again is a duplicate.
        let (s, v) = f.stow(op, ds, &instances[..1]).await;
        assert_eq!(s, StatusCode::CONFLICT);
        assert_eq!(v["00081198"]["Value"][0]["00081197"]["Value"][0], 0x0111);
        // QIDO at each level.
        let (s, v) = f
            .call(
                "GET",
                &format!("/api/v1/dicomweb/studies?PatientID={}", pseudonym("seven")),
                Some(res),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(v.as_array().unwrap().len(), 1);
        assert_eq!(v[0]["00201208"]["Value"][0], 12);
        let (_, v) = f
            .call(
                "GET",
                "/api/v1/dicomweb/studies?PatientID=MRN-123",
                Some(res),
                None,
            )
            .await;
        assert!(
            v.as_array().unwrap().is_empty(),
            "the refused instance was not indexed"
        );
        let (_, v) = f
            .call(
                "GET",
                "/api/v1/dicomweb/studies?StudyDate=20240101-20241231&Modality=CT",
                Some(res),
                None,
            )
            .await;
        assert_eq!(v.as_array().unwrap().len(), 1);
        let (_, v) = f
            .call(
                "GET",
                "/api/v1/dicomweb/studies?StudyDate=20250101-",
                Some(res),
                None,
            )
            .await;
        assert!(v.as_array().unwrap().is_empty());
        let (_, v) = f
            .call(
                "GET",
                "/api/v1/dicomweb/studies/2.25.500/series",
                Some(res),
                None,
            )
            .await;
        assert_eq!(v.as_array().unwrap().len(), 3);
        let (st, h, body) = f
            .get_raw(
                "/api/v1/dicomweb/studies/2.25.500/series/2.25.501/instances?limit=3",
                res,
            )
            .await;
        assert_eq!(st, StatusCode::OK);
        let page: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(page.as_array().unwrap().len(), 3);
        assert!(h.contains_key("warning"), "more results are announced");
        // WADO: the exact bytes that were stored.
        let (st, h, body) = f
            .get_raw(
                "/api/v1/dicomweb/studies/2.25.500/series/2.25.502/instances/2.25.523",
                res,
            )
            .await;
        assert_eq!(st, StatusCode::OK);
        let ct = h["content-type"].to_str().unwrap();
        assert!(ct.starts_with("multipart/related; type=\"application/dicom\""));
        let boundary = ct.split("boundary=").nth(1).unwrap();
        let start = memchr::memmem::find(&body, b"\r\n\r\n").unwrap() + 4;
        let end = memchr::memmem::rfind(&body, format!("\r\n--{boundary}--").as_bytes()).unwrap();
        assert_eq!(&body[start..end], &instances[11][..], "{backend}");
        // The site operator may upload but not read data.
        let (st, _) = f
            .call(
                "GET",
                "/api/v1/dicomweb/studies/2.25.500/series/2.25.502/instances/2.25.523",
                Some(op),
                None,
            )
            .await;
        assert_eq!(st, StatusCode::FORBIDDEN);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_part_whose_content_digest_does_not_match_is_refused_and_not_stored() {
    use axum::body::Body;
    use axum::http::Request;
    use base64::Engine;
    use sha2::Digest;
    let backend = backends()[0];
    let site = site(backend).await;
    let (f, op, res, ds) = (&site.f, &site.op, &site.researcher, &site.dataset);
    let p1 = pseudonym("one");
    let good = instance("2.25.700", "2.25.701", "2.25.702", &p1, &p1, true);
    let bad = instance("2.25.700", "2.25.701", "2.25.703", &p1, &p1, true);
    let digest =
        |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(b));
    let mut body = Vec::new();
    // The second part declares the digest of other bytes (as if altered on the way).
    for (bytes, declared) in [(&good, digest(&good)), (&bad, digest(b"something else"))] {
        body.extend_from_slice(
            format!("--bb\r\nContent-Type: application/dicom\r\nContent-Digest: sha-256=:{declared}:\r\n\r\n")
                .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"--bb--\r\n");
    let req = Request::builder()
        .method("POST")
        .uri(format!("/api/v1/dicomweb/studies?dataset={ds}"))
        .header("authorization", format!("Bearer {op}"))
        .header(
            "content-type",
            "multipart/related; type=\"application/dicom\"; boundary=bb",
        )
        .body(Body::from(body))
        .unwrap();
    let (s, v) = f.send(req).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    assert_eq!(
        v["00081199"]["Value"][0]["00081155"]["Value"][0],
        "2.25.702"
    );
    assert_eq!(
        v["00081198"]["Value"][0]["00081155"]["Value"][0],
        "2.25.703"
    );
    assert_eq!(v["00081198"]["Value"][0]["00081197"]["Value"][0], 0x0110);
    let (_, v) = f
        .call(
            "GET",
            "/api/v1/dicomweb/studies/2.25.700/series/2.25.701/instances",
            Some(res),
            None,
        )
        .await;
    assert_eq!(
        v.as_array().unwrap().len(),
        1,
        "only the verified part is stored"
    );
}
