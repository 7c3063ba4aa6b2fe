//! End-to-end tests of the hub: the router in-process for the authorisation matrix and the
//! catalogue behaviour, real HTTPS servers on 127.0.0.1 for TLS, limits and OIDC, a real S3
//! server when one can be started. Every test runs on SQLite, and on PostgreSQL as well when
//! `MEDFED_TEST_DATABASE_URL` is set (always under CI: `.ci/run` fails without it).

// The blocking-call rule of clippy.toml is for the hub's request path, not for its tests.
#![allow(clippy::disallowed_methods)]

mod admission;
mod auth_and_limits;
mod dicomweb;
mod grants;
mod matrix;
mod oidc;
mod qido_matching;
mod s3;
mod storage;
mod support;
mod transport;
