-- PostgreSQL twin of sqlite/0007_org_quotas.sql: per-organization quotas set by an admin key
-- (`PUT /api/organizations/{id}/quota`). A NULL limit is the server default
-- (`--org-quota-*`). Memory and disk in GiB.
CREATE TABLE org_quotas (
    org_id      TEXT COLLATE "C" PRIMARY KEY REFERENCES organizations(id),
    sandboxes   BIGINT,
    cpu         BIGINT,
    memory      BIGINT,
    disk        BIGINT,
    updated_at  BIGINT NOT NULL
);
