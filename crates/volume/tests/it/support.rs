use std::path::PathBuf;

/// `shared/` of the project: `MEDFED_SHARED_DIR`, else next to the checkout, else `/work/shared`.
pub fn shared_dir() -> PathBuf {
    if let Ok(d) = std::env::var("MEDFED_SHARED_DIR") {
        return PathBuf::from(d);
    }
    let beside = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared");
    if beside.is_dir() {
        return beside;
    }
    PathBuf::from("/work/shared")
}

pub fn datasets() -> PathBuf {
    shared_dir().join("datasets")
}
