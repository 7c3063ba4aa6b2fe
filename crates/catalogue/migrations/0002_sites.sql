-- Site nodes: one-time enrolment tokens, enrolled sites with their client certificates, and the
-- tasks the hub hands them. Same portable types as 0001 (TEXT and BIGINT only).
CREATE TABLE enrolments (
    id TEXT PRIMARY KEY,
    study TEXT NOT NULL REFERENCES studies(id),
    organisation TEXT NOT NULL REFERENCES organisations(id),
    secret_sha256 TEXT NOT NULL,
    expires_ms BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    used_ms BIGINT,
    site_id TEXT
);
CREATE TABLE sites (
    id TEXT PRIMARY KEY,
    organisation TEXT NOT NULL REFERENCES organisations(id),
    user_id TEXT NOT NULL REFERENCES users(id),
    name TEXT NOT NULL,
    enrolled_ms BIGINT NOT NULL,
    revoked_ms BIGINT,
    last_seen_ms BIGINT,
    version TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX sites_organisation ON sites (organisation);
CREATE TABLE site_certificates (
    fingerprint TEXT PRIMARY KEY,
    site_id TEXT NOT NULL REFERENCES sites(id),
    serial TEXT NOT NULL,
    not_after_ms BIGINT NOT NULL,
    issued_ms BIGINT NOT NULL
);
CREATE INDEX site_certificates_site ON site_certificates (site_id);
CREATE TABLE tasks (
    id TEXT PRIMARY KEY,
    site_id TEXT NOT NULL REFERENCES sites(id),
    study TEXT NOT NULL REFERENCES studies(id),
    kind TEXT NOT NULL,
    params TEXT NOT NULL,
    status TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    progress TEXT NOT NULL DEFAULT '{}',
    created_by TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL
);
CREATE INDEX tasks_site ON tasks (site_id, status);
CREATE INDEX tasks_study ON tasks (study);
