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
            own_switch
                .filter(|k| std::env::var_os(k).is_some())
                .unwrap_or(REQUIRE_ALL)
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
    repository_root().join("../shared")
}

/// The checkout being tested: found at run time from the test's own crate (cargo sets
/// `CARGO_MANIFEST_DIR` for test processes) by walking up to the workspace's `Cargo.lock`,
/// so that a build shared between two checkouts never points one at the other's data.
pub fn repository_root() -> PathBuf {
    let start = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::current_dir().ok())
        // This crate is <repo>/crates/testkit.
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.."));
    start
        .ancestors()
        .find(|d| d.join("Cargo.lock").is_file())
        .map(PathBuf::from)
        .unwrap_or(start)
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

/// The test venv `.ci/run` makes (`<repo>/target/pyenv`): Python oracles and the DICOM files
/// that PyPI packages ship (pydicom's and pydicom-data's test files, all real, many vendors).
pub fn pyenv_dir() -> PathBuf {
    repository_root().join("target/pyenv")
}

/// A folder inside the test venv's `site-packages` (e.g. `pydicom/data/test_files`) if it
/// exists; otherwise the skip is reported (see [`skip`]) and `None` returned.
#[track_caller]
pub fn pyenv_package_dir(relative: &str) -> Option<PathBuf> {
    let lib = pyenv_dir().join("lib");
    let found = std::fs::read_dir(&lib).ok().and_then(|entries| {
        entries
            .flatten()
            .map(|e| e.path().join("site-packages").join(relative))
            .find(|p| p.exists())
    });
    if found.is_none() {
        skip(
            None,
            &format!(
                "{relative} is not in {}/lib/python*/site-packages (.ci/run installs it)",
                pyenv_dir().display()
            ),
        );
    }
    found
}

/// A TCP port on 127.0.0.1 for a server a test starts, free when returned.
///
/// Binding port 0 and closing it (the usual trick) races: the kernel hands the same port out
/// again as the ephemeral source port of any outgoing connection before the server binds it.
/// These ports come from below the kernel's ephemeral range, so no connection is ever given one;
/// each call in a process gets a different one (and processes start at different offsets), and
/// each is checked free by binding it.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768)
        .clamp(12000, 65535);
    let (low, span) = (10000u32, ephemeral_start - 10000);
    let offset = std::process::id() % span;
    for _ in 0..span {
        let port = (low + (offset + NEXT.fetch_add(1, Ordering::Relaxed)) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free TCP port below the ephemeral range on 127.0.0.1");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_and_bindable() {
        let ports: std::collections::BTreeSet<u16> = (0..50).map(|_| free_port()).collect();
        assert_eq!(ports.len(), 50);
        for p in ports {
            std::net::TcpListener::bind(("127.0.0.1", p)).unwrap();
        }
    }

    #[test]
    fn shared_dir_is_beside_the_checkout() {
        if std::env::var_os("MEDFED_SHARED_DIR").is_none() {
            let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
            assert!(
                repo.join("Cargo.lock").is_file(),
                "{} is the repository",
                repo.display()
            );
            assert_eq!(
                repository_root().canonicalize().unwrap(),
                repo.canonicalize().unwrap()
            );
            assert_eq!(shared_dir(), repository_root().join("../shared"));
        }
    }
}
