//! The authorisation matrix: principals x resources x actions -> allow (A), forbidden/403 (F) or
//! hidden/404 (H). Each row was written from the rules in the crate's documentation, not
//! generated from the code.

use medfed_policy::{Action, Decision, Grant, Principal, Resource, StudyRole, decide, visible};

const ACTIONS: [Action; 10] = [
    Action::AdministerPlatform,
    Action::CreateStudy,
    Action::ReadStudy,
    Action::ManageStudy,
    Action::SearchDatasets,
    Action::ReadData,
    Action::Upload,
    Action::DeleteDataset,
    Action::LegalHold,
    Action::ReadAudit,
];

fn principal(id: &str, org: &str, admin: bool, grants: &[(&str, StudyRole)]) -> Principal {
    Principal {
        id: id.into(),
        organisation: Some(org.into()),
        platform_admin: admin,
        grants: grants
            .iter()
            .map(|(s, r)| Grant {
                study: s.to_string(),
                role: *r,
            })
            .collect(),
    }
}

fn resources() -> Vec<(&'static str, Resource)> {
    let ds = |s: &str, o: &str| Resource::Dataset {
        study: s.into(),
        owner_organisation: o.into(),
    };
    vec![
        ("platform", Resource::Platform),
        ("study A", Resource::Study { study: "a".into() }),
        ("dataset A/H1", ds("a", "h1")),
        ("dataset A/H2", ds("a", "h2")),
        ("audit A", Resource::StudyAudit { study: "a".into() }),
        ("study B", Resource::Study { study: "b".into() }),
        ("dataset B/H1", ds("b", "h1")),
        ("audit B", Resource::StudyAudit { study: "b".into() }),
    ]
}

