-- Federated runs: the spec as submitted, where the run is, and the coordinator's state after
-- its last completed round (what a restarted hub resumes from).
CREATE TABLE runs (
    id TEXT PRIMARY KEY,
    study TEXT NOT NULL REFERENCES studies(id),
    spec TEXT NOT NULL,
    status TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL DEFAULT '{}',
    result_dataset TEXT,
    created_by TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL
);
CREATE INDEX runs_study ON runs (study);
CREATE INDEX runs_status ON runs (status);
