-- Portable between SQLite and PostgreSQL: TEXT and BIGINT only (flags are 0/1, times are
-- milliseconds since 1970), so one schema and one set of queries serve both backends.
CREATE TABLE organisations (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created_ms BIGINT NOT NULL
);
CREATE TABLE users (
    id TEXT PRIMARY KEY,
    subject TEXT NOT NULL UNIQUE,
    organisation TEXT REFERENCES organisations(id),
    platform_admin BIGINT NOT NULL DEFAULT 0,
    created_ms BIGINT NOT NULL
);
CREATE TABLE api_tokens (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(id),
    secret_sha256 TEXT NOT NULL,
    expires_ms BIGINT NOT NULL,
    revoked BIGINT NOT NULL DEFAULT 0,
    created_ms BIGINT NOT NULL
);
CREATE TABLE studies (
    id TEXT PRIMARY KEY,
    title TEXT NOT NULL,
    created_ms BIGINT NOT NULL
);
CREATE TABLE study_organisations (
    study TEXT NOT NULL REFERENCES studies(id),
    organisation TEXT NOT NULL REFERENCES organisations(id),
    PRIMARY KEY (study, organisation)
);
CREATE TABLE grants (
    user_id TEXT NOT NULL REFERENCES users(id),
    study TEXT NOT NULL REFERENCES studies(id),
    role TEXT NOT NULL,
    PRIMARY KEY (user_id, study, role)
);
CREATE TABLE datasets (
    id TEXT PRIMARY KEY,
    pid TEXT NOT NULL UNIQUE,
    study TEXT NOT NULL REFERENCES studies(id),
    owner_organisation TEXT NOT NULL REFERENCES organisations(id),
    title TEXT NOT NULL,
    licence TEXT NOT NULL,
    provenance TEXT NOT NULL,
    retention_until_ms BIGINT NOT NULL,
    legal_hold BIGINT NOT NULL DEFAULT 0,
    wrapped_key TEXT NOT NULL,
    master_version BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    created_ms BIGINT NOT NULL
);
CREATE INDEX datasets_study ON datasets (study);
CREATE TABLE objects (
    dataset TEXT NOT NULL REFERENCES datasets(id),
    id TEXT NOT NULL,
    name TEXT NOT NULL,
    media_type TEXT NOT NULL,
    size BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    PRIMARY KEY (dataset, id)
);
CREATE TABLE instances (
    dataset TEXT NOT NULL REFERENCES datasets(id),
    object TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    sop_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    modality TEXT NOT NULL,
    patient_id TEXT NOT NULL,
    patient_name TEXT NOT NULL,
    study_date TEXT NOT NULL,
    series_number TEXT NOT NULL,
    instance_number TEXT NOT NULL,
    PRIMARY KEY (dataset, sop_uid)
);
-- QIDO groups and orders by these, so a page reads only its own rows in index order.
CREATE INDEX instances_study ON instances (study_uid, dataset);
CREATE INDEX instances_series ON instances (series_uid, dataset);
CREATE INDEX instances_sop ON instances (sop_uid, dataset);
CREATE TABLE uploads (
    id TEXT PRIMARY KEY,
    dataset TEXT NOT NULL REFERENCES datasets(id),
    object TEXT NOT NULL,
    name TEXT NOT NULL,
    media_type TEXT NOT NULL,
    started_by TEXT NOT NULL,
    created_ms BIGINT NOT NULL
);
