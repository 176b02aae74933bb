-- PostgreSQL twin of sqlite/0001_initial.sql (same number, same meaning). Dialect, here and in
-- every later file: integers are BIGINT (times are Unix milliseconds; the Rust side reads i64),
-- flags are BOOLEAN (SQLite keeps 0/1 integers; sqlx binds and reads both as bool), and every
-- TEXT column is COLLATE "C" so that sorting, comparing and LIKE go by bytes, as SQLite's
-- BINARY collation does, whatever the database's default locale.
CREATE TABLE organizations (
    id          TEXT COLLATE "C" PRIMARY KEY,
    name        TEXT COLLATE "C" NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE api_keys (
    id            TEXT COLLATE "C" PRIMARY KEY,
    org_id        TEXT COLLATE "C" NOT NULL REFERENCES organizations(id),
    name          TEXT COLLATE "C" NOT NULL,
    key_hash      TEXT COLLATE "C" NOT NULL UNIQUE,
    prefix        TEXT COLLATE "C" NOT NULL,
    admin         BOOLEAN NOT NULL DEFAULT FALSE,
    created_at    BIGINT NOT NULL,
    last_used_at  BIGINT,
    revoked_at    BIGINT
);

CREATE TABLE snapshots (
    id            TEXT COLLATE "C" PRIMARY KEY,
    org_id        TEXT COLLATE "C" NOT NULL REFERENCES organizations(id),
    name          TEXT COLLATE "C" NOT NULL,
    image_name    TEXT COLLATE "C" NOT NULL,
    state         TEXT COLLATE "C" NOT NULL,
    error_reason  TEXT COLLATE "C",
    cpu           BIGINT NOT NULL,
    gpu           BIGINT NOT NULL,
    gpu_type      TEXT COLLATE "C",
    mem           BIGINT NOT NULL,
    disk          BIGINT NOT NULL,
    entrypoint    TEXT COLLATE "C",          -- JSON array, NULL until known
    region_id     TEXT COLLATE "C" NOT NULL,
    size_bytes    BIGINT,
    image_digest  TEXT COLLATE "C",          -- manifest digest of the unpacked image, once pulled
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL,
    last_used_at  BIGINT,
    UNIQUE (org_id, name)
);

CREATE INDEX snapshots_state ON snapshots(state);
