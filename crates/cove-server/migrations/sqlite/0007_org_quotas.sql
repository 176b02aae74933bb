-- Per-organization quotas set by an admin key (`PUT /api/organizations/{id}/quota`). A NULL
-- limit is the server default (`--org-quota-*`). Memory and disk in GiB.
CREATE TABLE org_quotas (
    org_id      TEXT PRIMARY KEY REFERENCES organizations(id),
    sandboxes   INTEGER,
    cpu         INTEGER,
    memory      INTEGER,
    disk        INTEGER,
    updated_at  INTEGER NOT NULL
);
