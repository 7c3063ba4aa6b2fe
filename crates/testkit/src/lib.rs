//! Test support shared by the workspace's tests (a dev-dependency only): where the project's
//! `../shared` folder is, and the one way a test that cannot run says so.
//!
//! A test whose data or peer tool is missing prints `SKIPPED: <why>` and returns, so that a
//! checkout without `../shared` or dcmtk still builds and tests. Under CI (`MEDFED_REQUIRE_ALL=1`,
//! set by `.ci/run`) every such skip is a failure instead: a green CI run has run every test.

use std::path::PathBuf;

/// Set by `.ci/run`: every skip fails.
pub const REQUIRE_ALL: &str = "MEDFED_REQUIRE_ALL";

/// Whether a test must run rather than skip: `MEDFED_REQUIRE_ALL`, or the test's own switch
/// (e.g. `MEDFED_REQUIRE_DCMTK`).
pub fn required(own_switch: Option<&str>) -> bool {
    let set = |k: &str| std::env::var_os(k).is_some_and(|v| !v.is_empty() && v != "0");
    set(REQUIRE_ALL) || own_switch.is_some_and(set)
}

/// Report a test that cannot run: panics when required (see [`required`]), else prints
/// `SKIPPED: why` to stderr. The caller returns after it.
#[track_caller]
pub fn skip(own_switch: Option<&str>, why: &str) {
    if required(own_switch) {
        panic!(
            "{why}; required because {} is set",
            own_switch.filter(|k| std::env::var_os(k).is_some()).unwrap_or(REQUIRE_ALL)
        );
    }
    eprintln!("SKIPPED: {why}");
}

/// The project's `shared/` folder: `MEDFED_SHARED_DIR`, else the folder beside the checkout
/// (`<repo>/../shared`, where the workplace and CI put it), whether it exists or not.
pub fn shared_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("MEDFED_SHARED_DIR") {
        return PathBuf::from(d);
    }
    // This crate is <repo>/crates/testkit.
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared")
}

/// A path under `shared/` if it exists; otherwise the skip is reported (see [`skip`]) and
/// `None` returned.
#[track_caller]
pub fn shared(relative: &str) -> Option<PathBuf> {
    let path = shared_dir().join(relative);
    if path.exists() {
        Some(path)
    } else {
        skip(None, &format!("{} is not present", path.display()));
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_dir_is_beside_the_checkout() {
        if std::env::var_os("MEDFED_SHARED_DIR").is_none() {
            let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
            assert!(repo.join("Cargo.lock").is_file(), "{} is the repository", repo.display());
            assert_eq!(shared_dir(), repo.join("../shared"));
        }
    }
}
