-- Private registries of an organization (`/api/docker-registry`). `secret` is the password,
-- token or key sealed with AES-256-GCM under <data-dir>/secrets.key ("v1:" + base64 of
-- nonce||ciphertext||tag); never plain text. ECR registries have no secret: the server
-- assumes `role_arn`. Times are Unix milliseconds.
CREATE TABLE docker_registries (
    id             TEXT PRIMARY KEY,
    org_id         TEXT NOT NULL REFERENCES organizations(id),
    name           TEXT NOT NULL,
    url            TEXT NOT NULL,
    username       TEXT NOT NULL,
    secret         TEXT,
    project        TEXT NOT NULL DEFAULT '',
    provider       TEXT NOT NULL,
    role_arn       TEXT,
    registry_type  TEXT NOT NULL DEFAULT 'organization',
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL
);

CREATE INDEX docker_registries_by_org ON docker_registries (org_id, created_at);
