//! The hub on a real S3-compatible server (moto's, started here on 127.0.0.1). Where no such
//! server can be started the test says so and skips, unless `MEDFED_REQUIRE_S3=1` (CI), where
//! it fails.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use axum::http::StatusCode;
use medfed_hub::config::StorageConfig;
use medfed_store::S3Config;

use crate::support::{Fixture, fresh_database, site_in};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_moto() -> Option<(Server, u16)> {
    let port = medfed_testkit::free_port();
    let child = Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let server = Server(child);
    // moto takes a few seconds to import on a loaded machine.
    for _ in 0..300 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some((server, port));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_live_encrypted_in_an_s3_bucket() {
    let Some((_server, port)) = start_moto() else {
        medfed_testkit::skip(
            Some("MEDFED_REQUIRE_S3"),
            "no S3-compatible server (moto_server) could be started on 127.0.0.1",
        );
        return;
    };
    let endpoint = format!("http://127.0.0.1:{port}");
    // moto accepts any credentials; the bucket is made with a plain PUT.
    let http = reqwest::Client::new();
    let r = http
        .put(format!("{endpoint}/medfed-test"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "bucket: {}", r.status());
    let s3 = S3Config {
        bucket: "medfed-test".into(),
        endpoint: Some(endpoint.clone()),
        region: "us-east-1".into(),
        access_key_id: Some("test".into()),
        secret_access_key: Some("test".into()),
        allow_http: true,
    };
    let dir = tempfile::tempdir().unwrap();
    let url = fresh_database("sqlite", dir.path()).await;
    let f = Fixture::with("sqlite", |c| {
        c.database_url = Some(url);
        c.storage = StorageConfig::S3(s3);
    })
    .await;
    let site = site_in(f).await;
    let (f, op, res, owner, ds) = (
        &site.f,
        &site.op,
        &site.researcher,
        &site.owner,
        site.dataset.clone(),
    );
    let dicom = crate::support::instance_described(
        "2.25.71",
        "2.25.72",
        "2.25.73",
        &crate::support::pseudonym("s3"),
        &crate::support::pseudonym("s3"),
        true,
        "PLANTED^S3",
    );
    let object = f
        .upload(op, &ds, "a.dcm", "application/dicom", &dicom, 100)
        .await;
    // In the bucket: one object, encrypted.
    let listing = http
        .get(format!("{endpoint}/medfed-test?list-type=2"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        listing.contains(&format!("<Key>datasets/{ds}/{object}</Key>")),
        "{listing}"
    );
    let blobs = f.hub.blobs.clone();
    let key = medfed_store::ObjectKey::parse(&ds, &object).unwrap();
    let raw = tokio::task::spawn_blocking(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut blobs.open(&key).unwrap(), &mut v).unwrap();
        v
    })
    .await
    .unwrap();
    assert!(raw.len() > dicom.len());
    assert!(memchr::memmem::find(&raw, b"DICM").is_none());
    assert!(memchr::memmem::find(&raw, b"PLANTED").is_none());
    // Read back through the hub.
    let (st, _, body) = f
        .get_raw(&format!("/api/v1/datasets/{ds}/objects/{object}"), res)
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(body, dicom);
    // Deletion empties the bucket of the dataset.
    assert_eq!(
        f.call(
            "DELETE",
            &format!("/api/v1/datasets/{ds}"),
            Some(owner),
            None
        )
        .await
        .0,
        StatusCode::NO_CONTENT
    );
    let listing = http
        .get(format!("{endpoint}/medfed-test?list-type=2"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!listing.contains(&ds), "{listing}");
}
