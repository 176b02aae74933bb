-- Organizations, their API keys (hashed), and snapshots. Times are Unix milliseconds.
CREATE TABLE organizations (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);

CREATE TABLE api_keys (
    id            TEXT PRIMARY KEY,
    org_id        TEXT NOT NULL REFERENCES organizations(id),
    name          TEXT NOT NULL,
    key_hash      TEXT NOT NULL UNIQUE,
    prefix        TEXT NOT NULL,
    admin         INTEGER NOT NULL DEFAULT 0,
    created_at    INTEGER NOT NULL,
    last_used_at  INTEGER,
    revoked_at    INTEGER
);

CREATE TABLE snapshots (
    id            TEXT PRIMARY KEY,
    org_id        TEXT NOT NULL REFERENCES organizations(id),
    name          TEXT NOT NULL,
    image_name    TEXT NOT NULL,
    state         TEXT NOT NULL,
    error_reason  TEXT,
    cpu           INTEGER NOT NULL,
    gpu           INTEGER NOT NULL,
    gpu_type      TEXT,
    mem           INTEGER NOT NULL,
    disk          INTEGER NOT NULL,
    entrypoint    TEXT,          -- JSON array, NULL until known
    region_id     TEXT NOT NULL,
    size_bytes    INTEGER,
    image_digest  TEXT,          -- manifest digest of the unpacked image, once pulled
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    last_used_at  INTEGER,
    UNIQUE (org_id, name)
);

CREATE INDEX snapshots_state ON snapshots(state);