#[test]
fn every_principal_resource_and_action() {
    use StudyRole::*;
    const HID: &str = "HHHHHHHHHH";
    // Columns: platform, study A, dataset A/H1, dataset A/H2, audit A, study B, dataset B/H1, audit B.
    let matrix: Vec<(Principal, [&str; 8])> = vec![
        (
            principal("admin", "hub", true, &[]),
            ["AAFFFFFFFF", HID, HID, HID, HID, HID, HID, HID],
        ),
        (
            principal("admin+researcher", "hub", true, &[("a", Researcher)]),
            [
                "AAFFFFFFFF",
                "FFAFAFFFFF",
                "FFFFAAFFFF",
                "FFFFAAFFFF",
                "FFFFFFFFFF",
                HID,
                HID,
                HID,
            ],
        ),
        (
            principal("coordinator A", "h1", false, &[("a", StudyCoordinator)]),
            [
                "FFFFFFFFFF",
                "FFAAAFFFFF",
                "FFFFAFFFFF",
                "FFFFAFFFFF",
                "FFFFFFFFFA",
                HID,
                HID,
                HID,
            ],
        ),
        (
            principal("researcher A", "h1", false, &[("a", Researcher)]),
            [
                "FFFFFFFFFF",
                "FFAFAFFFFF",
                "FFFFAAFFFF",
                "FFFFAAFFFF",
                "FFFFFFFFFF",
                HID,
                HID,
                HID,
            ],
        ),
        (
            principal("site operator A@H1", "h1", false, &[("a", SiteOperator)]),
            [
                "FFFFFFFFFF",
                "FFAFAFFFFF",
                "FFFFAFAFFF",
                "FFFFAFFFFF",
                "FFFFFFFFFF",
                HID,
                HID,
                HID,
            ],
        ),
        (
            principal("data owner A@H1", "h1", false, &[("a", DataOwner)]),
            [
                "FFFFFFFFFF",
                "FFAFAFFFFF",
                "FFFFAFFAAF",
                "FFFFAFFFFF",
                "FFFFFFFFFF",
                HID,
                HID,
                HID,
            ],
        ),
        (
            principal("data owner A@H2", "h2", false, &[("a", DataOwner)]),
            [
                "FFFFFFFFFF",
                "FFAFAFFFFF",
                "FFFFAFFFFF",
                "FFFFAFFAAF",
                "FFFFFFFFFF",
                HID,
                HID,
                HID,
            ],
        ),
        (
            principal("auditor A", "h3", false, &[("a", Auditor)]),
            [
                "FFFFFFFFFF",
                "FFAFAFFFFF",
                "FFFFAFFFFF",
                "FFFFAFFFFF",
                "FFFFFFFFFA",
                HID,
                HID,
                HID,
            ],
        ),
        (
            principal("researcher B", "h1", false, &[("b", Researcher)]),
            [
                "FFFFFFFFFF",
                HID,
                HID,
                HID,
                HID,
                "FFAFAFFFFF",
                "FFFFAAFFFF",
                "FFFFFFFFFF",
            ],
        ),
        (
            principal("nobody", "h1", false, &[]),
            ["FFFFFFFFFF", HID, HID, HID, HID, HID, HID, HID],
        ),
    ];
    let code = |d: Decision| match d {
        Decision::Allow => 'A',
        Decision::Forbidden => 'F',
        Decision::Hidden => 'H',
    };
    let mut wrong = Vec::new();
    for (who, row) in &matrix {
        for ((name, resource), expected) in resources().iter().zip(row) {
            let got: String = ACTIONS
                .iter()
                .map(|&a| code(decide(who, a, resource)))
                .collect();
            if got != *expected {
                wrong.push(format!(
                    "{} on {name}: expected {expected}, got {got}",
                    who.id
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn listings_show_only_what_may_be_known_and_hidden_means_404() {
    let researcher_a = principal("r", "h1", false, &[("a", StudyRole::Researcher)]);
    let admin = principal("adm", "hub", true, &[]);
    for (name, r) in resources() {
        let in_a = name.contains(" A");
        assert_eq!(
            visible(&researcher_a, &r),
            in_a,
            "researcher A sees {name}?"
        );
        assert_eq!(
            visible(&admin, &r),
            name == "platform",
            "admin sees {name}?"
        );
        // Whatever is not visible answers 404 to every action, never 403.
        if !visible(&researcher_a, &r) && name != "platform" {
            for a in ACTIONS {
                assert_eq!(decide(&researcher_a, a, &r).status(), 404, "{name} {a:?}");
            }
        }
    }
}

#[test]
fn grants_go_only_to_members_organisations_and_never_to_oneself() {
    use medfed_policy::{GrantRefusal, check_appointment, check_grant};
    let orgs = ["org1".to_string(), "org2".to_string()];
    let coord = principal(
        "coord",
        "org1",
        false,
        &[("s1", StudyRole::StudyCoordinator)],
    );
    let admin = principal("admin", "org1", true, &[]);
    let colleague = principal("res", "org2", false, &[]);
    let stranger = principal("x", "org3", false, &[]);
    let nobody = Principal {
        id: "n".into(),
        ..Principal::default()
    };
    assert_eq!(check_grant(&coord, &colleague, &orgs), Ok(()));
    assert_eq!(check_grant(&admin, &coord, &orgs), Ok(()));
    assert_eq!(
        check_grant(&coord, &stranger, &orgs),
        Err(GrantRefusal::OutsideTheStudy)
    );
    assert_eq!(
        check_grant(&coord, &nobody, &orgs),
        Err(GrantRefusal::OutsideTheStudy)
    );
    // An administrator naming themself coordinator, a coordinator making themself researcher.
    assert_eq!(
        check_grant(&admin, &admin, &orgs),
        Err(GrantRefusal::SelfGrant)
    );
    assert_eq!(
        check_grant(&coord, &coord, &orgs),
        Err(GrantRefusal::SelfGrant)
    );
    // A new study's coordinator may come from a coordinating centre outside it, never be the
    // administrator creating it.
    assert_eq!(check_appointment(&admin, &stranger), Ok(()));
    assert_eq!(
        check_appointment(&admin, &admin),
        Err(GrantRefusal::SelfGrant)
    );
}
