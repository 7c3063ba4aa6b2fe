//! QIDO-RS attribute matching is the same on SQLite and PostgreSQL (PS3.4 C.2.2.2.1): a
//! Person Name matches whatever its case, every other attribute (Patient ID here) only exactly,
//! with `*` as a trailing wildcard on both.

use axum::http::StatusCode;

use crate::support::{backends, instance, pseudonym, site};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_match_in_any_case_and_ids_only_exactly_on_every_backend() {
    for backend in backends() {
        let site = site(backend).await;
        let (f, op, res, ds) = (&site.f, &site.op, &site.researcher, &site.dataset);
        let (id, name) = (pseudonym("casework"), pseudonym("namecase"));
        let batch = vec![instance(
            "2.25.700", "2.25.701", "2.25.702", &id, &name, true,
        )];
        let (s, v) = f.stow(op, ds, &batch).await;
        assert_eq!(s, StatusCode::OK, "{backend}: {v}");
        let found = |query: String| async move {
            let (s, v) = f
                .call(
                    "GET",
                    &format!("/api/v1/dicomweb/studies?{query}"),
                    Some(res),
                    None,
                )
                .await;
            assert_eq!(s, StatusCode::OK, "{backend}: {query}: {v}");
            v.as_array().unwrap().len()
        };
        let lower = name.to_ascii_lowercase();
        assert_eq!(found(format!("PatientName={name}")).await, 1, "{backend}");
        assert_eq!(
            found(format!("PatientName={lower}")).await,
            1,
            "{backend}: name, lower case"
        );
        assert_eq!(
            found(format!("PatientName={}*", &lower[..6])).await,
            1,
            "{backend}: prefix"
        );
        assert_eq!(found(format!("PatientID={id}")).await, 1, "{backend}");
        assert_eq!(
            found(format!("PatientID={}", id.to_ascii_lowercase())).await,
            0,
            "{backend}: an ID matches only exactly"
        );
        assert_eq!(
            found(format!("PatientID={}*", id[..6].to_ascii_lowercase())).await,
            0,
            "{backend}: an ID prefix matches only in its own case"
        );
        assert_eq!(
            found(format!("PatientID={}*", &id[..6])).await,
            1,
            "{backend}"
        );
        // LIKE's own wildcards in a value are literal characters, not patterns.
        assert_eq!(found("PatientID=MF%25".into()).await, 0, "{backend}");
        assert_eq!(found("PatientName=MF_*".into()).await, 0, "{backend}");
    }
}
