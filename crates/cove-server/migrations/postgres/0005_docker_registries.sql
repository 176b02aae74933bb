-- PostgreSQL twin of sqlite/0005_docker_registries.sql: private registries of an
-- organization (`/api/docker-registry`). `secret` is sealed with AES-256-GCM under
-- <data-dir>/secrets.key, never plain text; ECR registries have none (the server assumes
-- `role_arn`). Times are Unix milliseconds.
--
-- Dialect: `seq` stands in for SQLite's implicit `rowid`, which breaks ties between rows
-- created in the same millisecond when listing (newest first). PostgreSQL has no rowid.
CREATE TABLE docker_registries (
    id             TEXT COLLATE "C" PRIMARY KEY,
    org_id         TEXT COLLATE "C" NOT NULL REFERENCES organizations(id),
    name           TEXT COLLATE "C" NOT NULL,
    url            TEXT COLLATE "C" NOT NULL,
    username       TEXT COLLATE "C" NOT NULL,
    secret         TEXT COLLATE "C",
    project        TEXT COLLATE "C" NOT NULL DEFAULT '',
    provider       TEXT COLLATE "C" NOT NULL,
    role_arn       TEXT COLLATE "C",
    registry_type  TEXT COLLATE "C" NOT NULL DEFAULT 'organization',
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL,
    seq            BIGINT GENERATED ALWAYS AS IDENTITY
);

CREATE INDEX docker_registries_by_org ON docker_registries (org_id, created_at);
