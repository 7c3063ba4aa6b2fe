use std::path::PathBuf;

/// `shared/` of the project (`MEDFED_SHARED_DIR`, else beside the checkout).
pub fn shared_dir() -> PathBuf {
    medfed_testkit::shared_dir()
}

pub fn datasets() -> PathBuf {
    shared_dir().join("datasets")
}
