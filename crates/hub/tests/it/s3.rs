//! S3 (below)
